//! Attack archives against the layer extractor: every case must either be refused with a clear
//! error or stay contained; in all cases nothing outside the rootfs changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use magikrun::{extract_layer, Error, ExtractLimits};

/// One tar entry, written with raw header fields so that names the `tar` crate's builder would
/// refuse (`..`, absolute paths) can be produced.
enum E<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
    Block(&'a str),
    Fifo(&'a str),
}

fn raw_header(
    kind: tar::EntryType,
    name: &str,
    link: Option<&str>,
    mode: u32,
    size: u64,
) -> tar::Header {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        let n = name.as_bytes();
        assert!(n.len() < 100);
        old.name[..n.len()].copy_from_slice(n);
        if let Some(l) = link {
            let l = l.as_bytes();
            old.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(n, m, d) => b
                .append(
                    &raw_header(tar::EntryType::Regular, n, None, *m, d.len() as u64),
                    *d,
                )
                .unwrap(),
            E::Dir(n) => b
                .append(
                    &raw_header(tar::EntryType::Directory, n, None, 0o755, 0),
                    &[][..],
                )
                .unwrap(),
            E::Sym(n, t) => b
                .append(
                    &raw_header(tar::EntryType::Symlink, n, Some(t), 0o777, 0),
                    &[][..],
                )
                .unwrap(),
            E::Hard(n, t) => b
                .append(
                    &raw_header(tar::EntryType::Link, n, Some(t), 0o644, 0),
                    &[][..],
                )
                .unwrap(),
            E::Char(n) => b
                .append(
                    &raw_header(tar::EntryType::Char, n, None, 0o666, 0),
                    &[][..],
                )
                .unwrap(),
            E::Block(n) => b
                .append(
                    &raw_header(tar::EntryType::Block, n, None, 0o666, 0),
                    &[][..],
                )
                .unwrap(),
            E::Fifo(n) => b
                .append(
                    &raw_header(tar::EntryType::Fifo, n, None, 0o666, 0),
                    &[][..],
                )
                .unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// A scratch area: `dest/` is the rootfs, `victim/hello` a sentinel beside it.
struct Arena {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

impl Arena {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        std::fs::create_dir(base.join("dest")).unwrap();
        std::fs::create_dir(base.join("victim")).unwrap();
        std::fs::write(base.join("victim/hello"), b"sentinel").unwrap();
        Arena { _tmp: tmp, base }
    }
    fn dest(&self) -> PathBuf {
        self.base.join("dest")
    }
    fn victim(&self) -> PathBuf {
        self.base.join("victim")
    }
    /// Everything outside `dest/`: path → (kind, mode, content).
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(&self.base, &self.base, &self.dest(), &mut out);
        out
    }
    fn extract(&self, tar: &[u8]) -> magikrun::Result<()> {
        let mut used = 0;
        extract_layer(tar, &self.dest(), &ExtractLimits::default(), &mut used).map(|_| ())
    }
}

fn walk(base: &Path, dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p == skip {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let desc = if m.is_dir() {
            walk(base, &p, skip, out);
            format!("dir {:o}", m.mode())
        } else if m.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).unwrap())
        } else {
            format!(
                "file {:o} {} {:?}",
                m.mode(),
                m.nlink(),
                std::fs::read(&p).unwrap()
            )
        };
        out.insert(p.strip_prefix(base).unwrap().to_path_buf(), desc);
    }
}

fn assert_refused(r: magikrun::Result<()>, needle: &str) {
    match r {
        Err(Error::UnsafeArchiveEntry { reason, .. }) => {
            assert!(
                reason.contains(needle),
                "reason {reason:?} should mention {needle:?}"
            )
        }
        other => panic!("expected UnsafeArchiveEntry({needle}), got {other:?}"),
    }
}

/// Runs `entries` and checks the outside is untouched; returns the result for more checks.
fn run(a: &Arena, entries: &[E]) -> magikrun::Result<()> {
    let before = a.outside();
    let r = a.extract(&tar_of(entries));
    assert_eq!(before, a.outside(), "something outside the rootfs changed");
    r
}

