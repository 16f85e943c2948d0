//! `magic init NAME`: a controller folder that validates and deploys as it is.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

/// `InvoiceSync` → `invoice_sync`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if i > 0
                && (prev_lower || (next_lower && chars[i - 1].is_ascii_uppercase()))
                && !out.ends_with('_')
            {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

fn contract(name: &str) -> String {
    format!(
        r#"# The contract of {name}: what it accepts, what it returns, and everything it may touch.
# Capabilities are default-deny: add one (e.g. `- db:read: {{ tables: [customers] }}`) to use it.
name: {name}
version: 0.1.0
description: A new controller.
input:
  type: object
  required: [name]
  additionalProperties: false
  properties:
    name: {{ type: string, minLength: 1, maxLength: 100 }}
output:
  type: object
  required: [greeting]
  properties:
    greeting: {{ type: string }}
capabilities: []
resources:
  timeout: 10s
  cpu: 0.5
  memory: 256Mi
"#
    )
}

fn controller(name: &str) -> String {
    format!(
        r#"from magic import Controller, contract


@contract("./contract.yaml")
class {name}Controller(Controller):
    """Greets by name. Replace with your business logic."""

    async def execute(self, input: dict) -> dict:
        self.log.info("greeting", name=input["name"])
        self.metrics.counter("greetings_total", 1)
        return {{"greeting": f"Hello, {{input['name']}}!"}}
"#
    )
}

/// Create the folder; refuses to overwrite anything.
pub fn init(name: &str, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if !magic_contract::is_valid_name(name) {
        bail!("{name:?} is not a valid controller name: use a letter, then letters, digits or _ (at most 64)");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(snake_case(name)));
    if dir.exists() {
        bail!("{} already exists; choose another --dir", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let class = name
        .strip_suffix("Controller")
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    for (file, contents) in [
        ("contract.yaml", contract(name)),
        ("controller.py", controller(class)),
        ("input.json", "{\"name\": \"world\"}\n".to_string()),
    ] {
        std::fs::write(dir.join(file), contents).with_context(|| format!("writing {file}"))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_table() {
        for (input, want) in [
            ("InvoiceSync", "invoice_sync"),
            ("hello", "hello"),
            ("HTTPFetch", "http_fetch"),
            ("Sync2Go", "sync2_go"),
            ("A", "a"),
        ] {
            assert_eq!(snake_case(input), want, "{input}");
        }
    }

    #[test]
    fn init_refuses_bad_names_and_existing_folders() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(init("9bad", Some(tmp.path().join("x"))).is_err());
        assert!(init("has-dash", Some(tmp.path().join("y"))).is_err());
        assert!(init("Good", Some(tmp.path().to_path_buf())).is_err());
        let dir = init("Good", Some(tmp.path().join("good"))).unwrap();
        for f in ["contract.yaml", "controller.py", "input.json"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
    }
}
