//! Parsing `contract.yaml` into a [`Contract`] and compiling its schemas.
//!
//! Owns: walking the YAML tree by hand so that every problem is reported at once, each with a
//! dotted field path (`capabilities[2].db:read.tables[0]`) and a reason an author can act on;
//! compiling the input/output JSON Schemas (draft 2020-12) with remote references refused;
//! validating instances against them.
//! Must never: fetch a remote `$ref`, accept an unknown key, capability or option, or fill in a
//! default for a required field.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::{Mapping, Value as Yaml};

use crate::egress::{self, AllowHost};
use crate::names::{self, suggestion};
use crate::refs::{value_depth, Shape};
use crate::units::{format_duration, parse_bytes, parse_cpu, parse_duration};
use crate::{
    Capability, Contract, ContractErrors, EgressGrant, Problem, Resources, DEFAULT_CACHE_MAX_TTL,
    MAX_CACHE_TTL, MAX_CONTRACT_BYTES, MAX_CPU, MAX_MEMORY, MAX_TEMP_SIZE, MAX_TIMEOUT, MIN_CPU,
    MIN_MEMORY,
};

/// The file every contract problem is reported in.
pub(crate) const CONTRACT_FILE: &str = "contract.yaml";

/// Longest version string accepted (pre-release and build parts included).
pub const MAX_VERSION_LEN: usize = 64;

/// At most this many violations are reported for one instance.
pub const MAX_VIOLATIONS: usize = 100;

/// Violation messages are cut to this many characters (they quote the offending value).
const MAX_MESSAGE_CHARS: usize = 300;

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "input",
    "output",
    "capabilities",
    "resources",
];

const RESOURCE_KEYS: &[&str] = &["timeout", "cpu", "memory"];

/// Every capability name, in the order of the seed's matrix.
pub const CAPABILITY_NAMES: &[&str] = &[
    "db:read",
    "db:write",
    "db:rawsql",
    "http:egress",
    "secrets:read",
    "queue:publish",
    "queue:subscribe",
    "cache:read",
    "cache:write",
    "fs:temp",
];

/// One way an instance failed a schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaViolation {
    /// JSON Pointer into the instance (`/customer_id`), `""` for the root.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled schema and what validating against it can cost.
struct Schema {
    validator: jsonschema::Validator,
    shape: Shape,
}

/// A contract whose input and output schemas are compiled (once per deploy).
pub struct CompiledContract {
    contract: Contract,
    description: Option<String>,
    input: Schema,
    output: Schema,
}

impl std::fmt::Debug for CompiledContract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledContract")
            .field("contract", &self.contract)
            .finish_non_exhaustive()
    }
}

impl CompiledContract {
    /// The contract.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// The optional free-text `description`.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Check an input against the input schema; every violation is returned (at most
    /// [`MAX_VIOLATIONS`]).
    pub fn validate_input(&self, input: &serde_json::Value) -> Result<(), Vec<SchemaViolation>> {
        violations(&self.input, input)
    }

    /// Check an output against the output schema; every violation is returned (at most
    /// [`MAX_VIOLATIONS`]).
    pub fn validate_output(&self, output: &serde_json::Value) -> Result<(), Vec<SchemaViolation>> {
        violations(&self.output, output)
    }
}

fn violations(schema: &Schema, instance: &Json) -> Result<(), Vec<SchemaViolation>> {
    // A recursive schema recurses as deep as the value: bound it before the stack does.
    if let Some(max) = schema.shape.max_value_depth() {
        if value_depth(instance, max) > max {
            return Err(vec![SchemaViolation {
                path: String::new(),
                message: format!(
                    "the value is nested more than {max} levels deep, deeper than this schema can check"
                ),
            }]);
        }
    }
    let found: Vec<SchemaViolation> = schema
        .validator
        .iter_errors(instance)
        .take(MAX_VIOLATIONS)
        .map(|e| SchemaViolation {
            path: e.instance_path.as_str().to_string(),
            message: truncate(&e.to_string(), MAX_MESSAGE_CHARS),
        })
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(found)
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// `^[A-Za-z][A-Za-z0-9_]{0,63}$`
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse and validate `contract.yaml` text, reporting every problem at once.
pub fn parse_contract(yaml: &str) -> Result<CompiledContract, ContractErrors> {
    let mut walker = Walker::default();
    if yaml.len() > MAX_CONTRACT_BYTES {
        walker.problem(
            "",
            format!(
                "the file is {} bytes, at most {MAX_CONTRACT_BYTES} are accepted",
                yaml.len()
            ),
        );
        return Err(ContractErrors(walker.problems));
    }
    let doc: Yaml = match serde_yaml::from_str(yaml) {
        Ok(doc) => doc,
        Err(e) => {
            walker.problem("", yaml_error(&e));
            return Err(ContractErrors(walker.problems));
        }
    };
    let compiled = walker.contract(&doc);
    match compiled {
        Some(c) if walker.problems.is_empty() => Ok(c),
        _ => Err(ContractErrors(walker.problems)),
    }
}

fn yaml_error(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    match e.location() {
        // serde_yaml appends " at line L column C"; say it once, up front.
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let msg = text.strip_suffix(&suffix).unwrap_or(&text);
            format!(
                "invalid YAML at line {}, column {}: {msg}",
                loc.line(),
                loc.column()
            )
        }
        None => format!("invalid YAML: {text}"),
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn type_name(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "nothing",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// A short rendering of a scalar for messages.
fn show(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => format!("{s:?}"),
        other => type_name(other).into(),
    }
}

/// A scalar as the author wrote it (strings unquoted), for messages.
fn raw(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        other => show(other),
    }
}

/// Collects problems while walking the document.
#[derive(Default)]
struct Walker {
    problems: Vec<Problem>,
}

/// The top-level fields, as found (before checking).
#[derive(Default)]
struct TopLevel<'a> {
    name: Option<&'a Yaml>,
    version: Option<&'a Yaml>,
    description: Option<&'a Yaml>,
    input: Option<&'a Yaml>,
    output: Option<&'a Yaml>,
    capabilities: Option<&'a Yaml>,
    resources: Option<&'a Yaml>,
}

impl Walker {
    fn problem(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: CONTRACT_FILE.to_string(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// The string-keyed entries of a mapping; other keys are problems.
    fn entries<'a>(&mut self, field: &str, map: &'a Mapping) -> Vec<(&'a str, &'a Yaml)> {
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            match k {
                Yaml::String(key) => out.push((key.as_str(), v)),
                other => self.problem(
                    field,
                    format!(
                        "keys must be strings, found the key {} ({}); quote it",
                        show(other),
                        type_name(other)
                    ),
                ),
            }
        }
        out
    }

