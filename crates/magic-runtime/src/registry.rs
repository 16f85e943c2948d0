//! The controller registry.
//!
//! Owns: which controller versions exist, which one of each is active, their immutable
//! packages (in the store, and materialized on disk for workers), hot deploy and rollback.
//! Versions are immutable: the same name and version with different content is refused.
//!
//! Must never: serve a version whose package is not fully on disk, or change an existing
//! version's content.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use magic_contract::{CompiledContract, Contract, ErrorCode, PackageKind};
use magic_store::{Migration, Store};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Migrations of the registry's tables.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "controllers and controller_versions",
    sqlite: "CREATE TABLE controllers (\
               name TEXT PRIMARY KEY, active_version TEXT NOT NULL, \
               updated_at TEXT NOT NULL, updated_by TEXT NOT NULL);\
             CREATE TABLE controller_versions (\
               name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, \
               kind TEXT NOT NULL, contract_yaml TEXT NOT NULL, files TEXT NOT NULL, \
               deployed_at TEXT NOT NULL, deployed_by TEXT NOT NULL, \
               PRIMARY KEY (name, version));",
    postgres: "CREATE TABLE controllers (\
               name TEXT PRIMARY KEY, active_version TEXT NOT NULL, \
               updated_at TEXT NOT NULL, updated_by TEXT NOT NULL);\
             CREATE TABLE controller_versions (\
               name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, \
               kind TEXT NOT NULL, contract_yaml TEXT NOT NULL, files TEXT NOT NULL, \
               deployed_at TEXT NOT NULL, deployed_by TEXT NOT NULL, \
               PRIMARY KEY (name, version));",
}];

/// One deployed, immutable controller version, ready to execute.
#[derive(Debug)]
pub struct DeployedVersion {
    /// Controller name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// `version` as text, formatted once (requests, logs and audit records carry it).
    pub version_text: String,
    /// SHA-256 of the package (`sha256:…`).
    pub digest: String,
    /// Python or WASM.
    pub kind: PackageKind,
    /// The compiled contract.
    pub compiled: CompiledContract,
    /// The contract, shared with the broker.
    pub contract: Arc<Contract>,
    /// Where the package is materialized.
    pub package_dir: PathBuf,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
    /// Who deployed it.
    pub deployed_by: String,
    /// The runtime policy's verdict on this version (`None`: may run). The policy is fixed for
    /// the life of the process and a version never changes, so it is judged once, at the
    /// version's first execution, not on every request.
    pub policy_verdict: std::sync::OnceLock<Option<ApiError>>,
    /// A WASM version's compiled and pre-linked controller, prepared once (at deploy, at
    /// start or at its first execution) and kept as long as the version is.
    pub wasm: std::sync::OnceLock<Arc<magic_wasm::Controller>>,
}

/// A controller: its versions, the active one, and its concurrency limit.
#[derive(Debug, Clone)]
pub struct ControllerEntry {
    /// The version requests go to.
    pub active: Arc<DeployedVersion>,
    /// Every version by semver.
    pub versions: BTreeMap<semver::Version, Arc<DeployedVersion>>,
    /// Executions in flight (shared across versions of the controller).
    pub slots: Arc<Semaphore>,
}

/// A summary row of `magic list`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControllerSummary {
    /// Name.
    pub name: String,
    /// Active version.
    pub active_version: String,
    /// Number of versions.
    pub versions: usize,
    /// Capabilities of the active version (`db:read`, …).
    pub capabilities: Vec<String>,
}

/// One version in `magic status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// Version.
    pub version: String,
    /// Whether requests go to it.
    pub active: bool,
    /// Package digest.
    pub digest: String,
    /// `python` or `wasm`.
    pub kind: String,
    /// When deployed.
    pub deployed_at: String,
    /// By whom.
    pub deployed_by: String,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
    /// CPU cores.
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

