//! Times the youki backend's container lifecycle (create + start + wait for exit + delete) of a
//! static busybox `true`, and the wasmtime backend's for a no-op module. Prints median and p90.
//!
//! Run (root, busybox-static installed): `cargo run -p magikrun --example lifecycle_bench -- 20`

use std::time::{Duration, Instant};

use magikrun::layout::{tar_of_files, write_layout, ImageDraft, LayerBlob};
use magikrun::runtimes::{WasmtimeRuntime, YoukiRuntime};
use magikrun::{pull_image, BlobStore, Bundle, BundleBuilder, OciRuntime, WasiConfig};

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: n={} median {:.2} ms, p90 {:.2} ms, min {:.2} ms",
        v.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.9).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3
    );
}

async fn cycle(
    rt: &dyn OciRuntime,
    id: &str,
    b: &Bundle,
) -> Result<[Duration; 5], Box<dyn std::error::Error>> {
    let t = Instant::now();
    rt.create(id, b).await?;
    let c = t.elapsed();
    rt.start(id).await?;
    let s = t.elapsed();
    rt.wait(id, Duration::from_secs(30)).await?;
    let w = t.elapsed();
    rt.delete(id).await?;
    let d = t.elapsed();
    Ok([d, c, s - c, w - s, d - w])
}

fn report_all(name: &str, runs: Vec<[Duration; 5]>) {
    for (i, part) in ["total", "create", "start", "wait", "delete"]
        .iter()
        .enumerate()
    {
        report(
            &format!("{name} {part}"),
            runs.iter().map(|r| r[i]).collect(),
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let work = tempfile::tempdir()?;

    let wasm = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)?;
    let module = work.path().join("noop.wasm");
    std::fs::write(&module, wasm)?;
    let wasm_rt = WasmtimeRuntime::new()?;
    let wb = Bundle::Wasm {
        module,
        wasi: WasiConfig::default(),
    };
    let mut times = Vec::new();
    for i in 0..n {
        times.push(cycle(&wasm_rt, &format!("w{i}"), &wb).await?);
    }
    report_all("wasmtime (compile included)", times);

    let Ok(bb) = std::fs::read("/bin/busybox") else {
        println!("youki: skipped (no /bin/busybox)");
        return Ok(());
    };
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        &[ImageDraft {
            tag: "true".into(),
            layers: vec![LayerBlob::plain(tar_of_files(&[(
                "bin/busybox",
                0o755,
                &bb,
            )])?)],
            entrypoint: vec!["/bin/busybox".into(), "true".into()],
            ..Default::default()
        }],
    )?;
    let store = BlobStore::with_root(work.path().join("blobs"))?;
    let image = pull_image(&format!("oci:{}:true", layout.display()), &store).await?;
    let bundle = BundleBuilder::new()?
        .image(&image)
        .storage(&store)
        .bundle_dir(work.path().join("bundle"))
        .build()
        .await?;
    let rt = YoukiRuntime::new(work.path().join("state"));
    let mut times = Vec::new();
    for i in 0..n {
        times.push(cycle(&rt, &format!("y{i}"), &bundle).await?);
    }
    report_all("youki", times);
    Ok(())
}
