//! Snapshot, wipe, restore with the operations scripts (`scripts/init_db.sh`,
//! `scripts/snapshot.sh`, `scripts/restore.sh`) against the real server, on SQLite and on
//! PostgreSQL (a database of its own): the audit chain verifies with the snapshot's head,
//! every controller serves again with the same active version, secrets still decrypt; and
//! `magic export --all` / `magic import` round-trip every version and the active one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{code, contract, magic_bin, repo_root, write_controller, Server, ADMIN_KEY};

fn script(name: &str, server: Option<&Server>, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts").join(name))
        .args(args)
        .env("MAGIC_BIN", magic_bin())
        .env_remove("DATABASE_URL")
        .env_remove("MAGIC_DATA_DIR")
        .env_remove("MAGIC_APP_DATABASE_URL");
    if let Some(s) = server {
        cmd.env("MAGIC_URL", &s.url).env("MAGIC_API_KEY", ADMIN_KEY);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output, what: &str) -> serde_json::Value {
    serde_json::from_str(&ok(out, what)).unwrap()
}

/// Deploy Greeter 1.0.0, 1.1.0, 2.0.0 (rolled back to 1.1.0) and Vault 1.0.0 with a secret.
fn populate(server: &Server, tmp: &Path) {
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        let dir = tmp.join(format!("greeter-{v}"));
        write_controller(
            &dir,
            &contract("Greeter", v, "greeting", ""),
            &code(
                "Greeter",
                &format!("        return {{\"greeting\": \"hello from {v}\"}}"),
            ),
        );
        ok(&server.cli(&["deploy", dir.to_str().unwrap()]), "deploy");
    }
    ok(
        &server.cli(&["rollback", "Greeter", "--to", "1.1.0"]),
        "rollback",
    );
    let dir = tmp.join("vault");
    write_controller(
        &dir,
        &contract(
            "Vault",
            "1.0.0",
            "greeting",
            "capabilities:\n  - secrets:read: { keys: [API_TOKEN] }\n",
        ),
        &code(
            "Vault",
            "        return {\"greeting\": await self.secrets.get(\"API_TOKEN\")}",
        ),
    );
    ok(&server.cli(&["deploy", dir.to_str().unwrap()]), "deploy");
    ok(
        &server.cli(&[
            "secrets",
            "set",
            "Vault",
            "API_TOKEN",
            "--value",
            "s3cr3t-value",
        ]),
        "secrets set",
    );
}

