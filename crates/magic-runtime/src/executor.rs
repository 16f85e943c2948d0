//! Running one execution in a worker process and brokering its calls.
//!
//! Owns: starting the worker (`inline` mode: a plain child process per execution, **not
//! isolated**), the execution's socket, its deadline, answering its capability calls through
//! the broker, collecting its logs and metrics, and killing its whole process group when it
//! ends. Must never: hand the worker any descriptor but its socket, pass the runtime's
//! environment to it, or let it outlive its deadline.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use magic_broker::{CapabilityBroker, CapabilityCall, ExecutionContext};
use magic_contract::{ErrorCode, PackageKind};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::{read_frame, write_frame, FrameError, FromWorker, ToWorker, WireError};
use crate::registry::DeployedVersion;

/// Log lines one execution may emit.
pub const MAX_LOG_LINES: usize = 1000;
/// Bytes of one log message kept.
pub const MAX_LOG_MESSAGE: usize = 8 * 1024;
/// Bytes of worker stderr kept for the runtime log.
const MAX_STDERR: usize = 16 * 1024;
/// The descriptor number the worker finds its socket on.
const WORKER_FD: i32 = 3;

/// What one execution produced.
#[derive(Debug)]
pub struct ExecutionOutcome {
    /// The controller's output (not yet validated), or the error.
    pub result: Result<serde_json::Value, ApiError>,
    /// Capabilities exercised successfully, sorted.
    pub capabilities_used: Vec<String>,
    /// Capability calls refused.
    pub denials: usize,
    /// Whether the deadline killed it.
    pub timed_out: bool,
}

/// Starts workers and runs executions.
pub struct Executor {
    python: PathBuf,
    sdk_dir: PathBuf,
    broker: Arc<CapabilityBroker>,
    metrics: Arc<Metrics>,
    /// Process mode: the sandbox and one zygote pool per deployed version.
    process: Option<Arc<crate::sandboxed::ProcessMode>>,
    /// WASM controllers (`controller.wasm`), in either mode.
    wasm: Option<Arc<crate::wasm::WasmMode>>,
    /// Set once the shutdown grace has passed: executions still running are stopped.
    abort: tokio::sync::watch::Sender<bool>,
}

/// Resolves once `abort` is set (never, when its sender is gone without setting it).
async fn aborted(mut abort: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *abort.borrow_and_update() {
            return;
        }
        if abort.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Find the Python interpreter once: `configured`, else `python3` on `PATH`, resolved to the
/// real executable (shims add tens of milliseconds per start).
pub fn find_python(configured: Option<&Path>) -> Result<PathBuf, String> {
    let candidate = match configured {
        Some(p) => p.to_path_buf(),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|d| d.join("python3"))
                .find(|p| p.is_file())
                .ok_or("python3 was not found on PATH (set MAGIC_PYTHON)")?
        }
    };
    let resolved = resolve_shim(&candidate);
    let out = std::process::Command::new(&resolved)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.executable); print(sys.version_info >= (3, 9))",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", resolved.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let exe = lines.next().unwrap_or_default().trim().to_string();
    if lines.next() != Some("True") {
        return Err(format!("{} is not Python 3.9 or newer", resolved.display()));
    }
    if exe.is_empty() {
        Ok(resolved)
    } else {
        Ok(PathBuf::from(exe))
    }
}

fn resolve_shim(p: &Path) -> PathBuf {
    // pyenv-style shims are shell scripts; ask the interpreter for its real path instead.
    let out = std::process::Command::new(p)
        .args(["-c", "import sys; print(sys.executable)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                p.to_path_buf()
            } else {
                PathBuf::from(s)
            }
        }
        _ => p.to_path_buf(),
    }
}

impl Executor {
    /// An executor running `python` with the SDK installed under `sdk_dir`.
    pub fn new(
        python: PathBuf,
        sdk_dir: PathBuf,
        broker: Arc<CapabilityBroker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Executor {
            python,
            sdk_dir,
            broker,
            metrics,
            process: None,
            wasm: None,
            abort: tokio::sync::watch::channel(false).0,
        }
    }

    /// Stop every execution still running (the shutdown grace has passed): each one ends with
    /// E5002 and is answered and audited like any other failed execution.
    pub fn abort_in_flight(&self) {
        self.abort.send_replace(true);
    }

