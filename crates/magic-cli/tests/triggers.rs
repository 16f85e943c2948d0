//! Queue-triggered controllers end to end: each message executes the controller once,
//! successes are acknowledged, a message that keeps failing is retried and then dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{code, contract, write_controller, Server};

fn processed(data_dir: &std::path::Path) -> Vec<i64> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             print(','.join(str(r[0]) for r in c.execute('SELECT n FROM processed ORDER BY n')))",
        ])
        .arg(data_dir.join("app.db"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_execute_the_triggered_controller_with_retries_and_dead_letters() {
    let server = Server::start(&[]);
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE processed (n INTEGER PRIMARY KEY)'); c.commit()"])
        .arg(server.data_dir.join("app.db"))
        .status()
        .unwrap();
    assert!(status.success());
    let tmp = tempfile::tempdir().unwrap();

    let producer = tmp.path().join("producer");
    write_controller(
        &producer,
        &contract("Producer", "1.0.0", "greeting", "capabilities:\n  - queue:publish: { queues: [jobs] }\n"),
        &code("Producer", "        for i in range(1, input[\"n\"] + 1):\n            await self.queue.publish(\"jobs\", {\"n\": i})\n        return {\"greeting\": \"sent\"}"),
    );
    // The worker's input schema is the message's shape; message 3 always fails.
    let worker_contract = "name: Worker\nversion: 1.0.0\ninput:\n  type: object\n  required: [n]\n  properties:\n    n: { type: integer }\noutput: { type: object }\ncapabilities:\n  - queue:subscribe: { queues: [jobs] }\n  - db:write: { tables: [processed] }\n";
    let worker = tmp.path().join("worker");
    write_controller(
        &worker,
        worker_contract,
        &code("Worker", "        if input[\"n\"] == 3:\n            raise RuntimeError(\"poison message\")\n        await self.db.insert(\"processed\", {\"n\": input[\"n\"]})\n        return {}"),
    );
    assert!(server
        .cli(&["deploy", producer.to_str().unwrap()])
        .status
        .success());

    // A trigger needs a subscription: the producer may publish to jobs but not consume it.
    let out = server.cli(&["trigger", "set", "Producer", "--queue", "jobs"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("E2005"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = server.cli(&[
        "deploy",
        worker.to_str().unwrap(),
        "--trigger-queue",
        "jobs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&server.cli(&["trigger", "list"]).stdout).into_owned();
    assert!(
        listed.contains("Worker") && listed.contains("jobs"),
        "{listed}"
    );

    let (status, _, body) = server.post("/api/execute/Producer", r#"{"n": 5}"#).await;
    assert_eq!(status, 200, "{body}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while processed(&server.data_dir) != vec![1, 2, 4, 5] && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        processed(&server.data_dir),
        vec![1, 2, 4, 5],
        "each good message executed once"
    );

    // The poison message is attempted queue_max_attempts (5) times, then dead-lettered.
    let failures = || {
        let out = server.cli(&["audit", "tail", "--last", "1000"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("\"execution_error\"") && l.contains("\"Worker\""))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while failures() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(failures(), 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        failures(),
        5,
        "a dead-lettered message is not retried again"
    );
    assert_eq!(processed(&server.data_dir), vec![1, 2, 4, 5]);

    // Removing the trigger stops consumption: message 6 is published but never processed.
    assert!(server
        .cli(&["trigger", "remove", "Worker"])
        .status
        .success());
    let (status, _, _) = server.post("/api/execute/Producer", r#"{"n": 6}"#).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(processed(&server.data_dir), vec![1, 2, 4, 5]);
}