    fn contract(&mut self, doc: &Yaml) -> Option<CompiledContract> {
        let map = match doc {
            Yaml::Mapping(map) => map,
            Yaml::Null => {
                self.problem(
                    "",
                    "the file is empty: a contract needs at least name, version, input and output",
                );
                return None;
            }
            other => {
                self.problem(
                    "",
                    format!(
                        "the top level must be a mapping (name: ..., version: ...), found {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        let mut top = TopLevel::default();
        for (key, value) in self.entries("", map) {
            let slot = match key {
                "name" => &mut top.name,
                "version" => &mut top.version,
                "description" => &mut top.description,
                "input" => &mut top.input,
                "output" => &mut top.output,
                "capabilities" => &mut top.capabilities,
                "resources" => &mut top.resources,
                other => {
                    let hint = suggestion(other, TOP_LEVEL_KEYS);
                    self.problem(
                        other,
                        format!(
                            "unknown key `{other}`{hint} (allowed: {})",
                            TOP_LEVEL_KEYS.join(", ")
                        ),
                    );
                    continue;
                }
            };
            *slot = Some(value);
        }

        let name = self.name(top.name);
        let version = self.version(top.version);
        let description = self.description(top.description);
        let input = self.schema("input", top.input);
        let output = self.schema("output", top.output);
        let capabilities = self.capabilities(top.capabilities);
        let resources = self.resources(top.resources);

        let ((input_json, input), (output_json, output)) = (input?, output?);
        Some(CompiledContract {
            contract: Contract {
                name: name?,
                version: version?,
                input: input_json,
                output: output_json,
                capabilities,
                resources,
            },
            description,
            input,
            output,
        })
    }

    fn name(&mut self, value: Option<&Yaml>) -> Option<String> {
        match value {
            None | Some(Yaml::Null) => {
                self.problem(
                    "name",
                    "missing: every contract needs a name, e.g. `name: InvoiceSync`",
                );
                None
            }
            Some(Yaml::String(name)) if is_valid_name(name) => Some(name.clone()),
            Some(Yaml::String(name)) => {
                self.problem(
                    "name",
                    format!(
                        "{name:?} is not a valid name: start with a letter, then letters, digits or _, at most 64 characters"
                    ),
                );
                None
            }
            Some(other) => {
                self.problem(
                    "name",
                    format!(
                        "must be a string like InvoiceSync, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn version(&mut self, value: Option<&Yaml>) -> Option<semver::Version> {
        match value {
            None | Some(Yaml::Null) => {
                self.problem(
                    "version",
                    "missing: write a semantic version, e.g. `version: 1.0.0`",
                );
                None
            }
            Some(Yaml::String(text)) if text.len() > MAX_VERSION_LEN => {
                self.problem(
                    "version",
                    format!(
                        "is {} characters long, at most {MAX_VERSION_LEN} are allowed",
                        text.len()
                    ),
                );
                None
            }
            Some(Yaml::String(text)) => match semver::Version::parse(text) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.problem(
                        "version",
                        format!("{text:?} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0): {e}"),
                    );
                    None
                }
            },
            Some(Yaml::Number(n)) => {
                self.problem(
                    "version",
                    format!("{n} is not a semantic version: write all three parts, e.g. `version: 1.0.0`"),
                );
                None
            }
            Some(other) => {
                self.problem(
                    "version",
                    format!(
                        "must be a semantic version like 1.0.0, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn description(&mut self, value: Option<&Yaml>) -> Option<String> {
        const MAX: usize = 4096;
        match value {
            None | Some(Yaml::Null) => None,
            Some(Yaml::String(text)) if text.len() <= MAX => Some(text.clone()),
            Some(Yaml::String(text)) => {
                self.problem(
                    "description",
                    format!("is {} bytes long, at most {MAX} are allowed", text.len()),
                );
                None
            }
            Some(other) => {
                self.problem(
                    "description",
                    format!("must be a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// Convert a YAML subtree into JSON, reporting what JSON cannot hold.
    fn yaml_to_json(&mut self, field: &str, value: &Yaml) -> Option<Json> {
        match value {
            Yaml::Null => Some(Json::Null),
            Yaml::Bool(b) => Some(Json::Bool(*b)),
            Yaml::String(s) => Some(Json::String(s.clone())),
            Yaml::Number(n) => {
                let number = if let Some(i) = n.as_i64() {
                    Some(serde_json::Number::from(i))
                } else if let Some(u) = n.as_u64() {
                    Some(serde_json::Number::from(u))
                } else {
                    n.as_f64().and_then(serde_json::Number::from_f64)
                };
                if number.is_none() {
                    self.problem(field, format!("{n} is not a number JSON can hold"));
                }
                number.map(Json::Number)
            }
            Yaml::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.yaml_to_json(&format!("{field}[{i}]"), item) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(Json::Array(out))
            }
            Yaml::Mapping(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                let mut ok = true;
                let before = self.problems.len();
                for (key, v) in self.entries(field, map) {
                    match self.yaml_to_json(&join(field, key), v) {
                        Some(v) => {
                            out.insert(key.to_string(), v);
                        }
                        None => ok = false,
                    }
                }
                (ok && self.problems.len() == before).then_some(Json::Object(out))
            }
            Yaml::Tagged(tagged) => {
                self.problem(
                    field,
                    format!("YAML tags ({}) are not supported here", tagged.tag),
                );
                None
            }
        }
    }

    fn schema(&mut self, field: &str, value: Option<&Yaml>) -> Option<(Json, Schema)> {
        let value = match value {
            None | Some(Yaml::Null) => {
                self.problem(
                    field,
                    format!(
                        "missing: write the JSON Schema of the {field}, e.g. `{field}: {{ type: object, properties: {{ id: {{ type: string }} }} }}`"
                    ),
                );
                return None;
            }
            Some(v @ (Yaml::Mapping(_) | Yaml::Bool(_))) => v,
            Some(other) => {
                self.problem(
                    field,
                    format!(
                        "must be a JSON Schema (a mapping such as `{{ type: object }}`), found {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        let json = self.yaml_to_json(field, value)?;
        if let Some(dialect) = json.get("$schema") {
            let known = [
                "https://json-schema.org/draft/2020-12/schema",
                "https://json-schema.org/draft/2020-12/schema#",
            ];
            if !dialect.as_str().is_some_and(|d| known.contains(&d)) {
                self.problem(
                    join(field, "$schema"),
                    format!(
                        "only JSON Schema draft 2020-12 is supported: remove $schema or write \"{}\"",
                        known[0]
                    ),
                );
                return None;
            }
        }
        let shape = match crate::refs::check_schema_refs(&json) {
            Ok(shape) => shape,
            Err(reason) => {
                self.problem(field, reason);
                return None;
            }
        };
        match compile_schema(&json) {
            Ok(validator) => Some((json, Schema { validator, shape })),
            Err(reason) => {
                self.problem(field, reason);
                None
            }
        }
    }

    fn capabilities(&mut self, value: Option<&Yaml>) -> Vec<Capability> {
        let items = match value {
            None | Some(Yaml::Null) => return Vec::new(),
            Some(Yaml::Sequence(items)) => items,
            Some(other) => {
                self.problem(
                    "capabilities",
                    format!(
                        "must be a list (`capabilities: []`, or one `- name` per line), found {}",
                        type_name(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = format!("capabilities[{i}]");
            let Some((name, options)) = self.capability_head(&field, item) else {
                continue;
            };
            if !CAPABILITY_NAMES.contains(&name) {
                let hint = suggestion(name, CAPABILITY_NAMES);
                self.problem(
                    field,
                    format!(
                        "unknown capability `{name}`{hint} (known: {})",
                        CAPABILITY_NAMES.join(", ")
                    ),
                );
                continue;
            }
            if let Some(first) = seen.get(name) {
                self.problem(
                    &field,
                    format!(
                        "{name} is declared twice (also at capabilities[{first}]): merge the two into one entry"
                    ),
                );
            } else {
                seen.insert(name.to_string(), i);
            }
            if let Some(cap) = self.capability(&join(&field, name), name, options) {
                out.push(cap);
            }
        }
        out
    }

    /// Split a list item into its capability name and its options (if any).
    fn capability_head<'a>(
        &mut self,
        field: &str,
        item: &'a Yaml,
    ) -> Option<(&'a str, Option<&'a Yaml>)> {
        match item {
            Yaml::String(name) => Some((name.as_str(), None)),
            Yaml::Mapping(map) if map.len() == 1 => {
                let (key, value) = map.iter().next()?;
                match key {
                    Yaml::String(name) => {
                        let options = (!value.is_null()).then_some(value);
                        Some((name.as_str(), options))
                    }
                    other => {
                        self.problem(
                            field,
                            format!(
                                "a capability name must be a string, found {}",
                                type_name(other)
                            ),
                        );
                        None
                    }
                }
            }
            Yaml::Mapping(map) => {
                let keys: Vec<String> = map.keys().map(show).collect();
                let cap_keys = map
                    .keys()
                    .filter(|k| k.as_str().is_some_and(|k| CAPABILITY_NAMES.contains(&k)))
                    .count();
                let cap = map.iter().find_map(|(k, v)| {
                    k.as_str()
                        .filter(|k| CAPABILITY_NAMES.contains(k) && v.is_null() && cap_keys == 1)
                });
                let reason = match cap {
                    Some(cap) => format!(
                        "the options of {cap} must be indented under it: write `- {cap}: {{ ... }}` \
                         or put each option on its own line, indented deeper than `{cap}:`"
                    ),
                    None => format!(
                        "one capability per list item: write `- name` or `- name: {{ options }}` \
                         (this item has {} keys: {})",
                        keys.len(),
                        keys.join(", ")
                    ),
                };
                self.problem(field, reason);
                None
            }
            other => {
                self.problem(
                    field,
                    format!(
                        "expected a capability such as `db:rawsql` or `db:read: {{ tables: [customers] }}`, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    /// Check the options of one capability; `field` is `capabilities[i].<name>`.
    fn capability(
        &mut self,
        field: &str,
        name: &str,
        options: Option<&Yaml>,
    ) -> Option<Capability> {
        let before = self.problems.len();
        let cap = match name {
            "db:rawsql" => {
                match options {
                    None => {}
                    Some(Yaml::Mapping(m)) if m.is_empty() => {}
                    Some(_) => {
                        self.problem(field, "db:rawsql takes no options: write `- db:rawsql`")
                    }
                }
                Capability::DbRawSql
            }
            "db:read" | "db:write" => {
                let example = format!("- {name}: {{ tables: [customers] }}");
                let opts =
                    self.options(field, name, options, &["tables"], &["tables"], &example)?;
                let tables = opts
                    .get("tables")
                    .map(|v| {
                        self.string_list(
                            &join(field, "tables"),
                            v,
                            "table",
                            names::check_table_name,
                        )
                    })
                    .unwrap_or_default();
                if name == "db:read" {
                    Capability::DbRead { tables }
                } else {
                    Capability::DbWrite { tables }
                }
            }
            "secrets:read" => {
                let example = "- secrets:read: { keys: [STRIPE_KEY] }";
                let opts = self.options(field, name, options, &["keys"], &["keys"], example)?;
                let keys = opts
                    .get("keys")
                    .map(|v| {
                        self.string_list(
                            &join(field, "keys"),
                            v,
                            "secret key",
                            names::check_secret_key,
                        )
                    })
                    .unwrap_or_default();
                Capability::SecretsRead { keys }
            }
            "queue:publish" | "queue:subscribe" => {
                let example = format!("- {name}: {{ queues: [invoices] }}");
                let opts =
                    self.options(field, name, options, &["queues"], &["queues"], &example)?;
                let queues = opts
                    .get("queues")
                    .map(|v| {
                        self.string_list(
                            &join(field, "queues"),
                            v,
                            "queue",
                            names::check_queue_name,
                        )
                    })
                    .unwrap_or_default();
                if name == "queue:publish" {
                    Capability::QueuePublish { queues }
                } else {
                    Capability::QueueSubscribe { queues }
                }
            }
            "cache:read" => {
                let example = "- cache:read: { prefix: \"invoice:\" }";
                let opts = self.options(field, name, options, &["prefix"], &["prefix"], example)?;
                let prefix = opts
                    .get("prefix")
                    .and_then(|v| self.prefix(&join(field, "prefix"), v))
                    .unwrap_or_default();
                Capability::CacheRead { prefix }
            }
            "cache:write" => {
                let example = "- cache:write: { prefix: \"invoice:\", max_ttl: 1h }";
                let opts = self.options(
                    field,
                    name,
                    options,
                    &["prefix", "max_ttl"],
                    &["prefix"],
                    example,
                )?;
                let prefix = opts
                    .get("prefix")
                    .and_then(|v| self.prefix(&join(field, "prefix"), v))
                    .unwrap_or_default();
                let max_ttl = match opts.get("max_ttl") {
                    Some(v) => self
                        .duration(&join(field, "max_ttl"), v, MAX_CACHE_TTL)
                        .unwrap_or(DEFAULT_CACHE_MAX_TTL),
                    None => DEFAULT_CACHE_MAX_TTL,
                };
                Capability::CacheWrite { prefix, max_ttl }
            }
            "fs:temp" => {
                let example = "- fs:temp: { size: 50M }";
                let opts = self.options(field, name, options, &["size"], &["size"], example)?;
                let size = opts
                    .get("size")
                    .and_then(|v| self.bytes(&join(field, "size"), v, 1, MAX_TEMP_SIZE, "100M"))
                    .unwrap_or_default();
                Capability::FsTemp { size }
            }
            "http:egress" => {
                let example = "- http:egress: { allow: [api.stripe.com, \"*.stripe.com\"] }";
                let opts = self.options(
                    field,
                    name,
                    options,
                    &["allow", "allow_ips", "resolve"],
                    &["allow"],
                    example,
                )?;
                Capability::HttpEgress(self.egress(field, &opts))
            }
            _ => return None,
        };
        (self.problems.len() == before).then_some(cap)
    }

    /// The options mapping of a capability: unknown options and missing required ones are
    /// problems.
    fn options<'a>(
        &mut self,
        field: &str,
        name: &str,
        options: Option<&'a Yaml>,
        allowed: &[&str],
        required: &[&str],
        example: &str,
    ) -> Option<BTreeMap<&'a str, &'a Yaml>> {
        let map = match options {
            None => {
                self.problem(
                    field,
                    format!(
                        "{name} needs options ({}): write `{example}`",
                        required.join(", ")
                    ),
                );
                return None;
            }
            Some(Yaml::Mapping(map)) => map,
            Some(other) => {
                self.problem(
                    field,
                    format!(
                        "the options of {name} must be a mapping, found {}: write `{example}`",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        let mut out = BTreeMap::new();
        for (key, value) in self.entries(field, map) {
            if allowed.contains(&key) {
                out.insert(key, value);
            } else {
                let hint = suggestion(key, allowed);
                self.problem(
                    join(field, key),
                    format!(
                        "unknown option `{key}` for {name}{hint} (allowed: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        for req in required {
            match out.get(req) {
                None => self.problem(
                    field,
                    format!("missing required option `{req}`: write `{example}`"),
                ),
                Some(Yaml::Null) => {
                    out.remove::<str>(req);
                    self.problem(join(field, req), format!("is empty: write `{example}`"));
                }
                Some(_) => {}
            }
        }
        Some(out)
    }

    /// A non-empty list of unique strings, each passing `check`.
    fn string_list(
        &mut self,
        field: &str,
        value: &Yaml,
        what: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Vec<String> {
        let items = match value {
            Yaml::Sequence(items) => items,
            Yaml::String(s) => {
                self.problem(
                    field,
                    format!("must be a list, even for one {what}: write [{s}]"),
                );
                return Vec::new();
            }
            other => {
                self.problem(
                    field,
                    format!("must be a list of {what}s, found {}", type_name(other)),
                );
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.problem(field, format!("must list at least one {what}"));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_field = format!("{field}[{i}]");
            let Yaml::String(text) = item else {
                self.problem(
                    item_field,
                    format!(
                        "must be a string, found {} {}; quote it",
                        type_name(item),
                        show(item)
                    ),
                );
                continue;
            };
            if let Err(why) = check(text) {
                self.problem(item_field, why);
                continue;
            }
            if let Some(first) = seen.get(text.as_str()) {
                self.problem(item_field, format!("duplicate of {field}[{first}]"));
                continue;
            }
            seen.insert(text, i);
            out.push(text.clone());
        }
        out
    }

    fn prefix(&mut self, field: &str, value: &Yaml) -> Option<String> {
        match value {
            Yaml::String(p) => match names::check_cache_prefix(p) {
                Ok(()) => Some(p.clone()),
                Err(why) => {
                    self.problem(field, why);
                    None
                }
            },
            other => {
                self.problem(
                    field,
                    format!(
                        "must be a string such as \"invoice:\", found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    /// A duration, more than zero and at most `max`.
    fn duration(&mut self, field: &str, value: &Yaml, max: Duration) -> Option<Duration> {
        let parsed = match value {
            Yaml::String(text) => parse_duration(text),
            Yaml::Number(n) => Err(format!(
                "{n} has no unit: write e.g. \"{n}s\" (units: ms, s, m, h, d)"
            )),
            other => Err(format!(
                "must be a duration such as 10s, found {}",
                type_name(other)
            )),
        };
        let checked = parsed.and_then(|d| {
            if d.is_zero() {
                Err("must be more than 0".to_string())
            } else if d > max {
                let written = value.as_str().unwrap_or_default();
                let shown = if written == format_duration(d) {
                    written.to_string()
                } else {
                    format!("{written} ({})", format_duration(d))
                };
                Err(format!(
                    "{shown} is above the maximum of {}",
                    format_duration(max)
                ))
            } else {
                Ok(d)
            }
        });
        match checked {
            Ok(d) => Some(d),
            Err(why) => {
                self.problem(field, why);
                None
            }
        }
    }

    /// A byte size within `[min, max]`; `max_text` is how the maximum is written.
    fn bytes(
        &mut self,
        field: &str,
        value: &Yaml,
        min: u64,
        max: u64,
        max_text: &str,
    ) -> Option<u64> {
        let parsed = match value {
            Yaml::String(text) => parse_bytes(text),
            Yaml::Number(n) => n
                .as_u64()
                .ok_or_else(|| format!("{n} is not a whole, non-negative number of bytes")),
            other => Err(format!(
                "must be a size such as 256Mi, found {}",
                type_name(other)
            )),
        };
        let checked = parsed.and_then(|b| {
            if b < min {
                Err(if min <= 1 {
                    "must be more than 0".to_string()
                } else {
                    format!("{b} bytes is below the minimum of {}Mi", min >> 20)
                })
            } else if b > max {
                Err(format!("{} is above the maximum of {max_text}", raw(value)))
            } else {
                Ok(b)
            }
        });
        match checked {
            Ok(b) => Some(b),
            Err(why) => {
                self.problem(field, why);
                None
            }
        }
    }

    fn cpu(&mut self, field: &str, value: &Yaml) -> Option<f64> {
        let parsed = match value {
            Yaml::String(text) => parse_cpu(text),
            Yaml::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{n} is not a number of cores")),
            other => Err(format!(
                "must be a number of cores (0.5) or millicores (\"500m\"), found {}",
                type_name(other)
            )),
        };
        let checked = parsed.and_then(|c| {
            if c < MIN_CPU {
                Err(format!(
                    "{} is below the minimum of {MIN_CPU} cores",
                    raw(value)
                ))
            } else if c > MAX_CPU {
                Err(format!(
                    "{} is above the maximum of {MAX_CPU:.1} cores",
                    raw(value)
                ))
            } else {
                Ok(c)
            }
        });
        match checked {
            Ok(c) => Some(c),
            Err(why) => {
                self.problem(field, why);
                None
            }
        }
    }

    fn resources(&mut self, value: Option<&Yaml>) -> Resources {
        let mut resources = Resources::default();
        let map = match value {
            None | Some(Yaml::Null) => return resources,
            Some(Yaml::Mapping(map)) => map,
            Some(other) => {
                self.problem(
                    "resources",
                    format!(
                        "must be a mapping such as `{{ timeout: 10s, cpu: 0.5, memory: 256Mi }}`, found {}",
                        type_name(other)
                    ),
                );
                return resources;
            }
        };
        for (key, v) in self.entries("resources", map) {
            let field = join("resources", key);
            match key {
                "timeout" => {
                    if let Some(d) = self.duration(&field, v, MAX_TIMEOUT) {
                        resources.timeout = d;
                    }
                }
                "cpu" => {
                    if let Some(c) = self.cpu(&field, v) {
                        resources.cpu = c;
                    }
                }
                "memory" => {
                    if let Some(m) = self.bytes(&field, v, MIN_MEMORY, MAX_MEMORY, "2Gi") {
                        resources.memory = m;
                    }
                }
                "disk" | "temp" | "tmp" | "temp_disk" | "storage" => self.problem(
                    field,
                    format!(
                        "unknown resource `{key}`: temporary disk is a capability, write `- fs:temp: {{ size: 50M }}` under capabilities"
                    ),
                ),
                other => {
                    let hint = suggestion(other, RESOURCE_KEYS);
                    self.problem(
                        field,
                        format!(
                            "unknown resource `{other}`{hint} (allowed: {})",
                            RESOURCE_KEYS.join(", ")
                        ),
                    );
                }
            }
        }
        resources
    }

    /// `http:egress` options; `field` is `capabilities[i].http:egress`.
    fn egress(&mut self, field: &str, opts: &BTreeMap<&str, &Yaml>) -> EgressGrant {
        let mut grant = EgressGrant::default();
        let mut entries = Vec::new();
        if let Some(v) = opts.get("allow") {
            let allow_field = join(field, "allow");
            grant.allow = self.string_list(&allow_field, v, "host", |e| {
                egress::parse_allow_entry(e).map(|_| ())
            });
            entries = grant
                .allow
                .iter()
                .filter_map(|e| egress::parse_allow_entry(e).ok())
                .collect();
        }
        let mut nets = Vec::new();
        if let Some(v) = opts.get("allow_ips") {
            grant.allow_ips = self.string_list(&join(field, "allow_ips"), v, "address", |e| {
                egress::parse_ip_or_cidr(e).map(|_| ())
            });
            nets = grant
                .allow_ips
                .iter()
                .filter_map(|e| egress::parse_ip_or_cidr(e).ok())
                .collect();
        }
        if let Some(Yaml::Sequence(items)) = opts.get("allow") {
            for (i, item) in items.iter().enumerate() {
                let Some(entry) = item
                    .as_str()
                    .and_then(|e| egress::parse_allow_entry(e).ok())
                else {
                    continue;
                };
                if let AllowHost::Ip(ip) = entry.host {
                    let canonical = ip.to_canonical();
                    if !nets
                        .iter()
                        .any(|n: &ipnet::IpNet| n.contains(&ip) || n.contains(&canonical))
                    {
                        self.problem(
                            format!("{field}.allow[{i}]"),
                            format!(
                                "the IP address {ip} must also be listed in allow_ips (IP literals are refused unless allow_ips covers them)"
                            ),
                        );
                    }
                }
            }
        }
        if let Some(v) = opts.get("resolve") {
            grant.resolve = self.resolve(&join(field, "resolve"), v, &entries);
        }
        grant
    }

    fn resolve(
        &mut self,
        field: &str,
        value: &Yaml,
        entries: &[egress::AllowEntry],
    ) -> BTreeMap<String, Vec<IpAddr>> {
        let mut out = BTreeMap::new();
        let map = match value {
            Yaml::Mapping(map) => map,
            other => {
                self.problem(
                    field,
                    format!(
                        "must map host names to addresses, e.g. `resolve: {{ api.example.com: [203.0.113.10] }}`, found {}",
                        type_name(other)
                    ),
                );
                return out;
            }
        };
        for (host, addrs) in self.entries(field, map) {
            let host_field = join(field, host);
            if let Err(why) = egress::check_hostname(host) {
                self.problem(&host_field, why);
                continue;
            }
            if !entries.iter().any(|e| e.matches_host(host)) {
                self.problem(
                    &host_field,
                    format!("{host} is not covered by any allow entry: add it to allow"),
                );
            }
            let Yaml::Sequence(items) = addrs else {
                self.problem(
                    &host_field,
                    format!("must be a list of IP addresses, found {}", type_name(addrs)),
                );
                continue;
            };
            if items.is_empty() {
                self.problem(&host_field, "must list at least one IP address");
            }
            let mut ips: Vec<IpAddr> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let item_field = format!("{host_field}[{i}]");
                match item.as_str().map(IpAddr::from_str) {
                    Some(Ok(ip)) if ips.contains(&ip) => {
                        self.problem(item_field, format!("{ip} is listed twice"));
                    }
                    Some(Ok(ip)) => ips.push(ip),
                    _ => self.problem(item_field, format!("{} is not an IP address", show(item))),
                }
            }
            out.insert(host.to_string(), ips);
        }
        out
    }
}

/// Refuses every external `$ref`: a contract's schemas must be self-contained.
struct NoRemoteRefs;

impl jsonschema::Retrieve for NoRemoteRefs {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Json, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "external reference {} is not allowed: put the schema under $defs and use \"$ref\": \"#/$defs/...\"",
            uri.as_str()
        )
        .into())
    }
}

/// Compile a draft 2020-12 schema with formats asserted and remote references refused.
fn compile_schema(schema: &Json) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_retriever(NoRemoteRefs)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| {
            let at = e.instance_path.as_str();
            let why = match e.instance.as_ref() {
                // The meta-schema's answer for `type: objekt` is an opaque anyOf failure.
                Json::String(t) if at.ends_with("/type") => format!(
                    "\"{t}\" is not a JSON Schema type (use string, number, integer, boolean, object, array or null)"
                ),
                _ => e.to_string(),
            };
            if at.is_empty() {
                format!("is not a valid JSON Schema (draft 2020-12): {why}")
            } else {
                format!("is not a valid JSON Schema (draft 2020-12) at {at}: {why}")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::IpAddr;

    const HEAD: &str =
        "name: T\nversion: 1.0.0\ninput: { type: object }\noutput: { type: object }\n";

    const DESIGN_EXAMPLE: &str = r#"
name: InvoiceSync            # ^[A-Za-z][A-Za-z0-9_]{0,63}$
version: 1.2.0               # semver
input:  { type: object, required: [customer_id], properties: { customer_id: { type: string } } }
output: { type: object, required: [status], properties: { status: { type: string } } }
capabilities:
  - db:read:      { tables: [customers] }
  - db:write:     { tables: [invoices] }
  - http:egress:  { allow: [api.stripe.com, "*.stripe.com"] }
  - secrets:read: { keys: [STRIPE_KEY] }
  - queue:publish: { queues: [invoices] }
  - cache:write:  { prefix: "invoice:", max_ttl: 1h }
  - fs:temp:      { size: 50M }
  - db:rawsql                # bare form: no options
resources: { timeout: 10s, cpu: 0.5, memory: 256Mi }
"#;

    fn problems(yaml: &str) -> Vec<Problem> {
        match parse_contract(yaml) {
            Ok(c) => panic!("expected problems, parsed {:?}", c.contract()),
            Err(ContractErrors(p)) => p,
        }
    }

    /// Asserts that `yaml` fails with a problem at `field` whose reason contains `why`.
    fn assert_problem(yaml: &str, field: &str, why: &str) {
        let found = problems(yaml);
        assert!(
            found
                .iter()
                .any(|p| p.file == "contract.yaml" && p.field == field && p.reason.contains(why)),
            "expected {field}: …{why}… in\n{yaml}\nfound: {found:#?}"
        );
    }

    fn with_caps(caps: &str) -> String {
        format!("{HEAD}capabilities:\n{caps}")
    }

    fn caps_of(yaml: &str) -> Vec<Capability> {
        match parse_contract(yaml) {
            Ok(c) => c.contract().capabilities.clone(),
            Err(e) => panic!("{yaml}\n=> {e}"),
        }
    }

    #[test]
    fn design_example_parses() {
        let compiled = parse_contract(DESIGN_EXAMPLE).unwrap();
        let c = compiled.contract();
        assert_eq!(c.name, "InvoiceSync");
        assert_eq!(c.version, semver::Version::new(1, 2, 0));
        assert_eq!(
            c.resources,
            Resources {
                timeout: Duration::from_secs(10),
                cpu: 0.5,
                memory: 256 << 20
            }
        );
        assert_eq!(
            c.capabilities,
            vec![
                Capability::DbRead {
                    tables: vec!["customers".into()]
                },
                Capability::DbWrite {
                    tables: vec!["invoices".into()]
                },
                Capability::HttpEgress(EgressGrant {
                    allow: vec!["api.stripe.com".into(), "*.stripe.com".into()],
                    ..EgressGrant::default()
                }),
                Capability::SecretsRead {
                    keys: vec!["STRIPE_KEY".into()]
                },
                Capability::QueuePublish {
                    queues: vec!["invoices".into()]
                },
                Capability::CacheWrite {
                    prefix: "invoice:".into(),
                    max_ttl: Duration::from_secs(3600)
                },
                Capability::FsTemp { size: 50_000_000 },
                Capability::DbRawSql,
            ]
        );
        assert_eq!(
            c.capability("fs:temp").map(Capability::name),
            Some("fs:temp")
        );
        assert!(c.capability("queue:subscribe").is_none());
        assert_eq!(compiled.description(), None);
    }

    #[test]
    fn minimal_contract_gets_defaults() {
        let compiled = parse_contract(HEAD).unwrap();
        let c = compiled.contract();
        assert_eq!(c.capabilities, vec![]);
        assert_eq!(c.resources, Resources::default());
        let with_nulls = format!("{HEAD}capabilities:\nresources:\ndescription: says hi\n");
        let compiled = parse_contract(&with_nulls).unwrap();
        assert_eq!(compiled.contract().resources, Resources::default());
        assert_eq!(compiled.description(), Some("says hi"));
        let empty_list = format!("{HEAD}capabilities: []\nresources: {{}}\n");
        assert!(parse_contract(&empty_list).is_ok());
    }

    #[test]
    fn top_level_problems() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("".into(), "", "the file is empty"),
            ("# only a comment\n".into(), "", "the file is empty"),
            ("- a\n- b\n".into(), "", "top level must be a mapping"),
            ("just text".into(), "", "top level must be a mapping"),
            (HEAD.replace("name: T\n", ""), "name", "missing"),
            (HEAD.replace("name: T\n", "name:\n"), "name", "missing"),
            (HEAD.replace("version: 1.0.0\n", ""), "version", "missing"),
            (
                HEAD.replace("input: { type: object }\n", ""),
                "input",
                "missing",
            ),
            (
                HEAD.replace("output: { type: object }\n", ""),
                "output",
                "missing",
            ),
            (
                format!("{HEAD}capabilites: []\n"),
                "capabilites",
                "did you mean `capabilities`?",
            ),
            (format!("{HEAD}extra: 1\n"), "extra", "unknown key `extra`"),
            (
                format!("{HEAD}Resources: {{}}\n"),
                "Resources",
                "did you mean `resources`?",
            ),
            (format!("{HEAD}1: x\n"), "", "keys must be strings"),
            (
                HEAD.replace("name: T", "name: 1abc"),
                "name",
                "not a valid name",
            ),
            (
                HEAD.replace("name: T", "name: my-ctrl"),
                "name",
                "not a valid name",
            ),
            (
                HEAD.replace("name: T", "name: _x"),
                "name",
                "not a valid name",
            ),
            (
                HEAD.replace("name: T", "name: \"\""),
                "name",
                "not a valid name",
            ),
            (
                HEAD.replace("name: T", &format!("name: A{}", "b".repeat(64))),
                "name",
                "at most 64",
            ),
            (
                HEAD.replace("name: T", "name: 123"),
                "name",
                "must be a string",
            ),
            (
                HEAD.replace("version: 1.0.0", "version: 1.0"),
                "version",
                "write all three parts",
            ),
            (
                HEAD.replace("version: 1.0.0", "version: 1"),
                "version",
                "not a semantic version",
            ),
            (
                HEAD.replace("version: 1.0.0", "version: v1.0.0"),
                "version",
                "not a semantic version",
            ),
            (
                HEAD.replace("version: 1.0.0", "version: 1.0.0.0"),
                "version",
                "not a semantic version",
            ),
            (
                HEAD.replace("version: 1.0.0", "version: [1]"),
                "version",
                "must be a semantic version",
            ),
            (
                format!("{HEAD}description: 5\n"),
                "description",
                "must be a string",
            ),
            (
                format!("{HEAD}description: {}\n", "x".repeat(5000)),
                "description",
                "at most 4096",
            ),
            (
                format!("{HEAD}capabilities: db:rawsql\n"),
                "capabilities",
                "must be a list",
            ),
            (
                format!("{HEAD}capabilities: {{ db:rawsql: null }}\n"),
                "capabilities",
                "must be a list",
            ),
        ];
        for (yaml, field, why) in cases {
            assert_problem(&yaml, field, why);
        }
    }

    #[test]
    fn yaml_syntax_errors_have_line_and_column() {
        let cases = [
            ("name: [unclosed\nversion: 1.0.0\n", "invalid YAML at line"),
            ("name: A\nname: B\n", "duplicate"),
            ("name: A\n\tversion: 1.0.0\n", "invalid YAML at line 2"),
            ("name: A\n---\nname: B\n", "more than one document"),
            ("name: *nothing\n", "invalid YAML"),
            ("a: b: c\n", "invalid YAML at line 1, column"),
        ];
        for (yaml, why) in cases {
            let found = problems(yaml);
            assert_eq!(found.len(), 1, "{yaml}: {found:?}");
            assert_eq!(found[0].field, "");
            assert!(found[0].reason.contains(why), "{yaml}: {found:?}");
        }
    }

    #[test]
    fn oversized_and_hostile_yaml_is_refused_quickly() {
        let huge = format!(
            "{HEAD}description: \"{}\"\n",
            "x".repeat(MAX_CONTRACT_BYTES)
        );
        assert_problem(&huge, "", "at most");
        // Billion laughs: aliases expanding exponentially.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let started = std::time::Instant::now();
        let found = problems(&bomb);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].reason.contains("invalid YAML"), "{found:?}");
        let deep = format!(
            "{HEAD}description: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let found = problems(&deep);
        assert!(found[0].reason.contains("recursion limit"), "{found:?}");
    }

    #[test]
    fn schema_problems() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                HEAD.replace("input: { type: object }", "input: object"),
                "input",
                "must be a JSON Schema",
            ),
            (
                HEAD.replace("output: { type: object }", "output: [1]"),
                "output",
                "must be a JSON Schema",
            ),
            (
                HEAD.replace("input: { type: object }", "input: { type: objekt }"),
                "input",
                "not a valid JSON Schema",
            ),
            (
                HEAD.replace(
                    "output: { type: object }",
                    "output: { type: object, required: 5 }",
                ),
                "output",
                "not a valid JSON Schema",
            ),
            (
                HEAD.replace("input: { type: object }", "input: { minLength: -1 }"),
                "input",
                "not a valid JSON Schema",
            ),
            (
                HEAD.replace("input: { type: object }", "input: { pattern: \"(\" }"),
                "input",
                "not a valid JSON Schema",
            ),
            (
                HEAD.replace(
                    "input: { type: object }",
                    "input: { $ref: \"https://example.com/s.json\" }",
                ),
                "input",
                "https://example.com/s.json",
            ),
            (
                HEAD.replace(
                    "input: { type: object }",
                    "input: { $ref: \"file:///etc/passwd\" }",
                ),
                "input",
                "file:///etc/passwd",
            ),
            (
                HEAD.replace(
                    "input: { type: object }",
                    "input: { $ref: \"#/$defs/missing\" }",
                ),
                "input",
                "not a valid JSON Schema",
            ),
            (
                HEAD.replace(
                    "input: { type: object }",
                    "input: { $schema: \"http://json-schema.org/draft-07/schema#\" }",
                ),
                "input.$schema",
                "2020-12",
            ),
            (
                HEAD.replace(
                    "input: { type: object }",
                    "input: { type: object, properties: { 1: { type: string } } }",
                ),
                "input.properties",
                "keys must be strings",
            ),
            (
                HEAD.replace("input: { type: object }", "input: { const: !custom x }"),
                "input.const",
                "tags",
            ),
            (
                HEAD.replace("input: { type: object }", "input: { minimum: .nan }"),
                "input.minimum",
                "not a number JSON can hold",
            ),
            (
                HEAD.replace("input: { type: object }", "input: { enum: [.inf] }"),
                "input.enum[0]",
                "not a number JSON can hold",
            ),
        ];
        for (yaml, field, why) in cases {
            assert_problem(&yaml, field, why);
        }
        // A compile failure names the field and nothing else is reported for it.
        let found = problems(&HEAD.replace("input: { type: object }", "input: { type: objekt }"));
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn recursive_schemas_are_refused_or_bounded() {
        for schema in [
            "{ $ref: \"#\" }",
            "{ $defs: { a: { $ref: \"#/$defs/b\" }, b: { $ref: \"#/$defs/a\" } }, $ref: \"#/$defs/a\" }",
            "{ anyOf: [{ type: string }, { $ref: \"#\" }] }",
        ] {
            let yaml = HEAD.replace("input: { type: object }", &format!("input: {schema}"));
            assert_problem(&yaml, "input", "refers to itself");
        }
        // Recursion that descends into the value is fine, even 128 levels deep.
        let yaml = HEAD.replace(
            "input: { type: object }",
            "input: { type: object, properties: { child: { $ref: \"#\" } } }",
        );
        let c = parse_contract(&yaml).unwrap();
        let mut deep = json!({});
        for _ in 0..127 {
            deep = json!({ "child": deep });
        }
        assert_eq!(c.validate_input(&deep), Ok(()));
    }

    #[test]
    fn worst_case_accepted_recursion_fits_a_small_stack() {
        // The longest in-place chain accepted, repeated at every level of the value.
        // Each link is two in-place steps: allOf, then $ref.
        let mut defs = String::new();
        let last = crate::refs::MAX_IN_PLACE_DEPTH / 2 - 1;
        for i in 0..last {
            defs.push_str(&format!(
                "d{i}: {{ allOf: [{{ $ref: \"#/$defs/d{}\" }}] }}, ",
                i + 1
            ));
        }
        defs.push_str(&format!(
            "d{last}: {{ type: object, properties: {{ child: {{ $ref: \"#/$defs/d0\" }} }} }}"
        ));
        let yaml = HEAD.replace(
            "input: { type: object }",
            &format!("input: {{ $defs: {{ {defs} }}, $ref: \"#/$defs/d0\" }}"),
        );
        let c = std::sync::Arc::new(match parse_contract(&yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        });
        let max = c.input.shape.max_value_depth().unwrap();
        let nested = |levels: usize| {
            let mut v = json!({});
            for _ in 0..levels {
                v = json!({ "child": v });
            }
            v
        };
        // Tokio's default worker stack is 2 MiB.
        let (shared, deepest) = (c.clone(), nested(max));
        let worker = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || shared.validate_input(&deepest))
            .unwrap();
        assert_eq!(worker.join().unwrap(), Ok(()));
        let errs = c.validate_input(&nested(max + 1)).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("nested more than"), "{errs:?}");
    }

    #[test]
    fn valid_schemas_compile() {
        for schema in [
            "true",
            "{}",
            "{ $schema: \"https://json-schema.org/draft/2020-12/schema\", type: object }",
            "{ type: object, $defs: { id: { type: string } }, properties: { id: { $ref: \"#/$defs/id\" } } }",
            "{ type: array, prefixItems: [{ type: string }], items: false }",
            "{ type: object, properties: { n: { type: integer, minimum: 0, maximum: 18446744073709551615 } } }",
        ] {
            let yaml = HEAD.replace("input: { type: object }", &format!("input: {schema}"));
            assert!(parse_contract(&yaml).is_ok(), "{schema}: {:?}", parse_contract(&yaml).err());
        }
    }

    #[test]
    fn validate_input_and_output_report_every_violation_with_paths() {
        let c = parse_contract(DESIGN_EXAMPLE).unwrap();
        assert_eq!(
            c.validate_input(&json!({"customer_id": "c1", "extra": 1})),
            Ok(())
        );
        let errs = c.validate_input(&json!({"customer_id": 5})).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "/customer_id");
        assert!(errs[0].message.contains("string"), "{errs:?}");
        let errs = c.validate_input(&json!([])).unwrap_err();
        assert_eq!(errs[0].path, "");
        let errs = c.validate_output(&json!({})).unwrap_err();
        assert_eq!(errs[0].path, "");
        assert!(errs[0].message.contains("status"), "{errs:?}");
        assert_eq!(c.validate_output(&json!({"status": "ok"})), Ok(()));

        let yaml = HEAD.replace(
            "input: { type: object }",
            "input: { type: object, required: [a, b], additionalProperties: false, properties: { a: { type: string }, items: { type: array, items: { type: integer } }, mail: { type: string, format: email } } }",
        );
        let c = parse_contract(&yaml).unwrap();
        let errs = c
            .validate_input(
                &json!({"a": 1, "items": [1, "x", 3, "y"], "zzz": true, "mail": "not-an-email"}),
            )
            .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for expected in ["", "/a", "/items/1", "/items/3", "/mail"] {
            assert!(paths.contains(&expected), "{expected} missing in {errs:?}");
        }
        assert!(errs
            .iter()
            .any(|e| e.message.contains("b") && e.path.is_empty()));

        // Violations are capped, and messages quoting huge values are cut.
        let yaml = HEAD.replace(
            "input: { type: object }",
            "input: { type: array, items: { type: integer } }",
        );
        let c = parse_contract(&yaml).unwrap();
        let many: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
        assert_eq!(
            c.validate_input(&json!(many)).unwrap_err().len(),
            MAX_VIOLATIONS
        );
        let yaml = HEAD.replace("input: { type: object }", "input: { type: integer }");
        let c = parse_contract(&yaml).unwrap();
        let errs = c.validate_input(&json!("x".repeat(10_000))).unwrap_err();
        assert!(errs[0].message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn every_capability_parses() {
        let cases: Vec<(&str, Capability)> = vec![
            ("- db:read: { tables: [customers, billing.invoices, _t] }", Capability::DbRead { tables: vec!["customers".into(), "billing.invoices".into(), "_t".into()] }),
            ("- db:write: { tables: [invoices] }", Capability::DbWrite { tables: vec!["invoices".into()] }),
            ("- db:write:\n      tables:\n        - invoices", Capability::DbWrite { tables: vec!["invoices".into()] }),
            ("- db:rawsql", Capability::DbRawSql),
            ("- db:rawsql:", Capability::DbRawSql),
            ("- db:rawsql: {}", Capability::DbRawSql),
            ("- secrets:read: { keys: [STRIPE_KEY, _other] }", Capability::SecretsRead { keys: vec!["STRIPE_KEY".into(), "_other".into()] }),
            ("- queue:publish: { queues: [invoices, \"a.b:c-d\"] }", Capability::QueuePublish { queues: vec!["invoices".into(), "a.b:c-d".into()] }),
            ("- queue:subscribe: { queues: [jobs] }", Capability::QueueSubscribe { queues: vec!["jobs".into()] }),
            ("- cache:read: { prefix: \"invoice:\" }", Capability::CacheRead { prefix: "invoice:".into() }),
            ("- cache:write: { prefix: \"invoice:\" }", Capability::CacheWrite { prefix: "invoice:".into(), max_ttl: DEFAULT_CACHE_MAX_TTL }),
            ("- cache:write: { prefix: p, max_ttl: 30d }", Capability::CacheWrite { prefix: "p".into(), max_ttl: MAX_CACHE_TTL }),
            ("- cache:write: { prefix: p, max_ttl: 500ms }", Capability::CacheWrite { prefix: "p".into(), max_ttl: Duration::from_millis(500) }),
            ("- fs:temp: { size: 50M }", Capability::FsTemp { size: 50_000_000 }),
            ("- fs:temp: { size: 100M }", Capability::FsTemp { size: MAX_TEMP_SIZE }),
            ("- fs:temp: { size: 64Mi }", Capability::FsTemp { size: 64 << 20 }),
            ("- fs:temp: { size: 4096 }", Capability::FsTemp { size: 4096 }),
            ("- http:egress: { allow: [api.stripe.com, \"*.stripe.com\", \"https://hooks.example.com:8443\"] }", Capability::HttpEgress(EgressGrant {
                allow: vec!["api.stripe.com".into(), "*.stripe.com".into(), "https://hooks.example.com:8443".into()],
                ..EgressGrant::default()
            })),
            ("- http:egress: { allow: [\"10.0.0.5:8080\", internal.example.com], allow_ips: [10.0.0.0/24, \"fd00::1\"], resolve: { internal.example.com: [10.0.0.7, \"fd00::1\"] } }", Capability::HttpEgress(EgressGrant {
                allow: vec!["10.0.0.5:8080".into(), "internal.example.com".into()],
                allow_ips: vec!["10.0.0.0/24".into(), "fd00::1".into()],
                resolve: BTreeMap::from([("internal.example.com".to_string(), vec!["10.0.0.7".parse::<IpAddr>().unwrap(), "fd00::1".parse().unwrap()])]),
            })),
            ("- http:egress: { allow: [\"[::ffff:10.0.0.5]\"], allow_ips: [10.0.0.0/8] }", Capability::HttpEgress(EgressGrant {
                allow: vec!["[::ffff:10.0.0.5]".into()],
                allow_ips: vec!["10.0.0.0/8".into()],
                resolve: BTreeMap::new(),
            })),
            ("- http:egress: { allow: [\"*.example.com\"], resolve: { a.b.example.com: [203.0.113.9] } }", Capability::HttpEgress(EgressGrant {
                allow: vec!["*.example.com".into()],
                allow_ips: vec![],
                resolve: BTreeMap::from([("a.b.example.com".to_string(), vec!["203.0.113.9".parse::<IpAddr>().unwrap()])]),
            })),
        ];
        for (item, expected) in cases {
            let yaml = with_caps(&format!("  {item}\n"));
            assert_eq!(caps_of(&yaml), vec![expected], "{item}");
        }
    }

    #[test]
    fn capability_problems() {
        let f = "capabilities[0]";
        let cases: Vec<(&str, String, &str)> = vec![
            // names and shapes
            ("- db:reed: { tables: [x] }", f.into(), "did you mean `db:read`?"),
            ("- foo", f.into(), "unknown capability `foo`"),
            ("- DB:READ: { tables: [x] }", f.into(), "unknown capability"),
            ("- 5", f.into(), "expected a capability"),
            ("- [db:rawsql]", f.into(), "expected a capability"),
            ("- {}", f.into(), "one capability per list item"),
            ("- { 5: x }", f.into(), "must be a string"),
            ("- { db:read: { tables: [a] }, db:write: { tables: [b] } }", f.into(), "one capability per list item"),
            ("- db:read:\n    tables: [x]", f.into(), "must be indented under it"),
            // bare forms of capabilities that need options
            ("- db:read", format!("{f}.db:read"), "db:read needs options (tables): write `- db:read: { tables: [customers] }`"),
            ("- db:write", format!("{f}.db:write"), "db:write needs options (tables)"),
            ("- http:egress", format!("{f}.http:egress"), "http:egress needs options (allow)"),
            ("- secrets:read", format!("{f}.secrets:read"), "secrets:read needs options (keys)"),
            ("- queue:publish", format!("{f}.queue:publish"), "queue:publish needs options (queues)"),
            ("- queue:subscribe", format!("{f}.queue:subscribe"), "queue:subscribe needs options (queues)"),
            ("- cache:read", format!("{f}.cache:read"), "cache:read needs options (prefix)"),
            ("- cache:write", format!("{f}.cache:write"), "cache:write needs options (prefix)"),
            ("- fs:temp", format!("{f}.fs:temp"), "fs:temp needs options (size): write `- fs:temp: { size: 50M }`"),
            // option shapes
            ("- db:read: [customers]", format!("{f}.db:read"), "must be a mapping"),
            ("- db:read: {}", format!("{f}.db:read"), "missing required option `tables`"),
            ("- db:read: { tables: [a], table: [b] }", format!("{f}.db:read.table"), "did you mean `tables`?"),
            ("- db:read: { tables: [a], where: x }", format!("{f}.db:read.where"), "unknown option `where` for db:read"),
            ("- db:read: { tables: customers }", format!("{f}.db:read.tables"), "must be a list, even for one table: write [customers]"),
            ("- db:read: { tables: { a: b } }", format!("{f}.db:read.tables"), "must be a list of tables"),
            ("- db:read: { tables: [] }", format!("{f}.db:read.tables"), "at least one table"),
            ("- db:read: { tables: null }", format!("{f}.db:read.tables"), "is empty"),
            ("- db:read: { tables: [ok, 1bad] }", format!("{f}.db:read.tables[1]"), "not a table name"),
            ("- db:read: { tables: [a, b, a] }", format!("{f}.db:read.tables[2]"), "duplicate of capabilities[0].db:read.tables[0]"),
            ("- db:read: { tables: [2024] }", format!("{f}.db:read.tables[0]"), "must be a string"),
            ("- db:read: { tables: [\"a;drop table x\"] }", format!("{f}.db:read.tables[0]"), "not a table name"),
            ("- db:write: { tables: [a.b.c] }", format!("{f}.db:write.tables[0]"), "not a table name"),
            ("- db:rawsql: { tables: [x] }", format!("{f}.db:rawsql"), "takes no options"),
            ("- db:rawsql: yes", format!("{f}.db:rawsql"), "takes no options"),
            ("- secrets:read: { keys: [MY-KEY] }", format!("{f}.secrets:read.keys[0]"), "not a secret key"),
            ("- secrets:read: { key: [A] }", format!("{f}.secrets:read.key"), "did you mean `keys`?"),
            ("- secrets:read: { keys: [] }", format!("{f}.secrets:read.keys"), "at least one secret key"),
            ("- queue:publish: { queues: [\"a b\"] }", format!("{f}.queue:publish.queues[0]"), "not a queue name"),
            ("- queue:subscribe: { queues: [q, q] }", format!("{f}.queue:subscribe.queues[1]"), "duplicate"),
            ("- cache:read: { prefix: \"\" }", format!("{f}.cache:read.prefix"), "must not be empty"),
            ("- cache:read: { prefix: 5 }", format!("{f}.cache:read.prefix"), "must be a string"),
            ("- cache:read: { prefix: p, max_ttl: 1h }", format!("{f}.cache:read.max_ttl"), "unknown option `max_ttl` for cache:read"),
            ("- cache:write: { max_ttl: 1h }", format!("{f}.cache:write"), "missing required option `prefix`"),
            ("- cache:write: { prefix: p, max_ttl: 31d }", format!("{f}.cache:write.max_ttl"), "31d is above the maximum of 30d"),
            ("- cache:write: { prefix: p, max_ttl: 0s }", format!("{f}.cache:write.max_ttl"), "more than 0"),
            ("- cache:write: { prefix: p, max_ttl: 10 }", format!("{f}.cache:write.max_ttl"), "has no unit"),
            ("- cache:write: { prefix: p, max_ttl: soon }", format!("{f}.cache:write.max_ttl"), "not a duration"),
            ("- cache:write: { prefix: p, ttl: 1h }", format!("{f}.cache:write.ttl"), "unknown option `ttl`"),
            ("- fs:temp: { size: 200M }", format!("{f}.fs:temp.size"), "above the maximum of 100M"),
            ("- fs:temp: { size: 101000000 }", format!("{f}.fs:temp.size"), "above the maximum of 100M"),
            ("- fs:temp: { size: 0 }", format!("{f}.fs:temp.size"), "more than 0"),
            ("- fs:temp: { size: 50MB }", format!("{f}.fs:temp.size"), "unknown unit \"MB\""),
            ("- fs:temp: { size: 1.5 }", format!("{f}.fs:temp.size"), "not a whole"),
            ("- fs:temp: { size: -1 }", format!("{f}.fs:temp.size"), "not a whole"),
            ("- fs:temp: {}", format!("{f}.fs:temp"), "missing required option `size`"),
            // http:egress
            ("- http:egress: { allow: [] }", format!("{f}.http:egress.allow"), "at least one host"),
            ("- http:egress: { allow_ips: [10.0.0.1] }", format!("{f}.http:egress"), "missing required option `allow`"),
            ("- http:egress: { allow: [api.stripe.com/v1] }", format!("{f}.http:egress.allow[0]"), "contains a path"),
            ("- http:egress: { allow: [\"*\"] }", format!("{f}.http:egress.allow[0]"), "wildcard"),
            ("- http:egress: { allow: [API.Stripe.com] }", format!("{f}.http:egress.allow[0]"), "write \"api.stripe.com\""),
            ("- http:egress: { allow: [a.com, a.com] }", format!("{f}.http:egress.allow[1]"), "duplicate"),
            ("- http:egress: { allow: [10.0.0.5] }", format!("{f}.http:egress.allow[0]"), "must also be listed in allow_ips"),
            ("- http:egress: { allow: [\"[fd00::1]:443\"], allow_ips: [10.0.0.0/8] }", format!("{f}.http:egress.allow[0]"), "must also be listed in allow_ips"),
            ("- http:egress: { allow: [a.com], allow_ips: [10.0.0.5/16] }", format!("{f}.http:egress.allow_ips[0]"), "host bits set"),
            ("- http:egress: { allow: [a.com], allow_ips: [0.0.0.0/0] }", format!("{f}.http:egress.allow_ips[0]"), "every address"),
            ("- http:egress: { allow: [a.com], allow_ips: [a.com] }", format!("{f}.http:egress.allow_ips[0]"), "not an IP address"),
            ("- http:egress: { allow: [a.example.com], resolve: { b.example.com: [203.0.113.1] } }", format!("{f}.http:egress.resolve.b.example.com"), "not covered by any allow entry"),
            ("- http:egress: { allow: [a.example.com], resolve: { a.example.com: [nope] } }", format!("{f}.http:egress.resolve.a.example.com[0]"), "not an IP address"),
            ("- http:egress: { allow: [a.example.com], resolve: { a.example.com: [] } }", format!("{f}.http:egress.resolve.a.example.com"), "at least one IP"),
            ("- http:egress: { allow: [a.example.com], resolve: { a.example.com: 1.2.3.4 } }", format!("{f}.http:egress.resolve.a.example.com"), "must be a list of IP addresses"),
            ("- http:egress: { allow: [a.example.com], resolve: { a.example.com: [1.2.3.4, 1.2.3.4] } }", format!("{f}.http:egress.resolve.a.example.com[1]"), "listed twice"),
            ("- http:egress: { allow: [a.example.com], resolve: [a.example.com] }", format!("{f}.http:egress.resolve"), "must map host names"),
            ("- http:egress: { allow: [\"*.example.com\"], resolve: { \"*.example.com\": [1.2.3.4] } }", format!("{f}.http:egress.resolve.*.example.com"), "not a valid host name"),
            ("- http:egress: { allow: [a.com], deny: [b.com] }", format!("{f}.http:egress.deny"), "unknown option `deny` for http:egress"),
        ];
        for (item, field, why) in cases {
            assert_problem(&with_caps(&format!("  {item}\n")), &field, why);
        }
    }

    #[test]
    fn duplicate_capabilities_are_problems() {
        assert_problem(
            &with_caps("  - db:rawsql\n  - db:read: { tables: [a] }\n  - db:rawsql\n"),
            "capabilities[2]",
            "db:rawsql is declared twice (also at capabilities[0])",
        );
        assert_problem(
            &with_caps("  - db:read: { tables: [a] }\n  - db:read: { tables: [b] }\n"),
            "capabilities[1]",
            "declared twice",
        );
        // Read and write of the same table are two capabilities, not a duplicate.
        assert!(parse_contract(&with_caps(
            "  - db:read: { tables: [a] }\n  - db:write: { tables: [a] }\n"
        ))
        .is_ok());
    }

    #[test]
    fn every_resource_form_parses() {
        let cases: Vec<(&str, Resources)> = vec![
            (
                "{ timeout: 500ms }",
                Resources {
                    timeout: Duration::from_millis(500),
                    ..Resources::default()
                },
            ),
            (
                "{ timeout: 300s }",
                Resources {
                    timeout: MAX_TIMEOUT,
                    ..Resources::default()
                },
            ),
            (
                "{ timeout: 5m }",
                Resources {
                    timeout: MAX_TIMEOUT,
                    ..Resources::default()
                },
            ),
            (
                "{ timeout: 1m30s }",
                Resources {
                    timeout: Duration::from_secs(90),
                    ..Resources::default()
                },
            ),
            (
                "{ cpu: \"500m\" }",
                Resources {
                    cpu: 0.5,
                    ..Resources::default()
                },
            ),
            (
                "{ cpu: 2 }",
                Resources {
                    cpu: 2.0,
                    ..Resources::default()
                },
            ),
            (
                "{ cpu: 1.5 }",
                Resources {
                    cpu: 1.5,
                    ..Resources::default()
                },
            ),
            (
                "{ cpu: \"0.25\" }",
                Resources {
                    cpu: 0.25,
                    ..Resources::default()
                },
            ),
            (
                "{ cpu: 10m }",
                Resources {
                    cpu: 0.01,
                    ..Resources::default()
                },
            ),
            (
                "{ memory: 2Gi }",
                Resources {
                    memory: MAX_MEMORY,
                    ..Resources::default()
                },
            ),
            (
                "{ memory: 512M }",
                Resources {
                    memory: 512_000_000,
                    ..Resources::default()
                },
            ),
            (
                "{ memory: 1G }",
                Resources {
                    memory: 1_000_000_000,
                    ..Resources::default()
                },
            ),
            (
                "{ memory: 16Mi }",
                Resources {
                    memory: MIN_MEMORY,
                    ..Resources::default()
                },
            ),
            (
                "{ memory: 16777216 }",
                Resources {
                    memory: MIN_MEMORY,
                    ..Resources::default()
                },
            ),
            (
                "{ memory: \"268435456\" }",
                Resources {
                    memory: 256 << 20,
                    ..Resources::default()
                },
            ),
            (
                "\n  timeout: 10s\n  cpu: 0.5\n  memory: 256Mi",
                Resources {
                    timeout: Duration::from_secs(10),
                    cpu: 0.5,
                    memory: 256 << 20,
                },
            ),
        ];
        for (resources, expected) in cases {
            let yaml = format!("{HEAD}resources: {resources}\n");
            match parse_contract(&yaml) {
                Ok(c) => assert_eq!(c.contract().resources, expected, "{resources}"),
                Err(e) => panic!("{resources}: {e}"),
            }
        }
    }

    #[test]
    fn resource_problems() {
        let cases: Vec<(&str, &str, &str)> = vec![
            (
                "{ timeout: 301s }",
                "resources.timeout",
                "301s is above the maximum of 300s",
            ),
            (
                "{ timeout: 6m }",
                "resources.timeout",
                "above the maximum of 300s",
            ),
            ("{ timeout: 1h }", "resources.timeout", "above the maximum"),
            ("{ timeout: 0s }", "resources.timeout", "more than 0"),
            (
                "{ timeout: 10 }",
                "resources.timeout",
                "has no unit: write e.g. \"10s\"",
            ),
            ("{ timeout: fast }", "resources.timeout", "not a duration"),
            (
                "{ timeout: true }",
                "resources.timeout",
                "must be a duration",
            ),
            ("{ timeout: 1.5s }", "resources.timeout", "fraction"),
            (
                "{ cpu: 3 }",
                "resources.cpu",
                "above the maximum of 2.0 cores",
            ),
            ("{ cpu: 2500m }", "resources.cpu", "above the maximum"),
            ("{ cpu: 0 }", "resources.cpu", "below the minimum"),
            ("{ cpu: 1m }", "resources.cpu", "below the minimum"),
            ("{ cpu: -1 }", "resources.cpu", "below the minimum"),
            ("{ cpu: .nan }", "resources.cpu", "not a number of cores"),
            ("{ cpu: abc }", "resources.cpu", "not a CPU share"),
            ("{ cpu: [1] }", "resources.cpu", "must be a number of cores"),
            (
                "{ memory: 4Gi }",
                "resources.memory",
                "above the maximum of 2Gi",
            ),
            (
                "{ memory: 2147483649 }",
                "resources.memory",
                "above the maximum of 2Gi",
            ),
            (
                "{ memory: 1Mi }",
                "resources.memory",
                "below the minimum of 16Mi",
            ),
            ("{ memory: 0 }", "resources.memory", "below the minimum"),
            (
                "{ memory: 256MB }",
                "resources.memory",
                "unknown unit \"MB\"",
            ),
            ("{ memory: -5 }", "resources.memory", "not a whole"),
            ("{ memory: {} }", "resources.memory", "must be a size"),
            (
                "{ memroy: 1Gi }",
                "resources.memroy",
                "did you mean `memory`?",
            ),
            ("{ gpu: 1 }", "resources.gpu", "unknown resource `gpu`"),
            ("{ disk: 1G }", "resources.disk", "fs:temp"),
            ("5", "resources", "must be a mapping"),
            ("[timeout]", "resources", "must be a mapping"),
        ];
        for (resources, field, why) in cases {
            assert_problem(&format!("{HEAD}resources: {resources}\n"), field, why);
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let yaml = r#"
name: 9lives
version: one
input: { type: objekt }
output: { type: object }
colour: blue
capabilities:
  - db:read
  - db:write: { tables: [ok, "bad name"] }
  - http:egress: { allow: ["*.com"] }
  - teleport
  - cache:write: { prefix: "c:", max_ttl: 90d }
  - fs:temp: { size: 1G }
resources: { timeout: 10m, cpu: 4, memory: 8Gi, disk: 1G }
"#;
        let found = problems(yaml);
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        for expected in [
            "name",
            "version",
            "input",
            "colour",
            "capabilities[0].db:read",
            "capabilities[1].db:write.tables[1]",
            "capabilities[2].http:egress.allow[0]",
            "capabilities[3]",
            "capabilities[4].cache:write.max_ttl",
            "capabilities[5].fs:temp.size",
            "resources.timeout",
            "resources.cpu",
            "resources.memory",
            "resources.disk",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing in {found:#?}"
            );
        }
        assert_eq!(found.len(), 14, "{found:#?}");
        assert!(found
            .iter()
            .all(|p| p.file == "contract.yaml" && !p.reason.is_empty()));
        let shown = ContractErrors(found).to_string();
        assert!(shown.contains("contract.yaml: resources.cpu: "), "{shown}");
        assert_eq!(
            ContractErrors(vec![]).code(),
            crate::ErrorCode::ContractInvalid
        );
    }

    #[test]
    fn names() {
        for ok in ["A", "InvoiceSync", "a_1", &format!("A{}", "b".repeat(63))] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "_a",
            "a-b",
            "a b",
            "é",
            "a.b",
            &format!("A{}", "b".repeat(64)),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