    /// Stop every zygote and its children and remove the sandbox's cgroups (shutdown; after
    /// the last execution ended). Blocking until the children are gone.
    pub async fn shutdown(&self) {
        if let Some(p) = &self.process {
            p.shutdown().await;
        }
    }

    /// Run WASM controllers, caching their compiled code in `cache_dir`, with at most
    /// `max_instances` alive at once.
    pub fn with_wasm(mut self, cache_dir: PathBuf, max_instances: u32) -> Self {
        self.wasm = Some(Arc::new(crate::wasm::WasmMode::new(
            cache_dir,
            max_instances,
        )));
        self
    }

    /// WASM support, when enabled.
    pub fn wasm(&self) -> Option<&Arc<crate::wasm::WasmMode>> {
        self.wasm.as_ref()
    }

    /// Run executions in process mode with `sandbox` (`None` keeps inline mode).
    pub fn with_sandbox(
        mut self,
        sandbox: Option<Arc<magic_sandbox::Sandbox>>,
        max_concurrent: usize,
    ) -> Self {
        self.process =
            sandbox.map(|sb| Arc::new(crate::sandboxed::ProcessMode::new(sb, max_concurrent)));
        self
    }

    /// The registry's warm hook (`None` when there is nothing to warm): process mode starts a
    /// new Python version's zygote and first spare before the version takes traffic; a WASM
    /// version is compiled (or loaded from the cache) and pre-linked, and a WASM binary that
    /// does not fit the world fails the deploy.
    pub fn warm_hook(&self) -> Option<crate::registry::WarmHook> {
        if self.process.is_none() && self.wasm.is_none() {
            return None;
        }
        let process = self.process.clone();
        let wasm = self.wasm.clone();
        Some(Arc::new(move |version: Arc<DeployedVersion>| {
            let process = process.clone();
            let wasm = wasm.clone();
            Box::pin(async move {
                if version.kind == PackageKind::Wasm {
                    if let Some(wasm) = wasm {
                        let v = version.clone();
                        return tokio::task::spawn_blocking(move || wasm.prepare(&v).map(|_| ()))
                            .await
                            .unwrap_or_else(|e| {
                                Err(ApiError::new(
                                    ErrorCode::ControllerFailed,
                                    format!("wasm compilation failed: {e}"),
                                ))
                            });
                    }
                    return Ok(());
                }
                if let Some(process) = process {
                    if let Err(e) = process.prepare(&version).await {
                        tracing::warn!(controller = %version.name, version = %version.version,
                            error = %e.message, "could not start the new version's zygote ahead of traffic");
                    }
                }
                Ok(())
            })
        }))
    }

    /// Process mode: every zygote on this node (empty in inline mode).
    pub fn zygotes(&self) -> Vec<crate::sandboxed::ZygoteInfo> {
        self.process
            .as_ref()
            .map(|p| p.zygotes())
            .unwrap_or_default()
    }

    /// Whether executions run sandboxed (process mode).
    pub fn is_sandboxed(&self) -> bool {
        self.process.is_some()
    }

    /// Process mode: start `version`'s zygote and its first spare child now (hot deploy calls
    /// this before the version takes traffic). Inline mode: nothing to do.
    pub async fn prepare(&self, version: &Arc<DeployedVersion>) -> Result<(), ApiError> {
        if version.kind == PackageKind::Wasm {
            return match &self.wasm {
                Some(w) => w.prepare(version).map(|_| ()),
                None => Err(wasm_disabled()),
            };
        }
        match &self.process {
            Some(p) => p.prepare(version).await,
            None => Ok(()),
        }
    }

