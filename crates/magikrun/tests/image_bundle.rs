//! Image import (OCI layout, oci-archive) and bundle building, with images made in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::Path;

use magikrun::layout::{tar_of_files, write_archive, write_layout, ImageDraft, LayerBlob};
use magikrun::{
    pull_image, BlobStore, Bundle, BundleBuilder, Error, ExtractLimits, OciRuntime, PulledImage,
};

fn draft(tag: &str, layers: Vec<LayerBlob>) -> ImageDraft {
    ImageDraft {
        tag: tag.into(),
        layers,
        entrypoint: vec!["/bin/app".into()],
        cmd: vec!["--flag".into()],
        env: vec!["A=1".into()],
        user: "1000:1000".into(),
        working_dir: "/work".into(),
        ..Default::default()
    }
}

fn two_layers() -> Vec<LayerBlob> {
    let lower = tar_of_files(&[
        ("bin/app", 0o4755, b"#!app"),
        ("etc/conf", 0o644, b"lower"),
        ("etc/old", 0o644, b"old"),
        ("var/cache/a", 0o644, b"a"),
    ])
    .unwrap();
    let upper = tar_of_files(&[
        ("etc/conf", 0o644, b"upper"),
        ("etc/.wh.old", 0o644, b""),
        ("var/cache/.wh..wh..opq", 0o644, b""),
        ("var/cache/b", 0o644, b"b"),
    ])
    .unwrap();
    vec![LayerBlob::gzip(&lower).unwrap(), LayerBlob::plain(upper)]
}

async fn pull(layout: &Path, tag: &str, store: &BlobStore) -> magikrun::Result<PulledImage> {
    pull_image(&format!("oci:{}:{tag}", layout.display()), store).await
}

#[tokio::test]
async fn layout_to_hardened_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[draft("app", two_layers())]).unwrap();
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = pull(&layout, "app", &store).await.unwrap();
    assert_eq!(image.manifest.layers().len(), 2);
    for l in image.manifest.layers() {
        assert!(store.has_blob(l.digest().as_ref()).unwrap());
    }
    assert!(store.has_blob(&image.manifest_digest).unwrap());

    let dir = tmp.path().join("bundle");
    let bundle = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(&dir)
        .build()
        .await
        .unwrap();
    assert_eq!(bundle, Bundle::OciRuntime { path: dir.clone() });
    let rootfs = dir.join("rootfs");
    assert_eq!(std::fs::read(rootfs.join("etc/conf")).unwrap(), b"upper");
    assert!(!rootfs.join("etc/old").exists());
    assert!(!rootfs.join("var/cache/a").exists());
    assert!(rootfs.join("var/cache/b").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(rootfs.join("bin/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    for d in ["proc", "dev", "sys", "tmp"] {
        assert!(rootfs.join(d).is_dir(), "{d}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["process"]["args"],
        serde_json::json!(["/bin/app", "--flag"])
    );
    assert_eq!(
        cfg["process"]["user"],
        serde_json::json!({"uid": 1000, "gid": 1000})
    );
    assert_eq!(cfg["process"]["cwd"], "/work");
    assert_eq!(cfg["process"]["noNewPrivileges"], true);
    assert_eq!(cfg["root"]["readonly"], true);
    assert_eq!(
        cfg["process"]["capabilities"]["bounding"],
        serde_json::json!([])
    );
    let env = cfg["process"]["env"].as_array().unwrap();
    assert!(env.contains(&serde_json::json!("A=1")));
    assert!(env.iter().any(|e| e.as_str().unwrap().starts_with("PATH=")));
}

#[tokio::test]
async fn oci_archive_import() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[
            draft("v1", two_layers()),
            draft(
                "v2",
                vec![LayerBlob::plain(
                    tar_of_files(&[("x", 0o644, b"2")]).unwrap(),
                )],
            ),
        ],
    )
    .unwrap();
    let archive = tmp.path().join("img.tar");
    write_archive(&layout, &archive).unwrap();
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = pull_image(&format!("oci-archive:{}:v2", archive.display()), &store)
        .await
        .unwrap();
    assert_eq!(image.manifest.layers().len(), 1);
    let missing = pull_image(&format!("oci-archive:{}:v3", archive.display()), &store).await;
    assert!(
        matches!(missing, Err(Error::InvalidImage(_))),
        "{missing:?}"
    );
    // Two images and no tag: ambiguous unless the platform decides; both match here, first wins.
    assert!(pull_image(&format!("oci:{}", layout.display()), &store)
        .await
        .is_ok());
}

/// Rewrites the blob behind `digest` in a layout.
fn tamper(layout: &Path, digest: &str, data: &[u8]) {
    let p = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(p, data).unwrap();
}

