//! Deploy approvals: a deploy that adds or widens capabilities waits for a second person.
//!
//! Owns: the `deploy_approvals` table (the pending package, its capability diff against the
//! active version, who asked, who decided), deciding when a deploy must wait
//! ([`needs_approval`], pure), and the decisions themselves: approving deploys the stored
//! package through the registry's ordinary deploy path; rejecting closes the request. The
//! public API ([`Approvals::list`], [`Approvals::get`], [`Approvals::decide`]) is shared by the
//! HTTP admin API and the console.
//!
//! Must never: let the identity that asked approve (or reject) its own request, activate a
//! version that is not the one the approver was shown (the digest is fixed at request time),
//! decide a request twice, or decide without the `approve` permission.

use std::collections::BTreeMap;

use magic_contract::{CapabilityDiff, ErrorCode};
use magic_store::{Migration, Store};
use serde::Serialize;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::rbac::Permission;
use crate::Runtime;

/// Migrations of the approvals table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "deploy_approvals",
    sqlite: "CREATE TABLE deploy_approvals (\
               id TEXT PRIMARY KEY, controller TEXT NOT NULL, version TEXT NOT NULL, \
               digest TEXT NOT NULL, files TEXT NOT NULL, diff TEXT NOT NULL, \
               requested_by TEXT NOT NULL, requested_at TEXT NOT NULL, status TEXT NOT NULL, \
               decided_by TEXT, decided_at TEXT, reason TEXT);\
             CREATE UNIQUE INDEX deploy_approvals_one_pending \
               ON deploy_approvals (controller, version) WHERE status = 'pending';",
    postgres: "CREATE TABLE deploy_approvals (\
               id TEXT PRIMARY KEY, controller TEXT NOT NULL, version TEXT NOT NULL, \
               digest TEXT NOT NULL, files TEXT NOT NULL, diff TEXT NOT NULL, \
               requested_by TEXT NOT NULL, requested_at TEXT NOT NULL, status TEXT NOT NULL, \
               decided_by TEXT, decided_at TEXT, reason TEXT);\
             CREATE UNIQUE INDEX deploy_approvals_one_pending \
               ON deploy_approvals (controller, version) WHERE status = 'pending';",
}];

/// When deploys need an approval (`approvals.required_for` in the policy file,
/// `MAGIC_REQUIRE_APPROVAL=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalMode {
    /// Never (the default).
    #[default]
    Off,
    /// When the new version adds or widens capabilities relative to the active one.
    Widening,
    /// Every new version.
    All,
}

impl ApprovalMode {
    /// Parse `none`, `widening` or `all`.
    pub fn parse(s: &str) -> Option<ApprovalMode> {
        match s {
            "none" | "off" => Some(ApprovalMode::Off),
            "widening" => Some(ApprovalMode::Widening),
            "all" => Some(ApprovalMode::All),
            _ => None,
        }
    }
}

/// Whether a deploy with capability diff `diff` must wait for an approval under `mode`.
pub fn needs_approval(mode: ApprovalMode, diff: &CapabilityDiff) -> bool {
    match mode {
        ApprovalMode::Off => false,
        ApprovalMode::Widening => diff.widens(),
        ApprovalMode::All => true,
    }
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deploy and activate the version.
    Approve,
    /// Close the request; nothing is deployed.
    Reject,
}

impl Decision {
    fn status(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
        }
    }
}

/// One approval request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Approval {
    /// ID (`apr_…`).
    pub id: String,
    /// Controller name.
    pub controller: String,
    /// The version waiting.
    pub version: String,
    /// Digest of the package that will be deployed on approval.
    pub digest: String,
    /// Who deployed it (the audit actor).
    pub requested_by: String,
    /// When (RFC 3339).
    pub requested_at: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When (RFC 3339).
    pub decided_at: Option<String>,
    /// The decider's reason.
    pub reason: Option<String>,
    /// What the version adds, widens and removes relative to the version active when it was
    /// requested.
    #[schema(value_type = Object)]
    pub diff: CapabilityDiff,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

const COLUMNS: &str = "id, controller, version, digest, diff, requested_by, requested_at, status, \
                       decided_by, decided_at, reason";

fn from_row(r: Row) -> Approval {
    let (id, controller, version, digest, diff, requested_by, requested_at, status, by, at, why) =
        r;
    Approval {
        id,
        controller,
        version,
        digest,
        // An unreadable stored diff shows as empty; the package digest is what gets deployed.
        diff: serde_json::from_str(&diff).unwrap_or_default(),
        requested_by,
        requested_at,
        status,
        decided_by: by,
        decided_at: at,
        reason: why,
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "approval store failure");
    ApiError::new(
        ErrorCode::BackendUnavailable,
        "the runtime store is unavailable",
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ControllerNotFound,
        format!("no approval request {id:?}"),
    )
}