    /// Run one execution of `version` with an already validated `input`; `traceparent` is the
    /// execution's span, propagated on egress.
    pub async fn execute(
        &self,
        request_id: &str,
        version: &Arc<DeployedVersion>,
        input: &serde_json::Value,
        traceparent: Option<&str>,
        start: Arc<magic_broker::ExecutionStart>,
    ) -> ExecutionOutcome {
        let timeout = version.contract.resources.timeout;
        let started = Instant::now();
        let deadline = started + timeout;
        if version.kind == PackageKind::Wasm {
            let Some(wasm) = &self.wasm else {
                return failed(wasm_disabled());
            };
            let ctx = ExecutionContext {
                request_id: request_id.to_string(),
                controller: version.name.clone(),
                version: version.version_text.clone(),
                contract: version.contract.clone(),
                deadline,
                temp_dir: None,
                traceparent: traceparent.map(str::to_string),
                start: Some(start),
            };
            return wasm
                .execute(&self.broker, &self.metrics, ctx, version, input)
                .await;
        }
        if let Some(process) = &self.process {
            let worker = match process.child(version).await {
                Ok(c) => Worker::Sandboxed(c),
                Err(e) => return failed(e),
            };
            let temp = crate::sandboxed::temp_size(version)
                .map(|_| Path::new(magic_sandbox::zygote::TEMP_MOUNT));
            let outcome = self
                .run(
                    (request_id, traceparent, start),
                    version,
                    input,
                    deadline,
                    temp,
                    worker,
                )
                .await;
            return outcome;
        }
        // fs:temp without the sandbox: the broker's per-execution dir, its budget checked after
        // the run (a tmpfs enforces it during the run in process mode).
        let temp_dir = match crate::sandboxed::temp_size(version)
            .map(|size| self.broker.create_temp_dir(request_id, size))
            .transpose()
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot create execution temp dir");
                return failed(ApiError::new(
                    ErrorCode::SandboxUnavailable,
                    "cannot create the execution's temp dir",
                ));
            }
        };
        let temp_path = temp_dir.as_ref().map(|t| t.path().to_path_buf());
        let worker = match self.spawn(version, temp_path.as_deref()) {
            Ok((child, stream)) => Worker::Inline { child, stream },
            Err(e) => return failed(e),
        };
        let mut outcome = self
            .run(
                (request_id, traceparent, start),
                version,
                input,
                deadline,
                temp_path.as_deref(),
                worker,
            )
            .await;
        if let (Some(dir), Ok(_)) = (&temp_dir, &outcome.result) {
            if let Err(e) = dir.check() {
                outcome.result = Err(limit_error(
                    &self.metrics,
                    &version.name,
                    e.code,
                    "temp_disk",
                    e.message,
                ));
            }
        }
        drop(temp_dir); // removes the directory
        outcome
    }

    async fn run(
        &self,
        (request_id, traceparent, start): (&str, Option<&str>, Arc<magic_broker::ExecutionStart>),
        version: &Arc<DeployedVersion>,
        input: &serde_json::Value,
        deadline: Instant,
        temp_dir: Option<&Path>,
        worker: Worker,
    ) -> ExecutionOutcome {
        let timeout = version.contract.resources.timeout;
        let (mut inline_child, stream, mut sandboxed) = match worker {
            Worker::Inline { child, stream } => (Some(child), stream, None),
            Worker::Sandboxed(c) => {
                let (stream, confined) = c.split();
                (None, stream, Some(confined))
            }
        };
        let pgid = inline_child.as_ref().and_then(|c| c.id()).map(|p| p as i32);
        let stderr_task = inline_child
            .as_mut()
            .and_then(|c| c.stderr.take())
            .map(|mut err| {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = err.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        if buf.len() < MAX_STDERR {
                            buf.extend_from_slice(&chunk[..n.min(MAX_STDERR - buf.len())]);
                        }
                    }
                    String::from_utf8_lossy(&buf).into_owned()
                })
            });

        let (reader, mut writer) = stream.into_split();
        let (frames_tx, mut frames) = mpsc::channel::<Result<FromWorker, FrameError>>(64);
        // Reading is not cancel-safe: one task owns the read half and forwards whole frames.
        let reader_task = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(reader);
            loop {
                let frame = read_frame(&mut reader).await;
                let stop = frame.is_err();
                if frames_tx.send(frame).await.is_err() || stop {
                    break;
                }
            }
        });

        let ctx = Arc::new(ExecutionContext {
            request_id: request_id.to_string(),
            controller: version.name.clone(),
            version: version.version_text.clone(),
            contract: version.contract.clone(),
            deadline,
            temp_dir: temp_dir.map(Path::to_path_buf),
            traceparent: traceparent.map(str::to_string),
            start: Some(start),
        });
        let execute = ToWorker::Execute {
            request_id,
            controller: &version.name,
            version: &version.version_text,
            input,
            timeout_ms: timeout.as_millis() as u64,
            temp_dir: temp_dir.and_then(|p| p.to_str()),
        };

        let mut used = BTreeSet::new();
        let mut denials = 0usize;
        let mut log_lines = 0usize;
        let mut timed_out = false;
        let mut calls: JoinSet<(u64, magic_broker::BrokerReply)> = JoinSet::new();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::pin!(sleep);
        let stop = aborted(self.abort.subscribe());
        tokio::pin!(stop);

        let result: Result<serde_json::Value, ApiError> = 'run: {
            if let Err(e) = write_frame(&mut writer, &execute).await {
                break 'run Err(worker_failed(format!("could not start the execution: {e}")));
            }
            loop {
                tokio::select! {
                    frame = frames.recv() => match frame {
                        Some(Ok(FromWorker::Call { id, capability, op, args })) => {
                            let broker_ctx = ctx.clone();
                            let broker = self.broker_handle();
                            calls.spawn(async move {
                                let reply = broker.call(&broker_ctx, CapabilityCall { capability, op, args }).await;
                                (id, reply)
                            });
                        }
                        Some(Ok(FromWorker::Log { level, message, fields })) => {
                            log_lines += 1;
                            controller_log_limited(&ctx, log_lines, &level, &message, &fields);
                            if log_lines <= MAX_LOG_LINES {
                                self.metrics.activity.log(&ctx.request_id, &level, &message);
                            }
                        }
                        Some(Ok(FromWorker::Metric { kind, name, value, labels })) => {
                            if let Err(e) = self.metrics.record_custom(&ctx.controller, &kind, &name, value, &labels) {
                                tracing::debug!(request_id = %ctx.request_id, controller = %ctx.controller, error = %e, "custom metric refused");
                            }
                        }
                        Some(Ok(FromWorker::Result { .. })) if sandboxed.as_ref().is_some_and(|c| c.temp_full()) => {
                            // The runtime saw the private /tmp fill up, whatever the controller did with the error.
                            break 'run Err(limit_error(&self.metrics, &ctx.controller, ErrorCode::TempDiskExceeded, "temp_disk",
                                "the execution filled its fs:temp space".into()));
                        }
                        Some(Ok(FromWorker::Result { ok: true, output, .. })) => break 'run Ok(output),
                        Some(Ok(FromWorker::Result { ok: false, error, .. })) => {
                            let limit = error.as_ref().and_then(|e| resource_error(e, temp_dir.is_some()));
                            if let Some((code, resource)) = limit {
                                let message = error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
                                break 'run Err(limit_error(&self.metrics, &ctx.controller, code, resource, message));
                            }
                            break 'run Err(controller_error(error))
                        }
                        Some(Err(FrameError::Closed)) | None => {
                            if let Some(c) = &sandboxed {
                                if crate::sandboxed::wait_oom(c).await {
                                    break 'run Err(limit_error(&self.metrics, &ctx.controller, ErrorCode::MemoryExceeded, "memory", format!(
                                        "the execution was killed for exceeding the contract's memory limit of {} bytes",
                                        version.contract.resources.memory)));
                                }
                                break 'run Err(worker_failed("the controller's worker exited without a result".into()));
                            }
                            let status = match inline_child.as_mut() {
                                Some(child) => wait_briefly(child).await,
                                None => "gone".into(),
                            };
                            break 'run Err(worker_failed(format!("the controller's worker exited without a result ({status})")));
                        }
                        Some(Err(e)) => break 'run Err(worker_failed(format!("protocol error from the worker: {e}"))),
                    },
                    Some(joined) = calls.join_next(), if !calls.is_empty() => {
                        let Ok((id, reply)) = joined else { continue };
                        account_reply(&self.metrics, &ctx.controller, &reply, &mut used, &mut denials);
                        let frame = match reply.result {
                            Ok(value) => ToWorker::Reply { id, ok: true, value: Some(value), error: None },
                            Err(e) => {
                                ToWorker::Reply { id, ok: false, value: None, error: Some(WireError {
                                    code: e.code.as_str().to_string(), message: e.message, details: e.details,
                                    exception: None, traceback: None,
                                })}
                            }
                        };
                        if let Err(e) = write_frame(&mut writer, &frame).await {
                            tracing::debug!(request_id = %ctx.request_id, error = %e, "reply not delivered");
                        }
                    }
                    () = &mut stop => {
                        tracing::warn!(request_id = %ctx.request_id, controller = %ctx.controller, event = "execution_aborted",
                            "the runtime is shutting down and the grace period has passed: execution stopped");
                        break 'run Err(ApiError::new(ErrorCode::SandboxUnavailable,
                            "the runtime shut down before the execution finished (MAGIC_SHUTDOWN_GRACE passed)"));
                    }
                    () = &mut sleep => {
                        timed_out = true;
                        break 'run Err(limit_error(&self.metrics, &ctx.controller, ErrorCode::Timeout, "timeout", format!(
                            "execution exceeded the contract's timeout of {}", humanize(timeout))));
                    }
                }
            }
        };

        // The execution is over: nothing it started may keep running or keep being served.
        calls.abort_all();
        reader_task.abort();
        if let Some(pgid) = pgid {
            kill_group(pgid);
        }
        if let Some(mut child) = inline_child {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        if let (Some(child), Some(process)) = (sandboxed.take(), &self.process) {
            // Kill the child (only its own cgroup slot, never the zygote) and pool the slot.
            child.kill();
            process.release(child, version);
        }
        if let Some(task) = stderr_task {
            if let Ok(Ok(stderr)) = tokio::time::timeout(Duration::from_millis(50), task).await {
                if !stderr.trim().is_empty() {
                    tracing::warn!(request_id = %ctx.request_id, controller = %ctx.controller, event = "worker_stderr", stderr = %stderr.trim_end());
                }
            }
        }
        ExecutionOutcome {
            result,
            capabilities_used: used.into_iter().collect(),
            denials,
            timed_out,
        }
    }

    fn broker_handle(&self) -> Arc<CapabilityBroker> {
        self.broker.clone()
    }

    /// Start a worker with only its socket (as fd 3), a cleared environment and its own
    /// process group.
    fn spawn(
        &self,
        version: &DeployedVersion,
        temp_dir: Option<&Path>,
    ) -> Result<(tokio::process::Child, tokio::net::UnixStream), ApiError> {
        let unavailable = |what: &str, e: std::io::Error| {
            tracing::error!(error = %e, "{what}");
            ApiError::new(ErrorCode::SandboxUnavailable, format!("{what}: {e}"))
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| unavailable("cannot create the execution socket", e))?;
        ours.set_nonblocking(true)
            .map_err(|e| unavailable("cannot configure the execution socket", e))?;
        let theirs: OwnedFd = theirs.into();
        let bootstrap = format!(
            "import sys; sys.path[:0]=[{:?}]; from magic.worker import main; main()",
            self.sdk_dir.display().to_string()
        );
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.args(["-I", "-S", "-c", &bootstrap])
            .env_clear()
            .env("MAGIC_SOCKET_FD", WORKER_FD.to_string())
            .env("MAGIC_PACKAGE_DIR", &version.package_dir)
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(temp_dir.unwrap_or(&version.package_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        crate::spawn::pass_fd_as(&mut cmd, theirs.as_raw_fd(), WORKER_FD);
        let child = cmd
            .spawn()
            .map_err(|e| unavailable("cannot start the controller's worker", e))?;
        drop(theirs);
        let stream = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| unavailable("cannot register the execution socket", e))?;
        Ok((child, stream))
    }
}