#[test]
fn dotdot_paths_refused() {
    for name in [
        "../victim/dotdot",
        "a/../../victim/x",
        "..",
        "./../victim/hello",
        "../dest-evil/secret",
    ] {
        let a = Arena::new();
        assert_refused(run(&a, &[E::File(name, 0o644, b"pwned")]), "'..'");
    }
}

#[test]
fn absolute_paths_refused() {
    let a = Arena::new();
    let target = a.victim().join("abs");
    assert_refused(
        run(&a, &[E::File(target.to_str().unwrap(), 0o644, b"x")]),
        "absolute",
    );
    assert_refused(run(&a, &[E::Dir("/")]), "absolute");
}

#[test]
fn symlink_out_refused() {
    let a = Arena::new();
    assert_refused(run(&a, &[E::Sym("loophole", "../victim")]), "leads out");
    let a = Arena::new();
    assert_refused(
        run(
            &a,
            &[
                E::Sym("d/loophole", "../../victim"),
                E::File("d/loophole/newfile", 0o644, b"x"),
            ],
        ),
        "leads out",
    );
}

#[test]
fn symlink_then_write_through_refused() {
    // A symlink pointing out already in the rootfs (e.g. left by a lower layer): writing through it fails.
    let a = Arena::new();
    std::os::unix::fs::symlink("../victim", a.dest().join("loop")).unwrap();
    assert_refused(
        run(&a, &[E::File("loop/newfile", 0o644, b"x")]),
        "leads out of the rootfs",
    );
    assert_refused(run(&a, &[E::Dir("loop/newdir")]), "leads out of the rootfs");
    assert_refused(
        run(&a, &[E::File("loop/hello", 0o644, b"overwrite")]),
        "leads out of the rootfs",
    );
}

#[test]
fn two_hop_symlink_breakout_refused() {
    // inner/go_up -> .. (inside), then inner/go_up/escape -> ../victim lands at the root and
    // would point out: refused although its name looks two levels deep.
    let a = Arena::new();
    let r = run(
        &a,
        &[
            E::Dir("inner"),
            E::Sym("inner/go_up", ".."),
            E::Sym("inner/go_up/escape", "../victim"),
            E::File("inner/go_up/escape/newfile", 0o644, b"x"),
        ],
    );
    assert_refused(r, "leads out");
    assert!(!a.victim().join("newfile").exists());
}

#[test]
fn absolute_symlink_is_resolved_inside_the_rootfs() {
    // Absolute targets mean the container's root: writing through one stays in the rootfs.
    let a = Arena::new();
    let victim_abs = a.victim();
    let r = run(
        &a,
        &[
            E::Sym("abs", victim_abs.to_str().unwrap()),
            E::File("abs/pwned", 0o644, b"x"),
        ],
    );
    r.unwrap();
    assert!(!a.victim().join("pwned").exists());
    let inside = a
        .dest()
        .join(victim_abs.strip_prefix("/").unwrap())
        .join("pwned");
    assert_eq!(std::fs::read(inside).unwrap(), b"x");
}

