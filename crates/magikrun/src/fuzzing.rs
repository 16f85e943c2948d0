//! Invariant checks for fuzzing layer extraction.
//!
//! Owns: [`check_extract_invariants`], the body of the `tar_extract` target in the repository's
//! `fuzz/` workspace and of the randomized unit test that runs the same logic on stable Rust.
//!
//! Must never: be used on an image path. It builds a throw-away arena in a temp directory,
//! reports a violated invariant as `Err` with a description (the fuzz wrapper turns that into a
//! crash) and never panics itself.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::extract::{extract_layer, ExtractLimits};

/// Limits used for fuzz inputs: small, so one input costs little disk and time.
pub const FUZZ_LIMITS: ExtractLimits = ExtractLimits {
    max_layer_size: 1 << 20,
    max_rootfs_size: 4 << 20,
    max_layers: 4,
    max_entries: 10_000,
};

/// Input flag (first byte): gzip-compress the payload before extracting it.
pub const FLAG_GZIP: u8 = 1;
/// Input flag (first byte): extract the payload a second time, as a second layer on top.
pub const FLAG_TWO_LAYERS: u8 = 2;

/// Most entries inspected when listing an archive's names or walking the rootfs.
const MAX_WALK: usize = 20_000;

/// What one checked input did (for tests that must see both outcomes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Layers the extractor applied.
    pub applied: usize,
    /// Layers the extractor refused.
    pub refused: usize,
}

/// Run one fuzz input through [`extract_layer`]. The first byte holds flags ([`FLAG_GZIP`],
/// [`FLAG_TWO_LAYERS`]); the rest is the layer (a tar archive, or anything).
///
/// Invariants checked:
/// 1. no panic (the extractor returns `Ok` or `Err`);
/// 2. nothing beside the rootfs (a sibling `outside/` with a file, a directory and a symlink)
///    is created, removed or changed: type, mode, link count, size, content, link target;
/// 3. no entry name or link name of the archive that points outside the rootfs (absolute, or
///    climbing with `..`) exists afterwards on the host when it did not exist before;
/// 4. the rootfs is still a directory, and holds no device, FIFO or socket, no setuid or setgid
///    file, and no relative symlink whose target climbs above the rootfs.
pub fn check_extract_invariants(data: &[u8]) -> Result<(), String> {
    check_with(data, |layer, rootfs, used| {
        extract_layer(layer, rootfs, &FUZZ_LIMITS, used).is_ok()
    })
    .map(|_| ())
}

/// [`check_extract_invariants`] with the extractor passed in (`true` = layer applied), so the
/// checker itself can be tested against extractors that misbehave.
pub fn check_with<F>(data: &[u8], mut extract: F) -> Result<Outcome, String>
where
    F: FnMut(&[u8], &Path, &mut u64) -> bool,
{
    let (flags, payload) = match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => (0, data),
    };
    let tmp = tempfile::tempdir().map_err(|e| format!("arena: {e}"))?;
    let base = tmp.path().to_path_buf();
    let rootfs = base.join("rootfs");
    prepare_arena(&base, &rootfs).map_err(|e| format!("arena: {e}"))?;

    let candidates = outside_candidates(payload, &rootfs);
    let existed: Vec<bool> = candidates
        .iter()
        .map(|c| fs::symlink_metadata(c).is_ok())
        .collect();
    let before = snapshot_outside(&base, &rootfs)?;

    let layer = if flags & FLAG_GZIP != 0 {
        gzip(payload).map_err(|e| format!("gzip: {e}"))?
    } else {
        payload.to_vec()
    };
    let rounds = if flags & FLAG_TWO_LAYERS != 0 { 2 } else { 1 };
    let mut used = 0u64;
    let mut outcome = Outcome::default();
    for _ in 0..rounds {
        if extract(&layer, &rootfs, &mut used) {
            outcome.applied += 1;
        } else {
            outcome.refused += 1;
        }
    }

    let after = snapshot_outside(&base, &rootfs)?;
    if before != after {
        return Err(describe_diff(&before, &after));
    }
    for (c, was) in candidates.iter().zip(existed) {
        if !was && fs::symlink_metadata(c).is_ok() {
            return Err(format!("{c:?} (outside the rootfs) was created"));
        }
    }
    let result = check_rootfs(&rootfs);
    make_removable(&rootfs);
    result.map(|()| outcome)
}

fn prepare_arena(base: &Path, rootfs: &Path) -> std::io::Result<()> {
    fs::create_dir(rootfs)?;
    fs::create_dir(rootfs.join("etc"))?;
    fs::write(rootfs.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n")?;
    let outside = base.join("outside");
    fs::create_dir(&outside)?;
    fs::write(outside.join("victim"), b"victim")?;
    fs::create_dir(outside.join("dir"))?;
    std::os::unix::fs::symlink("victim", outside.join("link"))?;
    Ok(())
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)?;
    enc.finish()
}