/// Longest reason kept.
const MAX_REASON: usize = 1000;

/// The approvals table.
pub struct Approvals {
    store: Store,
}

impl Approvals {
    /// Apply migrations.
    pub async fn open(store: Store) -> Result<Approvals, magic_store::StoreError> {
        store.migrate("approvals", MIGRATIONS).await?;
        Ok(Approvals { store })
    }

    /// Every request, newest first; only those with `status` when given
    /// (`pending`, `approved`, `rejected`).
    pub async fn list(&self, status: Option<&str>) -> Result<Vec<Approval>, ApiError> {
        if let Some(s) = status {
            if !matches!(s, "pending" | "approved" | "rejected") {
                return Err(ApiError::new(
                    ErrorCode::InputInvalid,
                    format!("status {s:?} is not one of pending, approved, rejected"),
                ));
            }
        }
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM deploy_approvals WHERE ($1 = '' OR status = $1) \
             ORDER BY requested_at DESC, id"
        ))
        .bind(status.unwrap_or(""))
        .fetch_all(self.store.pool())
        .await
        .map_err(internal)?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// One request (E1001 404 when there is none).
    pub async fn get(&self, id: &str) -> Result<Approval, ApiError> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM deploy_approvals WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(internal)?;
        row.map(from_row).ok_or_else(|| not_found(id))
    }

    /// Store a request for `files` (already checked) unless the same package is already
    /// waiting, in which case that request is returned. Another package waiting under the same
    /// name and version is a conflict (E1005).
    async fn request(
        &self,
        contract: &magic_contract::Contract,
        digest: &str,
        files: &BTreeMap<String, Vec<u8>>,
        diff: &CapabilityDiff,
        actor: &str,
    ) -> Result<(Approval, bool), ApiError> {
        let version = contract.version.to_string();
        let pending: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM deploy_approvals \
             WHERE controller = $1 AND version = $2 AND status = 'pending'"
        ))
        .bind(&contract.name)
        .bind(&version)
        .fetch_optional(self.store.pool())
        .await
        .map_err(internal)?;
        if let Some(row) = pending {
            let existing = from_row(row);
            if existing.digest == digest {
                return Ok((existing, false));
            }
            return Err(ApiError::new(
                ErrorCode::VersionConflict,
                format!(
                    "{} {} is already waiting for approval ({}) with different content; \
                     bump the version or have that request rejected",
                    contract.name, version, existing.id
                ),
            )
            .with_details(serde_json::json!({ "approval_id": existing.id })));
        }
        let approval = Approval {
            id: format!("apr_{}", uuid::Uuid::new_v4().simple()),
            controller: contract.name.clone(),
            version,
            digest: digest.to_string(),
            requested_by: actor.to_string(),
            requested_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            status: "pending".into(),
            decided_by: None,
            decided_at: None,
            reason: None,
            diff: diff.clone(),
        };
        sqlx::query(
            "INSERT INTO deploy_approvals (id, controller, version, digest, files, diff, \
             requested_by, requested_at, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&approval.id)
        .bind(&approval.controller)
        .bind(&approval.version)
        .bind(&approval.digest)
        .bind(crate::registry::encode_files(files))
        .bind(serde_json::to_string(&approval.diff).unwrap_or_default())
        .bind(&approval.requested_by)
        .bind(&approval.requested_at)
        .bind("pending")
        .execute(self.store.pool())
        .await
        .map_err(|e| {
            // Two identical requests racing: the unique index keeps one.
            if matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) {
                ApiError::new(
                    ErrorCode::VersionConflict,
                    format!(
                        "{} {} is already waiting for approval",
                        approval.controller, approval.version
                    ),
                )
            } else {
                internal(e)
            }
        })?;
        Ok((approval, true))
    }

    /// Decide request `id` as `identity`. Approving deploys the stored package through the
    /// registry (as its requester's deploy) and makes it active; the request is approved only
    /// if that succeeds. Refused: without the `approve` permission, by the requester
    /// (E4002 403), or when the request is no longer pending (409).
    pub async fn decide(
        &self,
        rt: &Runtime,
        request_id: &str,
        id: &str,
        decision: Decision,
        identity: &Identity,
        reason: Option<String>,
    ) -> Result<Approval, ApiError> {
        if !identity.may(Permission::Approve) {
            return Err(ApiError::new(
                ErrorCode::NotPermitted,
                format!("{} lacks the Approve permission", identity.name),
            ));
        }
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(ApiError::new(
                ErrorCode::InputInvalid,
                format!("reason is longer than {MAX_REASON} bytes"),
            ));
        }
        let current = self.get(id).await?;
        if current.requested_by == identity.name {
            return Err(ApiError::new(
                ErrorCode::NotPermitted,
                format!(
                    "{} requested this deploy and cannot decide it: a different identity with \
                     the approve permission must {}",
                    identity.name,
                    if decision == Decision::Approve {
                        "approve it"
                    } else {
                        "reject it"
                    }
                ),
            ));
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        // Claim the request: of two concurrent decisions exactly one wins.
        let claimed = sqlx::query(
            "UPDATE deploy_approvals SET status = $1, decided_by = $2, decided_at = $3, \
             reason = $4 WHERE id = $5 AND status = 'pending'",
        )
        .bind(decision.status())
        .bind(&identity.name)
        .bind(&now)
        .bind(&reason)
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(internal)?
        .rows_affected();
        if claimed != 1 {
            return Err(ApiError::new(
                ErrorCode::InputInvalid,
                format!(
                    "approval request {id} is already {} (by {})",
                    current.status,
                    current.decided_by.as_deref().unwrap_or("?")
                ),
            )
            .with_status(409));
        }
        let mut outcome = None;
        if decision == Decision::Approve {
            match self.deploy_approved(rt, id, &current).await {
                Ok(o) => outcome = Some(o),
                Err(e) => {
                    // Put it back: nothing was deployed.
                    let _ = sqlx::query(
                        "UPDATE deploy_approvals SET status = 'pending', decided_by = NULL, \
                         decided_at = NULL, reason = NULL WHERE id = $1",
                    )
                    .bind(id)
                    .execute(self.store.pool())
                    .await;
                    return Err(e);
                }
            }
        }
        let decided = self.get(id).await?;
        let mut event = crate::audit_event(
            match decision {
                Decision::Approve => "approval_approve",
                Decision::Reject => "approval_reject",
            },
            request_id,
            None,
            Some(&identity.name),
        );
        event.controller = Some(decided.controller.clone());
        event.version = Some(decided.version.clone());
        event.target = Some(format!("{}@{}", decided.controller, decided.version));
        event.outcome = Some("ok".into());
        event.details = serde_json::json!({
            "approval_id": decided.id, "requested_by": decided.requested_by,
            "digest": decided.digest, "reason": decided.reason, "diff": decided.diff,
            "previous_version": outcome.as_ref().and_then(|o: &crate::registry::DeployOutcome| o.previous_version.clone()),
        });
        rt.audit(event).await?;
        if let Some(o) = outcome.as_ref().filter(|o| o.result == "deployed") {
            // The same record a direct deploy writes, by the requester, naming the approver.
            let mut event = crate::audit_event(
                "admin_action",
                request_id,
                None,
                Some(&decided.requested_by),
            );
            event.controller = Some(o.name.clone());
            event.version = Some(o.version.clone());
            event.target = Some(format!("{}@{}", o.name, o.version));
            event.outcome = Some("ok".into());
            event.details = serde_json::json!({
                "action": "deploy", "digest": o.digest, "previous_version": o.previous_version,
                "approval_id": decided.id, "approved_by": identity.name,
            });
            rt.audit(event).await?;
        }
        tracing::info!(request_id, event = "approval_decided", approval_id = %decided.id,
            controller = %decided.controller, version = %decided.version,
            status = %decided.status, actor = %identity.name);
        Ok(decided)
    }

    async fn deploy_approved(
        &self,
        rt: &Runtime,
        id: &str,
        approval: &Approval,
    ) -> Result<crate::registry::DeployOutcome, ApiError> {
        let (files,): (String,) =
            sqlx::query_as("SELECT files FROM deploy_approvals WHERE id = $1")
                .bind(id)
                .fetch_one(self.store.pool())
                .await
                .map_err(internal)?;
        let files = crate::registry::decode_files(&files).map_err(internal)?;
        if crate::registry::package_digest(&files) != approval.digest {
            return Err(internal(
                "stored approval package does not match its digest",
            ));
        }
        rt.registry.deploy(files, &approval.requested_by).await
    }
}

