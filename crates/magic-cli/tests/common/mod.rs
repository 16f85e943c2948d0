//! Harness for end-to-end tests: starts the real `magic` binary on a free port with a fresh
//! data dir, and runs the real CLI against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

pub fn magic_bin() -> &'static str {
    env!("CARGO_BIN_EXE_magic")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `magic serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Start with a fresh data dir and extra environment.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut s = Server::start_in(&data_dir, env);
        s._tmp = Some(tmp);
        s
    }

    /// Start on an existing data dir (restart tests).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(magic_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("MAGIC_API_KEY")
            .env("MAGIC_ADMIN_API_KEY", ADMIN_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start magic serve");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let url = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let _ = tx.send(Ok(url));
                        sent = true;
                        continue;
                    }
                }
                if line.starts_with("error:") && !sent {
                    let _ = tx.send(Err(line.clone()));
                    sent = true;
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => url,
            Ok(Err(e)) => panic!("server failed to start: {e}"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start within 60s; logs: {:?}",
                    logs.lock().unwrap()
                );
            }
        };
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            logs,
            _tmp: None,
        }
    }

    /// Run the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(magic_bin())
            .args(args)
            .env("MAGIC_URL", &self.url)
            .env("MAGIC_API_KEY", ADMIN_KEY)
            .env_remove("MAGIC_DATA_DIR")
            .output()
            .expect("run magic")
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    pub async fn post(
        &self,
        path: &str,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        self.post_with(path, body, &[("x-api-key", ADMIN_KEY)])
            .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut req = self
            .client()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, headers, json)
    }

    /// Announce a body of `declared` bytes and send none of it: a server that enforces its
    /// limit answers from the headers alone (no race with a client still writing the body).
    pub fn post_declaring(&self, path: &str, declared: usize) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {ADMIN_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        )
        .expect("write");
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&response);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or_default())
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = self.client().get(format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let resp = req.send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Wait until a log line containing every needle appears.
    pub fn wait_log(&self, needles: &[&str]) -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for line in self.logs.lock().unwrap().iter() {
                if needles.iter().all(|n| line.contains(n)) {
                    return serde_json::from_str(line).ok();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write a controller package: a contract (YAML text) and controller code.
pub fn write_controller(dir: &Path, contract: &str, code: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("contract.yaml"), contract).unwrap();
    std::fs::write(dir.join("controller.py"), code).unwrap();
}

/// A contract with an object input/output and the given extra YAML (capabilities/resources).
pub fn contract(name: &str, version: &str, output_required: &str, extra: &str) -> String {
    format!(
        "name: {name}\nversion: {version}\ninput:\n  type: object\n  properties:\n    n: {{ type: integer }}\n    name: {{ type: string }}\noutput:\n  type: object\n  required: [{output_required}]\n  properties:\n    {output_required}: {{ type: string }}\n{extra}"
    )
}

/// Controller code whose execute body is `body` (indented 8 spaces already).
pub fn code(class: &str, body: &str) -> String {
    format!(
        "import asyncio, os, sys\nfrom magic import Controller, contract\n\n\n@contract(\"./contract.yaml\")\nclass {class}(Controller):\n    async def execute(self, input):\n{body}\n"
    )
}

/// Drop every per-controller PostgreSQL role (`magic_ctl_*`) that holds no privilege any more
/// (roles are cluster-wide: those of a dropped schema would otherwise pile up; the roles of
/// tests still running hold grants and stay).
pub const DROP_UNUSED_CONTROLLER_ROLES: &str = "DO $$ DECLARE r text; BEGIN \
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'magic\\_ctl\\_%' LOOP \
      BEGIN EXECUTE format('DROP ROLE %I', r); \
      EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END; \
    END LOOP; END $$";

/// Deploy `examples/controllers/hostile/<name>` through the CLI (panics with its output).
pub fn deploy_hostile(server: &Server, name: &str) {
    let dir = repo_root().join("examples/controllers/hostile").join(name);
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Is this process root (process mode needs it)? Says "skipped" when not.
pub fn is_root() -> bool {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: process mode needs root");
        return false;
    }
    true
}
