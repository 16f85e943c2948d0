//! Static check of `controller.py` with Python's own `ast` module.
//!
//! Owns: the embedded checker script (source on stdin, JSON report on stdout), finding the
//! real `python3` executable once, running it isolated (`-I -S`) with a deadline, and turning
//! its report into [`Problem`]s for `controller.py`.
//! Must never: import or execute the controller's code (only `ast.parse` it), or wait for the
//! interpreter without a deadline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Problem;

/// The file these problems are reported in.
const FILE: &str = "controller.py";

/// How long the checker may run.
const DEADLINE: Duration = Duration::from_secs(20);

/// Reads controller.py from stdin, prints `{"problems": [{"line": N, "reason": "..."}]}`.
const SCRIPT: &str = r#"
import ast, json, sys

def imports(tree):
    """Names bound to magic.Controller / magic.contract, and to the magic module."""
    bound = {"Controller": set(), "contract": set()}
    modules, star = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "magic" and not node.level:
            for a in node.names:
                if a.name == "*":
                    star = True
                elif a.name in bound:
                    bound[a.name].add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "magic":
                    modules.add(a.asname or "magic")
    return bound, modules, star

def check(src):
    out = []
    def problem(line, reason):
        out.append({"line": int(line or 0), "reason": reason})
    try:
        tree = ast.parse(src, filename="controller.py")
    except SyntaxError as e:
        where = " (column %d)" % e.offset if e.offset else ""
        problem(e.lineno, "syntax error: %s%s" % (e.msg or "invalid syntax", where))
        return out
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        problem(0, "cannot be parsed: %s: %s" % (type(e).__name__, e))
        return out
    bound, modules, star = imports(tree)
    def is_named(node, name):
        # The plain name counts even when not imported (reported below), so one
        # mistake does not hide the others.
        if isinstance(node, ast.Name):
            return node.id == name or node.id in bound[name]
        return (isinstance(node, ast.Attribute) and node.attr == name
                and isinstance(node.value, ast.Name) and (node.value.id in modules or node.value.id == "magic"))
    def imported(node, name):
        if isinstance(node, ast.Name):
            return star or node.id in bound[name]
        return node.value.id in modules
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(is_named(b, "Controller") for b in n.bases)]
    if not classes:
        problem(0, "no class deriving Controller: write `class MyController(Controller):` "
                   "after `from magic import Controller, contract`")
        return out
    first = classes[0]
    for c in classes[1:]:
        problem(c.lineno, "second class deriving Controller (%s): a package holds exactly one "
                          "controller, the first is %s at line %d" % (c.name, first.name, first.lineno))
    for c in classes:
        base = [b for b in c.bases if is_named(b, "Controller")][0]
        if not imported(base, "Controller"):
            problem(c.lineno, "Controller is used but not imported: add `from magic import Controller, contract`")
        decorators = [d for d in c.decorator_list
                      if is_named(d, "contract") or (isinstance(d, ast.Call) and is_named(d.func, "contract"))]
        if not decorators:
            problem(c.lineno, "class %s is not decorated with @contract(\"./contract.yaml\")" % c.name)
        elif len(decorators) > 1:
            problem(decorators[1].lineno, "class %s is decorated with @contract more than once" % c.name)
        for d in decorators[:1]:
            if not isinstance(d, ast.Call):
                problem(d.lineno, "call the decorator with the contract path: @contract(\"./contract.yaml\")")
                continue
            if not imported(d.func, "contract"):
                problem(d.lineno, "contract is used but not imported: add `from magic import Controller, contract`")
            arg = d.args[0] if len(d.args) == 1 and not d.keywords else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                problem(d.lineno, "@contract takes one string, the contract path: @contract(\"./contract.yaml\")")
                continue
            path = arg.value
            while path.startswith("./"):
                path = path[2:]
            if path != "contract.yaml":
                problem(d.lineno, "@contract(%r) must name this package's contract: @contract(\"./contract.yaml\")" % arg.value)
        defs = [n for n in c.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "execute"]
        if not defs:
            problem(c.lineno, "class %s has no `async def execute(self, input)`" % c.name)
            continue
        f = defs[-1]
        if not isinstance(f, ast.AsyncFunctionDef):
            problem(f.lineno, "execute must be a coroutine: write `async def execute(self, input)`")
        a = f.args
        positional = list(a.posonlyargs) + list(a.args)
        required = len(positional) - len(a.defaults)
        required_kwonly = [k.arg for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
        if (len(positional) < 2 and a.vararg is None) or required > 2 or required_kwonly:
            problem(f.lineno, "execute must take (self, input): write `async def execute(self, input)`")
    return out[:50]

try:
    report = check(sys.stdin.buffer.read())
except Exception as e:
    report = [{"line": 0, "reason": "the checker failed: %s: %s" % (type(e).__name__, e)}]
sys.stdout.write(json.dumps({"problems": report}))
"#;

#[derive(serde::Deserialize)]
struct Report {
    problems: Vec<Reported>,
}

#[derive(serde::Deserialize)]
struct Reported {
    line: u64,
    reason: String,
}

fn problem(line: u64, reason: impl Into<String>) -> Problem {
    Problem {
        file: FILE.to_string(),
        field: if line > 0 {
            format!("line {line}")
        } else {
            String::new()
        },
        reason: reason.into(),
    }
}

/// The real `python3` executable (not a version-manager shim), found once.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        Command::new("python3")
            .args([
                "-I",
                "-S",
                "-c",
                "import sys; sys.stdout.write(sys.executable or '')",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_file())
            .unwrap_or_else(|| PathBuf::from("python3"))
    })
}

