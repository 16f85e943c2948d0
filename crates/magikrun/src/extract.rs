//! Layer extraction: OCI layer tar streams (plain or gzip) into a rootfs directory.
//!
//! Owns: [`extract_layer`] and [`ExtractLimits`], the only code that writes image content to
//! disk. Must never: create, modify, chmod or link anything outside the rootfs. Every path is
//! resolved component by component from the rootfs, never following a symlink out of it; `..`
//! entries, absolute paths, device nodes, FIFOs, hardlinks leaving the rootfs and symlinks whose
//! target climbs out are refused with [`Error::UnsafeArchiveEntry`]; setuid/setgid bits are
//! stripped; xattrs (file capabilities) are never applied; sizes are bounded before writing.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::constants::{MAX_LAYERS, MAX_LAYER_ENTRIES, MAX_LAYER_SIZE, MAX_ROOTFS_SIZE};
use crate::error::{Error, Result};

/// Longest accepted entry path in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Deepest accepted entry path (components).
pub const MAX_PATH_DEPTH: usize = 256;
const MAX_SYMLINK_FOLLOWS: usize = 40;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Bounds applied while building a rootfs; defaults are the seed's constants. Tests pass
/// smaller numbers to exercise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Largest layer, compressed and uncompressed (`MAX_LAYER_SIZE`).
    pub max_layer_size: u64,
    /// Largest rootfs, all layers' file bytes together (`MAX_ROOTFS_SIZE`).
    pub max_rootfs_size: u64,
    /// Most layers (`MAX_LAYERS`).
    pub max_layers: usize,
    /// Most entries in one layer (`MAX_LAYER_ENTRIES`).
    pub max_entries: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_layer_size: MAX_LAYER_SIZE,
            max_rootfs_size: MAX_ROOTFS_SIZE,
            max_layers: MAX_LAYERS,
            max_entries: MAX_LAYER_ENTRIES,
        }
    }
}

/// What one layer contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries applied (files, dirs, links, whiteouts).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Compressed (as read) size of the layer stream.
    pub compressed_bytes: u64,
    /// `sha256:` digest of the stream as read (the layer's descriptor digest).
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar stream (the layer's diff id).
    pub diff_id: String,
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        use sha2::Digest as _;
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
        }
    }
    /// Reads the rest of the stream (trailing padding after the tar end marker) and returns
    /// the digest of everything.
    fn finish(mut self) -> io::Result<(R, String)> {
        use sha2::Digest as _;
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
        ))
    }
}

/// Counts bytes read and fails once more than `limit` have been read.
struct LimitedReader<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct LimitExceeded;
impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("layer size limit exceeded")
    }
}
impl std::error::Error for LimitExceeded {}

fn is_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<LimitExceeded>())
}

/// Kind of compression detected from a stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd (recognised, not supported).
    Zstd,
}

/// Detects compression from magic bytes. Pure.
pub fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Splits an archive entry path into normal components. Refuses absolute paths, `..`, NUL,
/// over-long and over-deep paths. `./` prefixes and `.` components are dropped; the root entry
/// (`./` or `.`) yields an empty list. Pure.
pub fn sanitize_entry_path(raw: &[u8]) -> Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let shown = String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(Error::unsafe_entry(shown, "path contains a NUL byte"));
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(Error::unsafe_entry(shown, "path is too long"));
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::unsafe_entry(shown, "absolute paths are not allowed"))
            }
            Component::ParentDir => {
                return Err(Error::unsafe_entry(
                    shown,
                    "'..' components are not allowed",
                ))
            }
        }
    }
    if out.len() > MAX_PATH_DEPTH {
        return Err(Error::unsafe_entry(shown, "path is too deep"));
    }
    Ok(out)
}

/// Whether a relative symlink target, placed in directory `link_dir` (components under the
/// rootfs), stays inside the rootfs when resolved lexically. Absolute targets are resolved
/// against the container's root, so they always stay inside. Pure.
pub fn symlink_target_stays_inside(link_dir: &[OsString], target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth = link_dir.len() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    true
}