/// Host paths named by the archive (entry and link names) that lie outside the rootfs when
/// read lexically from it. Parsing stops at the first malformed header.
fn outside_candidates(payload: &[u8], rootfs: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(payload);
    let Ok(entries) = archive.entries() else {
        return out;
    };
    for entry in entries.take(MAX_WALK) {
        let Ok(mut entry) = entry else { break };
        let mut names = vec![entry.path_bytes().into_owned()];
        if let Some(l) = entry.link_name_bytes() {
            names.push(l.into_owned());
        }
        for raw in names {
            if let Some(p) = lexically_outside(rootfs, Path::new(OsStr::from_bytes(&raw))) {
                // The pseudo file systems change on their own; never candidates.
                if ![Path::new("/proc"), Path::new("/sys"), Path::new("/dev")]
                    .iter()
                    .any(|skip| p.starts_with(skip))
                {
                    out.push(p);
                }
            }
        }
        // Drain the entry's data so the next header is read from the right offset.
        let _ = std::io::copy(
            &mut (&mut entry).take(FUZZ_LIMITS.max_layer_size),
            &mut std::io::sink(),
        );
    }
    out
}

/// `name` read from `rootfs` without following links: `Some(host path)` when it leaves it.
fn lexically_outside(rootfs: &Path, name: &Path) -> Option<PathBuf> {
    if name.is_absolute() {
        return Some(name.to_path_buf());
    }
    let mut p = rootfs.to_path_buf();
    let mut depth = 0usize;
    let mut left = false;
    for c in name.components() {
        match c {
            Component::ParentDir => {
                if depth == 0 {
                    left = true;
                } else {
                    depth -= 1;
                }
                p.pop();
            }
            Component::Normal(n) => {
                if !left {
                    depth += 1;
                }
                p.push(n);
            }
            _ => {}
        }
    }
    left.then_some(p)
}

/// Everything under `base` except `rootfs`: path → type, mode, links, size, content/target.
fn snapshot_outside(base: &Path, rootfs: &Path) -> Result<BTreeMap<PathBuf, String>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| format!("read {dir:?}: {e}"))?;
        for entry in rd {
            let entry = entry.map_err(|e| format!("read {dir:?}: {e}"))?;
            let path = entry.path();
            if path == rootfs {
                continue;
            }
            let m = fs::symlink_metadata(&path).map_err(|e| format!("stat {path:?}: {e}"))?;
            let ft = m.file_type();
            let detail = if ft.is_dir() {
                stack.push(path.clone());
                String::new()
            } else if ft.is_symlink() {
                format!("-> {:?}", fs::read_link(&path).unwrap_or_default())
            } else if ft.is_file() {
                let data = fs::read(&path).map_err(|e| format!("read {path:?}: {e}"))?;
                hex::encode(Sha256::digest(&data))
            } else {
                "special".to_string()
            };
            out.insert(
                path,
                format!(
                    "mode {:o} nlink {} size {} {detail}",
                    m.mode(),
                    m.nlink(),
                    m.len()
                ),
            );
        }
        if out.len() > MAX_WALK {
            return Err("too many entries outside the rootfs".to_string());
        }
    }
    Ok(out)
}

fn describe_diff(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> String {
    for (p, b) in before {
        match after.get(p) {
            None => return format!("{p:?} (outside the rootfs) was removed"),
            Some(a) if a != b => {
                return format!("{p:?} (outside the rootfs) changed: {b} → {a}");
            }
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            return format!("{p:?} (outside the rootfs) was created");
        }
    }
    "outside the rootfs changed".to_string()
}

/// Walks the rootfs without following links and checks invariant 4. Directories are made
/// readable on the way so the walk (and the temp dir's removal) works as any user.
fn check_rootfs(rootfs: &Path) -> Result<(), String> {
    match fs::symlink_metadata(rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("the rootfs is no longer a directory".to_string()),
        Err(e) => return Err(format!("the rootfs is gone: {e}")),
    }
    let mut stack = vec![(rootfs.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return Ok(());
            }
            let path = entry.path();
            let Ok(m) = fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
                return Err(format!("{path:?} is a device, FIFO or socket"));
            }
            if !ft.is_symlink() && m.mode() & 0o6000 != 0 {
                return Err(format!("{path:?} has mode {:o} (setuid/setgid)", m.mode()));
            }
            if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                if !target.is_absolute() && symlink_climbs_out(depth, &target) {
                    return Err(format!("{path:?} -> {target:?} climbs out of the rootfs"));
                }
            }
            if ft.is_dir() {
                stack.push((path, depth + 1));
            }
        }
    }
    Ok(())
}

