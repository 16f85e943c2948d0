//! The crate's one error type.
//!
//! Owns: [`Error`] and [`Result`]. Must never: carry secrets or file contents in a message; every
//! variant names what was refused and why, so a caller can log it as is.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used by every fallible `magikrun` API.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in `magikrun`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this id is known to the runtime.
    #[error("container not found: {0}")]
    ContainerNotFound(String),
    /// A container with this id already exists.
    #[error("container already exists: {0}")]
    ContainerExists(String),
    /// The container id is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid container id {id:?}: {reason}")]
    InvalidContainerId {
        /// The refused id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The lifecycle operation is not allowed in the container's current state.
    #[error("invalid state transition: cannot {op} a container that is {from}")]
    InvalidTransition {
        /// The operation that was asked for.
        op: &'static str,
        /// The state the container was in ("absent" when it does not exist).
        from: String,
    },
    /// A runtime backend cannot run on this machine or build.
    #[error("runtime {name} unavailable: {reason}")]
    RuntimeUnavailable {
        /// Backend name.
        name: String,
        /// Why it is unavailable.
        reason: String,
    },
    /// The bundle kind is not one this backend runs.
    #[error("runtime {runtime} cannot run this bundle: {reason}")]
    UnsupportedBundle {
        /// Backend name.
        runtime: String,
        /// What is wrong with the bundle for it.
        reason: String,
    },
    /// The bundle on disk or in memory is malformed.
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    /// A digest string is not `sha256:` followed by 64 lowercase hex characters.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The refused digest string.
        digest: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Content does not hash to the digest it was announced with.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: String,
        /// The digest of the bytes actually received.
        actual: String,
    },
    /// Content is not the size its descriptor announced.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob's digest.
        digest: String,
        /// The announced size.
        expected: u64,
        /// The size received (or a lower bound when reading stopped early).
        actual: u64,
    },
    /// The blob is not in the store.
    #[error("blob not found: {0}")]
    BlobNotFound(String),
    /// A size limit was exceeded.
    #[error("{what} exceeds its limit of {limit} bytes")]
    SizeLimit {
        /// What grew too big (a layer, the rootfs, a module, a manifest).
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The image has more layers than allowed.
    #[error("image has {count} layers, the limit is {limit}")]
    TooManyLayers {
        /// Number of layers in the manifest.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A layer archive entry would write outside the rootfs or is of a forbidden kind.
    #[error("unsafe archive entry {path:?}: {reason}")]
    UnsafeArchiveEntry {
        /// The entry's path as written in the archive.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// A layer archive could not be read.
    #[error("malformed layer archive: {0}")]
    MalformedArchive(String),
    /// The image (manifest, config, index) is malformed or unsupported.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The image reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The refused reference.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// Fetching an image from a registry failed.
    #[error("image pull failed: {0}")]
    Pull(String),
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The bound that was hit.
        after: Duration,
    },
    /// The WASM engine refused or trapped.
    #[error("wasm: {0}")]
    Wasm(String),
    /// The container backend (libcontainer, libkrun) failed.
    #[error("{runtime} backend: {message}")]
    Backend {
        /// Backend name.
        runtime: &'static str,
        /// The backend's message.
        message: String,
    },
    /// A signal name or number is not one this crate sends.
    #[error("invalid signal {0:?}")]
    InvalidSignal(String),
    /// An I/O operation on a known path failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document could not be read or written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The feature is not available on this operating system or build.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::UnsafeArchiveEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cause() {
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::ContainerNotFound("c1".into()),
                "container not found: c1",
            ),
            (
                Error::InvalidTransition {
                    op: "start",
                    from: "stopped".into(),
                },
                "cannot start a container that is stopped",
            ),
            (
                Error::DigestMismatch {
                    expected: "sha256:aa".into(),
                    actual: "sha256:bb".into(),
                },
                "expected sha256:aa, got sha256:bb",
            ),
            (
                Error::TooManyLayers {
                    count: 200,
                    limit: 128,
                },
                "200 layers, the limit is 128",
            ),
            (
                Error::unsafe_entry("../x", "path escapes the rootfs"),
                "unsafe archive entry \"../x\": path escapes the rootfs",
            ),
            (
                Error::RuntimeUnavailable {
                    name: "krun".into(),
                    reason: "libkrun not found".into(),
                },
                "runtime krun unavailable: libkrun not found",
            ),
            (
                Error::Timeout {
                    what: "start".into(),
                    after: Duration::from_secs(60),
                },
                "start timed out after 60s",
            ),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            assert!(text.contains(want), "{text:?} should contain {want:?}");
        }
    }

    #[test]
    fn io_error_keeps_path_and_source() {
        let err = Error::io(
            "/x/y",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert!(err.to_string().contains("/x/y"));
        assert!(std::error::Error::source(&err).is_some());
    }
}