/// Resolves `comps` (a directory path under `root`) to a host path inside `root`, following
/// symlinks with the rootfs as `/`. A symlink that climbs above the rootfs is an error; missing
/// directories are created when `create` is set (else `Ok(None)`).
fn resolve_dir(
    root: &Path,
    comps: &[OsString],
    create: bool,
    shown: &str,
) -> Result<Option<PathBuf>> {
    let mut stack: Vec<OsString> = Vec::new();
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut follows = 0;
    while let Some(c) = queue.pop_front() {
        if c == "." || c.is_empty() {
            continue;
        }
        if c == ".." {
            if stack.pop().is_none() {
                return Err(Error::unsafe_entry(
                    shown,
                    "a symlink in the path leads out of the rootfs",
                ));
            }
            continue;
        }
        let mut cur = root.to_path_buf();
        cur.extend(stack.iter());
        cur.push(&c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                follows += 1;
                if follows > MAX_SYMLINK_FOLLOWS {
                    return Err(Error::unsafe_entry(shown, "too many symlinks in the path"));
                }
                let target = fs::read_link(&cur).map_err(|e| Error::io(&cur, e))?;
                let mut new_queue: VecDeque<OsString> = VecDeque::new();
                if target.is_absolute() {
                    stack.clear();
                }
                for tc in target.components() {
                    match tc {
                        Component::Normal(n) => new_queue.push_back(n.to_os_string()),
                        Component::ParentDir => new_queue.push_back("..".into()),
                        _ => {}
                    }
                }
                new_queue.extend(queue);
                queue = new_queue;
            }
            Ok(m) if m.is_dir() => stack.push(c),
            Ok(_) => {
                return Err(Error::unsafe_entry(
                    shown,
                    "a path component is not a directory",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::create_dir(&cur).map_err(|e| Error::io(&cur, e))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io(&cur, e))?;
                stack.push(c);
            }
            Err(e) => return Err(Error::io(&cur, e)),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(stack.iter());
    Ok(Some(out))
}

/// Resolves a path inside `rootfs` (container semantics: symlinks followed with the rootfs as
/// `/`, never out of it) to a host path of an existing regular file.
pub fn resolve_file_in_rootfs(rootfs: &Path, path: &str) -> Result<PathBuf> {
    let comps = sanitize_entry_path(path.trim_start_matches('/').as_bytes())?;
    let (name, parent) = comps
        .split_last()
        .ok_or_else(|| Error::InvalidBundle(format!("{path:?} names the root directory")))?;
    let dir = resolve_dir(rootfs, parent, false, path)?
        .ok_or_else(|| Error::InvalidBundle(format!("{path:?} does not exist in the rootfs")))?;
    let p = dir.join(name);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err(Error::InvalidBundle(format!(
            "{path:?} is not a regular file"
        ))),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Removes whatever is at `path` without following a symlink there.
fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| Error::io(path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Mode bits kept: permissions, plus sticky on directories; setuid/setgid always stripped.
pub fn sanitize_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir {
        mode & 0o1777
    } else {
        mode & 0o777
    }
}

struct LayerState {
    /// Entry paths written by this layer (whiteouts must not hide them).
    current: HashSet<PathBuf>,
    /// Every ancestor directory of an entry written by this layer.
    ancestors: HashSet<PathBuf>,
}

impl LayerState {
    fn record(&mut self, comps: &[OsString]) {
        let p: PathBuf = comps.iter().collect();
        let mut a = p.clone();
        while a.pop() {
            if !self.ancestors.insert(a.clone()) {
                break;
            }
        }
        self.current.insert(p);
    }
}

/// Removes lower-layer children of `dir` (opaque whiteout), keeping what this layer wrote.
fn clear_lower(dir: &Path, rel: &Path, st: &LayerState) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(dir, e))?;
        let child_rel = rel.join(ent.file_name());
        let child = ent.path();
        let kept = st.current.contains(&child_rel) || st.ancestors.contains(&child_rel);
        if !kept {
            remove_any(&child)?;
        } else if st.ancestors.contains(&child_rel) {
            let m = fs::symlink_metadata(&child).map_err(|e| Error::io(&child, e))?;
            if m.is_dir() && !st.current.contains(&child_rel) {
                clear_lower(&child, &child_rel, st)?;
            }
        }
    }
    Ok(())
}

