//! Controller contracts.
//!
//! Owns: the `contract.yaml` format (name, semver version, JSON-Schema input/output, the
//! capability matrix with its options, resources with defaults and maxima), compiling the
//! schemas once per deploy, validating inputs and outputs against them, and checking a
//! controller package (the folder a user deploys). Also owns [`ErrorCode`], the public error
//! codes every other crate reports.
//!
//! Must never: perform I/O other than reading the package it is asked to check (and running
//! `python3` to parse `controller.py`), or accept a contract with unknown keys.

mod codes;

pub use codes::ErrorCode;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Default execution timeout (seed: 30s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum execution timeout (seed: 300s).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Default CPU share in cores (seed: 0.5).
pub const DEFAULT_CPU: f64 = 0.5;
/// Maximum CPU share in cores (seed: 2.0).
pub const MAX_CPU: f64 = 2.0;
/// Default memory limit in bytes (seed: 256Mi).
pub const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;
/// Maximum memory limit in bytes (seed: 2Gi).
pub const MAX_MEMORY: u64 = 2 * 1024 * 1024 * 1024;
/// Maximum `fs:temp` size in bytes (seed: 100M).
pub const MAX_TEMP_SIZE: u64 = 100 * 1000 * 1000;
/// Smallest CPU share accepted, in cores (10 millicores).
pub const MIN_CPU: f64 = 0.01;
/// Smallest memory limit accepted, in bytes (16Mi: below it Python does not start).
pub const MIN_MEMORY: u64 = 16 * 1024 * 1024;
/// `cache:write` `max_ttl` when the contract does not set it (1h).
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(3600);
/// Largest `cache:write` `max_ttl` accepted (30d).
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest `contract.yaml` accepted, in bytes.
pub const MAX_CONTRACT_BYTES: usize = 1024 * 1024;

/// A parsed, validated contract. Immutable once built.
///
/// Serializes back to the shape of `contract.yaml` (durations as `"10s"`), for APIs that show
/// a contract; the only way to build one from text is [`parse_contract`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Contract {
    /// Controller name, `^[A-Za-z][A-Za-z0-9_]{0,63}$`.
    pub name: String,
    /// Semantic version of this controller version.
    pub version: semver::Version,
    /// JSON Schema (draft 2020-12) of the input.
    pub input: serde_json::Value,
    /// JSON Schema (draft 2020-12) of the output.
    pub output: serde_json::Value,
    /// Declared capabilities, in declaration order. Anything not here is denied.
    pub capabilities: Vec<Capability>,
    /// Resource limits, defaults filled in.
    pub resources: Resources,
}

/// One declared capability with its options (the seed's capability matrix).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Capability {
    /// `db:read: { tables: [...] }`
    #[serde(rename = "db:read")]
    DbRead {
        /// Tables the controller may read.
        tables: Vec<String>,
    },
    /// `db:write: { tables: [...] }`
    #[serde(rename = "db:write")]
    DbWrite {
        /// Tables the controller may insert into, update and delete from.
        tables: Vec<String>,
    },
    /// `db:rawsql` (bare): raw parameterized SQL, subject to policy approval.
    #[serde(rename = "db:rawsql")]
    DbRawSql,
    /// `http:egress: { allow: [...], allow_ips: [...], resolve: {host: [ip]} }`
    #[serde(rename = "http:egress")]
    HttpEgress(EgressGrant),
    /// `secrets:read: { keys: [...] }`
    #[serde(rename = "secrets:read")]
    SecretsRead {
        /// Secret names the controller may read.
        keys: Vec<String>,
    },
    /// `queue:publish: { queues: [...] }`
    #[serde(rename = "queue:publish")]
    QueuePublish {
        /// Queues the controller may publish to.
        queues: Vec<String>,
    },
    /// `queue:subscribe: { queues: [...] }`
    #[serde(rename = "queue:subscribe")]
    QueueSubscribe {
        /// Queues the controller may receive from.
        queues: Vec<String>,
    },
    /// `cache:read: { prefix: "..." }`
    #[serde(rename = "cache:read")]
    CacheRead {
        /// Key prefix the controller may read under.
        prefix: String,
    },
    /// `cache:write: { prefix: "...", max_ttl: 1h }`
    #[serde(rename = "cache:write")]
    CacheWrite {
        /// Key prefix the controller may write under.
        prefix: String,
        /// Largest TTL a write may ask for.
        #[serde(serialize_with = "as_duration_text")]
        max_ttl: Duration,
    },
    /// `fs:temp: { size: 50M }`
    #[serde(rename = "fs:temp")]
    FsTemp {
        /// Size of the private temp filesystem in bytes.
        size: u64,
    },
}

impl Capability {
    /// The name as written in a contract (`"db:read"`), also used in metrics and audit.
    pub fn name(&self) -> &'static str {
        match self {
            Capability::DbRead { .. } => "db:read",
            Capability::DbWrite { .. } => "db:write",
            Capability::DbRawSql => "db:rawsql",
            Capability::HttpEgress(_) => "http:egress",
            Capability::SecretsRead { .. } => "secrets:read",
            Capability::QueuePublish { .. } => "queue:publish",
            Capability::QueueSubscribe { .. } => "queue:subscribe",
            Capability::CacheRead { .. } => "cache:read",
            Capability::CacheWrite { .. } => "cache:write",
            Capability::FsTemp { .. } => "fs:temp",
        }
    }
}