/// A started worker: an inline child process or a sandboxed child of a zygote.
enum Worker {
    Inline {
        child: tokio::process::Child,
        stream: tokio::net::UnixStream,
    },
    Sandboxed(magic_sandbox::Child),
}

/// Which resource limit an error `result` from the worker reports, if any: `MemoryError`
/// (RLIMIT_AS where there is no cgroup) → E3002; `ENOSPC` on the temp tmpfs → E3003.
fn resource_error(e: &WireError, has_temp: bool) -> Option<(ErrorCode, &'static str)> {
    if e.code != ErrorCode::ControllerFailed.as_str() {
        return None;
    }
    let exception = e.exception.as_deref().unwrap_or("");
    if exception == "MemoryError" {
        return Some((ErrorCode::MemoryExceeded, "memory"));
    }
    let os_error = matches!(exception, "OSError" | "IOError");
    if has_temp && os_error && e.message.contains("[Errno 28]") {
        return Some((ErrorCode::TempDiskExceeded, "temp_disk"));
    }
    None
}

/// Account one broker reply the same way for every kind of controller: the capability usage
/// metric, `capabilities_used` (successful calls) and the denial count (refused calls).
pub(crate) fn account_reply(
    metrics: &Metrics,
    controller: &str,
    reply: &magic_broker::BrokerReply,
    used: &mut BTreeSet<String>,
    denials: &mut usize,
) {
    if let Some(cap) = reply.capability {
        metrics
            .capability_usage
            .with_label_values(&[controller, cap])
            .inc();
        if reply.result.is_ok() {
            used.insert(cap.to_string());
        }
    }
    if reply.result.is_err() {
        *denials += 1;
    }
}