/// Check `controller.py`; every problem found, empty when it is fine.
pub(crate) fn check_controller_py(source: &[u8]) -> Vec<Problem> {
    check_with(python(), source, DEADLINE)
}

/// [`check_controller_py`] with a given interpreter.
pub(crate) fn check_with(python: &Path, source: &[u8], deadline: Duration) -> Vec<Problem> {
    let spawned = Command::new(python)
        .args(["-I", "-S", "-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![problem(
                0,
                format!(
                    "cannot check controller.py: {} was not found; install Python 3 (e.g. `apt-get install python3`)",
                    python.display()
                ),
            )]
        }
        Err(e) => {
            return vec![problem(
                0,
                format!("cannot check controller.py: starting {} failed: {e}", python.display()),
            )]
        }
    };
    // Feed stdin from a thread so a large file can never dead-lock against a full pipe.
    let writer = child.stdin.take().map(|mut stdin| {
        let source = source.to_vec();
        std::thread::spawn(move || {
            // A write error means the checker exited early; its exit status says why.
            let _ = stdin.write_all(&source);
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "cannot check controller.py: the checker took longer than {}ms",
                    deadline.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "cannot check controller.py: waiting for python3 failed: {e}"
                ));
            }
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let status = match status {
        Ok(status) => status,
        Err(reason) => return vec![problem(0, reason)],
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(err) = child.stderr.take() {
        let _ = err.take(4096).read_to_end(&mut stderr);
    }
    match serde_json::from_slice::<Report>(&stdout) {
        Ok(report) if status.success() => report
            .problems
            .into_iter()
            .map(|p| problem(p.line, p.reason))
            .collect(),
        _ => vec![problem(
            0,
            format!(
                "cannot check controller.py: python3 exited with {status}: {}",
                String::from_utf8_lossy(&stderr).trim()
            ),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
from magic import Controller, contract

@contract("./contract.yaml")
class Hello(Controller):
    """Says hello."""

    async def execute(self, input: dict) -> dict:
        return {"greeting": "hello " + input["name"]}
"#;

    fn reasons(src: &str) -> Vec<(String, String)> {
        check_controller_py(src.as_bytes())
            .into_iter()
            .map(|p| {
                assert_eq!(p.file, "controller.py");
                (p.field, p.reason)
            })
            .collect()
    }

    #[test]
    fn good_controllers_pass() {
        assert_eq!(reasons(GOOD), vec![]);
        let variants = [
            GOOD.replace(
                "@contract(\"./contract.yaml\")",
                "@contract(\"contract.yaml\")",
            ),
            GOOD.replace("from magic import Controller, contract", "import magic")
                .replace("@contract(", "@magic.contract(")
                .replace("(Controller)", "(magic.Controller)"),
            GOOD.replace("input: dict", "input, *args, trace=None"),
            GOOD.replace(
                "class Hello(Controller)",
                "class Hello(Base, Controller, metaclass=M)",
            ),
            format!("# -*- coding: utf-8 -*-\nclass Helper:\n    pass\n{GOOD}"),
            GOOD.replace(
                "from magic import Controller, contract",
                "from magic import *",
            ),
            GOOD.replace(
                "from magic import Controller, contract",
                "from magic import Controller as Base, contract as declare",
            )
            .replace("@contract(", "@declare(")
            .replace("(Controller)", "(Base)"),
            GOOD.replace(
                "from magic import Controller, contract",
                "import magic as m",
            )
            .replace("@contract(", "@m.contract(")
            .replace("(Controller)", "(m.Controller)"),
            GOOD.replace(
                "from magic import Controller, contract",
                "try:\n    from magic import Controller, contract\nexcept ImportError:\n    raise",
            ),
        ];
        for src in variants {
            assert_eq!(reasons(&src), vec![], "{src}");
        }
    }

    #[test]
    fn bad_controllers_are_reported_with_lines() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("def broken(:\n    pass\n".into(), "line 1", "syntax error"),
            (GOOD.replace("return {", "return {{"), "line 9", "syntax error"),
            ("x = 1\n".into(), "", "no class deriving Controller"),
            (GOOD.replace("(Controller)", "(object)"), "", "no class deriving Controller"),
            (
                format!("{GOOD}\n@contract(\"./contract.yaml\")\nclass Other(Controller):\n    async def execute(self, input):\n        return {{}}\n"),
                "line 12",
                "second class deriving Controller (Other)",
            ),
            (GOOD.replace("@contract(\"./contract.yaml\")\n", ""), "line 4", "not decorated with @contract"),
            (GOOD.replace("@contract(\"./contract.yaml\")", "@contract"), "line 4", "call the decorator"),
            (GOOD.replace("\"./contract.yaml\"", "\"../other/contract.yaml\""), "line 4", "must name this package's contract"),
            (GOOD.replace("\"./contract.yaml\"", "\"/etc/contract.yaml\""), "line 4", "must name this package's contract"),
            (GOOD.replace("\"./contract.yaml\"", "path"), "line 4", "takes one string"),
            (GOOD.replace("async def execute", "async def run"), "line 5", "has no `async def execute"),
            (GOOD.replace("from magic import Controller, contract", "from magic import contract"), "line 5", "Controller is used but not imported"),
            (GOOD.replace("from magic import Controller, contract", "from magic import Controller"), "line 4", "contract is used but not imported"),
            (GOOD.replace("from magic import Controller, contract", "from other import Controller, contract"), "line 5", "Controller is used but not imported"),
            (GOOD.replace("from magic import Controller, contract", "import magic").replace("(Controller)", "(mgc.Controller)"), "", "no class deriving Controller"),
            (GOOD.replace("async def execute", "def execute"), "line 8", "must be a coroutine"),
            (GOOD.replace("self, input: dict", "self"), "line 8", "must take (self, input)"),
            (GOOD.replace("self, input: dict", "self, input, extra"), "line 8", "must take (self, input)"),
            (GOOD.replace("self, input: dict", "self, input, *, must"), "line 8", "must take (self, input)"),
            (
                GOOD.replace("@contract(\"./contract.yaml\")", "@contract(\"./contract.yaml\")\n@contract(\"./contract.yaml\")"),
                "line 5",
                "more than once",
            ),
        ];
        for (src, field, why) in cases {
            let found = reasons(&src);
            assert!(
                found.iter().any(|(f, r)| f == field && r.contains(why)),
                "{src}\n=> {found:?}"
            );
        }
    }

    #[test]
    fn undecodable_sources_are_one_problem() {
        for src in [&b"x = '\xff\xfe'\n"[..], b"class A(Controller):\n\x00\n"] {
            let found = check_controller_py(src);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].reason.contains("syntax error")
                    || found[0].reason.contains("cannot be parsed"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn missing_python_is_one_clear_problem() {
        let found = check_with(Path::new("/nonexistent/python3"), GOOD.as_bytes(), DEADLINE);
        assert_eq!(found.len(), 1);
        assert!(found[0].reason.contains("install Python 3"), "{found:?}");
    }

    #[test]
    fn a_failing_or_hanging_interpreter_is_one_problem() {
        let dir = tempfile::tempdir().unwrap();
        let fake = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&path, perms).unwrap();
            path
        };
        let crashing = fake("crash", "echo boom >&2; exit 3");
        let found = check_with(&crashing, GOOD.as_bytes(), DEADLINE);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].reason.contains("exited with") && found[0].reason.contains("boom"),
            "{found:?}"
        );
        let garbage = fake("garbage", "cat >/dev/null; echo not json");
        let found = check_with(&garbage, GOOD.as_bytes(), DEADLINE);
        assert!(
            found[0].reason.contains("cannot check controller.py"),
            "{found:?}"
        );
        let hanging = fake("hang", "exec sleep 30");
        let started = Instant::now();
        let found = check_with(&hanging, GOOD.as_bytes(), Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].reason.contains("took longer than 300ms"),
            "{found:?}"
        );
    }

    #[test]
    fn large_sources_do_not_dead_lock() {
        let big = format!("{GOOD}\n{}", "# padding padding padding\n".repeat(40_000));
        assert_eq!(reasons(&big), vec![]);
    }
}