/// What must hold on a server holding the populated state.
async fn check_serves(server: &Server) {
    let (status, _, body) = server.post("/api/execute/Greeter", "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "1.1.0");
    assert_eq!(body["output"]["greeting"], "hello from 1.1.0");
    for v in ["1.0.0", "2.0.0"] {
        let (status, _, body) = server
            .post(&format!("/api/execute/Greeter?version={v}"), "{}")
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"]["greeting"], format!("hello from {v}"));
    }
    let (status, _, body) = server.post("/api/execute/Vault", "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["greeting"], "s3cr3t-value");
    let status = json(&server.cli(&["status", "Greeter", "--json"]), "status");
    assert_eq!(status["active_version"], "1.1.0");
    assert_eq!(status["versions"].as_array().unwrap().len(), 3);
}

/// Keys kept outside the data dir, as in production (a secret store mounts them).
fn key_env(tmp: &Path) -> Vec<(String, String)> {
    let master = tmp.join("keys/master.key");
    let audit = tmp.join("keys/audit_signing.key");
    std::fs::create_dir_all(tmp.join("keys")).unwrap();
    std::fs::write(&master, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    std::fs::write(&audit, "07".repeat(32)).unwrap();
    vec![
        (
            "MAGIC_MASTER_KEY_FILE".into(),
            master.to_string_lossy().into_owned(),
        ),
        (
            "AUDIT_SIGNING_KEY_FILE".into(),
            audit.to_string_lossy().into_owned(),
        ),
    ]
}

async fn round_trip(database_url: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut env = key_env(tmp.path());
    if let Some(url) = database_url {
        env.push(("DATABASE_URL".into(), url.into()));
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data_arg = data_dir.to_str().unwrap();

    // init_db.sh creates the database and applies the migrations; running it again is a no-op.
    for _ in 0..2 {
        ok(
            &script("init_db.sh", None, &env_ref, &["--data-dir", data_arg]),
            "init_db.sh",
        );
    }

    let server = Server::start_in(&data_dir, &env_ref);
    populate(&server, tmp.path());
    check_serves(&server).await;
    let head = json(&server.cli(&["audit", "verify", "--json"]), "audit verify");
    assert_eq!(head["intact"], true);

    let snaps = tmp.path().join("snapshots");
    let out = script(
        "snapshot.sh",
        Some(&server),
        &env_ref,
        &["--output", snaps.to_str().unwrap(), "--data-dir", data_arg],
    );
    let tarball = PathBuf::from(ok(&out, "snapshot.sh").trim());
    assert!(tarball.is_file(), "{tarball:?}");
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("magic-snapshot-") && name.ends_with("Z.tar.gz"),
        "{name}"
    );
    server.stop();

    // What the snapshot holds: manifest, checksums, key references without the keys.
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    ok(
        &Command::new("tar")
            .arg("-C")
            .arg(&unpacked)
            .arg("-xzf")
            .arg(&tarball)
            .output()
            .unwrap(),
        "tar",
    );
    let snap = unpacked.join(name.trim_end_matches(".tar.gz"));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["audit_head_seq"], head["head_seq"]);
    assert_eq!(manifest["audit_head_hash"], head["head_hash"]);
    assert_eq!(manifest["controller_versions"], 4);
    assert_eq!(
        manifest["database"],
        if database_url.is_some() {
            "postgresql"
        } else {
            "sqlite"
        }
    );
    let keys = std::fs::read_to_string(snap.join("keys.json")).unwrap();
    assert!(keys.contains("\"sha256\": \""), "{keys}");
    assert!(
        !keys.contains("AAECAwQF") && !keys.contains(&"07".repeat(32)),
        "{keys}"
    );
    assert_eq!(
        std::fs::read_to_string(snap.join("controllers/Greeter/ACTIVE"))
            .unwrap()
            .trim(),
        "1.1.0"
    );

    // Wipe: the data dir and the database are gone.
    std::fs::remove_dir_all(&data_dir).unwrap();
    if let Some(url) = database_url {
        drop_database(url).await;
    }

    // A snapshot whose keys are not the ones here is refused.
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(&wrong, "HyAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=").unwrap();
    let mut wrong_env = env_ref.clone();
    wrong_env[0] = ("MAGIC_MASTER_KEY_FILE", wrong.to_str().unwrap());
    let out = script(
        "restore.sh",
        None,
        &wrong_env,
        &[
            "--snapshot",
            tarball.to_str().unwrap(),
            "--data-dir",
            data_arg,
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("master_key"),
        "{out:?}"
    );

    ok(
        &script(
            "restore.sh",
            None,
            &env_ref,
            &[
                "--snapshot",
                tarball.to_str().unwrap(),
                "--data-dir",
                data_arg,
            ],
        ),
        "restore.sh",
    );
    // Restoring over what is now there is refused.
    let again = script(
        "restore.sh",
        None,
        &env_ref,
        &[
            "--snapshot",
            tarball.to_str().unwrap(),
            "--data-dir",
            data_arg,
        ],
    );
    assert!(!again.status.success());

    let server = Server::start_in(&data_dir, &env_ref);
    let restored = json(&server.cli(&["audit", "verify", "--json"]), "audit verify");
    assert_eq!(restored["intact"], true, "{restored}");
    let (seq, hash) = (
        head["head_seq"].as_u64().unwrap(),
        head["head_hash"].as_str().unwrap(),
    );
    assert!(restored["head_seq"].as_u64().unwrap() >= seq, "{restored}");
    // The snapshot's head record is in the restored chain, with the same hash.
    let out = server.cli(&[
        "audit",
        "export",
        "--from",
        &seq.to_string(),
        "--to",
        &seq.to_string(),
    ]);
    let record: serde_json::Value = serde_json::from_str(ok(&out, "audit export").trim()).unwrap();
    assert_eq!(record["hash"], hash, "{record}");
    check_serves(&server).await;
    server.stop();

    // Export/import round trip into an empty runtime: every version, the same active one.
    let fresh = Server::start(&[]);
    let out = fresh.cli(&["import", snap.join("controllers").to_str().unwrap()]);
    assert!(
        ok(&out, "import").contains("imported 4 version(s) of 2 controller(s)"),
        "{out:?}"
    );
    let status = json(&fresh.cli(&["status", "Greeter", "--json"]), "status");
    assert_eq!(status["active_version"], "1.1.0");
    assert_eq!(status["versions"].as_array().unwrap().len(), 3);
    let (status, _, body) = fresh.post("/api/execute/Greeter", "{}").await;
    assert_eq!(
        (status, &body["version"]),
        (200, &serde_json::json!("1.1.0"))
    );
    // Importing again changes nothing.
    ok(
        &fresh.cli(&["import", snap.join("controllers").to_str().unwrap()]),
        "import",
    );
    let export = tmp.path().join("re-export");
    ok(
        &fresh.cli(&["export", "--all", "--output", export.to_str().unwrap()]),
        "export",
    );
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        assert_eq!(
            std::fs::read(export.join("Greeter").join(v).join("controller.py")).unwrap(),
            std::fs::read(
                snap.join("controllers/Greeter")
                    .join(v)
                    .join("controller.py")
            )
            .unwrap()
        );
    }
    fresh.stop();
}

async fn drop_database(url: &str) {
    let db = url.rsplit('/').next().unwrap();
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_snapshot_wipe_restore() {
    round_trip(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_snapshot_wipe_restore() {
    let db = format!("magic_restore_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let result = tokio::spawn({
        let url = url.clone();
        async move { round_trip(Some(&url)).await }
    })
    .await;
    drop_database(&url).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
