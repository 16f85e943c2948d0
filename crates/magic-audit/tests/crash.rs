//! `kill -9` under load: every acknowledged record survives and the chain verifies.
//!
//! The test re-runs its own binary as a child (the ignored `crash_child` test) that appends
//! from many tasks and prints each acknowledged seq; the parent SIGKILLs it mid-stream.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use magic_audit::{AuditChain, AuditConfig, AuditRecord, ReadRange};

const CHILD_ENV: &str = "MAGIC_AUDIT_CRASH_CHILD_DIR";
const MARK: &str = "@@ACK ";

/// The child: appends forever from 32 tasks, printing `@@ACK seq request_id` per answer.
#[test]
#[ignore = "child process of kill_9_under_load_loses_no_acknowledged_record"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = std::path::PathBuf::from(dir);
        let mut cfg = AuditConfig::new(&dir);
        cfg.checkpoint_every = 700;
        let chain = AuditChain::open(common::sqlite(&dir).await, cfg)
            .await
            .expect("opens");
        let pid = std::process::id();
        let mut tasks = Vec::new();
        for t in 0..32_u64 {
            let c = chain.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let mut e = common::event(i);
                    e.request_id = Some(format!("p{pid}-t{t}-{i}"));
                    let id = e.request_id.clone().unwrap_or_default();
                    let r = c.append_event(e).await.expect("append");
                    println!("{MARK}{} {id}", r.seq);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Run a child until it has acknowledged `acks` records, SIGKILL it, return every
/// acknowledgement it printed (seq → request id).
fn run_and_kill(dir: &std::path::Path, acks: usize) -> BTreeMap<u64, String> {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(pos) = line.find(MARK) {
                let mut parts = line[pos + MARK.len()..].split(' ');
                let seq = parts.next().and_then(|s| s.parse().ok());
                let id = parts.next().map(str::to_string);
                if let (Some(seq), Some(id)) = (seq, id) {
                    let _ = tx.send((seq, id));
                }
            }
        }
    });
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < acks && Instant::now() < deadline {
        if let Ok((seq, id)) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.insert(seq, id);
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    reader.join().expect("reader");
    // Everything the child printed before it died.
    while let Ok((seq, id)) = rx.try_recv() {
        seen.insert(seq, id);
    }
    assert!(seen.len() >= acks, "child acknowledged only {}", seen.len());
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = BTreeMap::new();
    // Two crashes in a row: the second child continues the chain the first left.
    for acks in [3000, 1500] {
        let path = dir.path().to_path_buf();
        let got = tokio::task::spawn_blocking(move || run_and_kill(&path, acks))
            .await
            .expect("child run");
        acked.extend(got);
        let chain = AuditChain::open(common::sqlite(dir.path()).await, common::config(dir.path()))
            .await
            .expect("reopens");
        let report = chain.verify().await.expect("verify");
        assert!(report.is_ok(), "{report:?}");
        let max_acked = acked.keys().next_back().copied().unwrap_or(0);
        assert!(
            report.head_seq >= max_acked,
            "acknowledged seq {max_acked} lost: chain ends at {}",
            report.head_seq
        );
        assert!(report.checkpoints_checked >= 1, "{report:?}");
        // Each acknowledged seq holds the very event that was acknowledged.
        let records: Vec<AuditRecord> = chain
            .read_with(ReadRange::all(), false)
            .try_collect()
            .await
            .expect("read");
        for (seq, id) in &acked {
            let r = &records[(*seq - 1) as usize];
            assert_eq!(r.request_id.as_deref(), Some(id.as_str()), "seq {seq}");
        }
        // Dropping the chain without appending leaves it as it is for the next child.
        drop(chain);
    }
}