impl Contract {
    /// The declared capability called `name` (`"db:read"`), if any.
    pub fn capability(&self, name: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.name() == name)
    }
}

/// Options of `http:egress`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct EgressGrant {
    /// Allow entries: `host`, `*.host`, optionally `scheme://` prefix and `:port` suffix.
    pub allow: Vec<String>,
    /// Private/reserved addresses or CIDRs explicitly allowed (`allow_ips: ["10.0.0.5", "10.1.0.0/16"]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    /// Static host → addresses mappings used when `EGRESS_RESOLVE_MODE=static` (`resolve:`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
}

/// Resource limits of one execution.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Resources {
    /// Wall-clock timeout; the execution is killed after it.
    #[serde(serialize_with = "as_duration_text")]
    pub timeout: Duration,
    /// CPU share in cores.
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory: u64,
}

fn as_duration_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&units::format_duration(*d))
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            timeout: DEFAULT_TIMEOUT,
            cpu: DEFAULT_CPU,
            memory: DEFAULT_MEMORY,
        }
    }
}

/// One problem found while checking a contract or package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// File the problem is in, relative to the package (`contract.yaml`, `controller.py`).
    pub file: String,
    /// Dotted field path (`resources.timeout`, `capabilities[2].db:read.tables`), or `""`.
    pub field: String,
    /// What is wrong, in words a controller author can act on.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.reason)
        }
    }
}

/// Every problem found in a contract or package (never just the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_problems(.0))]
pub struct ContractErrors(pub Vec<Problem>);

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl ContractErrors {
    /// The error code these problems are reported with (E1004).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::ContractInvalid
    }
}

mod diff;
pub mod egress;
pub mod names;
mod package;
mod parse;
mod pycheck;
mod refs;
pub mod units;

pub use diff::{capability_diff, CapabilityDiff};
pub use package::{
    check_package, check_package_dir, check_package_path, read_package_dir, Package, PackageKind,
    MAX_PACKAGE_BYTES, MAX_PACKAGE_FILES,
};
pub use parse::{
    is_valid_name, parse_contract, CompiledContract, SchemaViolation, CAPABILITY_NAMES,
    MAX_VIOLATIONS,
};
pub use units::{parse_bytes, parse_cpu, parse_duration};

#[cfg(test)]
mod tests {
    use super::*;

    fn shared<T: Send + Sync + 'static>() {}

    #[test]
    fn compiled_contracts_can_be_shared_across_threads() {
        shared::<CompiledContract>();
        shared::<Package>();
        shared::<ContractErrors>();
    }

    #[test]
    fn capability_names_match_the_matrix() {
        let all = [
            Capability::DbRead { tables: vec![] },
            Capability::DbWrite { tables: vec![] },
            Capability::DbRawSql,
            Capability::HttpEgress(EgressGrant::default()),
            Capability::SecretsRead { keys: vec![] },
            Capability::QueuePublish { queues: vec![] },
            Capability::QueueSubscribe { queues: vec![] },
            Capability::CacheRead {
                prefix: String::new(),
            },
            Capability::CacheWrite {
                prefix: String::new(),
                max_ttl: DEFAULT_CACHE_MAX_TTL,
            },
            Capability::FsTemp { size: 0 },
        ];
        let names: Vec<&str> = all.iter().map(Capability::name).collect();
        assert_eq!(names, CAPABILITY_NAMES);
    }

    #[test]
    fn contracts_serialize_in_the_yaml_shape() {
        let yaml = "name: T\nversion: 1.0.0\ninput: { type: object }\noutput: {}\ncapabilities:\n  - db:rawsql\n  - cache:write: { prefix: \"p:\" }\n  - http:egress: { allow: [a.com] }\nresources: { timeout: 1500ms }\n";
        let compiled = parse_contract(yaml).unwrap();
        let json = serde_json::to_value(compiled.contract()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "T",
                "version": "1.0.0",
                "input": {"type": "object"},
                "output": {},
                "capabilities": [
                    "db:rawsql",
                    {"cache:write": {"prefix": "p:", "max_ttl": "1h"}},
                    {"http:egress": {"allow": ["a.com"]}},
                ],
                "resources": {"timeout": "1500ms", "cpu": 0.5, "memory": 268435456},
            })
        );
    }

    #[test]
    fn problems_display_with_and_without_field() {
        let p = |field: &str| Problem {
            file: "contract.yaml".into(),
            field: field.into(),
            reason: "bad".into(),
        };
        assert_eq!(p("").to_string(), "contract.yaml: bad");
        assert_eq!(p("name").to_string(), "contract.yaml: name: bad");
        let all = ContractErrors(vec![p(""), p("name")]);
        assert_eq!(
            all.to_string(),
            "contract.yaml: bad\ncontract.yaml: name: bad"
        );
        assert_eq!(all.code(), ErrorCode::ContractInvalid);
    }
}
