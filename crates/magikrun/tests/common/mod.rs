//! Helpers shared by the integration tests: images built in the test, never downloaded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use magikrun::layout::{write_layout, ImageDraft, LayerBlob};

/// Debian's `busybox-static` binary.
pub const BUSYBOX: &str = "/bin/busybox";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A gzip layer holding a static busybox at /bin/busybox plus /bin/sh etc. as symlinks.
pub fn busybox_layer() -> LayerBlob {
    let bb = std::fs::read(BUSYBOX)
        .expect("busybox-static must be installed (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    b.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
    for tool in [
        "sh", "echo", "cat", "grep", "sleep", "hostname", "id", "touch", "ls", "true",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{tool}"), "busybox")
            .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    b.append_data(&mut h, "etc/passwd", &passwd[..]).unwrap();
    LayerBlob::gzip(&b.into_inner().unwrap()).unwrap()
}

/// Writes an OCI layout with a `busybox` image (command given) into `dir`.
pub fn busybox_layout(dir: &Path, cmd: &[&str]) -> PathBuf {
    write_layout(
        dir,
        &[ImageDraft {
            tag: "busybox".into(),
            layers: vec![busybox_layer()],
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        }],
    )
    .unwrap();
    dir.to_path_buf()
}