/// Extracts one layer (gzip or plain tar, detected from its first bytes) from any reader into
/// `rootfs`, which must exist. `rootfs_used` is the rootfs size so far; it is increased by the
/// bytes written and bounded by `limits.max_rootfs_size`.
pub fn extract_layer<R: Read>(
    reader: R,
    rootfs: &Path,
    limits: &ExtractLimits,
    rootfs_used: &mut u64,
) -> Result<LayerStats> {
    let limited = HashingReader::new(LimitedReader {
        inner: reader,
        read: 0,
        limit: limits.max_layer_size,
    });
    let mut buffered = BufReader::new(limited);
    let head = buffered
        .fill_buf()
        .map_err(|e| map_read_err(e, limits))?
        .to_vec();
    let mut stats = LayerStats::default();
    let outer = match detect_compression(&head) {
        Compression::Gzip => {
            let gz = flate2::read::GzDecoder::new(buffered);
            let inner = HashingReader::new(LimitedReader {
                inner: gz,
                read: 0,
                limit: limits.max_layer_size.saturating_mul(2),
            });
            let mut archive = tar::Archive::new(inner);
            apply_archive(&mut archive, rootfs, limits, rootfs_used, &mut stats)?;
            let (inner, diff_id) = archive
                .into_inner()
                .finish()
                .map_err(|e| map_read_err(e, limits))?;
            stats.diff_id = diff_id;
            let mut buffered = inner.inner.into_inner();
            io::copy(&mut buffered, &mut io::sink()).map_err(|e| map_read_err(e, limits))?;
            buffered.into_inner()
        }
        Compression::Zstd => {
            return Err(Error::MalformedArchive(
                "zstd-compressed layers are not supported".into(),
            ))
        }
        Compression::None => {
            let mut archive = tar::Archive::new(buffered);
            apply_archive(&mut archive, rootfs, limits, rootfs_used, &mut stats)?;
            let mut buffered = archive.into_inner();
            io::copy(&mut buffered, &mut io::sink()).map_err(|e| map_read_err(e, limits))?;
            buffered.into_inner()
        }
    };
    let (limited, digest) = outer.finish().map_err(|e| map_read_err(e, limits))?;
    stats.compressed_bytes = limited.read;
    if stats.diff_id.is_empty() {
        stats.diff_id = digest.clone();
    }
    stats.digest = digest;
    Ok(stats)
}

fn map_read_err(e: io::Error, limits: &ExtractLimits) -> Error {
    if is_limit(&e) {
        Error::SizeLimit {
            what: "layer".into(),
            limit: limits.max_layer_size,
        }
    } else {
        Error::MalformedArchive(e.to_string())
    }
}