#[test]
fn final_symlink_is_replaced_not_followed() {
    let a = Arena::new();
    std::os::unix::fs::symlink(a.victim().join("hello"), a.dest().join("f")).unwrap();
    run(&a, &[E::File("f", 0o644, b"new")]).unwrap();
    assert_eq!(
        std::fs::read(a.victim().join("hello")).unwrap(),
        b"sentinel"
    );
    assert!(!std::fs::symlink_metadata(a.dest().join("f"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn directory_entry_over_outside_symlink_replaces_the_link() {
    let a = Arena::new();
    std::os::unix::fs::symlink("../victim", a.dest().join("d")).unwrap();
    run(&a, &[E::Dir("d"), E::File("d/x", 0o644, b"x")]).unwrap();
    assert!(std::fs::symlink_metadata(a.dest().join("d"))
        .unwrap()
        .is_dir());
    assert!(!a.victim().join("x").exists());
}

#[test]
fn hardlinks_out_refused() {
    let a = Arena::new();
    assert_refused(
        run(&a, &[E::Hard("h", "../victim/hello")]),
        "not a relative path inside",
    );
    let a = Arena::new();
    let abs = a.victim().join("hello");
    assert_refused(
        run(&a, &[E::Hard("h", abs.to_str().unwrap())]),
        "not a relative path inside",
    );
    // Through a symlinked directory that points out.
    let a = Arena::new();
    std::os::unix::fs::symlink("../victim", a.dest().join("loop")).unwrap();
    assert_refused(run(&a, &[E::Hard("h", "loop/hello")]), "leads out");
    // To something that does not exist, or a directory.
    let a = Arena::new();
    assert_refused(run(&a, &[E::Hard("h", "nothing")]), "does not exist");
    assert_refused(run(&a, &[E::Dir("d"), E::Hard("h", "d")]), "directory");
}

#[test]
fn hardlink_inside_works_and_to_symlink_links_the_symlink() {
    let a = Arena::new();
    run(
        &a,
        &[
            E::File("a", 0o644, b"data"),
            E::Hard("b", "a"),
            E::Sym("s", "/etc/shadow"),
            E::Hard("hs", "s"),
            E::File("hs", 0o600, b"replaced"),
        ],
    )
    .unwrap();
    assert_eq!(std::fs::read(a.dest().join("b")).unwrap(), b"data");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(a.dest().join("a")).unwrap().nlink(), 2);
    // Writing over the hard-linked symlink replaced it; nothing was written through it.
    assert_eq!(std::fs::read(a.dest().join("hs")).unwrap(), b"replaced");
    assert!(std::fs::symlink_metadata(a.dest().join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn device_nodes_and_fifos_refused() {
    let a = Arena::new();
    assert_refused(run(&a, &[E::Char("dev/kmsg2")]), "device nodes");
    assert_refused(run(&a, &[E::Block("sda")]), "device nodes");
    assert_refused(run(&a, &[E::Fifo("pipe")]), "FIFOs");
}

#[test]
fn setuid_and_setgid_stripped() {
    use std::os::unix::fs::PermissionsExt;
    let a = Arena::new();
    run(
        &a,
        &[
            E::File("su", 0o4755, b"#!"),
            E::File("sg", 0o2711, b"#!"),
            E::Dir("tmp"),
        ],
    )
    .unwrap();
    let mode = |p: &str| {
        std::fs::metadata(a.dest().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("su"), 0o755);
    assert_eq!(mode("sg"), 0o711);
}

#[test]
fn invalid_whiteouts_refused() {
    for name in [".wh.", "etc/.wh..", ".wh...", ".wh..wh.x"] {
        let a = Arena::new();
        assert_refused(run(&a, &[E::File(name, 0o644, b"")]), "invalid whiteout");
    }
}

#[test]
fn whiteout_through_outside_symlink_refused() {
    let a = Arena::new();
    std::os::unix::fs::symlink("../victim", a.dest().join("loop")).unwrap();
    assert_refused(
        run(&a, &[E::File("loop/.wh.hello", 0o644, b"")]),
        "leads out",
    );
    let a = Arena::new();
    std::os::unix::fs::symlink("../victim", a.dest().join("loop")).unwrap();
    assert_refused(
        run(&a, &[E::File("loop/.wh..wh..opq", 0o644, b"")]),
        "leads out",
    );
    assert!(a.victim().join("hello").exists());
}

#[test]
fn whiteout_of_a_symlink_removes_the_link_only() {
    let a = Arena::new();
    std::os::unix::fs::symlink("../victim", a.dest().join("lnk")).unwrap();
    run(&a, &[E::File(".wh.lnk", 0o644, b"")]).unwrap();
    assert!(std::fs::symlink_metadata(a.dest().join("lnk")).is_err());
    assert!(a.victim().join("hello").exists());
}

#[test]
fn size_limits_trip_before_disk_fills() {
    let small = ExtractLimits {
        max_layer_size: 4096,
        max_rootfs_size: 3000,
        max_layers: 2,
        max_entries: 5,
    };
    let a = Arena::new();
    let big = vec![1u8; 5000];
    // Layer bigger than the per-layer limit.
    let mut used = 0;
    let r = extract_layer(
        &tar_of(&[E::File("big", 0o644, &big)])[..],
        &a.dest(),
        &small,
        &mut used,
    );
    assert!(matches!(r, Err(Error::SizeLimit { .. })), "{r:?}");
    assert!(!a.dest().join("big").exists());
    // Rootfs limit across layers.
    let chunk = vec![2u8; 1000];
    let mut used = 0;
    let limits = ExtractLimits {
        max_layer_size: 1 << 20,
        ..small
    };
    extract_layer(
        &tar_of(&[E::File("a", 0o644, &chunk), E::File("b", 0o644, &chunk)])[..],
        &a.dest(),
        &limits,
        &mut used,
    )
    .unwrap();
    assert_eq!(used, 2000);
    let r = extract_layer(
        &tar_of(&[E::File("c", 0o644, &chunk), E::File("d", 0o644, &chunk)])[..],
        &a.dest(),
        &limits,
        &mut used,
    );
    assert!(
        matches!(r, Err(Error::SizeLimit { ref what, .. }) if what.contains("rootfs")),
        "{r:?}"
    );
    assert!(!a.dest().join("d").exists());
    // Entry count.
    let many: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = many.iter().map(|n| E::File(n, 0o644, b"")).collect();
    let mut used = 0;
    let r = extract_layer(&tar_of(&entries)[..], &a.dest(), &limits, &mut used);
    assert!(
        matches!(r, Err(Error::SizeLimit { ref what, .. }) if what.contains("entry count")),
        "{r:?}"
    );
}

#[test]
fn gzip_bomb_is_cut_off() {
    use std::io::Write;
    let a = Arena::new();
    let zeros = vec![0u8; 8 << 20];
    let tar = tar_of(&[E::File("bomb", 0o644, &zeros)]);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&tar).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 64 * 1024);
    let limits = ExtractLimits {
        max_layer_size: 1 << 20,
        ..Default::default()
    };
    let mut used = 0;
    let r = extract_layer(&gz[..], &a.dest(), &limits, &mut used);
    assert!(matches!(r, Err(Error::SizeLimit { .. })), "{r:?}");
}

#[test]
fn garbage_and_truncated_archives_are_errors_not_panics() {
    let a = Arena::new();
    let mut used = 0;
    let mut tar = tar_of(&[E::File("x", 0o644, &[7u8; 2000])]);
    tar.truncate(1000);
    assert!(extract_layer(&tar[..], &a.dest(), &ExtractLimits::default(), &mut used).is_err());
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    assert!(extract_layer(
        &garbage[..],
        &a.dest(),
        &ExtractLimits::default(),
        &mut used
    )
    .is_err());
    let zstd = [0x28u8, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    assert!(matches!(
        extract_layer(&zstd[..], &a.dest(), &ExtractLimits::default(), &mut used),
        Err(Error::MalformedArchive(_))
    ));
}

#[test]
fn whiteouts_and_opaque_dirs_across_layers() {
    let a = Arena::new();
    let mut used = 0;
    let l = ExtractLimits::default();
    let lower = tar_of(&[
        E::File("a/x", 0o644, b"x"),
        E::File("a/y", 0o644, b"y"),
        E::File("b/z", 0o644, b"z"),
        E::File("b/sub/deep", 0o644, b"d"),
        E::File("keep", 0o644, b"k"),
    ]);
    extract_layer(&lower[..], &a.dest(), &l, &mut used).unwrap();
    // Upper: remove a/x; make b opaque (opaque marker written after a sibling of the same layer,
    // which must survive); a whiteout and a same-named file in one layer don't hide each other.
    let upper = tar_of(&[
        E::File(".wh.keep", 0o644, b""),
        E::File("b/new", 0o644, b"n"),
        E::File("b/.wh..wh..opq", 0o644, b""),
        E::File("a/.wh.x", 0o644, b""),
        E::File("c", 0o644, b"c"),
        E::File(".wh.c", 0o644, b""),
    ]);
    extract_layer(&upper[..], &a.dest(), &l, &mut used).unwrap();
    let d = a.dest();
    assert!(!d.join("a/x").exists());
    assert!(d.join("a/y").exists());
    assert!(!d.join("b/z").exists());
    assert!(!d.join("b/sub").exists());
    assert_eq!(std::fs::read(d.join("b/new")).unwrap(), b"n");
    assert!(!d.join("keep").exists());
    assert!(d.join("c").exists(), "same-layer whiteout must not hide c");
    assert!(!d.join("b/.wh..wh..opq").exists() && !d.join("a/.wh.x").exists());
}

#[test]
fn mutated_archives_never_panic_or_escape() {
    // A deterministic mini-fuzz (the cargo-fuzz target in fuzz/ does the same at scale): flip
    // bytes of a valid archive full of links and whiteouts; every outcome must be Ok or Err with
    // nothing outside the rootfs touched.
    let base = tar_of(&[
        E::Dir("d"),
        E::File("d/f", 0o644, b"hello world"),
        E::Sym("d/s", "../d/f"),
        E::Hard("d/h", "d/f"),
        E::File("d/.wh.f", 0o644, b""),
        E::Sym("abs", "/etc"),
        E::File("e/.wh..wh..opq", 0o644, b""),
    ]);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Header offsets, so mutations can land in names, link names and types with a valid
    // checksum (random bytes elsewhere mostly stop at the checksum check).
    let mut headers = Vec::new();
    let mut off = 0;
    while off + 512 <= base.len() && base[off..off + 512].iter().any(|b| *b != 0) {
        headers.push(off);
        let size_field = std::str::from_utf8(&base[off + 124..off + 135]).unwrap();
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap();
        off += 512 + (size as usize).div_ceil(512) * 512;
    }
    const ALPHABET: &[u8] = b"./a.wh_opq/..\0";
    let (mut ok, mut refused) = (0, 0);
    for round in 0..400 {
        let a = Arena::new();
        let mut data = base.clone();
        for _ in 0..(1 + next() % 6) {
            if round % 4 == 0 {
                // Raw byte flip anywhere.
                let i = (next() as usize) % data.len();
                data[i] = (next() & 0xff) as u8;
                continue;
            }
            let h = headers[(next() as usize) % headers.len()];
            let field = match next() % 3 {
                0 => h + (next() as usize) % 100,       // name
                1 => h + 157 + (next() as usize) % 100, // linkname
                _ => h + 156,                           // typeflag
            };
            data[field] = ALPHABET[(next() as usize) % ALPHABET.len()];
            if field == h + 156 {
                data[field] = b"0125673"[(next() as usize) % 7];
            }
            // Recompute the header checksum.
            data[h + 148..h + 156].copy_from_slice(b"        ");
            let sum: u32 = data[h..h + 512].iter().map(|b| u32::from(*b)).sum();
            let text = format!("{sum:06o}\0 ");
            data[h + 148..h + 156].copy_from_slice(text.as_bytes());
        }
        let before = a.outside();
        match a.extract(&data) {
            Ok(()) => ok += 1,
            Err(Error::UnsafeArchiveEntry { .. }) => refused += 1,
            Err(_) => {}
        }
        assert_eq!(before, a.outside(), "mutation escaped the rootfs");
    }
    // The mutations must exercise both paths, or this test proves nothing.
    assert!(ok > 20 && refused > 20, "ok {ok}, refused {refused}");
}
