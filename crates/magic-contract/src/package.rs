//! Controller packages: the folder a user deploys.
//!
//! Owns: the rules for a package's file names (relative, `/`-separated, no `..`), its limits
//! (file count, total size), what it must contain (`contract.yaml` and exactly one of
//! `controller.py` / `controller.wasm`), and reading a folder from disk into memory.
//! Must never: follow a symlink out of the folder, open a special file (fifo, socket, device),
//! or write anything.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::parse::CONTRACT_FILE;
use crate::pycheck::check_controller_py;
use crate::{parse_contract, CompiledContract, ContractErrors, Problem};

/// Largest package (sum of file sizes) accepted.
pub const MAX_PACKAGE_BYTES: u64 = 16 * 1024 * 1024;

/// Most files a package may hold.
pub const MAX_PACKAGE_FILES: usize = 1000;

/// Longest relative path accepted, in bytes.
const MAX_PATH_BYTES: usize = 1024;

/// Longest path component accepted, in bytes.
const MAX_COMPONENT_BYTES: usize = 255;

/// Deepest folder nesting read.
const MAX_DEPTH: usize = 32;

/// What runs the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageKind {
    /// `controller.py`: a Python class deriving `magic.Controller`.
    Python,
    /// `controller.wasm`: a WASM component.
    Wasm,
}

/// A checked package: its contract compiled, its files by relative path.
#[derive(Debug)]
pub struct Package {
    /// The compiled contract.
    pub contract: CompiledContract,
    /// Python or WASM.
    pub kind: PackageKind,
    /// Every file, keyed by `/`-separated relative path.
    pub files: BTreeMap<String, Vec<u8>>,
}

