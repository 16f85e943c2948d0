//! Container state: the OCI runtime-spec state document and the lifecycle state machine.
//!
//! Owns: [`ContainerState`] (serialises to the runtime-spec `state` JSON), [`ContainerStatus`],
//! [`LifecycleOp`] and [`transition`], the one pure function every backend asks before acting.
//! Must never: let a backend act on a transition this table refuses, or panic on any input.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::constants::{MAX_CONTAINER_ID_LEN, OCI_VERSION};
use crate::error::{Error, Result};

/// Status of a container as defined by the OCI runtime specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// The container is being created.
    Creating,
    /// Created: the process exists (or is prepared) but has not run the user program.
    Created,
    /// The user program runs.
    Running,
    /// The user program has exited.
    Stopped,
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerStatus::Creating => "creating",
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Stopped => "stopped",
        })
    }
}

/// The runtime-spec `state` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Runtime-spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Lifecycle status.
    pub status: ContainerStatus,
    /// Host PID of the container process while created or running (absent for WASM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
    /// Annotations from the bundle's config (and backend facts such as the exit code).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ContainerState {
    /// A state document for `id` with the crate's OCI version.
    pub fn new(id: &str, status: ContainerStatus, pid: Option<i32>, bundle: PathBuf) -> Self {
        ContainerState {
            oci_version: OCI_VERSION.to_string(),
            id: id.to_string(),
            status,
            pid,
            bundle,
            annotations: BTreeMap::new(),
        }
    }

    /// The state as runtime-spec JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

/// A lifecycle operation (or event) applied to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleOp {
    /// `create`: only for an absent container.
    Create,
    /// `start`: only from `created`.
    Start,
    /// `kill`: from `created` or `running`; the status changes when the process exits.
    Kill,
    /// `delete`: from `created` (the prepared process is killed) or `stopped`.
    Delete,
    /// The container process exited (an event, not a command).
    Exited,
}

impl LifecycleOp {
    fn name(self) -> &'static str {
        match self {
            LifecycleOp::Create => "create",
            LifecycleOp::Start => "start",
            LifecycleOp::Kill => "kill",
            LifecycleOp::Delete => "delete",
            LifecycleOp::Exited => "exit",
        }
    }
}

/// The state machine. `current` is `None` for an absent (never created or deleted) container;
/// the result is the status after `op`, `None` meaning deleted. Illegal transitions are errors.
pub fn transition(
    current: Option<ContainerStatus>,
    op: LifecycleOp,
) -> Result<Option<ContainerStatus>> {
    use ContainerStatus::*;
    use LifecycleOp::*;
    let next = match (current, op) {
        (None, Create) => Some(Created),
        (Some(Creating), Create) => None, // handled as error below
        (Some(Created), Start) => Some(Running),
        (Some(s @ (Created | Running)), Kill) => Some(s),
        (Some(Created | Stopped), Delete) => return Ok(None),
        (Some(Creating | Created | Running), Exited) => Some(Stopped),
        _ => None,
    };
    match next {
        Some(s) => Ok(Some(s)),
        None => Err(match current {
            None => Error::InvalidTransition {
                op: op.name(),
                from: "absent".into(),
            },
            Some(s) => Error::InvalidTransition {
                op: op.name(),
                from: s.to_string(),
            },
        }),
    }
}

/// Checks a container id: 1..=128 characters from `[A-Za-z0-9_.-]`, not starting with `.`
/// or `-`. Ids become directory names, so this is what keeps them from being paths.
pub fn validate_container_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidContainerId {
            id: id.chars().take(MAX_CONTAINER_ID_LEN + 8).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_CONTAINER_ID_LEN {
        return bad("longer than 128 characters");
    }
    if id.starts_with('.') || id.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerStatus::*;
    use LifecycleOp::*;

    #[test]
    fn transition_table() {
        // (from, op, Some(expected next) | None for deleted, ok?)
        type Row = (
            Option<ContainerStatus>,
            LifecycleOp,
            std::result::Result<Option<ContainerStatus>, ()>,
        );
        let table: &[Row] = &[
            (None, Create, Ok(Some(Created))),
            (None, Start, Err(())),
            (None, Kill, Err(())),
            (None, Delete, Err(())),
            (None, Exited, Err(())),
            (Some(Creating), Create, Err(())),
            (Some(Creating), Start, Err(())),
            (Some(Creating), Exited, Ok(Some(Stopped))),
            (Some(Created), Create, Err(())),
            (Some(Created), Start, Ok(Some(Running))),
            (Some(Created), Kill, Ok(Some(Created))),
            (Some(Created), Delete, Ok(None)),
            (Some(Created), Exited, Ok(Some(Stopped))),
            (Some(Running), Create, Err(())),
            (Some(Running), Start, Err(())),
            (Some(Running), Kill, Ok(Some(Running))),
            (Some(Running), Delete, Err(())),
            (Some(Running), Exited, Ok(Some(Stopped))),
            (Some(Stopped), Create, Err(())),
            (Some(Stopped), Start, Err(())),
            (Some(Stopped), Kill, Err(())),
            (Some(Stopped), Delete, Ok(None)),
            (Some(Stopped), Exited, Err(())),
        ];
        for (from, op, want) in table {
            let got = transition(*from, *op);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g, "{from:?} {op:?}"),
                (Err(()), Err(Error::InvalidTransition { .. })) => {}
                (w, g) => panic!("{from:?} {op:?}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn illegal_transition_message_names_state() {
        let err = transition(Some(Stopped), Start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid state transition: cannot start a container that is stopped"
        );
        let err = transition(None, Delete).unwrap_err();
        assert!(err.to_string().contains("absent"));
    }

    #[test]
    fn state_serialises_to_runtime_spec_json() {
        let mut s = ContainerState::new("c1", Running, Some(4242), PathBuf::from("/b"));
        s.annotations.insert("k".into(), "v".into());
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ociVersion": OCI_VERSION, "id": "c1", "status": "running",
                "pid": 4242, "bundle": "/b", "annotations": {"k": "v"}
            })
        );
        let back: ContainerState = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn state_omits_absent_pid_and_empty_annotations() {
        let s = ContainerState::new("w", Stopped, None, PathBuf::from("/m.wasm"));
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert!(v.get("pid").is_none());
        assert!(v.get("annotations").is_none());
        for (st, name) in [
            (Creating, "creating"),
            (Created, "created"),
            (Running, "running"),
            (Stopped, "stopped"),
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), serde_json::json!(name));
            assert_eq!(st.to_string(), name);
        }
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "my-container", "c_1.2", &"x".repeat(128)] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-rf",
            ".hidden",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(
                    validate_container_id(bad),
                    Err(Error::InvalidContainerId { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
