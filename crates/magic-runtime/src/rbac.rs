//! Role-based access control: the roles, the permissions, and the one table that joins them.
//!
//! Owns: which role may do what ([`permits`]) and the per-controller execute scope of a key
//! ([`may_execute`]). Must never: grant a permission that is not written in the table, or let
//! one of the separated duties (deploying, managing secrets, approving raw SQL, managing keys)
//! imply another.
//!
//! | role            | permissions                                              |
//! |-----------------|----------------------------------------------------------|
//! | `admin`         | everything                                               |
//! | `deployer`      | deploy, list, status, export                             |
//! | `secrets-admin` | secrets                                                  |
//! | `operator`      | rollback, status, list, triggers                         |
//! | `auditor`       | audit (verify, tail, export), list, status               |
//! | `executor`      | execute (optionally limited to listed controllers)      |
//! | `approver`      | approve (deploy approvals), list, status                 |
//!
//! Rollback is the operator's, not the deployer's: making an old version active again is an
//! operational act, and keeping it apart means a deployer cannot quietly resurrect a version.
//! Approving a deploy is the approver's (and admin's), never the deployer's: the approvals
//! module also refuses a decision by the identity that asked. `db:rawsql` approvals and API
//! keys are admin-only. Reading the OpenAPI document needs
//! only authentication.

/// A role an identity holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything.
    Admin,
    /// Deploy controllers; list, inspect and export them.
    Deployer,
    /// Manage controllers' secrets only.
    SecretsAdmin,
    /// Roll back, inspect, list, manage queue triggers.
    Operator,
    /// Read and verify the audit log; list and inspect controllers.
    Auditor,
    /// Execute controllers.
    Executor,
    /// Approve or reject pending deploys; list and inspect controllers.
    Approver,
}

/// Every role, in the order of the table above.
pub const ALL_ROLES: [Role; 7] = [
    Role::Admin,
    Role::Deployer,
    Role::SecretsAdmin,
    Role::Operator,
    Role::Auditor,
    Role::Executor,
    Role::Approver,
];

impl Role {
    /// Parse a role name as written in keys, tokens and the CLI.
    pub fn parse(s: &str) -> Option<Role> {
        ALL_ROLES.into_iter().find(|r| r.as_str() == s)
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::SecretsAdmin => "secrets-admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Executor => "executor",
            Role::Approver => "approver",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `POST /api/execute/{controller}`.
    Execute,
    /// Upload a controller version.
    Deploy,
    /// List controllers.
    List,
    /// One controller's versions.
    Status,
    /// Download a version's package.
    Export,
    /// Make another version active.
    Rollback,
    /// Set, delete and list secrets.
    Secrets,
    /// Approve, revoke and list `db:rawsql` approvals.
    RawSql,
    /// Set, remove and list queue triggers.
    Triggers,
    /// Verify and read the audit log.
    AuditRead,
    /// Create, list and revoke API keys.
    Keys,
    /// Read the OpenAPI document.
    OpenApi,
    /// List, approve and reject pending deploys.
    Approve,
}

/// Every permission.
pub const ALL_PERMISSIONS: [Permission; 13] = [
    Permission::Execute,
    Permission::Deploy,
    Permission::List,
    Permission::Status,
    Permission::Export,
    Permission::Rollback,
    Permission::Secrets,
    Permission::RawSql,
    Permission::Triggers,
    Permission::AuditRead,
    Permission::Keys,
    Permission::OpenApi,
    Permission::Approve,
];

/// Whether `role` grants `permission` (the table of the module doc).
pub fn permits(role: Role, permission: Permission) -> bool {
    use Permission as P;
    if permission == P::OpenApi {
        return true;
    }
    match role {
        Role::Admin => true,
        Role::Deployer => matches!(permission, P::Deploy | P::List | P::Status | P::Export),
        Role::SecretsAdmin => permission == P::Secrets,
        Role::Operator => matches!(permission, P::Rollback | P::Status | P::List | P::Triggers),
        Role::Auditor => matches!(permission, P::AuditRead | P::List | P::Status),
        Role::Executor => permission == P::Execute,
        Role::Approver => matches!(permission, P::Approve | P::List | P::Status),
    }
}

/// Whether any of `roles` grants `permission`.
pub fn any_permits(roles: &[Role], permission: Permission) -> bool {
    roles.iter().any(|r| permits(*r, permission))
}

/// Whether an identity with `roles` and execute `scope` (`None` = every controller) may execute
/// `controller`.
pub fn may_execute(roles: &[Role], scope: Option<&[String]>, controller: &str) -> bool {
    any_permits(roles, Permission::Execute)
        && scope.is_none_or(|names| names.iter().any(|n| n == controller))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission as P;

    #[test]
    fn the_table() {
        // (role, the permissions it has; every other one it lacks)
        let table: &[(Role, &[Permission])] = &[
            (Role::Admin, &ALL_PERMISSIONS),
            (
                Role::Deployer,
                &[P::Deploy, P::List, P::Status, P::Export, P::OpenApi],
            ),
            (Role::SecretsAdmin, &[P::Secrets, P::OpenApi]),
            (
                Role::Operator,
                &[P::Rollback, P::Status, P::List, P::Triggers, P::OpenApi],
            ),
            (
                Role::Auditor,
                &[P::AuditRead, P::List, P::Status, P::OpenApi],
            ),
            (Role::Executor, &[P::Execute, P::OpenApi]),
            (
                Role::Approver,
                &[P::Approve, P::List, P::Status, P::OpenApi],
            ),
        ];
        assert_eq!(table.len(), ALL_ROLES.len());
        for (role, granted) in table {
            for p in ALL_PERMISSIONS {
                assert_eq!(permits(*role, p), granted.contains(&p), "{role} {p:?}");
            }
        }
    }

    #[test]
    fn separation_of_duties() {
        for role in ALL_ROLES.into_iter().filter(|r| *r != Role::Admin) {
            assert!(
                !(permits(role, P::Deploy) && permits(role, P::Secrets)),
                "{role} deploys and manages secrets"
            );
            assert!(!permits(role, P::Keys), "{role} manages keys");
            assert!(!permits(role, P::RawSql), "{role} approves raw SQL");
            assert!(
                !(permits(role, P::Deploy) && permits(role, P::Approve)),
                "{role} deploys and approves deploys"
            );
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for r in ALL_ROLES {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for bad in ["", "Admin", "root", "secrets_admin", " admin"] {
            assert_eq!(Role::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn execute_scope() {
        let scope = vec!["A".to_string(), "B".to_string()];
        type Case<'a> = (&'a [Role], Option<&'a [String]>, &'a str, bool);
        let cases: &[Case] = &[
            (&[Role::Executor], None, "A", true),
            (&[Role::Executor], Some(&scope), "A", true),
            (&[Role::Executor], Some(&scope), "C", false),
            (&[Role::Executor], Some(&[]), "A", false),
            (&[Role::Admin], Some(&scope), "C", false),
            (&[Role::Admin], None, "C", true),
            (&[Role::Deployer], None, "A", false),
            (&[], None, "A", false),
            (&[Role::Auditor, Role::Executor], None, "A", true),
        ];
        for (roles, scope, c, want) in cases {
            assert_eq!(
                may_execute(roles, *scope, c),
                *want,
                "{roles:?} {scope:?} {c}"
            );
        }
    }
}
