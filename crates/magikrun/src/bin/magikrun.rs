//! `magikrun`: an OCI runtime command line (create, start, state, kill, delete) on the youki
//! backend, following the OCI runtime command-line interface, plus `platform` to print what the
//! host offers. Exit code 0 on success; non-zero with a one-line reason on stderr on failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use magikrun::runtimes::youki::{StdioMode, YoukiRuntime};
use magikrun::runtimes::{default_state_root, OciRuntime, RegistryOptions, RuntimeRegistry};
use magikrun::{Bundle, ContainerStatus, Platform, Signal};

#[derive(Parser, Debug)]
#[command(
    name = "magikrun",
    version,
    about = "OCI runtime on youki's libcontainer"
)]
struct Cli {
    /// State directory (default: /run/magikrun/youki for root).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Accepted for runc compatibility (log file); ignored.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long = "log-format", global = true)]
    log_format: Option<String>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility; systemd cgroups are not used.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container from a bundle without starting its process.
    Create {
        /// Bundle directory (default: current directory).
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Write the container process' PID here.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Not supported (process.terminal must be false).
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Container id.
        id: String,
    },
    /// Run the user process of a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Print the container's state JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (default TERM) to the container process.
    Kill {
        /// Send to all processes (accepted; the init process is signalled).
        #[arg(long, short = 'a')]
        all: bool,
        /// Signal as a flag (OCI CLI form).
        #[arg(long, short = 's')]
        signal: Option<String>,
        /// Container id.
        id: String,
        /// Signal as a positional argument (runc form).
        sig: Option<String>,
    },
    /// Release the container's resources.
    Delete {
        /// Kill a created or running container first.
        #[arg(long, short = 'f')]
        force: bool,
        /// Container id.
        id: String,
    },
    /// As root, cgroup v1: give `magikrun-<uid>` under every v1 controller to a user, so that
    /// user can run rootless containers (`--remove` takes them back).
    DelegateCgroups {
        /// The user's uid.
        #[arg(long)]
        uid: u32,
        /// The user's gid (default: same as the uid).
        #[arg(long)]
        gid: Option<u32>,
        /// Remove the directories instead.
        #[arg(long)]
        remove: bool,
    },
    /// Print what isolation this host offers and which backends can run.
    Platform {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

async fn run(cli: Cli) -> magikrun::Result<()> {
    let root = cli
        .root
        .clone()
        .unwrap_or_else(|| default_state_root().join("youki"));
    let rt = YoukiRuntime::new(&root).with_stdio(StdioMode::Inherit);
    match cli.cmd {
        Cmd::Create {
            bundle,
            pid_file,
            console_socket,
            id,
        } => {
            if console_socket.is_some() {
                return Err(magikrun::Error::Unsupported(
                    "--console-socket (terminal containers) is not supported".into(),
                ));
            }
            rt.create(&id, &Bundle::OciRuntime { path: bundle }).await?;
            if let Some(p) = pid_file {
                let st = rt.state(&id).await?;
                let pid = st.pid.unwrap_or_default();
                std::fs::write(&p, pid.to_string()).map_err(|e| magikrun::Error::io(&p, e))?;
            }
        }
        Cmd::Start { id } => rt.start(&id).await?,
        Cmd::State { id } => {
            let st = rt.state(&id).await?;
            println!("{}", st.to_json()?);
        }
        Cmd::Kill {
            all: _,
            signal,
            id,
            sig,
        } => {
            let s = signal.or(sig).unwrap_or_else(|| "TERM".into());
            rt.kill(&id, s.parse::<Signal>()?).await?;
        }
        Cmd::Delete { force, id } => {
            if force {
                let st = rt.state(&id).await?;
                if st.status == ContainerStatus::Running {
                    rt.kill(&id, Signal::Kill).await?;
                    rt.wait(&id, Duration::from_secs(10)).await?;
                }
            }
            rt.delete(&id).await?;
        }
        Cmd::DelegateCgroups { uid, gid, remove } => {
            if remove {
                magikrun::runtimes::youki::remove_delegated_cgroups_v1(uid)?;
            } else {
                let gid = gid.unwrap_or(uid);
                for d in magikrun::runtimes::youki::delegate_cgroups_v1(uid, gid)? {
                    println!("{}", d.display());
                }
            }
        }
        Cmd::Platform { json } => {
            let p = Platform::detect();
            let reg = RuntimeRegistry::with_options(
                &p,
                RegistryOptions {
                    state_root: root.parent().map(PathBuf::from).unwrap_or(root.clone()),
                },
            )?;
            if json {
                let v = serde_json::json!({
                    "platform": p,
                    "available": reg.available_runtimes(),
                    "unavailable": reg.unavailable(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("os: {}  arch: {}  root: {}", p.os, p.arch, p.is_root);
                println!(
                    "unprivileged user namespaces: {}  delegated cgroup v1: {}",
                    p.unprivileged_userns, p.delegated_cgroup_v1
                );
                println!("cgroups: {}", p.cgroup_mode);
                println!("namespaces: {}", p.namespaces.join(" "));
                let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
                println!("capabilities: {}", caps.join(" "));
                for n in &p.notes {
                    println!("note: {n}");
                }
                println!("available runtimes: {}", reg.available_runtimes().join(" "));
                for (name, why) in reg.unavailable() {
                    println!("unavailable: {name}: {why}");
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("magikrun: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("magikrun: {e}");
            ExitCode::from(1)
        }
    }
}
