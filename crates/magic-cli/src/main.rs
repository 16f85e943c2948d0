//! `magic`: the Magic Runtime command line.
//!
//! `serve` runs the runtime; `validate` and `init` work offline; every other command talks to
//! a running server (`MAGIC_URL`, `MAGIC_API_KEY`). Every failure ends with a one-line reason
//! on stderr and a non-zero exit: 1 for a failed operation, 2 for a usage error.

mod client;
mod scaffold;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};
use magic_runtime::config::{ExecutionMode, ServeConfig, DEFAULT_LISTEN};

use crate::client::Client;

/// Magic Runtime: run contract-bound controllers in sandboxes, with every outside access
/// brokered and audited.
#[derive(Debug, Parser)]
#[command(name = "magic", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a client command finds the server.
#[derive(Debug, clap::Args)]
struct Remote {
    /// Runtime URL.
    #[arg(
        long,
        env = "MAGIC_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key (default: the key the local server generated in `MAGIC_DATA_DIR/admin.key`).
    #[arg(long, env = "MAGIC_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Data dir of a local server, to find its generated admin key.
    #[arg(
        long,
        env = "MAGIC_DATA_DIR",
        default_value = "./.magic",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the runtime (HTTP API, metrics) on embedded defaults unless configured otherwise.
    Serve(ServeArgs),
    /// Check a controller folder offline: exit 0 valid, 1 invalid (every problem listed).
    Validate {
        /// The controller folder (contract.yaml + controller.py).
        dir: PathBuf,
    },
    /// Print which isolation layers (namespaces, seccomp, cgroups, …) this host provides to
    /// process mode; exit 1 when a required one is missing. With `--production`, also check
    /// the production hardening checklist against the environment (docs/hardening.md); exit 1
    /// listing every item that fails.
    Doctor {
        /// Check the production hardening checklist too.
        #[arg(long)]
        production: bool,
        /// Data dir (to find a generated master key).
        #[arg(long, env = "MAGIC_DATA_DIR", default_value = "./.magic")]
        data_dir: PathBuf,
    },
    /// Create a controller folder that validates and deploys as it is.
    Init {
        /// Controller name (`^[A-Za-z][A-Za-z0-9_]{0,63}$`).
        name: String,
        /// Folder to create (default: the name in snake_case).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Upload a controller folder and make it the active version once it is ready.
    Deploy {
        /// The controller folder.
        dir: PathBuf,
        /// Also execute the controller once per message of this queue (see `magic trigger`).
        #[arg(long)]
        trigger_queue: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List deployed controllers.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every version of a controller and which one is active.
    Status {
        /// Controller name.
        name: String,
        #[command(flatten)]
        remote: Remote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version active.
    Rollback {
        /// Controller name.
        name: String,
        /// Version to make active (`1.0.0` or `v1.0.0`).
        #[arg(long = "to")]
        to: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write deployed controllers to a folder (OUTPUT/NAME/VERSION/...).
    Export {
        /// Export every version of every controller.
        #[arg(long)]
        all: bool,
        /// Export only this controller (every version).
        name: Option<String>,
        /// Folder to write to.
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deploy an exported tree (`magic export --all --output DIR`) back: every version, oldest
    /// first, then the exported active version made active again.
    Import {
        /// The exported folder (DIR/NAME/VERSION/, DIR/NAME/ACTIVE).
        dir: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Apply every database migration `magic serve` applies at start, then exit (prepare a
    /// production database before the nodes start; `scripts/init_db.sh` runs it).
    Migrate {
        /// Data dir (the SQLite store lives here when no DATABASE_URL is given).
        #[arg(long, env = "MAGIC_DATA_DIR", default_value = "./.magic")]
        data_dir: PathBuf,
        /// Runtime store (postgres://… in production).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Online backup of the SQLite databases of a data dir (the runtime store `magic.db` and
    /// the controllers' `app.db`) into a new folder, safe while the server runs. PostgreSQL is
    /// backed up with pg_dump (`scripts/backup_db.sh`).
    Backup {
        /// Data dir holding the databases.
        #[arg(long, env = "MAGIC_DATA_DIR", default_value = "./.magic")]
        data_dir: PathBuf,
        /// Folder to write the copies to (created; files in it are never overwritten).
        #[arg(long)]
        output: PathBuf,
    },
    /// Manage controllers' secrets (values are write-only).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve or revoke `db:rawsql` for a controller (the production policy denies it by default).
    Rawsql {
        #[command(subcommand)]
        command: RawsqlCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Execute a controller once per message of a queue (at-least-once, retried, dead-lettered).
    Trigger {
        #[command(subcommand)]
        command: TriggerCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create, list and revoke API keys (admin only).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// List, show, approve and reject deploys waiting for approval.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Verify, tail or export the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Execute a controller and print the response.
    Execute {
        /// Controller name.
        name: String,
        /// Input JSON, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Run this version instead of the active one.
        #[arg(long)]
        version: Option<String>,
        /// Request ID to send as X-Request-ID.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Set a secret; the value comes from --value or, without it, from stdin.
    Set {
        /// Controller the secret belongs to.
        controller: String,
        /// Secret name (as listed in the contract's secrets:read keys).
        name: String,
        /// The value (prefer stdin: command lines end up in shell history).
        #[arg(long)]
        value: Option<String>,
    },
    /// List secret names (never values).
    List {
        /// Only this controller's.
        controller: Option<String>,
    },
    /// Delete a secret.
    Delete {
        /// Controller.
        controller: String,
        /// Secret name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it (this is the only time it is shown).
    Create {
        /// Role: admin, deployer, secrets-admin, operator, auditor, executor or approver.
        #[arg(long)]
        role: String,
        /// Name (the audit actor is apikey:NAME).
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 30d or 12h (default: no expiry).
        #[arg(long)]
        expires_in: Option<String>,
        /// Only these controllers may be executed with the key (comma-separated).
        #[arg(long, value_delimiter = ',')]
        controllers: Option<Vec<String>>,
    },
    /// List keys (never the keys themselves).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by ID or name.
    Revoke {
        /// Key ID or name.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// List pending requests (--all: decided ones too).
    List {
        /// Also list approved and rejected requests.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one request with its capability diff.
    Show {
        /// Approval ID.
        id: String,
    },
    /// Approve: the version is deployed and becomes active.
    Approve {
        /// Approval ID.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject: nothing is deployed.
    Reject {
        /// Approval ID.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TriggerCommand {
    /// Make CONTROLLER consume QUEUE (its contract must declare queue:subscribe for it).
    Set {
        /// Controller name.
        controller: String,
        /// Queue name.
        #[arg(long)]
        queue: String,
    },
    /// Stop CONTROLLER consuming its queue.
    Remove {
        /// Controller name.
        controller: String,
    },
    /// List triggers.
    List,
}

#[derive(Debug, Subcommand)]
enum RawsqlCommand {
    /// Approve db:rawsql for every version of a controller.
    Approve {
        /// Controller name.
        controller: String,
    },
    /// Withdraw the approval.
    Revoke {
        /// Controller name.
        controller: String,
    },
    /// List standing approvals.
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and its signed checkpoints: exit 0 intact, 1 with the first bad
    /// record named.
    Verify {
        /// Print the verification report as JSON (head seq and hash, records checked).
        #[arg(long)]
        json: bool,
    },
    /// Print the newest records as JSON lines.
    Tail {
        /// How many records.
        #[arg(long, default_value_t = 20)]
        last: u64,
    },
    /// Print records FROM..=TO as JSON lines (each end a seq or an RFC 3339 time).
    Export {
        /// First record: seq or time (default: the first).
        #[arg(long)]
        from: Option<String>,
        /// Last record: seq or time (default: the newest).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MAGIC_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Data dir: SQLite state, packages, generated keys.
    #[arg(long, env = "MAGIC_DATA_DIR", default_value = "./.magic")]
    data_dir: PathBuf,
    /// Runtime store (default: SQLite in the data dir; postgres://… in production).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Redis for cache and queue (default: in-process cache, SQLite queue).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Executions in flight per controller.
    #[arg(long, env = "CONTROLLER_MAX_CONCURRENT", default_value_t = magic_runtime::config::DEFAULT_MAX_CONCURRENT)]
    max_concurrent: usize,
    /// WASM instances alive at once across all controllers (pooled slots); beyond it E3004.
    #[arg(long, env = "MAGIC_WASM_MAX_INSTANCES", default_value_t = magic_runtime::wasm::DEFAULT_MAX_INSTANCES)]
    wasm_max_instances: u32,
    /// Isolation mode: `process` (sandboxed, the default) or `inline` (development only, not
    /// isolated).
    #[arg(long, env = "CONTROLLER_EXECUTION_MODE", default_value = "process")]
    execution_mode: String,
    /// Start process mode even where an isolation layer is missing (loud warning).
    #[arg(long, env = "MAGIC_ALLOW_DEGRADED_ISOLATION", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    allow_degraded_isolation: bool,
    /// Largest execute request body in bytes.
    #[arg(long, env = "MAGIC_MAX_BODY_BYTES", default_value_t = magic_runtime::config::DEFAULT_MAX_BODY)]
    max_body_bytes: usize,
    /// How often (ms) to pick up deploys and rollbacks made by other nodes on the same store.
    #[arg(long, env = "MAGIC_REGISTRY_SYNC_MS", default_value_t = 500)]
    registry_sync_ms: u64,
    /// Lifetime of a cross-node execution slot lease in ms (with REDIS_URL); renewed while
    /// the execution runs, so a dead node's slots come back after it.
    #[arg(long, env = "MAGIC_SLOT_LEASE_MS", default_value_t = 10_000)]
    slot_lease_ms: u64,
    /// This node's name in the X-Magic-Node response header (default HOSTNAME:PORT).
    #[arg(long, env = "MAGIC_NODE_ID")]
    node_id: Option<String>,
    /// Comma-separated controller names that may be deployed (unset: any).
    #[arg(long, env = "CONTROLLER_ALLOWLIST")]
    controller_allowlist: Option<String>,
    /// Python interpreter for controllers (default: python3 on PATH).
    #[arg(long, env = "MAGIC_PYTHON")]
    python: Option<PathBuf>,
    /// Deploys that add or widen capabilities wait for a second person's approval.
    #[arg(long, env = "MAGIC_REQUIRE_APPROVAL", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    require_approval: bool,
    /// On SIGTERM, how long in-flight executions may still run (30, 30s, 500ms, 2m).
    #[arg(long, env = "MAGIC_SHUTDOWN_GRACE", default_value = "30s")]
    shutdown_grace: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let reason = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {reason}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Validate { dir } => Ok(validate(&dir)),
        Command::Doctor {
            production,
            data_dir,
        } => {
            let isolation = doctor();
            if !production {
                return Ok(isolation);
            }
            Ok(doctor_production(&data_dir))
        }
        Command::Init { name, dir } => {
            let dir = scaffold::init(&name, dir)?;
            println!("created {} — try: magic validate {0}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy {
            dir,
            trigger_queue,
            remote,
        } => {
            let files = magic_contract::read_package_dir(&dir).map_err(|e| {
                anyhow!(
                    "{} cannot be deployed: {}",
                    dir.display(),
                    e.to_string().replace('\n', "; ")
                )
            })?;
            let client = Client::new(&remote)?;
            let outcome = client.deploy(&files).await?;
            if outcome["result"] == "pending_approval" {
                println!(
                    "{} {} waits for approval {} (a different identity with the approve permission: magic approvals approve {})",
                    outcome["name"].as_str().unwrap_or_default(),
                    outcome["version"].as_str().unwrap_or_default(),
                    outcome["approval_id"].as_str().unwrap_or_default(),
                    outcome["approval_id"].as_str().unwrap_or_default(),
                );
                print_diff(&outcome["diff"]);
                if trigger_queue.is_some() {
                    eprintln!("note: --trigger-queue is not set while the deploy waits; set it after approval with magic trigger set");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let verb = if outcome["result"] == "unchanged" {
                "already deployed"
            } else {
                "deployed"
            };
            println!(
                "{verb} {} {} ({})",
                outcome["name"].as_str().unwrap_or_default(),
                outcome["version"].as_str().unwrap_or_default(),
                outcome["digest"].as_str().unwrap_or_default()
            );
            if let Some(queue) = trigger_queue {
                let name = outcome["name"].as_str().unwrap_or_default().to_string();
                set_trigger(&client, &name, &queue).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { remote, json } => {
            let list = Client::new(&remote)?.get("/api/admin/controllers").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { name, remote, json } => {
            let status = Client::new(&remote)?
                .get(&format!(
                    "/api/admin/controllers/{}",
                    client::segment(&name)
                ))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { name, to, remote } => {
            let r = Client::new(&remote)?
                .post_json(
                    &format!("/api/admin/controllers/{}/rollback", client::segment(&name)),
                    &serde_json::json!({ "version": to }),
                )
                .await?;
            println!(
                "{name}: active version is now {} (was {})",
                r["active_version"].as_str().unwrap_or_default(),
                r["previous_version"].as_str().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            all,
            name,
            output,
            remote,
        } => {
            if all == name.is_some() {
                bail!("give either --all or one controller NAME");
            }
            let client = Client::new(&remote)?;
            let written = client.export(name.as_deref(), &output).await?;
            println!("exported {written} version(s) to {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { dir, remote } => {
            let (versions, controllers) = Client::new(&remote)?.import(&dir).await?;
            println!(
                "imported {versions} version(s) of {controllers} controller(s) from {}",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            data_dir,
            database_url,
        } => {
            let url = database_url.filter(|u| !u.trim().is_empty());
            magic_runtime::migrate(url.as_deref(), &data_dir).await?;
            println!(
                "migrations applied ({}): {}",
                if url.is_some() {
                    "DATABASE_URL".to_string()
                } else {
                    format!("SQLite in {}", data_dir.display())
                },
                magic_runtime::MIGRATED_COMPONENTS.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { data_dir, output } => {
            std::fs::create_dir_all(&output)
                .with_context(|| format!("creating {}", output.display()))?;
            let mut written = 0;
            for file in ["magic.db", "app.db"] {
                let src = data_dir.join(file);
                if !src.is_file() {
                    continue;
                }
                let dest = output.join(file);
                magic_runtime::backup_sqlite(&src, &dest)
                    .await
                    .with_context(|| format!("backing up {}", src.display()))?;
                println!("{}", dest.display());
                written += 1;
            }
            if written == 0 {
                bail!(
                    "no SQLite database in {} (magic.db, app.db); PostgreSQL is backed up with pg_dump (scripts/backup_db.sh)",
                    data_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command, remote } => audit(command, &remote).await,
        Command::Keys { command, remote } => keys(command, &remote).await,
        Command::Approvals { command, remote } => approvals(command, &remote).await,
        Command::Secrets { command, remote } => secrets(command, &remote).await,
        Command::Rawsql { command, remote } => rawsql(command, &remote).await,
        Command::Trigger { command, remote } => {
            let client = Client::new(&remote)?;
            match command {
                TriggerCommand::Set { controller, queue } => {
                    set_trigger(&client, &controller, &queue).await?
                }
                TriggerCommand::Remove { controller } => {
                    client
                        .send_empty(
                            reqwest::Method::DELETE,
                            &format!("/api/admin/triggers/{}", client::segment(&controller)),
                            None,
                        )
                        .await?;
                    println!("{controller} no longer consumes its queue");
                }
                TriggerCommand::List => {
                    for t in client
                        .get("/api/admin/triggers")
                        .await?
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                    {
                        println!(
                            "{:<32} <- {:<32} set {} by {}",
                            t["controller"].as_str().unwrap_or_default(),
                            t["queue"].as_str().unwrap_or_default(),
                            t["created_at"].as_str().unwrap_or_default(),
                            t["created_by"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Execute {
            name,
            input,
            version,
            request_id,
            remote,
        } => {
            let input = read_input(&input)?;
            let client = Client::new(&remote)?;
            let response = client
                .execute(&name, &input, version.as_deref(), request_id.as_deref())
                .await?;
            println!("{}", serde_json::to_string_pretty(&response)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set_trigger(client: &Client, controller: &str, queue: &str) -> anyhow::Result<()> {
    client
        .send_empty(
            reqwest::Method::PUT,
            &format!("/api/admin/triggers/{}", client::segment(controller)),
            Some(serde_json::json!({ "queue": queue })),
        )
        .await?;
    println!("{controller} now executes once per message of queue {queue}");
    Ok(())
}

async fn secrets(command: SecretsCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        SecretsCommand::Set {
            controller,
            name,
            value,
        } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)
                        .context("reading the secret from stdin")?;
                    v.strip_suffix('\n').map(str::to_string).unwrap_or(v)
                }
            };
            client
                .send_empty(
                    reqwest::Method::PUT,
                    &format!(
                        "/api/admin/secrets/{}/{}",
                        client::segment(&controller),
                        client::segment(&name)
                    ),
                    Some(serde_json::json!({ "value": value })),
                )
                .await?;
            println!("secret {name} set for {controller}");
        }
        SecretsCommand::List { controller } => {
            let path = match &controller {
                Some(c) => format!("/api/admin/secrets?controller={}", client::segment(c)),
                None => "/api/admin/secrets".to_string(),
            };
            let list = client.get(&path).await?;
            let rows = list.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no secrets");
            }
            for r in rows {
                println!(
                    "{:<32} {:<32} updated {} by {}",
                    r["controller"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default(),
                    r["updated_at"].as_str().unwrap_or_default(),
                    r["updated_by"].as_str().unwrap_or_default()
                );
            }
        }
        SecretsCommand::Delete { controller, name } => {
            client
                .send_empty(
                    reqwest::Method::DELETE,
                    &format!(
                        "/api/admin/secrets/{}/{}",
                        client::segment(&controller),
                        client::segment(&name)
                    ),
                    None,
                )
                .await?;
            println!("secret {name} of {controller} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys(command: KeysCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        KeysCommand::Create {
            role,
            name,
            expires_in,
            controllers,
        } => {
            let mut body = serde_json::json!({ "name": name, "role": role });
            if let Some(e) = expires_in {
                body["expires_in"] = e.into();
            }
            if let Some(c) = controllers {
                body["controllers"] = c.into();
            }
            let created = client.post_json("/api/admin/keys", &body).await?;
            eprintln!(
                "created key {} ({}, role {}{}); it is shown once, store it now:",
                created["name"].as_str().unwrap_or_default(),
                created["id"].as_str().unwrap_or_default(),
                created["role"].as_str().unwrap_or_default(),
                created["expires_at"]
                    .as_str()
                    .map(|t| format!(", expires {t}"))
                    .unwrap_or_default()
            );
            println!("{}", created["key"].as_str().unwrap_or_default());
        }
        KeysCommand::List { json } => {
            let list = client.get("/api/admin/keys").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36} {:<24} {:<14} {:<20} {:<26} {:<26} REVOKED",
                "ID", "NAME", "ROLE", "SCOPE", "CREATED", "EXPIRES"
            );
            for k in list.as_array().cloned().unwrap_or_default() {
                let scope = k["controllers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "*".into());
                println!(
                    "{:<36} {:<24} {:<14} {:<20} {:<26} {:<26} {}",
                    k["id"].as_str().unwrap_or_default(),
                    k["name"].as_str().unwrap_or_default(),
                    k["role"].as_str().unwrap_or_default(),
                    scope,
                    k["created_at"].as_str().unwrap_or_default(),
                    k["expires_at"].as_str().unwrap_or("never"),
                    k["revoked_at"].as_str().unwrap_or("-")
                );
            }
        }
        KeysCommand::Revoke { key } => {
            let revoked = client
                .send_json(
                    reqwest::Method::DELETE,
                    &format!("/api/admin/keys/{}", client::segment(&key)),
                )
                .await?;
            for k in revoked.as_array().cloned().unwrap_or_default() {
                println!(
                    "revoked key {} ({})",
                    k["name"].as_str().unwrap_or_default(),
                    k["id"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_diff(diff: &serde_json::Value) {
    for (key, sign) in [("added", "+"), ("widened", "~"), ("removed", "-")] {
        for entry in diff[key].as_array().cloned().unwrap_or_default() {
            println!("  {sign} {}", entry.as_str().unwrap_or_default());
        }
    }
}

fn print_approval(a: &serde_json::Value) {
    println!(
        "{} {} {} requested by {} at {}: {}{}",
        a["id"].as_str().unwrap_or_default(),
        a["controller"].as_str().unwrap_or_default(),
        a["version"].as_str().unwrap_or_default(),
        a["requested_by"].as_str().unwrap_or_default(),
        a["requested_at"].as_str().unwrap_or_default(),
        a["status"].as_str().unwrap_or_default(),
        a["decided_by"]
            .as_str()
            .map(|by| format!(
                " by {by}{}",
                a["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ))
            .unwrap_or_default()
    );
}

async fn approvals(command: ApprovalsCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    let decide = |id: &str, verb: &str, reason: Option<String>| {
        let mut body = serde_json::json!({});
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        (
            format!("/api/admin/approvals/{}/{verb}", client::segment(id)),
            body,
        )
    };
    match command {
        ApprovalsCommand::List { all, json } => {
            let path = if all {
                "/api/admin/approvals"
            } else {
                "/api/admin/approvals?status=pending"
            };
            let list = client.get(path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows = list.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no {}approval requests", if all { "" } else { "pending " });
            }
            for a in rows {
                print_approval(&a);
            }
        }
        ApprovalsCommand::Show { id } => {
            let a = client
                .get(&format!("/api/admin/approvals/{}", client::segment(&id)))
                .await?;
            print_approval(&a);
            println!("digest {}", a["digest"].as_str().unwrap_or_default());
            print_diff(&a["diff"]);
        }
        ApprovalsCommand::Approve { id, reason } => {
            let (path, body) = decide(&id, "approve", reason);
            let a = client.post_json(&path, &body).await?;
            println!(
                "approved {id}: {} {} is deployed and active",
                a["controller"].as_str().unwrap_or_default(),
                a["version"].as_str().unwrap_or_default()
            );
        }
        ApprovalsCommand::Reject { id, reason } => {
            let (path, body) = decide(&id, "reject", reason);
            let a = client.post_json(&path, &body).await?;
            println!(
                "rejected {id}: {} {} is not deployed",
                a["controller"].as_str().unwrap_or_default(),
                a["version"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rawsql(command: RawsqlCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        RawsqlCommand::Approve { controller } => {
            client
                .send_empty(
                    reqwest::Method::PUT,
                    &format!("/api/admin/rawsql/{}", client::segment(&controller)),
                    None,
                )
                .await?;
            println!("db:rawsql approved for {controller}");
        }
        RawsqlCommand::Revoke { controller } => {
            client
                .send_empty(
                    reqwest::Method::DELETE,
                    &format!("/api/admin/rawsql/{}", client::segment(&controller)),
                    None,
                )
                .await?;
            println!("db:rawsql approval of {controller} revoked");
        }
        RawsqlCommand::List => {
            for r in client
                .get("/api/admin/rawsql")
                .await?
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                println!(
                    "{:<32} approved {} by {}",
                    r["controller"].as_str().unwrap_or_default(),
                    r["approved_at"].as_str().unwrap_or_default(),
                    r["approved_by"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(command: AuditCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        AuditCommand::Verify { json } => {
            let r = client.get("/api/admin/audit/verify").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(if r["intact"] == true {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            if r["intact"] == true {
                println!(
                    "audit chain intact: {} records, head seq {} ({}), {} signed checkpoints; signing key {}",
                    r["records_checked"], r["head_seq"], r["head_hash"].as_str().unwrap_or_default(),
                    r["checkpoints_checked"], r["public_key"].as_str().unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "error: audit chain broken at record {}: {} ({} records before it verify)",
                    r["first_bad"]["seq"],
                    r["first_bad"]["reason"].as_str().unwrap_or_default(),
                    r["records_checked"]
                );
                Ok(ExitCode::from(1))
            }
        }
        AuditCommand::Tail { last } => {
            for record in client
                .get(&format!("/api/admin/audit/records?last={last}"))
                .await?
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                println!("{record}");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { from, to } => {
            for (name, v) in [("--from", &from), ("--to", &to)] {
                if let Some(v) = v {
                    if magic_runtime::api::parse_position(v).is_none() {
                        bail!("{name} {v:?} is neither a record seq nor an RFC 3339 time");
                    }
                }
            }
            let mut next = from.unwrap_or_else(|| "1".into());
            loop {
                let mut path = format!("/api/admin/audit/records?from={}", client::segment(&next));
                if let Some(to) = &to {
                    path.push_str(&format!("&to={}", client::segment(to)));
                }
                let page = client
                    .get(&path)
                    .await?
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let Some(last_seq) = page.last().and_then(|r| r["seq"].as_u64()) else {
                    break;
                };
                for record in &page {
                    println!("{record}");
                }
                // A short page ends the range; a full one continues after its last seq.
                if page.len() < magic_runtime::api::MAX_AUDIT_PAGE {
                    break;
                }
                next = (last_seq + 1).to_string();
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_input(arg: &str) -> anyhow::Result<serde_json::Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text).context("--input is not valid JSON")
}

fn validate(dir: &std::path::Path) -> ExitCode {
    let checked = magic_contract::check_package_dir(dir);
    match checked {
        Ok(package) => {
            let c = package.contract.contract();
            let caps = magic_runtime::registry::capability_names(c);
            println!(
                "{}: {} {} is valid ({} capabilit{}{})",
                dir.display(),
                c.name,
                c.version,
                caps.len(),
                if caps.len() == 1 { "y" } else { "ies" },
                if caps.is_empty() {
                    String::new()
                } else {
                    format!(": {}", caps.join(", "))
                }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for problem in &errors.0 {
                println!("{problem}");
            }
            eprintln!(
                "error: {} is invalid: {} problem{}",
                dir.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
    }
}

fn print_list(list: &serde_json::Value) {
    let rows = list.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no controllers deployed");
        return;
    }
    println!(
        "{:<32} {:<12} {:>8}  CAPABILITIES",
        "NAME", "ACTIVE", "VERSIONS"
    );
    for r in rows {
        let caps: Vec<&str> = r["capabilities"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<32} {:<12} {:>8}  {}",
            r["name"].as_str().unwrap_or_default(),
            r["active_version"].as_str().unwrap_or_default(),
            r["versions"],
            if caps.is_empty() {
                "-".to_string()
            } else {
                caps.join(", ")
            }
        );
    }
}

fn print_status(status: &serde_json::Value) {
    println!(
        "{} (active: {})",
        status["name"].as_str().unwrap_or_default(),
        status["active_version"].as_str().unwrap_or_default()
    );
    println!(
        "  {:<2}{:<12} {:<28} {:<24} CAPABILITIES",
        "", "VERSION", "DEPLOYED", "BY"
    );
    for v in status["versions"].as_array().cloned().unwrap_or_default() {
        let caps: Vec<&str> = v["capabilities"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  {:<2}{:<12} {:<28} {:<24} {}",
            if v["active"] == true { "*" } else { "" },
            v["version"].as_str().unwrap_or_default(),
            v["deployed_at"].as_str().unwrap_or_default(),
            v["deployed_by"].as_str().unwrap_or_default(),
            if caps.is_empty() {
                "-".to_string()
            } else {
                caps.join(", ")
            }
        );
    }
}

/// `magic doctor`: the isolation layers of this host, one per line.
fn doctor() -> ExitCode {
    let layers = magic_runtime::sandboxed::isolation_layers();
    for l in &layers {
        let mark = match (l.active, l.required) {
            (true, _) => "active ",
            (false, true) => "MISSING",
            (false, false) => "unused ",
        };
        println!("{mark}  {:<28} {}", l.name, l.detail);
    }
    println!("{}", wasm_engine_line());
    match magic_sandbox_missing(&layers) {
        Some(m) => {
            println!(
                "process mode: refused here ({m}); MAGIC_ALLOW_DEGRADED_ISOLATION=1 overrides"
            );
            ExitCode::from(1)
        }
        None => {
            println!("process mode: every required isolation layer is available");
            ExitCode::SUCCESS
        }
    }
}

/// Whether WASM controllers can run here: the engine started with the configured pool (as
/// `serve` would, compiling into a throwaway cache dir), or why not. Informational: WASM is
/// not required for process mode.
fn wasm_engine_line() -> String {
    let slots = std::env::var("MAGIC_WASM_MAX_INSTANCES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(magic_runtime::wasm::DEFAULT_MAX_INSTANCES);
    let dir = std::env::temp_dir().join(format!("magic-doctor-wasm-{}", std::process::id()));
    let mode = magic_runtime::wasm::WasmMode::new(dir.clone(), slots);
    let line = match mode.engine() {
        Ok(engine) if engine.pooling() => format!(
            "active   {:<28} wasmtime, pooling allocator with {slots} instance slots",
            "wasm engine"
        ),
        Ok(_) => format!(
            "active   {:<28} wasmtime, on-demand allocation (the host refused the pool's address-space reservation for {slots} slots)",
            "wasm engine"
        ),
        Err(e) => format!(
            "unused   {:<28} WASM controllers cannot run here: {}",
            "wasm engine", e.message
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    line
}

/// `magic doctor --production`: the hardening checklist, one line per item.
fn doctor_production(data_dir: &std::path::Path) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let missing_isolation =
        magic_runtime::sandboxed::missing_required(&magic_runtime::sandboxed::isolation_layers());
    let key_file = env("MAGIC_MASTER_KEY_FILE").filter(|v| !v.trim().is_empty());
    let key_path = key_file
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("master.key"));
    let master_key_mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(&key_path)
            .ok()
            .map(|m| m.permissions().mode())
    };
    let facts = magic_runtime::checklist::HostFacts {
        missing_isolation,
        master_key_mode,
        master_key_in_data_dir: key_file.is_none(),
    };
    let checks = magic_runtime::checklist::production_checks(&env, &facts);
    println!();
    println!("production hardening checklist (docs/hardening.md):");
    for c in &checks {
        println!(
            "{}  {:<22} {}",
            if c.ok { "pass" } else { "FAIL" },
            c.item,
            c.detail
        );
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.item).collect();
    if failed.is_empty() {
        println!("production: every checked item passes");
        ExitCode::SUCCESS
    } else {
        eprintln!("error: not production-ready: {}", failed.join(", "));
        ExitCode::from(1)
    }
}

fn magic_sandbox_missing(layers: &[magic_runtime::sandboxed::Layer]) -> Option<String> {
    magic_runtime::sandboxed::missing_required(layers)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    magic_runtime::logging::init();
    let execution_mode = ExecutionMode::parse(&args.execution_mode)?;
    let mut config = ServeConfig::new(args.data_dir);
    config.listen = args.listen;
    config.database_url = args.database_url.filter(|s| !s.is_empty());
    config.redis_url = args.redis_url.filter(|s| !s.is_empty());
    config.admin_api_key = std::env::var("MAGIC_ADMIN_API_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    config.max_concurrent = args.max_concurrent;
    config.wasm_max_instances = args.wasm_max_instances;
    config.execution_mode = execution_mode;
    config.max_body_bytes = args.max_body_bytes;
    config.python = args.python;
    config.controller_allowlist = args
        .controller_allowlist
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        });
    config.registry_sync = std::time::Duration::from_millis(args.registry_sync_ms.max(50));
    config.slot_lease = std::time::Duration::from_millis(args.slot_lease_ms);
    config.node_id = args.node_id.filter(|s| !s.trim().is_empty());
    config.broker = magic_runtime::config::broker_config_from_env(&config)?;
    config.audit = magic_audit::AuditConfig::from_env(&config.data_dir)?;
    config.allow_degraded_isolation = args.allow_degraded_isolation;
    config.jwt = magic_runtime::config::jwt_config_from_env()?;
    if args.require_approval {
        config.approvals = magic_runtime::approvals::ApprovalMode::Widening;
    }
    config.shutdown_grace =
        magic_runtime::config::parse_duration("MAGIC_SHUTDOWN_GRACE", &args.shutdown_grace)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    config.allowed_origins = env("ALLOWED_ORIGINS").map(|s| {
        s.split(',')
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect()
    });
    if let Some(limit) = env("MAGIC_RATE_LIMIT") {
        config.rate_limit = Some(
            magic_runtime::hardening::RateLimit::parse(&limit)
                .map_err(|e| anyhow!("MAGIC_RATE_LIMIT: {e}"))?,
        );
    }
    if let Some(limit) = env("MAGIC_AUTH_FAILURE_LIMIT") {
        config.auth_failure_limit = magic_runtime::hardening::parse_failure_limit(&limit)
            .map_err(|e| anyhow!("MAGIC_AUTH_FAILURE_LIMIT: {e}"))?;
    }
    if let Some(proxies) = env("MAGIC_TRUSTED_PROXIES") {
        config.trusted_proxies = magic_runtime::config::parse_trusted_proxies(&proxies)?;
    }
    match (env("MAGIC_TLS_CERT"), env("MAGIC_TLS_KEY")) {
        (Some(cert), Some(key)) => {
            let roles =
                magic_runtime::tls::MtlsRoles::parse(&env("MAGIC_MTLS_ROLES").unwrap_or_default())
                    .map_err(|e| anyhow!("MAGIC_MTLS_ROLES: {e}"))?;
            config.tls = true;
            config.tls_settings = Some(magic_runtime::tls::TlsSettings {
                cert: cert.into(),
                key: key.into(),
                client_ca: env("MAGIC_TLS_CLIENT_CA").map(Into::into),
                roles,
            });
        }
        (None, None) => {
            if env("MAGIC_TLS_CLIENT_CA").is_some() {
                bail!("MAGIC_TLS_CLIENT_CA needs MAGIC_TLS_CERT and MAGIC_TLS_KEY");
            }
        }
        _ => bail!("MAGIC_TLS_CERT and MAGIC_TLS_KEY must be set together"),
    }
    if let Some(path) = std::env::var_os("MAGIC_POLICY_FILE").filter(|p| !p.is_empty()) {
        let policy = magic_runtime::policy::Policy::load(std::path::Path::new(&path)).map_err(
            |problems| {
                anyhow!(
                    "MAGIC_POLICY_FILE is invalid ({} problem(s)): {}",
                    problems.len(),
                    problems.join("; ")
                )
            },
        )?;
        if let Some(mode) = policy.approvals {
            config.approvals = mode;
        }
        config.policy = Some(policy);
    }
    let data_dir = config.data_dir.clone();
    let scheme = if config.tls { "https" } else { "http" };
    let store_desc = match &config.database_url {
        Some(url) if url.starts_with("postgres") => "PostgreSQL".to_string(),
        Some(url) => url.clone(),
        None => format!("SQLite in {}", data_dir.display()),
    };
    magic_runtime::serve(
        config,
        |addr, rt| {
            tracing::warn!(
                event = "isolation_warning",
                "CONTROLLER_EXECUTION_MODE=inline: executions run as plain child processes and are NOT isolated; use it for development only"
            );
            tracing::info!(event = "listening", address = %addr, store = %store_desc, "magic runtime listening on {scheme}://{addr}");
            if let Some(file) = &rt.admin_key_file {
                tracing::info!(event = "admin_key", path = %file.display(), "admin API key is in {} (the CLI reads it from there; set MAGIC_ADMIN_API_KEY to choose your own)", file.display());
            }
            // Also a plain line for people starting it by hand.
            eprintln!("magic: listening on {scheme}://{addr} (data dir {})", data_dir.display());
        },
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(
        event = "shutdown",
        "shutting down: finishing in-flight requests"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
