//! The seed README's example, adapted to run on a machine with no registry access: it makes two
//! small images in a local OCI layout (a static busybox one and a WASI one), pulls them into a
//! blob store, builds bundles and runs each on the backend that fits (youki, wasmtime).
//!
//! Run: `cargo run -p magikrun --example quickstart` (youki needs root and busybox-static).

use std::sync::Arc;
use std::time::Duration;

use magikrun::layout::{tar_of_files, write_layout, ImageDraft, LayerBlob};
use magikrun::runtimes::RuntimeRegistry;
use magikrun::{pull_image, BlobStore, BundleBuilder, Platform};

const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasmtime\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 20))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn make_images(layout: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut images = Vec::new();
    let wasm = wat::parse_str(HELLO_WAT)?;
    images.push(ImageDraft {
        tag: "hello-wasm".into(),
        layers: vec![LayerBlob::plain(tar_of_files(&[(
            "hello.wasm",
            0o644,
            &wasm,
        )])?)],
        entrypoint: vec!["/hello.wasm".into()],
        os: "wasip1".into(),
        architecture: "wasm".into(),
        ..Default::default()
    });
    if let Ok(bb) = std::fs::read("/bin/busybox") {
        images.push(ImageDraft {
            tag: "busybox".into(),
            layers: vec![LayerBlob::gzip(&tar_of_files(&[(
                "bin/busybox",
                0o755,
                &bb,
            )])?)?],
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo hello from youki: pid $$ on $(busybox hostname)".into(),
            ],
            ..Default::default()
        });
    }
    write_layout(layout, &images)?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    make_images(&layout)?;

    // Detect platform and available runtimes
    let platform = Platform::detect();
    let registry = RuntimeRegistry::new(&platform)?;
    println!(
        "platform: {} {} cgroups {}",
        platform.os, platform.arch, platform.cgroup_mode
    );
    for name in registry.available_runtimes() {
        println!("Available: {name}");
    }
    for (name, why) in registry.unavailable() {
        println!("Unavailable: {name} ({why})");
    }

    // Pull images (from the local layout) and store their blobs
    let storage = Arc::new(BlobStore::with_root(work.path().join("blobs"))?);
    for (tag, runtime_name) in [("hello-wasm", "wasmtime"), ("busybox", "youki")] {
        let image = match pull_image(&format!("oci:{}:{tag}", layout.display()), &storage).await {
            Ok(i) => i,
            Err(e) => {
                println!("{tag}: not available ({e})");
                continue;
            }
        };
        // Build a bundle (an OCI bundle for busybox, a WASM bundle for the wasm image)
        let bundle = BundleBuilder::new()?
            .image(&image)
            .storage(&storage)
            .bundle_dir(work.path().join(format!("bundle-{tag}")))
            .build()
            .await?;
        // Get a runtime and run the container
        let Some(runtime) = registry.get(runtime_name) else {
            println!("{runtime_name}: not available here, skipping {tag}");
            continue;
        };
        let id = format!("quickstart-{tag}");
        runtime.create(&id, &bundle).await?;
        runtime.start(&id).await?;
        let state = runtime.wait(&id, Duration::from_secs(30)).await?;
        println!(
            "{id} on {runtime_name}: status {:?}, exit {:?}",
            state.status,
            state.annotations.get("magikrun.exit_code")
        );
        if let Some((out, _err)) = runtime.captured_output(&id).await? {
            print!("{}", String::from_utf8_lossy(&out));
        }
        // Cleanup (kill is only valid while created or running)
        if state.status != magikrun::ContainerStatus::Stopped {
            runtime.kill(&id, magikrun::Signal::Term).await?;
        }
        runtime.delete(&id).await?;
    }
    Ok(())
}