/// What the deploy handler does with an upload when approvals are on.
pub enum Gate {
    /// Deploy now (no approval needed, or the version exists already: the registry answers).
    Deploy,
    /// Stored as a pending request (`true` when it was created by this call).
    Pending(Box<Approval>, bool),
}

impl Runtime {
    /// Decide whether `files` may be deployed now or must wait for an approval; store the
    /// request (and audit `approval_request`) in the latter case.
    pub async fn approval_gate(
        &self,
        request_id: &str,
        files: &BTreeMap<String, Vec<u8>>,
        identity: &Identity,
    ) -> Result<Gate, ApiError> {
        let mode = self.config.approvals;
        if mode == ApprovalMode::Off {
            return Ok(Gate::Deploy);
        }
        let owned = files.clone();
        let package = tokio::task::spawn_blocking(move || magic_contract::check_package(owned))
            .await
            .map_err(internal)?
            .map_err(|e| {
                ApiError::new(ErrorCode::ContractInvalid, "the package is invalid")
                    .with_details(serde_json::json!({ "problems": e.0 }))
            })?;
        let contract = package.contract.contract();
        self.registry.check_admissible(contract)?;
        if self
            .registry
            .resolve(&contract.name, Some(&contract.version))
            .is_ok()
        {
            return Ok(Gate::Deploy);
        }
        let active = self.registry.resolve(&contract.name, None).ok();
        let diff =
            magic_contract::capability_diff(active.as_ref().map(|(v, _)| &*v.contract), contract);
        if !needs_approval(mode, &diff) {
            return Ok(Gate::Deploy);
        }
        let digest = crate::registry::package_digest(files);
        let (approval, created) = self
            .approvals
            .request(contract, &digest, files, &diff, &identity.name)
            .await?;
        if created {
            let mut event =
                crate::audit_event("approval_request", request_id, None, Some(&identity.name));
            event.controller = Some(approval.controller.clone());
            event.version = Some(approval.version.clone());
            event.target = Some(format!("{}@{}", approval.controller, approval.version));
            event.outcome = Some("pending".into());
            event.details = serde_json::json!({
                "approval_id": approval.id, "digest": approval.digest, "diff": approval.diff,
                "active_version": active.map(|(v, _)| v.version.to_string()),
            });
            self.audit(event).await?;
            tracing::info!(request_id, event = "approval_requested", approval_id = %approval.id,
                controller = %approval.controller, version = %approval.version, actor = %identity.name);
        }
        Ok(Gate::Pending(Box::new(approval), created))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_when_a_deploy_waits() {
        let none = CapabilityDiff::default();
        let added = CapabilityDiff {
            added: vec!["db:rawsql".into()],
            ..Default::default()
        };
        let widened = CapabilityDiff {
            widened: vec!["resources.timeout 1s -> 2s".into()],
            ..Default::default()
        };
        let removed = CapabilityDiff {
            removed: vec!["db:read a".into()],
            ..Default::default()
        };
        let cases = [
            (ApprovalMode::Off, &added, false),
            (ApprovalMode::Widening, &none, false),
            (ApprovalMode::Widening, &removed, false),
            (ApprovalMode::Widening, &added, true),
            (ApprovalMode::Widening, &widened, true),
            (ApprovalMode::All, &none, true),
            (ApprovalMode::All, &removed, true),
        ];
        for (mode, diff, want) in cases {
            assert_eq!(needs_approval(mode, diff), want, "{mode:?} {diff:?}");
        }
        for (s, m) in [
            ("none", Some(ApprovalMode::Off)),
            ("widening", Some(ApprovalMode::Widening)),
            ("all", Some(ApprovalMode::All)),
            ("", None),
            ("Widening", None),
        ] {
            assert_eq!(ApprovalMode::parse(s), m, "{s}");
        }
    }

    async fn store_round_trip(store: Store) {
        let approvals = Approvals::open(store).await.unwrap();
        let contract = magic_contract::parse_contract(
            "name: T\nversion: 1.0.0\ninput: {}\noutput: {}\ncapabilities: [db:rawsql]\n",
        )
        .unwrap()
        .contract()
        .clone();
        let mut files = BTreeMap::new();
        files.insert("contract.yaml".to_string(), b"x".to_vec());
        let diff = magic_contract::capability_diff(None, &contract);
        let digest = crate::registry::package_digest(&files);
        let (a, created) = approvals
            .request(&contract, &digest, &files, &diff, "apikey:dev")
            .await
            .unwrap();
        assert!(created && a.status == "pending");
        // The same package again: the same request.
        let (b, created) = approvals
            .request(&contract, &digest, &files, &diff, "apikey:dev")
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(a.id, b.id);
        // Other content under the same version: conflict.
        let e = approvals
            .request(&contract, "sha256:other", &files, &diff, "apikey:dev")
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::VersionConflict);
        let got = approvals.get(&a.id).await.unwrap();
        assert_eq!(got.diff.added, vec!["db:rawsql".to_string()]);
        assert_eq!(approvals.list(Some("pending")).await.unwrap().len(), 1);
        assert!(approvals.list(Some("approved")).await.unwrap().is_empty());
        assert_eq!(approvals.list(None).await.unwrap().len(), 1);
        assert!(approvals.list(Some("bogus")).await.is_err());
        assert_eq!(
            approvals.get("apr_nope").await.unwrap_err().code,
            ErrorCode::ControllerNotFound
        );
    }

    #[tokio::test]
    async fn requests_are_stored_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        store_round_trip(Store::open(None, dir.path()).await.unwrap()).await;
    }

    #[tokio::test]
    async fn requests_are_stored_on_postgres() {
        crate::scratch_pg::run("apr_test", |store, _| store_round_trip(store)).await;
    }
}