/// `magic status NAME`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControllerStatus {
    /// Name.
    pub name: String,
    /// Active version.
    pub active_version: String,
    /// Every version, newest first.
    pub versions: Vec<VersionInfo>,
}

/// What a deploy did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeployOutcome {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Package digest.
    pub digest: String,
    /// `deployed` (new version) or `unchanged` (same content was already deployed).
    pub result: String,
    /// The version that was active before.
    pub previous_version: Option<String>,
}

/// The registry.
pub struct Registry {
    store: Store,
    packages_dir: PathBuf,
    max_concurrent: usize,
    controllers: RwLock<HashMap<String, ControllerEntry>>,
    /// Serializes deploys and rollbacks (reads never wait for it).
    admin: tokio::sync::Mutex<()>,
    /// Store fingerprint at the last [`Registry::sync`].
    synced: std::sync::Mutex<String>,
    /// `CONTROLLER_ALLOWLIST`: the only names that may be deployed, when set.
    allowlist: std::sync::OnceLock<Vec<String>>,
    /// `MAGIC_POLICY_FILE`: rules every deployed contract must keep.
    policy: std::sync::OnceLock<crate::policy::Policy>,
    /// Called with a new version before it takes traffic (process mode: start its zygote).
    warm: std::sync::OnceLock<WarmHook>,
}