fn apply_archive<R: Read>(
    archive: &mut tar::Archive<R>,
    rootfs: &Path,
    limits: &ExtractLimits,
    rootfs_used: &mut u64,
    stats: &mut LayerStats,
) -> Result<()> {
    let mut st = LayerState {
        current: HashSet::new(),
        ancestors: HashSet::new(),
    };
    let mut layer_bytes: u64 = 0;
    let entries = archive.entries().map_err(|e| map_read_err(e, limits))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| map_read_err(e, limits))?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(Error::SizeLimit {
                what: format!("layer entry count ({} entries)", limits.max_entries),
                limit: limits.max_entries,
            });
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = sanitize_entry_path(&raw_path)?;
        let kind = entry.header().entry_type();
        let Some((name, parent)) = comps.split_last() else {
            // The root entry itself ("./"): nothing to create.
            continue;
        };
        let name_str = name.to_string_lossy();

        // Whiteouts.
        if name_str == OPAQUE_WHITEOUT {
            let dir = resolve_dir(rootfs, parent, true, &shown)?
                .ok_or_else(|| Error::unsafe_entry(&shown, "opaque whiteout parent missing"))?;
            let rel: PathBuf = parent.iter().collect();
            clear_lower(&dir, &rel, &st)?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty()
                || hidden == "."
                || hidden == ".."
                || hidden.starts_with(WHITEOUT_PREFIX)
            {
                return Err(Error::unsafe_entry(&shown, "invalid whiteout name"));
            }
            if let Some(dir) = resolve_dir(rootfs, parent, false, &shown)? {
                let mut rel: Vec<OsString> = parent.to_vec();
                rel.push(hidden.into());
                let rel_path: PathBuf = rel.iter().collect();
                if !st.current.contains(&rel_path) {
                    remove_any(&dir.join(hidden))?;
                }
            }
            continue;
        }

        let size = entry
            .header()
            .size()
            .map_err(|e| Error::MalformedArchive(e.to_string()))?;
        let mode = entry.header().mode().unwrap_or(0o644);
        let uid = entry.header().uid().ok();
        let gid = entry.header().gid().ok();

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                layer_bytes = layer_bytes.saturating_add(size);
                if layer_bytes > limits.max_layer_size {
                    return Err(Error::SizeLimit {
                        what: format!("layer content (at {shown:?})"),
                        limit: limits.max_layer_size,
                    });
                }
                if rootfs_used.saturating_add(size) > limits.max_rootfs_size {
                    return Err(Error::SizeLimit {
                        what: format!("rootfs (at {shown:?})"),
                        limit: limits.max_rootfs_size,
                    });
                }
                let dir = resolve_dir(rootfs, parent, true, &shown)?
                    .ok_or_else(|| Error::unsafe_entry(&shown, "parent missing"))?;
                let dest = dir.join(name);
                remove_any(&dest)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(|e| Error::io(&dest, e))?;
                let n = io::copy(&mut (&mut entry).take(size), &mut f)
                    .map_err(|e| map_read_err(e, limits))?;
                if n != size {
                    return Err(Error::MalformedArchive(format!(
                        "{shown:?}: short file data"
                    )));
                }
                *rootfs_used += n;
                stats.bytes += n;
                f.set_permissions(fs::Permissions::from_mode(sanitize_mode(mode, false)))
                    .map_err(|e| Error::io(&dest, e))?;
                chown(&dest, uid, gid);
            }
            tar::EntryType::Directory => {
                let dir = resolve_dir(rootfs, parent, true, &shown)?
                    .ok_or_else(|| Error::unsafe_entry(&shown, "parent missing"))?;
                let dest = dir.join(name);
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&dest)?;
                        fs::create_dir(&dest).map_err(|e| Error::io(&dest, e))?;
                    }
                    Err(_) => fs::create_dir(&dest).map_err(|e| Error::io(&dest, e))?,
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(sanitize_mode(mode, true)))
                    .map_err(|e| Error::io(&dest, e))?;
                chown(&dest, uid, gid);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| Error::MalformedArchive(e.to_string()))?
                    .ok_or_else(|| Error::unsafe_entry(&shown, "symlink without a target"))?
                    .into_owned();
                if target.as_os_str().is_empty() {
                    return Err(Error::unsafe_entry(&shown, "symlink with an empty target"));
                }
                let dir = resolve_dir(rootfs, parent, true, &shown)?
                    .ok_or_else(|| Error::unsafe_entry(&shown, "parent missing"))?;
                // Judge the target from where the link really lands (its parent may itself
                // have been reached through symlinks), not from the entry's name.
                let landed: Vec<OsString> = dir
                    .strip_prefix(rootfs)
                    .map(|p| p.iter().map(|c| c.to_os_string()).collect())
                    .unwrap_or_default();
                if !symlink_target_stays_inside(&landed, &target) {
                    return Err(Error::unsafe_entry(
                        &shown,
                        format!(
                            "symlink target {} leads out of the rootfs",
                            target.display()
                        ),
                    ));
                }
                let dest = dir.join(name);
                remove_any(&dest)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(|e| Error::io(&dest, e))?;
                lchown(&dest, uid, gid);
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::unsafe_entry(&shown, "hardlink without a target"))?
                    .into_owned();
                let tcomps = sanitize_entry_path(&target_raw).map_err(|_| {
                    Error::unsafe_entry(
                        &shown,
                        format!(
                            "hardlink target {:?} is not a relative path inside the rootfs",
                            String::from_utf8_lossy(&target_raw)
                        ),
                    )
                })?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(Error::unsafe_entry(&shown, "hardlink to the rootfs itself"));
                };
                let tdir = resolve_dir(rootfs, tparent, false, &shown)?
                    .ok_or_else(|| Error::unsafe_entry(&shown, "hardlink target does not exist"))?;
                let target = tdir.join(tname);
                let tm = fs::symlink_metadata(&target)
                    .map_err(|_| Error::unsafe_entry(&shown, "hardlink target does not exist"))?;
                if tm.is_dir() {
                    return Err(Error::unsafe_entry(&shown, "hardlink to a directory"));
                }
                let dir = resolve_dir(rootfs, parent, true, &shown)?
                    .ok_or_else(|| Error::unsafe_entry(&shown, "parent missing"))?;
                let dest = dir.join(name);
                if dest != target {
                    remove_any(&dest)?;
                    // linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
                    fs::hard_link(&target, &dest).map_err(|e| Error::io(&dest, e))?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(Error::unsafe_entry(&shown, "device nodes are not allowed"));
            }
            tar::EntryType::Fifo => {
                return Err(Error::unsafe_entry(&shown, "FIFOs are not allowed"));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(Error::unsafe_entry(
                    &shown,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        }
        st.record(&comps);
    }
    Ok(())
}

