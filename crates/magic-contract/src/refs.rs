//! Static checks on a contract's JSON Schemas that the schema compiler does not make.
//!
//! Owns: refusing `$ref`s that leave the schema document (or that depend on nested `$id`s or
//! dynamic scopes), and finding reference cycles that never descend into the instance
//! (`a: {$ref: b}`, `b: {$ref: a}`): the validator would recurse on them until the stack
//! overflows and the whole process aborts.
//! Must never: recurse without bound on input (graph walks are iterative; the tree walk is
//! bounded by the YAML parser's nesting limit).

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

/// Keywords whose subschema applies to the same instance location.
const IN_PLACE_ONE: &[&str] = &["not", "if", "then", "else"];
const IN_PLACE_LIST: &[&str] = &["allOf", "anyOf", "oneOf"];
/// (`dependencies` is the pre-2019 spelling, still applied by the validator.)
const IN_PLACE_MAP: &[&str] = &["dependentSchemas", "dependencies"];
/// Keywords whose subschema applies to a part of the instance (or holds definitions).
const DEEPER_ONE: &[&str] = &[
    "additionalProperties",
    "additionalItems",
    "items",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
];
const DEEPER_LIST: &[&str] = &["prefixItems"];
const DEEPER_MAP: &[&str] = &["properties", "patternProperties", "$defs", "definitions"];

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every schema node (as a JSON Pointer) reachable through known keywords, plus `$anchor`s.
struct Collected {
    nodes: Vec<String>,
    /// Pointers already walked.
    seen: HashSet<String>,
    /// Every `$ref` string met, to walk their targets too (a `$ref` may point anywhere in
    /// the document, even into `const` data, which then acts as a schema).
    refs: Vec<String>,
    has_ref: bool,
    anchors: HashMap<String, String>,
    refused: Option<String>,
}

fn collect(node: &Json, pointer: String, out: &mut Collected) {
    let Json::Object(map) = node else {
        return;
    };
    if !out.seen.insert(pointer.clone()) {
        return;
    }
    if out.refused.is_none() {
        if !pointer.is_empty() && map.contains_key("$id") {
            out.refused = Some(format!(
                "$id is only supported at the top of the schema (found at {pointer})"
            ));
        }
        for keyword in ["$dynamicRef", "$recursiveRef"] {
            if map.contains_key(keyword) {
                out.refused = Some(format!(
                    "{keyword} is not supported in contracts (found at {}); use \"$ref\": \"#/$defs/...\"",
                    if pointer.is_empty() { "the top" } else { &pointer }
                ));
            }
        }
    }
    if let Some(Json::String(reference)) = map.get("$ref") {
        out.has_ref = true;
        out.refs.push(reference.clone());
    }
    if let Some(Json::String(anchor)) = map.get("$anchor") {
        out.anchors.insert(anchor.clone(), pointer.clone());
    }
    for key in IN_PLACE_ONE.iter().chain(DEEPER_ONE) {
        if let Some(sub) = map.get(*key) {
            collect(sub, format!("{pointer}/{key}"), out);
        }
    }
    for key in IN_PLACE_LIST.iter().chain(DEEPER_LIST) {
        if let Some(Json::Array(items)) = map.get(*key) {
            for (i, sub) in items.iter().enumerate() {
                collect(sub, format!("{pointer}/{key}/{i}"), out);
            }
        }
    }
    for key in IN_PLACE_MAP.iter().chain(DEEPER_MAP) {
        if let Some(Json::Object(subs)) = map.get(*key) {
            for (name, sub) in subs {
                collect(sub, format!("{pointer}/{key}/{}", escape(name)), out);
            }
        }
    }
    out.nodes.push(pointer);
}

/// Where a `$ref` points, as a JSON Pointer into the same document.
fn resolve(reference: &str, anchors: &HashMap<String, String>) -> Result<Option<String>, String> {
    let refused = || {
        format!(
            "\"$ref\": \"{reference}\" leaves the schema: only references inside it are supported (\"#/$defs/name\")"
        )
    };
    let Some(fragment) = reference.strip_prefix('#') else {
        return Err(refused());
    };
    let fragment = percent_decode(fragment).ok_or_else(refused)?;
    if fragment.is_empty() || fragment.starts_with('/') {
        Ok(Some(fragment))
    } else {
        // An anchor; an unknown one is left to the compiler to report.
        Ok(anchors.get(&fragment).cloned())
    }
}

/// The in-place edges of the schema node at `pointer`.
fn in_place_edges(
    root: &Json,
    pointer: &str,
    anchors: &HashMap<String, String>,
) -> Result<Vec<String>, String> {
    let Some(Json::Object(map)) = root.pointer(pointer) else {
        return Ok(Vec::new());
    };
    let mut edges = Vec::new();
    for key in IN_PLACE_ONE {
        if map.contains_key(*key) {
            edges.push(format!("{pointer}/{key}"));
        }
    }
    for key in IN_PLACE_LIST {
        if let Some(Json::Array(items)) = map.get(*key) {
            edges.extend((0..items.len()).map(|i| format!("{pointer}/{key}/{i}")));
        }
    }
    for key in IN_PLACE_MAP {
        if let Some(Json::Object(subs)) = map.get(*key) {
            edges.extend(
                subs.keys()
                    .map(|name| format!("{pointer}/{key}/{}", escape(name))),
            );
        }
    }
    if let Some(reference) = map.get("$ref") {
        let Some(reference) = reference.as_str() else {
            return Ok(edges); // the compiler reports a non-string $ref
        };
        if let Some(target) = resolve(reference, anchors)? {
            edges.push(target);
        }
    }
    Ok(edges)
}