fn wasm_disabled() -> ApiError {
    ApiError::new(
        ErrorCode::SandboxUnavailable,
        "this runtime does not run WASM controllers",
    )
}

/// Log the execution's `n`th log line, if under [`MAX_LOG_LINES`] (one warning when capped).
pub(crate) fn controller_log_limited(
    ctx: &ExecutionContext,
    n: usize,
    level: &str,
    message: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
) {
    if n <= MAX_LOG_LINES {
        controller_log(ctx, level, message, fields);
    } else if n == MAX_LOG_LINES + 1 {
        tracing::warn!(request_id = %ctx.request_id, controller = %ctx.controller, event = "log_limit", "controller log lines capped at {MAX_LOG_LINES}");
    }
}

pub(crate) fn limit_error(
    metrics: &Metrics,
    controller: &str,
    code: ErrorCode,
    resource: &str,
    message: String,
) -> ApiError {
    metrics
        .resource_limit_exceeded
        .with_label_values(&[controller, resource])
        .inc();
    tracing::warn!(controller = %controller, event = "resource_limit_exceeded", resource = %resource, code = code.as_str());
    ApiError::new(code, message)
}

pub(crate) fn failed(e: ApiError) -> ExecutionOutcome {
    ExecutionOutcome {
        result: Err(e),
        capabilities_used: Vec::new(),
        denials: 0,
        timed_out: false,
    }
}