#[tokio::test]
async fn tampered_layout_blobs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let layer = LayerBlob::plain(tar_of_files(&[("f", 0o644, b"data")]).unwrap());
    let layer_digest = magikrun::Digest::of(&layer.data).to_string();
    write_layout(&layout, &[draft("t", vec![layer.clone()])]).unwrap();
    // Same size, different content.
    let mut evil = layer.data.clone();
    evil[600] ^= 1;
    tamper(&layout, &layer_digest, &evil);
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let r = pull(&layout, "t", &store).await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
    assert!(!store.has_blob(&layer_digest).unwrap());
    // Trailing bytes: size mismatch.
    let mut longer = layer.data.clone();
    longer.push(0);
    tamper(&layout, &layer_digest, &longer);
    let r = pull(&layout, "t", &store).await;
    assert!(matches!(r, Err(Error::SizeMismatch { .. })), "{r:?}");
}

#[tokio::test]
async fn diff_id_mismatch_and_limits_refused_and_bundle_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut bad = LayerBlob::plain(tar_of_files(&[("f", 0o644, b"data")]).unwrap());
    bad.diff_id = magikrun::Digest::of(b"something else").to_string();
    write_layout(
        &layout,
        &[
            draft("bad", vec![bad]),
            draft(
                "three",
                vec![
                    LayerBlob::plain(tar_of_files(&[("a", 0o644, &[1u8; 2000])]).unwrap()),
                    LayerBlob::plain(tar_of_files(&[("b", 0o644, &[2u8; 2000])]).unwrap()),
                    LayerBlob::plain(tar_of_files(&[("c", 0o644, &[3u8; 2000])]).unwrap()),
                ],
            ),
        ],
    )
    .unwrap();
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();

    let image = pull(&layout, "bad", &store).await.unwrap();
    let dir = tmp.path().join("b1");
    let r = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(&dir)
        .build()
        .await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
    assert!(!dir.exists(), "failed bundle must be removed");

    let image = pull(&layout, "three", &store).await.unwrap();
    let cases = [
        (
            ExtractLimits {
                max_layers: 2,
                ..Default::default()
            },
            "layers",
        ),
        (
            ExtractLimits {
                max_rootfs_size: 5000,
                ..Default::default()
            },
            "rootfs",
        ),
        (
            ExtractLimits {
                max_layer_size: 1000,
                ..Default::default()
            },
            "layer",
        ),
    ];
    for (i, (limits, what)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("lim{i}"));
        let r = BundleBuilder::new()
            .unwrap()
            .image(&image)
            .storage(&store)
            .bundle_dir(&dir)
            .limits(limits)
            .build()
            .await;
        match r {
            Err(Error::TooManyLayers { count: 3, limit: 2 }) if what == "layers" => {}
            Err(Error::SizeLimit { what: w, .. }) if w.contains(what) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert!(!dir.exists());
    }
    let ok = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(tmp.path().join("ok"))
        .build()
        .await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn bad_references_and_missing_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    assert!(matches!(
        pull_image("Bad Ref", &store).await,
        Err(Error::InvalidReference { .. })
    ));
    assert!(pull_image(
        &format!("oci:{}", tmp.path().join("none").display()),
        &store
    )
    .await
    .is_err());
    assert!(matches!(
        BundleBuilder::new().unwrap().build().await,
        Err(Error::InvalidBundle(_))
    ));
}

#[tokio::test]
async fn wasm_image_becomes_a_wasm_bundle_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = wat::parse_str(
        r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "wasm says hi\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 13))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .unwrap();
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[ImageDraft {
            tag: "hi".into(),
            layers: vec![LayerBlob::plain(
                tar_of_files(&[("app/hi.wasm", 0o644, &wasm)]).unwrap(),
            )],
            entrypoint: vec!["/app/hi.wasm".into()],
            os: "wasip1".into(),
            architecture: "wasm".into(),
            ..Default::default()
        }],
    )
    .unwrap();
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = pull(&layout, "hi", &store).await.unwrap();
    let bundle = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(tmp.path().join("b"))
        .build()
        .await
        .unwrap();
    let Bundle::Wasm { module, wasi } = &bundle else {
        panic!("expected a wasm bundle, got {bundle:?}")
    };
    assert!(module.ends_with("rootfs/app/hi.wasm"));
    assert_eq!(wasi.args, vec!["/app/hi.wasm".to_string()]);
    let rt = magikrun::runtimes::WasmtimeRuntime::new().unwrap();
    rt.create("hi", &bundle).await.unwrap();
    rt.start("hi").await.unwrap();
    rt.wait("hi", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(rt.output("hi").unwrap().0, b"wasm says hi\n");
    rt.delete("hi").await.unwrap();
}

#[test]
fn busybox_fixture_builds() {
    // Keeps the shared helper compiled in this test binary too.
    if std::path::Path::new(common::BUSYBOX).exists() {
        assert!(common::busybox_layer().diff_id.starts_with("sha256:"));
    }
}