/// Prepares a deployed version to serve before it becomes visible (see
/// [`Registry::set_warm_hook`]).
pub type WarmHook = Arc<
    dyn Fn(
            Arc<DeployedVersion>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>
        + Send
        + Sync,
>;

/// Capability names of a contract, in declaration order.
pub fn capability_names(contract: &Contract) -> Vec<String> {
    contract
        .capabilities
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

/// SHA-256 over the package: for each file in path order, its path, NUL, length, NUL, bytes.
pub fn package_digest(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(bytes.len().to_string().as_bytes());
        h.update([0]);
        h.update(bytes);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Parse a version as users write it (`1.2.0` or `v1.2.0`).
pub fn parse_version(s: &str) -> Result<semver::Version, ApiError> {
    let trimmed = s.strip_prefix('v').unwrap_or(s);
    semver::Version::parse(trimmed).map_err(|e| {
        ApiError::new(
            ErrorCode::ControllerNotFound,
            format!("{s:?} is not a semantic version ({e})"),
        )
        .with_status(400)
    })
}

fn kind_str(kind: PackageKind) -> &'static str {
    match kind {
        PackageKind::Python => "python",
        PackageKind::Wasm => "wasm",
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{context}");
    ApiError::new(
        ErrorCode::BackendUnavailable,
        format!("{context}: the runtime store is unavailable"),
    )
}

impl Registry {
    /// Run `hook` on every newly deployed version before it becomes the active one (hot
    /// deploy: the new version's zygote is up before traffic switches). Set once.
    pub fn set_warm_hook(&self, hook: WarmHook) {
        let _ = self.warm.set(hook);
    }

    /// Allow only these controller names to be deployed (`CONTROLLER_ALLOWLIST`). Set once.
    pub fn set_allowlist(&self, names: Vec<String>) {
        let _ = self.allowlist.set(names);
    }

    /// Refuse deploys that break `policy` (`MAGIC_POLICY_FILE`). Set once.
    pub fn set_policy(&self, policy: crate::policy::Policy) {
        let _ = self.policy.set(policy);
    }

    /// E4002 unless `contract` may be deployed: its name is allowed (`CONTROLLER_ALLOWLIST`)
    /// and it keeps every rule of the policy file.
    pub fn check_admissible(&self, contract: &Contract) -> Result<(), ApiError> {
        self.check_allowed(&contract.name)?;
        match self.policy.get() {
            Some(p) => p.check_deploy(contract),
            None => Ok(()),
        }
    }

    /// E4002 unless `name` may be deployed (`CONTROLLER_ALLOWLIST`).
    pub fn check_allowed(&self, name: &str) -> Result<(), ApiError> {
        if let Some(allowed) = self.allowlist.get() {
            if !allowed.iter().any(|n| n == name) {
                return Err(ApiError::new(
                    ErrorCode::NotPermitted,
                    format!(
                        "controller {name} is not in CONTROLLER_ALLOWLIST; this runtime deploys only: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Open the registry: apply migrations and load every version from the store.
    pub async fn open(
        store: Store,
        data_dir: &Path,
        max_concurrent: usize,
    ) -> Result<Registry, ApiError> {
        store
            .migrate("registry", MIGRATIONS)
            .await
            .map_err(|e| internal("registry migrations", e))?;
        let registry = Registry {
            store,
            packages_dir: data_dir.join("packages"),
            max_concurrent,
            controllers: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            synced: std::sync::Mutex::new(String::new()),
            allowlist: std::sync::OnceLock::new(),
            policy: std::sync::OnceLock::new(),
            warm: std::sync::OnceLock::new(),
        };
        registry.reload().await?;
        Ok(registry)
    }

    /// Prepare every active version (compile or load its WASM, start its zygote), as after a
    /// start, so that the first request does not pay for it. A version that fails is logged
    /// and stays servable: it is prepared again at its first execution.
    pub async fn warm_active(&self) {
        let Some(warm) = self.warm.get() else {
            return;
        };
        let active: Vec<Arc<DeployedVersion>> = self
            .controllers
            .read()
            .map(|m| m.values().map(|e| e.active.clone()).collect())
            .unwrap_or_default();
        let (mut ready, total) = (0usize, active.len());
        for version in active {
            match warm(version.clone()).await {
                Ok(()) => ready += 1,
                Err(e) => tracing::warn!(
                    controller = %version.name, version = %version.version, error = %e.message,
                    "active version could not be prepared at start; it will be at its first execution"
                ),
            }
        }
        tracing::info!(
            event = "versions_warmed",
            ready,
            total,
            "active versions prepared"
        );
    }

    /// Re-read every controller and version from the store. Versions already loaded (same
    /// name, version and digest) are reused as they are; new ones are loaded from their stored
    /// package. Active versions that changed are warmed (their zygote started) before traffic
    /// switches to them.
    pub async fn reload(&self) -> Result<(), ApiError> {
        let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT name, version, digest, deployed_at, deployed_by FROM controller_versions",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| internal("loading controller versions", e))?;
        let active: Vec<(String, String)> =
            sqlx::query_as("SELECT name, active_version FROM controllers")
                .fetch_all(self.store.pool())
                .await
                .map_err(|e| internal("loading controllers", e))?;
        let active: HashMap<String, String> = active.into_iter().collect();
        let old = self
            .controllers
            .read()
            .map(|m| m.clone())
            .unwrap_or_default();

        let mut versions: HashMap<String, BTreeMap<semver::Version, Arc<DeployedVersion>>> =
            HashMap::new();
        for (name, version, digest, deployed_at, deployed_by) in rows {
            let known = semver::Version::parse(&version).ok().and_then(|v| {
                old.get(&name)
                    .and_then(|e| e.versions.get(&v))
                    .filter(|d| d.digest == digest)
                    .cloned()
            });
            let loaded = match known {
                Some(d) => d,
                None => match self
                    .load_stored(&name, &version, &digest, deployed_at, deployed_by)
                    .await
                {
                    Ok(d) => Arc::new(d),
                    Err(e) => {
                        tracing::error!(controller = %name, version = %version, error = %e, "stored version failed to load; skipped");
                        continue;
                    }
                },
            };
            versions
                .entry(name)
                .or_default()
                .insert(loaded.version.clone(), loaded);
        }
        let mut map = HashMap::new();
        for (name, versions) in versions {
            let Some(active_version) = active
                .get(&name)
                .and_then(|v| semver::Version::parse(v).ok())
                .and_then(|v| versions.get(&v).cloned())
            else {
                continue;
            };
            let previous = old.get(&name);
            if previous.is_none_or(|e| !Arc::ptr_eq(&e.active, &active_version)) {
                if let Some(warm) = self.warm.get() {
                    if let Err(e) = warm(active_version.clone()).await {
                        tracing::error!(controller = %name, error = %e.message, "version could not be prepared");
                    }
                }
            }
            // A version another node just stored and is about to activate (the newest one,
            // new to this node, not active yet): warm it now so the switch is instant.
            if let (Some(prev), Some(warm), Some((_, newest))) =
                (previous, self.warm.get(), versions.iter().next_back())
            {
                if !Arc::ptr_eq(newest, &active_version)
                    && !prev.versions.contains_key(&newest.version)
                {
                    if let Err(e) = warm(newest.clone()).await {
                        tracing::warn!(controller = %name, version = %newest.version, error = %e.message, "stored version could not be prepared ahead of activation");
                    }
                }
            }
            let slots = previous
                .map(|e| e.slots.clone())
                .unwrap_or_else(|| Arc::new(Semaphore::new(self.max_concurrent)));
            map.insert(
                name,
                ControllerEntry {
                    active: active_version,
                    versions,
                    slots,
                },
            );
        }
        if let Ok(mut guard) = self.controllers.write() {
            *guard = map;
        }
        Ok(())
    }

    async fn load_stored(
        &self,
        name: &str,
        version: &str,
        digest: &str,
        deployed_at: String,
        deployed_by: String,
    ) -> Result<DeployedVersion, ApiError> {
        let (files,): (String,) = sqlx::query_as(
            "SELECT files FROM controller_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version)
        .fetch_one(self.store.pool())
        .await
        .map_err(|e| internal("loading a stored package", e))?;
        let files = decode_files(&files).map_err(|e| internal("decoding a stored package", e))?;
        self.load_version(&files, digest, deployed_at, deployed_by)
    }

    /// A fingerprint of what the store says is deployed and active (cheap to poll).
    async fn store_fingerprint(&self) -> Result<String, ApiError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT name, active_version, updated_at FROM controllers ORDER BY name",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| internal("reading controllers", e))?;
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM controller_versions")
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| internal("counting controller versions", e))?;
        let mut h = Sha256::new();
        for (name, version, at) in rows {
            for part in [name, version, at] {
                h.update(part.as_bytes());
                h.update([0]);
            }
        }
        h.update(count.to_be_bytes());
        Ok(hex::encode(h.finalize()))
    }

    /// Pick up deploys and rollbacks made by other runtime nodes sharing the store. Returns
    /// true when the registry changed.
    pub async fn sync(&self) -> Result<bool, ApiError> {
        let fingerprint = self.store_fingerprint().await?;
        let seen = self.synced.lock().map(|s| s.clone()).unwrap_or_default();
        if seen == fingerprint {
            return Ok(false);
        }
        let _admin = self.admin.lock().await;
        self.reload().await?;
        if let Ok(mut s) = self.synced.lock() {
            *s = fingerprint;
        }
        Ok(!seen.is_empty())
    }

    /// Parse a stored package (already checked at deploy) and make sure it is on disk.
    fn load_version(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        digest: &str,
        deployed_at: String,
        deployed_by: String,
    ) -> Result<DeployedVersion, ApiError> {
        let contract_yaml = files
            .get("contract.yaml")
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| {
                ApiError::new(ErrorCode::ContractInvalid, "package has no contract.yaml")
            })?;
        let compiled = magic_contract::parse_contract(contract_yaml)
            .map_err(|e| ApiError::new(ErrorCode::ContractInvalid, e.to_string()))?;
        let kind = if files.contains_key("controller.wasm") {
            PackageKind::Wasm
        } else {
            PackageKind::Python
        };
        let contract = Arc::new(compiled.contract().clone());
        let package_dir = self.materialize(&contract.name, &contract.version, digest, files)?;
        Ok(DeployedVersion {
            name: contract.name.clone(),
            version: contract.version.clone(),
            version_text: contract.version.to_string(),
            digest: digest.to_string(),
            kind,
            compiled,
            contract,
            package_dir,
            deployed_at,
            deployed_by,
            policy_verdict: std::sync::OnceLock::new(),
            wasm: std::sync::OnceLock::new(),
        })
    }

    /// Write the package to `packages/NAME/VERSION-DIGEST/` (atomically: temp dir + rename).
    fn materialize(
        &self,
        name: &str,
        version: &semver::Version,
        digest: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<PathBuf, ApiError> {
        let short = digest
            .trim_start_matches("sha256:")
            .get(..16)
            .unwrap_or("x");
        let dir = self
            .packages_dir
            .join(name)
            .join(format!("{version}-{short}"));
        if dir.join(".complete").exists() {
            return Ok(dir);
        }
        let io = |e: std::io::Error| internal("writing the package to the data dir", e);
        let parent = self.packages_dir.join(name);
        std::fs::create_dir_all(&parent).map_err(io)?;
        let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        for (rel, bytes) in files {
            // Paths were checked by `check_package`; join component by component anyway.
            let mut path = tmp.clone();
            for part in rel.split('/') {
                if part.is_empty() || part == "." || part == ".." {
                    return Err(ApiError::new(
                        ErrorCode::ContractInvalid,
                        format!("package path {rel:?} is not allowed"),
                    ));
                }
                path.push(part);
            }
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(io)?;
            }
            std::fs::write(&path, bytes).map_err(io)?;
        }
        std::fs::write(tmp.join(".complete"), digest).map_err(io)?;
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            Err(_) if dir.join(".complete").exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(io(e))
            }
        }
    }

    /// The active version of `name`, or the given version.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&semver::Version>,
    ) -> Result<(Arc<DeployedVersion>, Arc<Semaphore>), ApiError> {
        let guard = self
            .controllers
            .read()
            .map_err(|_| ApiError::new(ErrorCode::SandboxUnavailable, "registry unavailable"))?;
        let entry = guard.get(name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ControllerNotFound,
                format!("controller {name:?} is not deployed"),
            )
        })?;
        let v = match version {
            None => entry.active.clone(),
            Some(v) => entry.versions.get(v).cloned().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ControllerNotFound,
                    format!("controller {name:?} has no version {v}"),
                )
                .with_details(serde_json::json!({
                    "versions": entry.versions.keys().map(|v| v.to_string()).collect::<Vec<_>>()
                }))
            })?,
        };
        Ok((v, entry.slots.clone()))
    }

    /// Every controller.
    pub fn list(&self) -> Vec<ControllerSummary> {
        let guard = match self.controllers.read() {
            Ok(g) => g,
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<_> = guard
            .iter()
            .map(|(name, e)| ControllerSummary {
                name: name.clone(),
                active_version: e.active.version.to_string(),
                versions: e.versions.len(),
                capabilities: capability_names(&e.active.contract),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Every version of `name`.
    pub fn status(&self, name: &str) -> Result<ControllerStatus, ApiError> {
        let guard = self
            .controllers
            .read()
            .map_err(|_| ApiError::new(ErrorCode::SandboxUnavailable, "registry unavailable"))?;
        let entry = guard.get(name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ControllerNotFound,
                format!("controller {name:?} is not deployed"),
            )
        })?;
        let versions = entry
            .versions
            .values()
            .rev()
            .map(|v| VersionInfo {
                version: v.version.to_string(),
                active: v.version == entry.active.version,
                digest: v.digest.clone(),
                kind: kind_str(v.kind).into(),
                deployed_at: v.deployed_at.clone(),
                deployed_by: v.deployed_by.clone(),
                capabilities: capability_names(&v.contract),
                timeout_ms: v.contract.resources.timeout.as_millis() as u64,
                cpu: v.contract.resources.cpu,
                memory_bytes: v.contract.resources.memory,
            })
            .collect();
        Ok(ControllerStatus {
            name: name.to_string(),
            active_version: entry.active.version.to_string(),
            versions,
        })
    }

    /// Deploy a package: check it, store it, materialize it, then switch traffic to it.
    /// The same name + version with identical content is a no-op; with different content it
    /// is refused (versions are immutable).
    pub async fn deploy(
        &self,
        files: BTreeMap<String, Vec<u8>>,
        actor: &str,
    ) -> Result<DeployOutcome, ApiError> {
        let digest = package_digest(&files);
        let stored = encode_files(&files);
        let package = tokio::task::spawn_blocking(move || magic_contract::check_package(files))
            .await
            .map_err(|e| internal("checking the package", e))?
            .map_err(|e| {
                ApiError::new(ErrorCode::ContractInvalid, "the package is invalid")
                    .with_details(serde_json::json!({ "problems": e.0 }))
            })?;
        let contract = package.contract.contract().clone();
        self.check_admissible(&contract)?;
        let _admin = self.admin.lock().await;

        let existing: Option<(String,)> = sqlx::query_as(
            "SELECT digest FROM controller_versions WHERE name = $1 AND version = $2",
        )
        .bind(&contract.name)
        .bind(contract.version.to_string())
        .fetch_optional(self.store.pool())
        .await
        .map_err(|e| internal("reading controller versions", e))?;
        let previous = self
            .controllers
            .read()
            .ok()
            .and_then(|g| g.get(&contract.name).map(|e| e.active.version.to_string()));
        let stored_already = existing.is_some();
        if let Some((existing_digest,)) = existing {
            if existing_digest != digest {
                return Err(ApiError::new(
                    ErrorCode::VersionConflict,
                    format!(
                        "{} {} is already deployed with different content; versions are \
                         immutable: bump the version in contract.yaml",
                        contract.name, contract.version
                    ),
                )
                .with_details(serde_json::json!({
                    "deployed_digest": existing_digest, "new_digest": digest
                })));
            }
            // Stored but never activated (a deploy interrupted between its two steps, below):
            // finish it; otherwise there is nothing to do.
            if previous.is_some() {
                return Ok(DeployOutcome {
                    name: contract.name,
                    version: contract.version.to_string(),
                    digest,
                    result: "unchanged".into(),
                    previous_version: previous,
                });
            }
        }

        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        // Ready before visible: the package is on disk before any request can pick it.
        let loaded =
            Arc::new(self.load_version(&package.files, &digest, now.clone(), actor.into())?);

        // Two steps, so that every node warms the new version at the same time: first the
        // version is stored (not active yet) and the other nodes are told; they load it and
        // start its zygote while this node starts its own; then traffic switches everywhere.
        // A WASM binary that does not fit the world is refused before anything is stored
        // (compiling it is what tells); Python versions warm on every node at once.
        let wasm = loaded.kind == PackageKind::Wasm;
        if let (true, Some(warm)) = (wasm, self.warm.get()) {
            warm(loaded.clone()).await?;
        }
        if !stored_already {
            self.store_version(&contract, &package, &digest, &stored, &now, actor)
                .await?;
        }
        if let (false, Some(warm)) = (wasm, self.warm.get()) {
            warm(loaded.clone()).await?;
        }
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(|e| internal("deploy", e))?;
        upsert_active(
            &mut tx,
            &contract.name,
            &contract.version.to_string(),
            &now,
            actor,
        )
        .await?;
        notify_nodes(&mut tx, self.store.dialect()).await?;
        tx.commit().await.map_err(|e| internal("deploy", e))?;
        if let Ok(mut guard) = self.controllers.write() {
            match guard.get_mut(&contract.name) {
                Some(entry) => {
                    entry
                        .versions
                        .insert(loaded.version.clone(), loaded.clone());
                    entry.active = loaded;
                }
                None => {
                    let mut versions = BTreeMap::new();
                    versions.insert(loaded.version.clone(), loaded.clone());
                    guard.insert(
                        contract.name.clone(),
                        ControllerEntry {
                            active: loaded,
                            versions,
                            slots: Arc::new(Semaphore::new(self.max_concurrent)),
                        },
                    );
                }
            }
        }
        Ok(DeployOutcome {
            name: contract.name,
            version: contract.version.to_string(),
            digest,
            result: "deployed".into(),
            previous_version: previous,
        })
    }

    /// Step one of a deploy: store the version (not active) and tell the other nodes.
    async fn store_version(
        &self,
        contract: &Contract,
        package: &magic_contract::Package,
        digest: &str,
        stored: &str,
        now: &str,
        actor: &str,
    ) -> Result<(), ApiError> {
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(|e| internal("deploy", e))?;
        sqlx::query(
            "INSERT INTO controller_versions \
             (name, version, digest, kind, contract_yaml, files, deployed_at, deployed_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&contract.name)
        .bind(contract.version.to_string())
        .bind(digest)
        .bind(kind_str(package.kind))
        .bind(
            std::str::from_utf8(
                package
                    .files
                    .get("contract.yaml")
                    .map(|v| v.as_slice())
                    .unwrap_or_default(),
            )
            .unwrap_or_default(),
        )
        .bind(stored)
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(|e| internal("deploy", e))?;
        notify_nodes(&mut tx, self.store.dialect()).await?;
        tx.commit().await.map_err(|e| internal("deploy", e))?;
        Ok(())
    }

    /// Make `version` the active version of `name`.
    pub async fn rollback(
        &self,
        name: &str,
        version: &semver::Version,
        actor: &str,
    ) -> Result<(String, String), ApiError> {
        let _admin = self.admin.lock().await;
        let (target, _) = self.resolve(name, Some(version))?;
        let (current, _) = self.resolve(name, None)?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(|e| internal("rollback", e))?;
        upsert_active(&mut tx, name, &version.to_string(), &now, actor).await?;
        notify_nodes(&mut tx, self.store.dialect()).await?;
        tx.commit().await.map_err(|e| internal("rollback", e))?;
        if let Ok(mut guard) = self.controllers.write() {
            if let Some(entry) = guard.get_mut(name) {
                entry.active = target;
            }
        }
        Ok((current.version.to_string(), version.to_string()))
    }

    /// The stored files of one version (for export).
    pub async fn package_files(
        &self,
        name: &str,
        version: &semver::Version,
    ) -> Result<BTreeMap<String, Vec<u8>>, ApiError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT files FROM controller_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version.to_string())
        .fetch_optional(self.store.pool())
        .await
        .map_err(|e| internal("reading a package", e))?;
        let (files,) = row.ok_or_else(|| {
            ApiError::new(
                ErrorCode::ControllerNotFound,
                format!("controller {name:?} has no version {version}"),
            )
        })?;
        decode_files(&files).map_err(|e| internal("decoding a stored package", e))
    }
}