fn worker_failed(message: String) -> ApiError {
    ApiError::new(ErrorCode::ControllerFailed, message)
}

/// A `result` error from the worker: capability codes pass through, everything else is E5001.
/// The traceback is logged by the caller's log line, never returned to the HTTP client.
pub(crate) fn controller_error(error: Option<WireError>) -> ApiError {
    let Some(e) = error else {
        return worker_failed("the controller failed without saying why".into());
    };
    if let Some(tb) = &e.traceback {
        tracing::info!(event = "controller_exception", exception = e.exception.as_deref().unwrap_or(""), traceback = %tb);
    }
    let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::ControllerFailed);
    let mut err = ApiError::new(code, e.message);
    if let Some(details) = e.details {
        err = err.with_details(details);
    }
    err
}

fn controller_log(
    ctx: &ExecutionContext,
    level: &str,
    message: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
) {
    let mut message = message.to_string();
    if message.len() > MAX_LOG_MESSAGE {
        let mut cut = MAX_LOG_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let fields = serde_json::Value::Object(fields.clone()).to_string();
    let fields = if fields.len() > MAX_LOG_MESSAGE {
        "{\"truncated\":true}".to_string()
    } else {
        fields
    };
    macro_rules! emit {
        ($lvl:ident) => {
            tracing::$lvl!(
                request_id = %ctx.request_id, controller = %ctx.controller, version = %ctx.version,
                event = "controller_log", fields = %fields, "{}", message
            )
        };
    }
    match level {
        "debug" => emit!(debug),
        "warning" | "warn" => emit!(warn),
        "error" | "critical" => emit!(error),
        _ => emit!(info),
    }
}

async fn wait_briefly(child: &mut tokio::process::Child) -> String {
    match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
        Ok(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => status.to_string(),
            }
        }
        _ => "still running".into(),
    }
}

fn kill_group(pgid: i32) {
    crate::spawn::kill_process_group(pgid);
}

pub(crate) fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(code: &str, exception: &str, message: &str) -> WireError {
        WireError {
            code: code.into(),
            message: message.into(),
            details: None,
            exception: Some(exception.into()),
            traceback: None,
        }
    }

    #[test]
    fn resource_errors_from_the_worker() {
        let enospc = "OSError: [Errno 28] No space left on device";
        let cases = [
            (wire("E5001", "MemoryError", ""), true, Some("E3002")),
            (wire("E5001", "OSError", enospc), true, Some("E3003")),
            (wire("E5001", "OSError", enospc), false, None),
            (
                wire(
                    "E5001",
                    "OSError",
                    "OSError: [Errno 30] Read-only file system",
                ),
                true,
                None,
            ),
            (wire("E5001", "ValueError", enospc), true, None),
            (wire("E2001", "MemoryError", ""), true, None),
        ];
        for (e, temp, want) in cases {
            let got = resource_error(&e, temp).map(|(c, _)| c.as_str());
            assert_eq!(got, want, "{e:?} temp={temp}");
        }
    }
}