/// Longest chain of in-place applicators (`$ref`, `allOf`, …) accepted: each link is a
/// stack frame of the validator for every level of the instance.
pub(crate) const MAX_IN_PLACE_DEPTH: usize = 32;

fn show(pointer: &str) -> String {
    format!("#{pointer}")
}

/// What validation against a schema can cost, in nested validator calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Whether the schema uses `$ref` (only then can it recurse as deep as the value).
    pub(crate) recursive: bool,
    /// Longest chain of in-place applicators: calls per level of the value, minus one.
    pub(crate) chain: usize,
}

/// Nested validator calls allowed for one validation (measured: a debug build overflows a
/// 2 MiB stack at about 4,000).
pub(crate) const MAX_VALIDATION_STEPS: usize = 1024;

impl Shape {
    /// The deepest value this schema validates without risking the stack, `None` for any.
    pub(crate) fn max_value_depth(self) -> Option<usize> {
        self.recursive
            .then(|| (MAX_VALIDATION_STEPS / (self.chain + 1)).saturating_sub(1))
    }
}

/// How deeply `value` nests (a scalar is 0), counted without recursion; stops past `limit`.
pub(crate) fn value_depth(value: &Json, limit: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Json, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        if deepest > limit {
            break;
        }
        match v {
            Json::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Json::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// Refuse a schema whose references leave it, or that can recurse without descending into
/// the instance. The error is a reason for the `input`/`output` problem.
pub(crate) fn check_schema_refs(schema: &Json) -> Result<Shape, String> {
    let mut collected = Collected {
        nodes: Vec::new(),
        seen: HashSet::new(),
        refs: Vec::new(),
        anchors: HashMap::new(),
        refused: None,
        has_ref: false,
    };
    collect(schema, String::new(), &mut collected);
    // Walk what the references point at, wherever it is (new references may appear).
    let mut next = 0;
    while let Some(reference) = collected.refs.get(next).cloned() {
        next += 1;
        if let Ok(Some(target)) = resolve(&reference, &collected.anchors) {
            if let Some(node) = schema.pointer(&target) {
                collect(node, target, &mut collected);
            }
        }
    }
    if let Some(reason) = collected.refused {
        return Err(reason);
    }
    // Iterative depth-first search over in-place edges; grey nodes are on the current path.
    // A black node's depth is the longest in-place chain starting at it.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        Grey,
        Black(usize),
    }
    let mut colour: HashMap<String, Colour> = HashMap::new();
    let mut longest = 0;
    for start in &collected.nodes {
        if colour.contains_key(start) {
            continue;
        }
        let mut path: Vec<(String, usize)> = vec![(start.clone(), 0)];
        let mut pending: Vec<Vec<String>> =
            vec![in_place_edges(schema, start, &collected.anchors)?];
        colour.insert(start.clone(), Colour::Grey);
        while let Some(edges) = pending.last_mut() {
            match edges.pop() {
                Some(next) => match colour.get(&next) {
                    Some(Colour::Grey) => {
                        let from = path.iter().position(|(p, _)| *p == next).unwrap_or(0);
                        let cycle: Vec<String> = path[from..]
                            .iter()
                            .map(|(p, _)| p)
                            .chain(std::iter::once(&next))
                            .map(|p| show(p))
                            .collect();
                        return Err(format!(
                            "the schema refers to itself without going deeper into the value ({}): validation would never end",
                            cycle.join(" → ")
                        ));
                    }
                    Some(Colour::Black(depth)) => {
                        let depth = *depth;
                        if let Some((_, best)) = path.last_mut() {
                            *best = (*best).max(depth + 1);
                        }
                    }
                    None => {
                        let next_edges = in_place_edges(schema, &next, &collected.anchors)?;
                        colour.insert(next.clone(), Colour::Grey);
                        path.push((next, 0));
                        pending.push(next_edges);
                    }
                },
                None => {
                    pending.pop();
                    if let Some((done, depth)) = path.pop() {
                        if depth > MAX_IN_PLACE_DEPTH {
                            return Err(format!(
                                "the schema chains more than {MAX_IN_PLACE_DEPTH} references and combinators at {} without going deeper into the value: flatten it",
                                show(&done)
                            ));
                        }
                        longest = longest.max(depth);
                        colour.insert(done, Colour::Black(depth));
                        if let Some((_, best)) = path.last_mut() {
                            *best = (*best).max(depth + 1);
                        }
                    }
                }
            }
        }
    }
    Ok(Shape {
        recursive: collected.has_ref,
        chain: longest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_and_depths() {
        let flat = check_schema_refs(
            &json!({"type": "object", "properties": {"a": {"allOf": [{}, {"not": {}}]}}}),
        )
        .unwrap();
        assert_eq!(
            flat,
            Shape {
                recursive: false,
                chain: 2
            }
        );
        assert_eq!(flat.max_value_depth(), None);
        let recursive = check_schema_refs(&json!({"properties": {"c": {"$ref": "#"}}})).unwrap();
        assert_eq!(
            recursive,
            Shape {
                recursive: true,
                chain: 1
            }
        );
        assert_eq!(
            recursive.max_value_depth(),
            Some(MAX_VALIDATION_STEPS / 2 - 1)
        );
        let depths = [
            (json!(1), 0),
            (json!([]), 0),
            (json!([1]), 1),
            (json!({"a": [1, {"b": []}]}), 3),
            (json!([[[[]]], 1]), 3),
        ];
        for (value, depth) in depths {
            assert_eq!(value_depth(&value, 100), depth, "{value}");
        }
        let mut deep = json!(1);
        for _ in 0..10_000 {
            deep = Json::Array(vec![deep]);
        }
        assert_eq!(value_depth(&deep, 50), 51);
        // serde_json's own drop is recursive: take it apart without recursion.
        while let Json::Array(mut items) = deep {
            deep = items.pop().unwrap_or(Json::Null);
        }
    }

    #[test]
    fn acyclic_and_descending_recursion_pass() {
        let ok = [
            json!(true),
            json!({}),
            json!({"type": "object"}),
            json!({"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}}),
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"type": "integer"}}, "allOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/b"}]}),
            // Recursion through properties/items descends into the instance: bounded.
            json!({"type": "object", "properties": {"child": {"$ref": "#"}}}),
            json!({"type": "array", "items": {"$ref": "#"}}),
            json!({"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"}),
            json!({"$defs": {"a b": {"type": "string"}, "c/d": {"type": "string"}}, "anyOf": [{"$ref": "#/$defs/a%20b"}, {"$ref": "#/$defs/c~1d"}]}),
            json!({"$defs": {"x": {"$anchor": "x", "type": "string"}}, "$ref": "#x"}),
            json!({"$id": "https://example.com/root", "$ref": "#/$defs/a", "$defs": {"a": {}}}),
        ];
        for schema in ok {
            assert!(check_schema_refs(&schema).is_ok(), "{schema}");
        }
    }

    #[test]
    fn in_place_cycles_and_outside_refs_are_refused() {
        let bad = [
            (json!({"$ref": "#"}), "(# → #)"),
            (
                json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
                "#/$defs/a → #/$defs/b → #/$defs/a",
            ),
            (
                json!({"anyOf": [{"type": "string"}, {"$ref": "#"}]}),
                "refers to itself",
            ),
            (json!({"not": {"$ref": "#"}}), "refers to itself"),
            (
                json!({"if": true, "then": {"$ref": "#/$defs/a"}, "$defs": {"a": {"allOf": [{"$ref": "#"}]}}}),
                "refers to itself",
            ),
            (
                json!({"dependentSchemas": {"x": {"$ref": "#"}}}),
                "refers to itself",
            ),
            (
                json!({"properties": {"a": {"oneOf": [{"$ref": "#/properties/a"}]}}}),
                "refers to itself",
            ),
            (
                json!({"$defs": {"x": {"$anchor": "x", "$ref": "#x"}}}),
                "refers to itself",
            ),
            (
                json!({"definitions": {"a": {"$ref": "#/definitions/a"}}}),
                "refers to itself",
            ),
            (
                json!({"$ref": "https://example.com/schema.json"}),
                "leaves the schema",
            ),
            (json!({"$ref": "other.json#/a"}), "leaves the schema"),
            (json!({"$ref": "#/%zz"}), "leaves the schema"),
            (
                json!({"$defs": {"a": {"$id": "https://e.com/a"}}}),
                "$id is only supported at the top",
            ),
            (
                json!({"$dynamicRef": "#meta"}),
                "$dynamicRef is not supported",
            ),
            (
                json!({"items": {"$recursiveRef": "#"}}),
                "$recursiveRef is not supported",
            ),
        ];
        for (schema, why) in bad {
            let err = check_schema_refs(&schema).expect_err(&schema.to_string());
            assert!(err.contains(why), "{schema}: {err}");
        }
    }

    fn chain(len: usize) -> Json {
        let mut defs = serde_json::Map::new();
        for i in 0..len {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert(format!("d{len}"), json!({"type": "string"}));
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }

    #[test]
    fn long_reference_chains_are_refused_without_overflowing_our_stack() {
        assert_eq!(
            check_schema_refs(&chain(MAX_IN_PLACE_DEPTH - 1)),
            // The root's own $ref is one more link.
            Ok(Shape {
                recursive: true,
                chain: MAX_IN_PLACE_DEPTH
            })
        );
        let err = check_schema_refs(&chain(MAX_IN_PLACE_DEPTH + 1)).unwrap_err();
        assert!(err.contains("more than 32 references"), "{err}");
        let err = check_schema_refs(&chain(50_000)).unwrap_err();
        assert!(err.contains("more than 32 references"), "{err}");
    }
}
