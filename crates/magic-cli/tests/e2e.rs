//! End-to-end tests: the real `magic` binary serving, the real CLI, real Python workers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{code, contract, write_controller, Server, ADMIN_KEY};
use serde_json::json;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ECHO: &str = "        return {\"greeting\": \"hi \" + input.get(\"name\", \"?\")}";

fn deploy(server: &Server, dir: &std::path::Path) {
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn walkthrough_init_validate_deploy_execute_rollback_export() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("greeter");

    let out = server.cli(&["init", "Greeter", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli(&["validate", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "validate: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("Greeter 0.1.0 is valid"));
    deploy(&server, &dir);

    let out = server.cli(&["execute", "Greeter", "--input", r#"{"name":"Ada"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let response: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(response["output"]["greeting"], "Hello, Ada!");
    assert_eq!(response["controller"], "Greeter");
    assert_eq!(response["version"], "0.1.0");
    assert!(response["request_id"].as_str().unwrap().starts_with("req_"));
    assert!(response["metrics"]["duration_ms"].as_f64().unwrap() > 0.0);

    // Version 0.2.0 changes the greeting; deploying it switches traffic.
    let contract_text = std::fs::read_to_string(dir.join("contract.yaml")).unwrap();
    std::fs::write(
        dir.join("contract.yaml"),
        contract_text.replace("version: 0.1.0", "version: 0.2.0"),
    )
    .unwrap();
    let code_text = std::fs::read_to_string(dir.join("controller.py")).unwrap();
    std::fs::write(
        dir.join("controller.py"),
        code_text.replace("Hello", "Howdy"),
    )
    .unwrap();
    deploy(&server, &dir);
    let out = server.cli(&["execute", "Greeter", "--input", r#"{"name":"Ada"}"#]);
    let response: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(response["output"]["greeting"], "Howdy, Ada!");
    assert_eq!(response["version"], "0.2.0");

    // A pinned version still runs the old code.
    let (status, _, body) = server
        .post("/api/execute/Greeter?version=0.1.0", r#"{"name":"B"}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["output"]["greeting"], "Hello, B!");

    let out = server.cli(&["status", "Greeter"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("active: 0.2.0"), "{text}");
    assert!(text.contains("0.1.0"));

    let out = server.cli(&["rollback", "Greeter", "--to", "v0.1.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("active version is now 0.1.0 (was 0.2.0)"));
    let (_, _, body) = server.post("/api/execute/Greeter", r#"{"name":"C"}"#).await;
    assert_eq!(body["output"]["greeting"], "Hello, C!");
    assert_eq!(body["version"], "0.1.0");

    let out = server.cli(&["list"]);
    assert!(stdout(&out).contains("Greeter"), "{}", stdout(&out));

    let export = tmp.path().join("export");
    let out = server.cli(&["export", "--all", "--output", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for v in ["0.1.0", "0.2.0"] {
        let exported = export.join("Greeter").join(v);
        let out = server.cli(&["validate", exported.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "exported {v} does not validate: {}",
            stdout(&out)
        );
    }
    let exported_code =
        std::fs::read_to_string(export.join("Greeter/0.2.0/controller.py")).unwrap();
    assert!(exported_code.contains("Howdy"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_is_immutable_per_version_and_idempotent_for_same_content() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Imm", "1.0.0", "greeting", ""),
        &code("Imm", ECHO),
    );
    deploy(&server, &dir);
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("already deployed"),
        "{}",
        stdout(&out)
    );
    std::fs::write(
        dir.join("controller.py"),
        code("Imm", "        return {\"greeting\": \"changed\"}"),
    )
    .unwrap();
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("E1005") && err.contains("immutable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(&data, &[]);
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Durable", "1.0.0", "greeting", ""),
        &code("Durable", ECHO),
    );
    deploy(&server, &dir);
    server.stop();
    let server = Server::start_in(&data, &[]);
    let (status, _, body) = server
        .post("/api/execute/Durable", r#"{"name":"again"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["greeting"], "hi again");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_clear_errors_and_the_runtime_keeps_serving() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let controllers: &[(&str, &str, &str)] = &[
        ("Echo", ECHO, ""),
        ("Raises", "        raise ValueError(\"bad customer\")", ""),
        ("NotObject", "        return [1, 2, 3]", ""),
        ("WrongShape", "        return {\"greeting\": 42}", ""),
        (
            "Forever",
            "        while True:\n            await asyncio.sleep(0.05)",
            "resources: { timeout: 1s }\n",
        ),
        (
            "Spins",
            "        while True:\n            pass",
            "resources: { timeout: 1s }\n",
        ),
        ("Dies", "        os._exit(3)", ""),
        (
            "Killed",
            "        import signal\n        os.kill(os.getpid(), signal.SIGKILL)",
            "",
        ),
        (
            "Undeclared",
            "        await self.secrets.get(\"STRIPE_KEY\")\n        return {\"greeting\": \"x\"}",
            "",
        ),
    ];
    for (name, body, extra) in controllers {
        let dir = tmp.path().join(name);
        write_controller(
            &dir,
            &contract(name, "1.0.0", "greeting", extra),
            &code(name, body),
        );
        deploy(&server, &dir);
    }

    // Unknown controller / version.
    let (status, headers, body) = server.post("/api/execute/Nope", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("E1001"))
    );
    assert_eq!(
        headers["x-request-id"].to_str().unwrap(),
        body["request_id"].as_str().unwrap()
    );
    let (status, _, body) = server.post("/api/execute/Echo?version=9.9.9", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("E1001"))
    );
    assert_eq!(body["error"]["details"]["versions"], json!(["1.0.0"]));
    let (status, _, body) = server.post("/api/execute/Echo?version=latest", "{}").await;
    assert_eq!(status, 400, "{body}");

    // Invalid JSON and schema violations: E1002 with the failing path.
    let (status, _, body) = server.post("/api/execute/Echo", "{not json").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("E1002"))
    );
    let (status, _, body) = server
        .post("/api/execute/Echo", r#"{"n": "not a number"}"#)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("E1002"))
    );
    assert_eq!(
        body["error"]["details"]["violations"][0]["path"], "/n",
        "{body}"
    );
    let (status, _, body) = server.post("/api/execute/Echo", "[1]").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("E1002"))
    );

    // Output violations: E1003 with the path.
    let (status, _, body) = server.post("/api/execute/NotObject", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("E1003")),
        "{body}"
    );
    let (status, _, body) = server.post("/api/execute/WrongShape", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("E1003"))
    );
    assert_eq!(
        body["error"]["details"]["violations"][0]["path"], "/greeting",
        "{body}"
    );

    // A raising controller: E5001, message but never the traceback.
    let (status, _, body) = server.post("/api/execute/Raises", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("E5001")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("bad customer"), "{message}");
    assert!(!body.to_string().contains("Traceback"), "{body}");

    // Never returns (async and busy loop): killed at the contract timeout, E3001.
    for name in ["Forever", "Spins"] {
        let started = std::time::Instant::now();
        let (status, _, body) = server.post(&format!("/api/execute/{name}"), "{}").await;
        let took = started.elapsed();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (504, Some("E3001")),
            "{name}: {body}"
        );
        assert!(
            took >= std::time::Duration::from_millis(950),
            "{name} answered after {took:?}"
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "{name} answered after {took:?}"
        );
    }

    // A worker that dies mid-request: E5001, and the next request still works.
    for name in ["Dies", "Killed"] {
        let (status, _, body) = server.post(&format!("/api/execute/{name}"), "{}").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (500, Some("E5001")),
            "{name}: {body}"
        );
    }
    let (status, _, body) = server
        .post("/api/execute/Echo", r#"{"name":"still"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["greeting"], "hi still");

    // An undeclared capability escaping the controller carries its code.
    let (status, _, body) = server.post("/api/execute/Undeclared", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("E2001")),
        "{body}"
    );

    // Oversize body: 413 with the envelope.
    let (status, body) = server.post_declaring("/api/execute/Echo", 2 * 1024 * 1024);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "E1002");

    // Metrics saw all of it, with real values.
    let (status, text) = server.get("/metrics", None).await;
    assert_eq!(status, 200);
    for needle in [
        "magic_controller_executions_total{controller=\"Echo\",status=\"success\"} 1",
        "magic_controller_executions_total{controller=\"Forever\",status=\"timeout\"} 1",
        "magic_controller_errors_total{controller=\"Raises\",error_code=\"E5001\"} 1",
        "magic_controller_errors_total{controller=\"WrongShape\",error_code=\"E1003\"} 1",
        "magic_resource_limit_exceeded_total{controller=\"Spins\",resource=\"timeout\"} 1",
        "magic_controller_duration_seconds_count{controller=\"Echo\"}",
        "magic_capability_usage_total{capability=",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_but_health_readyz_metrics_needs_a_key() {
    let server = Server::start(&[]);
    for path in ["/api/health", "/api/readyz", "/metrics"] {
        let (status, _) = server.get(path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let (_, ready) = server.get("/api/readyz", None).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["migrations"], "ok");
    for path in [
        "/api/admin/controllers",
        "/api/openapi.json",
        "/api/admin/controllers/X",
    ] {
        let (status, body) = server.get(path, None).await;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("E4001"), "{body}");
        let (status, _) = server.get(path, Some("wrong-key")).await;
        assert_eq!(status, 401, "{path} with a wrong key");
    }
    let (status, _, body) = server.post_with("/api/execute/X", "{}", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("E4001"))
    );
    let (status, doc) = server.get("/api/openapi.json", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/api/execute/{controller}"].is_object());
    assert!(doc["paths"]["/api/admin/controllers/{name}/rollback"].is_object());

    // The CLI without a key says so in one line.
    let out = std::process::Command::new(common::magic_bin())
        .args(["list", "--data-dir", "/nonexistent"])
        .env("MAGIC_URL", &server.url)
        .env_remove("MAGIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no API key"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_and_logged() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Logs", "1.0.0", "greeting", ""),
        &code("Logs", "        self.log.info(\"working\", customer_id=\"cust_789\")\n        return {\"greeting\": self.request_id}"),
    );
    deploy(&server, &dir);
    let (status, headers, body) = server
        .post_with(
            "/api/execute/Logs",
            "{}",
            &[("x-api-key", ADMIN_KEY), ("x-request-id", "req_trace_42")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-request-id"], "req_trace_42");
    assert_eq!(body["request_id"], "req_trace_42");
    assert_eq!(body["output"]["greeting"], "req_trace_42");
    let line = server
        .wait_log(&["execution_completed", "req_trace_42"])
        .expect("an execution_completed log line");
    for field in [
        "timestamp",
        "level",
        "controller",
        "version",
        "request_id",
        "event",
        "duration_ms",
        "capabilities_used",
    ] {
        assert!(line.get(field).is_some(), "log line lacks {field}: {line}");
    }
    assert_eq!(line["controller"], "Logs");
    let controller_line = server
        .wait_log(&["controller_log", "req_trace_42"])
        .expect("controller log line");
    assert_eq!(controller_line["customer_id"], "cust_789");
    assert_eq!(controller_line["message"], "working");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_answers_429_instead_of_queueing() {
    let server = Server::start(&[("CONTROLLER_MAX_CONCURRENT", "1")]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Slow", "1.0.0", "greeting", ""),
        &code(
            "Slow",
            "        await asyncio.sleep(1.5)\n        return {\"greeting\": \"done\"}",
        ),
    );
    deploy(&server, &dir);
    let first = {
        let url = server.url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/api/execute/Slow"))
                .header("x-api-key", ADMIN_KEY)
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (status, _, body) = server.post("/api/execute/Slow", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("E3004")),
        "{body}"
    );
    assert_eq!(first.await.unwrap(), 200);
    let (status, _, _) = server.post("/api/execute/Slow", "{}").await;
    assert_eq!(status, 200, "a slot frees up when the execution ends");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_packages_are_refused_with_every_problem() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();

    // Malformed YAML.
    let dir = tmp.path().join("yaml");
    write_controller(&dir, "name: [unclosed\n", &code("Y", ECHO));
    let out = server.cli(&["validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("contract.yaml"), "{}", stdout(&out));
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));

    // Several problems at once: bad name, bad version, unknown key, limit above max.
    let dir = tmp.path().join("many");
    write_controller(
        &dir,
        "name: 9bad\nversion: one\ninput: {type: object}\noutput: {type: object}\nsurprise: 1\nresources: { timeout: 900s }\n",
        &code("M", ECHO),
    );
    let out = server.cli(&["validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for field in ["name", "version", "surprise", "resources.timeout"] {
        assert!(text.contains(field), "problem list lacks {field}: {text}");
    }
    assert!(text.lines().count() >= 4, "{text}");

    // Usage errors exit 2.
    let out = server.cli(&["validate"]);
    assert_eq!(out.status.code(), Some(2));

    // A symlink that leaves the folder is refused by the CLI.
    let dir = tmp.path().join("link");
    write_controller(
        &dir,
        &contract("Link", "1.0.0", "greeting", ""),
        &code("Link", ECHO),
    );
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let out = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("passwd"), "{}", stderr(&out));

    // The server refuses path tricks in an upload made without the CLI.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for bad in ["../escape.py", "/abs.py", "a/../../b.py"] {
        let body = json!({ "files": {
            "contract.yaml": b64(&contract("Trick", "1.0.0", "greeting", "")),
            "controller.py": b64(&code("Trick", ECHO)),
            bad: b64("x = 1"),
        }});
        let (status, _, resp) = server
            .post("/api/admin/controllers", &body.to_string())
            .await;
        assert_eq!(
            (status, resp["error"]["code"].as_str()),
            (400, Some("E1004")),
            "{bad}: {resp}"
        );
    }
    let (status, _, resp) = server
        .post("/api/admin/controllers", "{\"files\": 5}")
        .await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (400, Some("E1004")),
        "{resp}"
    );
    let (status, _, _) = server.post("/api/admin/controllers", "garbage").await;
    assert_eq!(status, 400);
    let (status, resp) = server.post_declaring("/api/admin/controllers", 25 * 1024 * 1024);
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (413, Some("E1004")),
        "{resp}"
    );
    assert!(!server.data_dir.join("escape.py").exists());
    assert!(!server.data_dir.join("packages/escape.py").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_allowlist_limits_which_names_may_be_deployed() {
    let server = Server::start(&[("CONTROLLER_ALLOWLIST", "Allowed, AlsoAllowed")]);
    let tmp = tempfile::tempdir().unwrap();
    for (name, ok) in [("Allowed", true), ("Sneaky", false)] {
        let dir = tmp.path().join(name);
        write_controller(
            &dir,
            &contract(name, "1.0.0", "greeting", ""),
            &code(name, ECHO),
        );
        let out = server.cli(&["deploy", dir.to_str().unwrap()]);
        assert_eq!(out.status.success(), ok, "{name}: {}", stderr(&out));
        if !ok {
            let err = stderr(&out);
            assert!(
                err.contains("E4002") && err.contains("CONTROLLER_ALLOWLIST"),
                "{err}"
            );
        }
    }
    let (status, _, _) = server.post("/api/execute/Sneaky", "{}").await;
    assert_eq!(status, 404, "a refused deploy leaves nothing behind");
    // A bad name in the setting refuses to start, with a one-line reason.
    let out = std::process::Command::new(common::magic_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            tmp.path().join("d").to_str().unwrap(),
        ])
        .env("CONTROLLER_ALLOWLIST", "ok,9bad")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("CONTROLLER_ALLOWLIST"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_mode_keeps_the_temp_dir_private_to_one_execution_and_enforces_its_size() {
    let server = Server::start(&[("CONTROLLER_EXECUTION_MODE", "inline")]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("filler");
    write_controller(
        &dir,
        &contract("Filler", "1.0.0", "greeting", "capabilities:\n  - fs:temp: { size: 1M }\n"),
        &code(
            "Filler",
            "        path = os.path.join(self.temp_dir, 'blob')\n        seen = os.listdir(self.temp_dir)\n        with open(path, 'wb') as f:\n            f.write(b'x' * input.get('n', 0))\n        return {\"greeting\": ','.join(seen)}",
        ),
    );
    deploy(&server, &dir);
    let (status, _, body) = server.post("/api/execute/Filler", r#"{"n": 1000}"#).await;
    assert_eq!(status, 200, "{body}");
    // The next execution starts with an empty dir: nothing carried over.
    let (status, _, body) = server
        .post("/api/execute/Filler", r#"{"n": 2000000}"#)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("E3003")),
        "{body}"
    );
    let (status, _, body) = server.post("/api/execute/Filler", r#"{"n": 10}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["output"]["greeting"], "",
        "a previous execution's file survived"
    );
    let (_, metrics) = server.get("/metrics", None).await;
    assert!(
        metrics.contains(
            "magic_resource_limit_exceeded_total{controller=\"Filler\",resource=\"temp_disk\"} 1"
        ),
        "{metrics}"
    );
}
