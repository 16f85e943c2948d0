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

/// A path as it may be shown in a message (control characters escaped).
fn shown(path: &str) -> String {
    if path.chars().any(char::is_control) {
        path.escape_debug().to_string()
    } else {
        path.to_string()
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
    let display = dir.display().to_string();
    let root = match fs::canonicalize(dir) {
        Ok(root) => root,
        Err(e) => {
            return Err(ContractErrors(vec![problem(
                display,
                "",
                format!("cannot open the package folder: {e}"),
            )]))
        }
    };
    if !root.is_dir() {
        return Err(ContractErrors(vec![problem(
            display,
            "",
            "is not a folder: give the folder that holds contract.yaml",
        )]));
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
    if reader.problems.is_empty() {
        Ok(reader.files)
    } else {
        Err(ContractErrors(reader.problems))
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