/// PostgreSQL channel on which a deploy or rollback tells the other nodes to sync.
pub const NOTIFY_CHANNEL: &str = "magic_registry";

/// On PostgreSQL, `NOTIFY` the other nodes (delivered when `tx` commits, so they read the
/// committed change). SQLite has no notifications: nodes poll (`MAGIC_REGISTRY_SYNC_MS`).
async fn notify_nodes(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dialect: magic_store::Dialect,
) -> Result<(), ApiError> {
    if dialect == magic_store::Dialect::Postgres {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut **tx)
            .await
            .map_err(|e| internal("notifying the other nodes", e))?;
    }
    Ok(())
}

async fn upsert_active(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    version: &str,
    now: &str,
    actor: &str,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO controllers (name, active_version, updated_at, updated_by) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, \
           updated_at = excluded.updated_at, updated_by = excluded.updated_by",
    )
    .bind(name)
    .bind(version)
    .bind(now)
    .bind(actor)
    .execute(&mut **tx)
    .await
    .map_err(|e| internal("switching the active version", e))?;
    Ok(())
}

/// Files as stored: a JSON object of path → base64.
pub fn encode_files(files: &BTreeMap<String, Vec<u8>>) -> String {
    let map: BTreeMap<&str, String> = files
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

/// Inverse of [`encode_files`].
pub fn decode_files(s: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let map: BTreeMap<String, String> = serde_json::from_str(s).map_err(|e| e.to_string())?;
    map.into_iter()
        .map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(|b| (k.clone(), b))
                .map_err(|e| format!("{k}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: &str) -> BTreeMap<String, Vec<u8>> {
        let contract = format!(
            "name: Hello\nversion: {version}\ninput:\n  type: object\noutput:\n  type: object\n"
        );
        let code = "from magic import Controller, contract\n\n\n@contract(\"./contract.yaml\")\n\
                    class Hello(Controller):\n    async def execute(self, input):\n        return {}\n";
        BTreeMap::from([
            ("contract.yaml".to_string(), contract.into_bytes()),
            ("controller.py".to_string(), code.as_bytes().to_vec()),
        ])
    }

    #[tokio::test]
    async fn a_deploy_interrupted_between_its_steps_is_finished_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_memory().await.unwrap();
        let registry = Registry::open(store.clone(), dir.path(), 2).await.unwrap();
        let first = registry.deploy(hello("1.0.0"), "t").await.unwrap();
        assert_eq!(first.result, "deployed");
        assert_eq!(
            registry.deploy(hello("1.0.0"), "t").await.unwrap().result,
            "unchanged"
        );
        // As if the node died after step one: the version is stored, never activated.
        sqlx::query("DELETE FROM controllers")
            .execute(store.pool())
            .await
            .unwrap();
        registry.reload().await.unwrap();
        assert!(registry.resolve("Hello", None).is_err());
        let again = registry.deploy(hello("1.0.0"), "t").await.unwrap();
        assert_eq!(again.result, "deployed");
        assert!(registry.resolve("Hello", None).is_ok());
    }

    #[test]
    fn digest_depends_on_paths_and_content() {
        let mut a = BTreeMap::new();
        a.insert("a".to_string(), b"xy".to_vec());
        let mut b = BTreeMap::new();
        b.insert("a".to_string(), b"xz".to_vec());
        let mut c = BTreeMap::new();
        c.insert("b".to_string(), b"xy".to_vec());
        // Moving bytes between a path and its content must change the digest.
        let mut d = BTreeMap::new();
        d.insert("ax".to_string(), b"y".to_vec());
        let digests = [&a, &b, &c, &d].map(package_digest);
        for i in 0..digests.len() {
            for j in i + 1..digests.len() {
                assert_ne!(digests[i], digests[j]);
            }
        }
        assert_eq!(package_digest(&a), package_digest(&a.clone()));
    }

    #[test]
    fn files_round_trip_through_storage_encoding() {
        let mut files = BTreeMap::new();
        files.insert("contract.yaml".to_string(), b"name: X".to_vec());
        files.insert("lib/data.bin".to_string(), vec![0, 255, 10]);
        assert_eq!(decode_files(&encode_files(&files)).unwrap(), files);
        assert!(decode_files("not json").is_err());
        assert!(decode_files(r#"{"a":"***"}"#).is_err());
    }

    #[test]
    fn versions_parse_with_or_without_v() {
        assert_eq!(
            parse_version("v1.0.0").unwrap(),
            semver::Version::new(1, 0, 0)
        );
        assert_eq!(
            parse_version("2.1.3").unwrap(),
            semver::Version::new(2, 1, 3)
        );
        assert!(parse_version("1.0").is_err());
        assert!(parse_version("latest").is_err());
    }
}