fn problem(
    file: impl Into<String>,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> Problem {
    Problem {
        file: file.into(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// A path as it may be shown in a message: control characters escaped, cut after 200
/// characters.
fn shown(path: &str) -> String {
    let escaped = if path.chars().any(char::is_control) {
        path.escape_debug().to_string()
    } else {
        path.to_string()
    };
    match escaped.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// Whether `path` is an acceptable package path: relative, `/`-separated, no empty, `.` or
/// `..` components, no backslash, NUL or control characters, at most 1024 bytes (255 per
/// component).
pub fn check_package_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if path.contains('\\') {
        return Err("the path contains a backslash: separate folders with /".into());
    }
    if path.chars().any(char::is_control) {
        return Err("the path contains control characters".into());
    }
    if path.starts_with('/') {
        return Err("the path is absolute: paths must be relative to the package folder".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
    }
    for component in path.split('/') {
        match component {
            "" => return Err("the path has an empty component (// or a trailing /)".into()),
            "." => return Err("the path has a . component".into()),
            ".." => return Err("the path has a .. component: it would leave the package".into()),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "a path component is longer than {MAX_COMPONENT_BYTES} bytes"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Check a package given as files (relative path → bytes).
pub fn check_package(files: BTreeMap<String, Vec<u8>>) -> Result<Package, ContractErrors> {
    let mut problems = Vec::new();
    if files.len() > MAX_PACKAGE_FILES {
        problems.push(problem(
            "",
            "",
            format!(
                "the package has {} files, at most {MAX_PACKAGE_FILES} are accepted",
                files.len()
            ),
        ));
    }
    let total: u64 = files
        .values()
        .fold(0u64, |sum, bytes| sum.saturating_add(bytes.len() as u64));
    if total > MAX_PACKAGE_BYTES {
        problems.push(problem(
            "",
            "",
            format!(
                "the package is {total} bytes, at most {MAX_PACKAGE_BYTES} ({} MiB) are accepted",
                MAX_PACKAGE_BYTES >> 20
            ),
        ));
    }
    for path in files.keys() {
        if let Err(why) = check_package_path(path) {
            problems.push(problem(shown(path), "", why));
            continue;
        }
        // `a` and `a/b` cannot both be files.
        for (i, _) in path.match_indices('/') {
            let folder = &path[..i];
            if files.contains_key(folder) {
                problems.push(problem(
                    shown(folder),
                    "",
                    format!("is a file, but {} uses it as a folder", shown(path)),
                ));
            }
        }
    }

    let contract = match files.get(CONTRACT_FILE) {
        None => {
            problems.push(problem(
                CONTRACT_FILE,
                "",
                "missing: every package needs a contract.yaml at its top level",
            ));
            None
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Err(e) => {
                problems.push(problem(
                    CONTRACT_FILE,
                    "",
                    format!("is not UTF-8 text: {e}"),
                ));
                None
            }
            Ok(text) => match parse_contract(text) {
                Ok(c) => Some(c),
                Err(ContractErrors(found)) => {
                    problems.extend(found);
                    None
                }
            },
        },
    };

    let kind = match (files.get("controller.py"), files.get("controller.wasm")) {
        (Some(_), Some(_)) => {
            problems.push(problem(
                "",
                "",
                "the package has both controller.py and controller.wasm: keep exactly one",
            ));
            None
        }
        (None, None) => {
            problems.push(problem(
                "",
                "",
                "the package has no controller: add controller.py (Python) or controller.wasm (WASM)",
            ));
            None
        }
        (Some(source), None) => {
            let found = check_controller_py(source);
            let ok = found.is_empty();
            problems.extend(found);
            ok.then_some(PackageKind::Python)
        }
        (None, Some(wasm)) => {
            if wasm.len() >= 8 && wasm.starts_with(b"\0asm") {
                Some(PackageKind::Wasm)
            } else {
                problems.push(problem(
                    "controller.wasm",
                    "",
                    "is not a WebAssembly binary (it does not start with \\0asm)",
                ));
                None
            }
        }
    };

    match (contract, kind) {
        (Some(contract), Some(kind)) if problems.is_empty() => Ok(Package {
            contract,
            kind,
            files,
        }),
        _ => Err(ContractErrors(problems)),
    }
}

/// Read a package folder into memory, refusing anything that escapes it.
///
/// Skips `__pycache__`, `.git` and `*.pyc`. A symlink is followed when its target resolves
/// inside the folder; one that leaves it, a broken one, a loop and any special file are
/// problems. The limits of [`check_package`] apply while reading.
pub fn read_package_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, ContractErrors> {
    let read = read_dir_collect(dir);
    if read.problems.is_empty() {
        Ok(read.files)
    } else {
        Err(ContractErrors(read.problems))
    }
}

/// [`read_package_dir`] then [`check_package`], reporting the problems of both at once
/// (what `magic validate DIR` shows). When reading stopped at a limit, only the reading
/// problems are reported: the files read so far are not the package.
pub fn check_package_dir(dir: &Path) -> Result<Package, ContractErrors> {
    let read = read_dir_collect(dir);
    if read.stopped {
        return Err(ContractErrors(read.problems));
    }
    match check_package(read.files) {
        Ok(package) if read.problems.is_empty() => Ok(package),
        Ok(_) => Err(ContractErrors(read.problems)),
        Err(ContractErrors(found)) => {
            let mut problems = read.problems;
            problems.extend(found);
            Err(ContractErrors(problems))
        }
    }
}

/// What reading a folder found.
struct ReadDir {
    files: BTreeMap<String, Vec<u8>>,
    problems: Vec<Problem>,
    /// The folder could not be read, or a limit stopped the walk.
    stopped: bool,
}

fn read_dir_collect(dir: &Path) -> ReadDir {
    let display = dir.display().to_string();
    let stopped = |reason: String| ReadDir {
        files: BTreeMap::new(),
        problems: vec![problem(display.clone(), "", reason)],
        stopped: true,
    };
    let root = match fs::canonicalize(dir) {
        Ok(root) => root,
        Err(e) => return stopped(format!("cannot open the package folder: {e}")),
    };
    if !root.is_dir() {
        return stopped("is not a folder: give the folder that holds contract.yaml".into());
    }
    let mut reader = DirReader {
        root: root.clone(),
        files: BTreeMap::new(),
        total: 0,
        problems: Vec::new(),
        ancestors: Vec::new(),
        folders: 0,
        full: false,
    };
    reader.walk(&root, "", 0);
    ReadDir {
        files: reader.files,
        problems: reader.problems,
        stopped: reader.full,
    }
}

struct DirReader {
    root: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
    total: u64,
    problems: Vec<Problem>,
    /// Canonical folders being walked, outermost first (a symlink to one of them is a loop).
    ancestors: Vec<PathBuf>,
    /// Folders walked so far (symlinks could make the tree explode).
    folders: usize,
    /// A limit was hit: stop reading.
    full: bool,
}

fn skipped(name: &str) -> bool {
    name == "__pycache__" || name == ".git" || name.ends_with(".pyc")
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a named pipe (fifo)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

impl DirReader {
    fn problem(&mut self, file: &str, reason: impl Into<String>) {
        self.problems.push(problem(shown(file), "", reason));
    }

    /// Walk `dir`, a canonical path inside the root, known to the package as `rel`.
    fn walk(&mut self, dir: &Path, rel: &str, depth: usize) {
        if depth > MAX_DEPTH {
            self.problem(
                rel,
                format!("folders are nested deeper than {MAX_DEPTH} levels"),
            );
            return;
        }
        self.folders += 1;
        if self.folders > MAX_PACKAGE_FILES {
            self.problem(
                rel,
                format!("the package has more than {MAX_PACKAGE_FILES} folders"),
            );
            self.full = true;
            return;
        }
        self.ancestors.push(dir.to_path_buf());
        self.walk_entries(dir, rel, depth);
        self.ancestors.pop();
    }

    fn walk_entries(&mut self, dir: &Path, rel: &str, depth: usize) {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.problem(
                    if rel.is_empty() { "." } else { rel },
                    format!("cannot read the folder: {e}"),
                );
                return;
            }
        };
        let mut entries: Vec<fs::DirEntry> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            if self.full {
                return;
            }
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                let lossy = os_name.to_string_lossy().into_owned();
                self.problem(&join_rel(rel, &lossy), "the file name is not UTF-8");
                continue;
            };
            if skipped(name) {
                continue;
            }
            let path_rel = join_rel(rel, name);
            if let Err(why) = check_package_path(&path_rel) {
                self.problem(&path_rel, why);
                continue;
            }
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    self.problem(&path_rel, format!("cannot be read: {e}"));
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                self.symlink(&path, &path_rel, depth);
            } else if ft.is_dir() {
                match fs::canonicalize(&path) {
                    // A folder swapped for a symlink after the check above still cannot
                    // lead out.
                    Ok(real) if !real.starts_with(&self.root) => self.problem(
                        &path_rel,
                        "changed while being read: it now leads outside the package folder",
                    ),
                    Ok(real) => self.walk(&real, &path_rel, depth + 1),
                    Err(e) => self.problem(&path_rel, format!("cannot be read: {e}")),
                }
            } else if ft.is_file() {
                self.read_file(&path, &path_rel);
            } else {
                self.problem(
                    &path_rel,
                    format!(
                        "is {}: a package holds only regular files and folders",
                        special_kind(&ft)
                    ),
                );
            }
        }
    }

    fn symlink(&mut self, path: &Path, rel: &str, depth: usize) {
        let target = match fs::canonicalize(path) {
            Ok(target) => target,
            Err(e) => {
                self.problem(
                    rel,
                    format!("is a symlink that cannot be followed (broken or a loop): {e}"),
                );
                return;
            }
        };
        if !target.starts_with(&self.root) {
            self.problem(
                rel,
                format!(
                    "is a symlink to {}, outside the package folder: copy the file in instead",
                    target.display()
                ),
            );
            return;
        }
        let meta = match fs::metadata(&target) {
            Ok(meta) => meta,
            Err(e) => {
                self.problem(rel, format!("cannot be read: {e}"));
                return;
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            if self.ancestors.contains(&target) {
                self.problem(
                    rel,
                    "is a symlink to a folder that contains it (a loop): remove it",
                );
            } else {
                self.walk(&target, rel, depth + 1);
            }
        } else if ft.is_file() {
            self.read_file(&target, rel);
        } else {
            self.problem(
                rel,
                format!(
                    "is a symlink to {}: a package holds only regular files and folders",
                    special_kind(&ft)
                ),
            );
        }
    }

    /// Read one regular file; `path` has no symlink in its last component.
    fn read_file(&mut self, path: &Path, rel: &str) {
        if self.files.len() >= MAX_PACKAGE_FILES {
            self.problem(
                rel,
                format!("the package has more than {MAX_PACKAGE_FILES} files"),
            );
            self.full = true;
            return;
        }
        // O_NOFOLLOW: the entry cannot be swapped for a symlink between the check and the
        // open; O_NONBLOCK: nor for a fifo that would block the open.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let mut file = match file {
            Ok(file) => file,
            Err(e) => {
                self.problem(rel, format!("cannot be read: {e}"));
                return;
            }
        };
        match file.metadata() {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                self.problem(
                    rel,
                    "changed while being read: it is no longer a regular file",
                );
                return;
            }
            Err(e) => {
                self.problem(rel, format!("cannot be read: {e}"));
                return;
            }
        }
        let room = MAX_PACKAGE_BYTES.saturating_sub(self.total);
        let mut bytes = Vec::new();
        if let Err(e) = (&mut file)
            .take(room.saturating_add(1))
            .read_to_end(&mut bytes)
        {
            self.problem(rel, format!("cannot be read: {e}"));
            return;
        }
        if bytes.len() as u64 > room {
            self.problem(
                rel,
                format!(
                    "the package is larger than {MAX_PACKAGE_BYTES} bytes ({} MiB) with this file",
                    MAX_PACKAGE_BYTES >> 20
                ),
            );
            self.full = true;
            return;
        }
        self.total += bytes.len() as u64;
        self.files.insert(rel.to_string(), bytes);
    }
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    const CONTRACT: &str =
        "name: Hello\nversion: 1.0.0\ninput: { type: object }\noutput: { type: object }\n";
    const CONTROLLER: &str = "from magic import Controller, contract\n\n@contract(\"./contract.yaml\")\nclass Hello(Controller):\n    async def execute(self, input):\n        return {}\n";
    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    fn files(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .collect()
    }

    fn python_package() -> BTreeMap<String, Vec<u8>> {
        files(&[
            ("contract.yaml", CONTRACT.as_bytes()),
            ("controller.py", CONTROLLER.as_bytes()),
        ])
    }

    fn problems_of(files: BTreeMap<String, Vec<u8>>) -> Vec<Problem> {
        match check_package(files) {
            Ok(p) => panic!("expected problems, got a {:?} package", p.kind),
            Err(ContractErrors(found)) => found,
        }
    }

    fn has(found: &[Problem], file: &str, field: &str, why: &str) -> bool {
        found
            .iter()
            .any(|p| p.file == file && p.field == field && p.reason.contains(why))
    }

    #[test]
    fn package_paths() {
        for ok in [
            "a",
            "contract.yaml",
            "lib/util.py",
            ".hidden",
            "a/b/c/d.txt",
            "..a",
            "a..",
            "x y",
        ] {
            assert_eq!(check_package_path(ok), Ok(()), "{ok}");
        }
        let long_component = "c".repeat(256);
        let long_path = "d/".repeat(600);
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", ".. component"),
            ("a/../../x", ".. component"),
            ("a/..", ".. component"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("./a", ". component"),
            ("a/./b", ". component"),
            ("a\\b", "backslash"),
            ("..\\x", "backslash"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            (&long_component, "longer than 255"),
            (&long_path, "longer than 1024"),
        ];
        for (path, why) in bad {
            let err = check_package_path(path).expect_err(path);
            assert!(err.contains(why), "{path:?}: {err}");
        }
    }

    #[test]
    fn good_packages_pass() {
        let mut with_extra = python_package();
        with_extra.insert("lib/util.py".into(), b"X = 1\n".to_vec());
        let package = check_package(with_extra.clone()).unwrap();
        assert_eq!(package.kind, PackageKind::Python);
        assert_eq!(package.files, with_extra);
        assert_eq!(package.contract.contract().name, "Hello");

        let wasm = files(&[
            ("contract.yaml", CONTRACT.as_bytes()),
            ("controller.wasm", WASM),
        ]);
        assert_eq!(check_package(wasm).unwrap().kind, PackageKind::Wasm);
    }

    #[test]
    fn bad_packages_name_each_problem() {
        let mut f = python_package();
        f.remove("contract.yaml");
        assert!(has(&problems_of(f), "contract.yaml", "", "missing"));

        let mut f = python_package();
        f.insert("contract.yaml".into(), b"name: \xff\n".to_vec());
        assert!(has(&problems_of(f), "contract.yaml", "", "not UTF-8"));

        let mut f = python_package();
        f.insert(
            "contract.yaml".into(),
            CONTRACT.replace("1.0.0", "one").into_bytes(),
        );
        assert!(has(
            &problems_of(f),
            "contract.yaml",
            "version",
            "not a semantic version"
        ));

        let mut f = python_package();
        f.remove("controller.py");
        assert!(has(&problems_of(f), "", "", "no controller"));

        let mut f = python_package();
        f.insert("controller.wasm".into(), WASM.to_vec());
        assert!(has(
            &problems_of(f),
            "",
            "",
            "both controller.py and controller.wasm"
        ));

        let f = files(&[
            ("contract.yaml", CONTRACT.as_bytes()),
            ("controller.wasm", b"MZ\x90\0\0\0\0\0"),
        ]);
        assert!(has(
            &problems_of(f),
            "controller.wasm",
            "",
            "not a WebAssembly binary"
        ));
        let f = files(&[
            ("contract.yaml", CONTRACT.as_bytes()),
            ("controller.wasm", b"\0asm"),
        ]);
        assert!(has(
            &problems_of(f),
            "controller.wasm",
            "",
            "not a WebAssembly binary"
        ));

        let mut f = python_package();
        f.insert(
            "controller.py".into(),
            CONTROLLER.replace("async def", "def").into_bytes(),
        );
        assert!(has(
            &problems_of(f),
            "controller.py",
            "line 5",
            "must be a coroutine"
        ));

        // Only the top-level controller.py counts.
        let f = files(&[
            ("contract.yaml", CONTRACT.as_bytes()),
            ("sub/controller.py", CONTROLLER.as_bytes()),
        ]);
        assert!(has(&problems_of(f), "", "", "no controller"));
    }

    #[test]
    fn path_tricks_and_limits_are_refused() {
        for path in [
            "/etc/passwd",
            "../evil.py",
            "a/../../evil",
            "a//b",
            "./x",
            "a\\b",
            "a\0b",
            "",
        ] {
            let mut f = python_package();
            f.insert(path.into(), b"x".to_vec());
            let found = problems_of(f);
            assert!(
                found.iter().any(|p| p.file == shown(path)),
                "{path:?}: {found:?}"
            );
        }

        let mut f = python_package();
        f.insert("x".repeat(5000), b"x".to_vec());
        let found = problems_of(f);
        assert!(
            found
                .iter()
                .any(|p| p.file.chars().count() == 201 && p.reason.contains("longer than")),
            "{found:?}"
        );

        let mut f = python_package();
        f.insert("lib".into(), b"x".to_vec());
        f.insert("lib/util.py".into(), b"x".to_vec());
        assert!(has(&problems_of(f), "lib", "", "uses it as a folder"));

        let mut f = python_package();
        for i in 0..MAX_PACKAGE_FILES {
            f.insert(format!("data/{i}.txt"), Vec::new());
        }
        assert!(has(&problems_of(f), "", "", "at most 1000"));

        let mut f = python_package();
        f.insert("big.bin".into(), vec![0; MAX_PACKAGE_BYTES as usize]);
        assert!(has(&problems_of(f), "", "", "MiB) are accepted"));
    }

    #[test]
    fn every_package_problem_is_reported_at_once() {
        let f = files(&[
            (
                "contract.yaml",
                CONTRACT.replace("Hello", "9lives").as_bytes(),
            ),
            ("controller.py", b"def broken(:\n"),
            ("../escape", b"x"),
        ]);
        let found = problems_of(f);
        assert!(
            has(&found, "contract.yaml", "name", "not a valid name"),
            "{found:?}"
        );
        assert!(
            has(&found, "controller.py", "line 1", "syntax error"),
            "{found:?}"
        );
        assert!(has(&found, "../escape", "", ".. component"), "{found:?}");
        assert_eq!(found.len(), 3, "{found:?}");
    }

    /// A package folder inside a scratch directory that also holds an `outside` folder.
    struct Scratch {
        _tmp: tempfile::TempDir,
        pkg: PathBuf,
        outside: PathBuf,
    }

    fn scratch() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("pkg");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(pkg.join("lib")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(pkg.join("contract.yaml"), CONTRACT).unwrap();
        fs::write(pkg.join("controller.py"), CONTROLLER).unwrap();
        fs::write(pkg.join("lib/util.py"), "X = 1\n").unwrap();
        fs::write(outside.join("secret.txt"), "top secret").unwrap();
        Scratch {
            _tmp: tmp,
            pkg,
            outside,
        }
    }

    fn dir_problems(dir: &Path) -> Vec<Problem> {
        match read_package_dir(dir) {
            Ok(files) => panic!(
                "expected problems, read {:?}",
                files.keys().collect::<Vec<_>>()
            ),
            Err(ContractErrors(found)) => found,
        }
    }

    #[test]
    fn reads_a_folder_skipping_caches() {
        let s = scratch();
        fs::create_dir_all(s.pkg.join("__pycache__")).unwrap();
        fs::write(s.pkg.join("__pycache__/controller.cpython-311.pyc"), "x").unwrap();
        fs::write(s.pkg.join("lib/old.pyc"), "x").unwrap();
        fs::create_dir_all(s.pkg.join(".git/objects")).unwrap();
        fs::write(s.pkg.join(".git/HEAD"), "ref").unwrap();
        fs::create_dir_all(s.pkg.join("empty")).unwrap();
        fs::write(s.pkg.join("lib/readme.md"), "hi").unwrap();
        symlink("util.py", s.pkg.join("lib/alias.py")).unwrap();
        symlink("lib", s.pkg.join("lib2")).unwrap();
        let read = read_package_dir(&s.pkg).unwrap();
        let keys: Vec<&str> = read.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "contract.yaml",
                "controller.py",
                "lib/alias.py",
                "lib/readme.md",
                "lib/util.py",
                "lib2/alias.py",
                "lib2/readme.md",
                "lib2/util.py",
            ]
        );
        assert_eq!(read["lib/alias.py"], b"X = 1\n");
        assert_eq!(read["lib2/util.py"], b"X = 1\n");
        assert!(check_package(read).is_ok());

        // The folder itself may be reached through a symlink.
        let via = s.outside.join("via");
        symlink(&s.pkg, &via).unwrap();
        assert!(read_package_dir(&via).is_ok());
    }

    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let s = scratch();
        symlink(s.outside.join("secret.txt"), s.pkg.join("abs_file")).unwrap();
        symlink("../../outside/secret.txt", s.pkg.join("lib/rel_file")).unwrap();
        symlink(&s.outside, s.pkg.join("abs_dir")).unwrap();
        symlink("/etc", s.pkg.join("etc")).unwrap();
        // Two hops: each link alone looks harmless.
        fs::create_dir_all(s.pkg.join("inner")).unwrap();
        symlink("..", s.pkg.join("inner/up")).unwrap();
        symlink("up/../outside", s.pkg.join("inner/escape")).unwrap();
        let found = dir_problems(&s.pkg);
        for file in ["abs_file", "lib/rel_file", "abs_dir", "etc", "inner/escape"] {
            assert!(
                has(&found, file, "", "outside the package folder"),
                "{file}: {found:#?}"
            );
        }
        assert!(has(&found, "inner/up", "", "a loop"), "{found:#?}");
        assert!(
            found.iter().all(|p| !p.reason.contains("top secret")),
            "content leaked: {found:?}"
        );
    }

    #[test]
    fn broken_links_loops_and_special_files_are_refused() {
        let s = scratch();
        symlink("missing.txt", s.pkg.join("broken")).unwrap();
        symlink("loop_b", s.pkg.join("loop_a")).unwrap();
        symlink("loop_a", s.pkg.join("loop_b")).unwrap();
        symlink(".", s.pkg.join("lib/self")).unwrap();
        let fifo = s.pkg.join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let _listener = std::os::unix::net::UnixListener::bind(s.pkg.join("sock")).unwrap();
        symlink("pipe", s.pkg.join("pipe_link")).unwrap();
        let found = dir_problems(&s.pkg);
        assert!(
            has(&found, "broken", "", "cannot be followed"),
            "{found:#?}"
        );
        assert!(
            has(&found, "loop_a", "", "cannot be followed"),
            "{found:#?}"
        );
        assert!(has(&found, "lib/self", "", "a loop"), "{found:#?}");
        assert!(has(&found, "pipe", "", "named pipe"), "{found:#?}");
        assert!(has(&found, "sock", "", "socket"), "{found:#?}");
        assert!(has(&found, "pipe_link", "", "named pipe"), "{found:#?}");
    }

    #[test]
    fn bad_names_and_missing_folders_are_refused() {
        let s = scratch();
        fs::write(s.pkg.join("back\\slash.py"), "x").unwrap();
        fs::write(s.pkg.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), "x").unwrap();
        let found = dir_problems(&s.pkg);
        assert!(has(&found, "back\\slash.py", "", "backslash"), "{found:#?}");
        assert!(
            found.iter().any(|p| p.reason.contains("not UTF-8")),
            "{found:#?}"
        );

        let found = dir_problems(&s.pkg.join("nope"));
        assert!(
            found[0].reason.contains("cannot open the package folder"),
            "{found:?}"
        );
        let found = dir_problems(&s.pkg.join("contract.yaml"));
        assert!(found[0].reason.contains("is not a folder"), "{found:?}");
    }

    #[test]
    fn check_package_dir_reports_reading_and_checking_problems_together() {
        let s = scratch();
        assert_eq!(check_package_dir(&s.pkg).unwrap().kind, PackageKind::Python);
        symlink("/etc/passwd", s.pkg.join("passwd")).unwrap();
        fs::write(
            s.pkg.join("contract.yaml"),
            CONTRACT.replace("1.0.0", "one"),
        )
        .unwrap();
        let found = match check_package_dir(&s.pkg) {
            Ok(_) => panic!("accepted"),
            Err(ContractErrors(found)) => found,
        };
        assert!(
            has(&found, "passwd", "", "outside the package folder"),
            "{found:?}"
        );
        assert!(
            has(&found, "contract.yaml", "version", "semantic version"),
            "{found:?}"
        );
        assert_eq!(found.len(), 2, "{found:?}");

        // A reading problem alone still fails the package.
        fs::write(s.pkg.join("contract.yaml"), CONTRACT).unwrap();
        let Err(ContractErrors(found)) = check_package_dir(&s.pkg) else {
            panic!("accepted a package with a symlink out of it");
        };
        assert_eq!(found.len(), 1, "{found:?}");

        // Past a limit, the partial read is not checked (no spurious "missing contract.yaml").
        fs::remove_file(s.pkg.join("passwd")).unwrap();
        fs::create_dir_all(s.pkg.join("a_data")).unwrap();
        for i in 0..=MAX_PACKAGE_FILES {
            fs::write(s.pkg.join(format!("a_data/{i:04}.txt")), "").unwrap();
        }
        let Err(ContractErrors(found)) = check_package_dir(&s.pkg) else {
            panic!("accepted");
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].reason.contains("more than 1000 files"),
            "{found:?}"
        );
        let Err(ContractErrors(found)) = check_package_dir(&s.pkg.join("missing")) else {
            panic!("accepted");
        };
        assert!(found[0].reason.contains("cannot open"), "{found:?}");
    }

    #[test]
    fn folder_limits_apply_while_reading() {
        let s = scratch();
        fs::create_dir_all(s.pkg.join("data")).unwrap();
        for i in 0..MAX_PACKAGE_FILES {
            fs::write(s.pkg.join(format!("data/{i:04}.txt")), "").unwrap();
        }
        let found = dir_problems(&s.pkg);
        assert!(
            found
                .iter()
                .any(|p| p.reason.contains("more than 1000 files")),
            "{found:?}"
        );

        let s = scratch();
        let half = vec![0u8; (MAX_PACKAGE_BYTES / 2 + 1) as usize];
        fs::write(s.pkg.join("a.bin"), &half).unwrap();
        fs::write(s.pkg.join("b.bin"), &half).unwrap();
        let found = dir_problems(&s.pkg);
        assert!(has(&found, "b.bin", "", "larger than"), "{found:?}");

        let s = scratch();
        let deep: PathBuf = std::iter::once(s.pkg.clone())
            .chain((0..40).map(|_| PathBuf::from("d")))
            .collect();
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f.txt"), "x").unwrap();
        let found = dir_problems(&s.pkg);
        assert!(
            found
                .iter()
                .any(|p| p.reason.contains("nested deeper than 32")),
            "{found:?}"
        );

        // Symlinked folders cannot multiply without bound.
        let s = scratch();
        let mut prev = s.pkg.join("lib");
        for level in 0..12 {
            let dir = s.pkg.join(format!("l{level}"));
            fs::create_dir_all(&dir).unwrap();
            symlink(&prev, dir.join("a")).unwrap();
            symlink(&prev, dir.join("b")).unwrap();
            prev = dir;
        }
        let started = std::time::Instant::now();
        let found = dir_problems(&s.pkg);
        assert!(
            found.iter().any(|p| p.reason.contains("more than 1000")),
            "{found:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