/// Whether a relative target, in a directory `depth` levels below the rootfs, climbs above it.
fn symlink_climbs_out(depth: usize, target: &Path) -> bool {
    let mut d = depth;
    for c in target.components() {
        match c {
            Component::ParentDir => match d.checked_sub(1) {
                Some(n) => d = n,
                None => return true,
            },
            Component::Normal(_) => d += 1,
            _ => {}
        }
    }
    false
}

/// Gives every directory under `rootfs` owner rwx so the temp dir can be removed.
fn make_removable(rootfs: &Path) {
    let mut stack = vec![rootfs.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return;
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a tiny seeded generator, so a failing run can be replayed from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const PARTS: &[&str] = &[
        "a",
        "b",
        "etc",
        "passwd",
        "..",
        ".",
        "outside",
        "victim",
        "dir",
        "link",
        ".wh.a",
        ".wh.etc",
        ".wh..wh..opq",
        ".wh.",
        "",
        "l",
    ];
    const TARGETS: &[&str] = &[
        "a",
        "etc/passwd",
        "../outside/victim",
        "../../outside",
        "..",
        "../..",
        "/etc",
        "/",
        "/..",
        "l/../..",
        "a/b",
        "../outside/dir",
        "link",
        "/outside/victim",
    ];
    const TYPES: &[u8] = b"0000555122234567xgL";

    fn random_name(rng: &mut Rng) -> String {
        let n = 1 + rng.below(3);
        let mut parts: Vec<&str> = (0..n).map(|_| rng.pick(PARTS)).collect();
        if rng.below(8) == 0 {
            parts.insert(0, "");
        }
        parts.join("/")
    }

    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(&s.as_bytes()[s.len() - field.len()..]);
    }

    fn set_checksum(h: &mut [u8]) {
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum);
        h[155] = b' ';
    }

    /// One raw ustar header (names written as bytes, so `..` and `/` survive) plus its data.
    fn entry(rng: &mut Rng) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        let name = random_name(rng);
        let n = name.len().min(100);
        h[..n].copy_from_slice(&name.as_bytes()[..n]);
        let mode = [0o644, 0o755, 0o4755, 0o2755, 0o7777, 0o000][rng.below(6)];
        octal(&mut h[100..108], mode);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        let typ = TYPES[rng.below(TYPES.len())];
        let data: Vec<u8> = if typ == b'0' {
            (0..rng.below(700)).map(|i| i as u8).collect()
        } else {
            Vec::new()
        };
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0);
        h[156] = typ;
        let target = rng.pick(TARGETS);
        h[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        let mut out = h;
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn archive(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(8) {
            out.extend(entry(rng));
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// Byte flips anywhere, then (usually) valid checksums again so the mutation reaches the
    /// extractor instead of stopping at the header check; sometimes truncation.
    fn mutate(rng: &mut Rng, tar: &mut Vec<u8>) {
        for _ in 0..rng.below(6) {
            let i = rng.below(tar.len());
            tar[i] = match rng.below(4) {
                0 => b'/',
                1 => b'.',
                2 => 0,
                _ => rng.next() as u8,
            };
        }
        if rng.below(4) != 0 {
            for h in tar
                .chunks_mut(512)
                .filter(|c| c.len() == 512 && c[257..262] == *b"ustar")
            {
                set_checksum(h);
            }
        }
        if rng.below(10) == 0 {
            let keep = rng.below(tar.len());
            tar.truncate(keep);
        }
    }

    #[test]
    fn randomized_mutated_archives_keep_the_invariants() {
        let seed = std::env::var("MAGIKRUN_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        let mut rng = Rng(seed);
        let mut total = Outcome::default();
        for i in 0..400 {
            let mut tar = archive(&mut rng);
            if i % 5 != 0 {
                mutate(&mut rng, &mut tar);
            }
            let mut input = vec![rng.next() as u8 & (FLAG_GZIP | FLAG_TWO_LAYERS)];
            input.extend(tar);
            let outcome = check_with(&input, |layer, rootfs, used| {
                extract_layer(layer, rootfs, &FUZZ_LIMITS, used).is_ok()
            })
            .unwrap_or_else(|v| panic!("seed {seed}, input {i}: {v}"));
            total.applied += outcome.applied;
            total.refused += outcome.refused;
            // The public entry point agrees.
            if i % 50 == 0 {
                assert_eq!(check_extract_invariants(&input), Ok(()), "seed {seed}");
            }
        }
        // Both paths must be exercised, or this test proves nothing.
        assert!(total.applied > 20, "seed {seed}: {total:?}");
        assert!(total.refused > 20, "seed {seed}: {total:?}");
    }

    fn tar_named(name: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[124..136], 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        set_checksum(&mut h);
        h.extend_from_slice(&[0u8; 1024]);
        h
    }

    fn with_flags(tar: Vec<u8>) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend(tar);
        v
    }

    /// The checker must catch each kind of misbehaving extractor; with the check removed, the
    /// matching row passes and the test fails.
    #[test]
    fn checker_catches_each_violation() {
        let abs_dir = tempfile::tempdir().unwrap();
        let abs_target = abs_dir.path().join("escaped");
        let abs_name = abs_target.to_string_lossy().into_owned();
        type Evil = Box<dyn Fn(&Path)>;
        let rows: Vec<(&str, Vec<u8>, Evil, &str)> = vec![
            (
                "victim overwritten",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| fs::write(r.join("../outside/victim"), b"owned").unwrap()),
                "changed",
            ),
            (
                "victim hardlinked",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| {
                    fs::hard_link(r.join("../outside/victim"), r.join("h")).unwrap()
                }),
                "changed",
            ),
            (
                "file beside the rootfs",
                with_flags(tar_named("../new")),
                Box::new(|r: &Path| fs::write(r.join("../new"), b"x").unwrap()),
                "was created",
            ),
            (
                "outside file removed",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| fs::remove_file(r.join("../outside/link")).unwrap()),
                "was removed",
            ),
            (
                "absolute path written",
                with_flags(tar_named(&abs_name)),
                Box::new(move |_: &Path| fs::write(&abs_target, b"x").unwrap()),
                "was created",
            ),
            (
                "fifo inside",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| {
                    nix::unistd::mkfifo(&r.join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap()
                }),
                "FIFO",
            ),
            (
                "setuid file inside",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| {
                    fs::write(r.join("s"), b"x").unwrap();
                    fs::set_permissions(r.join("s"), fs::Permissions::from_mode(0o4755)).unwrap();
                }),
                "setuid",
            ),
            (
                "symlink climbing out",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| {
                    std::os::unix::fs::symlink("../../x", r.join("etc/l")).unwrap()
                }),
                "climbs out",
            ),
            (
                "rootfs replaced by a symlink",
                with_flags(tar_named("x")),
                Box::new(|r: &Path| {
                    fs::remove_dir_all(r).unwrap();
                    std::os::unix::fs::symlink("outside", r).unwrap();
                }),
                "no longer a directory",
            ),
        ];
        for (what, input, evil, needle) in rows {
            let err = check_with(&input, |_, rootfs, _| {
                evil(rootfs);
                true
            })
            .expect_err(what);
            assert!(err.contains(needle), "{what}: {err}");
        }
        // And a well-behaved extractor passes with the same inputs.
        assert_eq!(
            check_with(&with_flags(tar_named("x")), |_, r, _| {
                fs::write(r.join("x"), b"").unwrap();
                std::os::unix::fs::symlink("../etc/passwd", r.join("etc/ok")).unwrap();
                true
            }),
            Ok(Outcome {
                applied: 1,
                refused: 0
            })
        );
    }

    #[test]
    fn flags_select_gzip_and_two_layers() {
        let mut seen = Vec::new();
        let input = [FLAG_GZIP | FLAG_TWO_LAYERS, b'x'];
        let outcome = check_with(&input, |layer, _, _| {
            seen.push(layer.to_vec());
            false
        })
        .unwrap();
        assert_eq!(
            outcome,
            Outcome {
                applied: 0,
                refused: 2
            }
        );
        assert_eq!(seen.len(), 2);
        assert_eq!(&seen[0][..2], &[0x1f, 0x8b], "gzip magic");
        let outcome = check_with(&[0, b'x'], |layer, _, _| layer == b"x").unwrap();
        assert_eq!(
            outcome,
            Outcome {
                applied: 1,
                refused: 0
            }
        );
    }

    #[test]
    fn lexical_escape_table() {
        let root = Path::new("/r/rootfs");
        for (name, want) in [
            ("a/b", None),
            ("a/../b", None),
            ("..", Some("/r")),
            ("../x", Some("/r/x")),
            ("a/../../x", Some("/r/x")),
            ("/etc/x", Some("/etc/x")),
        ] {
            assert_eq!(
                lexically_outside(root, Path::new(name)),
                want.map(PathBuf::from),
                "{name}"
            );
        }
        assert!(symlink_climbs_out(0, Path::new("..")));
        assert!(symlink_climbs_out(1, Path::new("a/../../..")));
        assert!(!symlink_climbs_out(1, Path::new("..")));
        assert!(!symlink_climbs_out(0, Path::new("a/..")));
    }
}