fn chown(path: &Path, uid: Option<u64>, gid: Option<u64>) {
    if nix::unistd::geteuid().is_root() {
        let u = uid
            .and_then(|u| u32::try_from(u).ok())
            .map(nix::unistd::Uid::from_raw);
        let g = gid
            .and_then(|g| u32::try_from(g).ok())
            .map(nix::unistd::Gid::from_raw);
        let _ = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            u,
            g,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
}

fn lchown(path: &Path, uid: Option<u64>, gid: Option<u64>) {
    chown(path, uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        let ok: &[(&str, &[&str])] = &[
            ("a", &["a"]),
            ("./a/b", &["a", "b"]),
            ("a/./b/", &["a", "b"]),
            ("./", &[]),
            (".", &[]),
        ];
        for (raw, want) in ok {
            let got = sanitize_entry_path(raw.as_bytes()).unwrap();
            let want: Vec<OsString> = want.iter().map(OsString::from).collect();
            assert_eq!(got, want, "{raw}");
        }
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "..",
            "/",
            "a\0b",
        ] {
            assert!(
                matches!(
                    sanitize_entry_path(bad.as_bytes()),
                    Err(Error::UnsafeArchiveEntry { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(sanitize_entry_path("a/".repeat(300).as_bytes()).is_err());
        assert!(sanitize_entry_path("a".repeat(5000).as_bytes()).is_err());
    }

    #[test]
    fn symlink_targets() {
        let d = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        let cases = [
            (d(&[]), "etc", true),
            (d(&[]), "../etc", false),
            (d(&["a"]), "../etc", true),
            (d(&["a"]), "../../etc", false),
            (d(&["a", "b"]), "../../x/../y", true),
            (d(&["a"]), "/etc/shadow", true),
            (d(&["a"]), "x/../../../y", false),
        ];
        for (dir, target, ok) in cases {
            assert_eq!(
                symlink_target_stays_inside(&dir, Path::new(target)),
                ok,
                "{dir:?} {target}"
            );
        }
    }

    #[test]
    fn modes() {
        assert_eq!(sanitize_mode(0o4755, false), 0o755);
        assert_eq!(sanitize_mode(0o2755, false), 0o755);
        assert_eq!(sanitize_mode(0o1777, false), 0o777);
        assert_eq!(sanitize_mode(0o1777, true), 0o1777);
        assert_eq!(sanitize_mode(0o6755, true), 0o755);
    }

    #[test]
    fn files_resolve_inside_the_rootfs_only() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/m.wasm"), b"inside").unwrap();
        std::fs::write(base.path().join("host.wasm"), b"host").unwrap();
        // Absolute symlink: means the container's /, so it resolves inside.
        std::os::unix::fs::symlink("/app", root.join("abs")).unwrap();
        // Relative symlink climbing out.
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        // Final component that is a symlink to a host file.
        std::os::unix::fs::symlink(base.path().join("host.wasm"), root.join("app/link.wasm"))
            .unwrap();
        let inside = resolve_file_in_rootfs(&root, "/abs/m.wasm").unwrap();
        assert_eq!(std::fs::read(inside).unwrap(), b"inside");
        assert!(resolve_file_in_rootfs(&root, "app/m.wasm").is_ok());
        assert!(matches!(
            resolve_file_in_rootfs(&root, "/up/host.wasm"),
            Err(Error::UnsafeArchiveEntry { .. })
        ));
        assert!(matches!(
            resolve_file_in_rootfs(&root, "/app/link.wasm"),
            Err(Error::InvalidBundle(_))
        ));
        assert!(resolve_file_in_rootfs(&root, "/app").is_err());
        assert!(resolve_file_in_rootfs(&root, "/").is_err());
        assert!(resolve_file_in_rootfs(&root, "/missing/x").is_err());
    }

    #[test]
    fn compression_magic() {
        assert_eq!(detect_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(detect_compression(b"ustar"), Compression::None);
        assert_eq!(detect_compression(&[]), Compression::None);
    }
}
