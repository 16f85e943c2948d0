//! `magic doctor --production`: the production hardening checklist (docs/hardening.md) checked
//! against the environment of the real binary: a production configuration passes, and each
//! gap fails with its item named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

/// A setting changed (`Some`) or removed (`None`) from the passing configuration.
type Change = (&'static str, Option<&'static str>);

fn doctor(env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(common::magic_bin());
    cmd.args(["doctor", "--production"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn production_checklist() {
    if magic_runtime::sandboxed::missing_required(&magic_runtime::sandboxed::isolation_layers())
        .is_some()
    {
        eprintln!("SKIPPED: this host lacks an isolation layer (run as root with cgroups)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("master.key");
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data_dir = tmp.path().join("data");
    let key_s = key.to_str().unwrap().to_string();
    let data_s = data_dir.to_str().unwrap().to_string();
    let good: Vec<(&str, &str)> = vec![
        ("MAGIC_DATA_DIR", &data_s),
        ("CONTROLLER_EXECUTION_MODE", "process"),
        ("CONTROLLER_ALLOWLIST", "InvoiceSync,Greeter"),
        ("MAGIC_BEHIND_TLS_PROXY", "1"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("ALLOWED_ORIGINS", "https://app.example.com"),
        ("AUDIT_LOG_SINK", "file:/var/log/magic/audit.jsonl"),
        ("AUDIT_RETENTION_DAYS", "365"),
        (
            "DATABASE_URL",
            "postgres://magic@db.internal/magic?sslmode=verify-full",
        ),
        ("REDIS_URL", "rediss://cache.internal:6380"),
        ("MAGIC_MASTER_KEY_FILE", &key_s),
    ];
    let (code, stdout, stderr) = doctor(&good);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("every checked item passes"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");

    let with = |changes: &[Change]| {
        let mut env: Vec<(&str, &str)> = good
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .copied()
            .collect();
        env.extend(changes.iter().filter_map(|(k, v)| v.map(|v| (*k, v))));
        doctor(&env)
    };
    let table: &[(&[Change], &[&str])] = &[
        (&[("DATABASE_URL", None)], &["database"]),
        (&[("REDIS_URL", None)], &["redis"]),
        (
            &[("CONTROLLER_EXECUTION_MODE", Some("inline"))],
            &["process isolation", "resource limits"],
        ),
        (
            &[("MAGIC_ALLOW_DEGRADED_ISOLATION", Some("1"))],
            &["process isolation", "resource limits"],
        ),
        (&[("MAGIC_BEHIND_TLS_PROXY", None)], &["TLS termination"]),
        (&[("JWT_SECRET", Some("short"))], &["strong secrets"]),
        (&[("ALLOWED_ORIGINS", Some("*"))], &["CORS origins"]),
        (&[("AUDIT_LOG_SINK", None)], &["audit logging"]),
        (&[("CONTROLLER_ALLOWLIST", None)], &["controller allowlist"]),
        (&[("MAGIC_MASTER_KEY_FILE", None)], &["master key"]),
        (
            &[
                ("DATABASE_URL", None),
                ("REDIS_URL", None),
                ("ALLOWED_ORIGINS", Some("*")),
            ],
            &["CORS origins", "database", "redis"],
        ),
    ];
    for (changes, items) in table {
        let (code, stdout, stderr) = with(changes);
        assert_eq!(code, 1, "{changes:?}: {stdout}{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: not production-ready:"))
            .unwrap_or_else(|| panic!("{changes:?}: {stderr}"));
        let named: Vec<&str> = line
            .trim_start_matches("error: not production-ready:")
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(named, *items, "{changes:?}");
        for item in *items {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with("FAIL") && l.contains(item)),
                "{item}: {stdout}"
            );
        }
    }

    // A key file others can read fails too.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = doctor(&good);
    assert_eq!(code, 1);
    assert!(stderr.contains("master key"), "{stderr}");
}

/// Plain `magic doctor` lists the isolation layers and whether WASM controllers can run, with
/// the configured instance pool.
#[test]
fn doctor_reports_the_wasm_engine() {
    let out = Command::new(common::magic_bin())
        .arg("doctor")
        .env("MAGIC_WASM_MAX_INSTANCES", "7")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("wasm engine"))
        .unwrap_or_else(|| panic!("no wasm engine line in:\n{text}"));
    assert!(line.starts_with("active"), "{line}");
    // Pooled, or on-demand where the host refuses the reservation: the configured size either way.
    assert!(
        line.contains("7 instance slots") || line.contains("for 7 slots"),
        "{line}"
    );
    assert!(text.contains("process mode:"), "{text}");
}
