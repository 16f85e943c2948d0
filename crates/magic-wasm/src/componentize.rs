//! Turning what a controller ships into a component of the `magic:controller` world.
//!
//! Owns: recognising a core module or a component, and componentizing a core module built
//! against the world's canonical ABI (exports `execute`, `memory`, `cabi_realloc`; imports
//! `magic:controller/<interface>` functions) with `wit-component`. Must never: compile or run
//! anything, or accept a component of another world (the engine's linker type-checks that).

use crate::WasmError;

/// The WIT world every controller implements (`wit/magic-controller.wit`).
pub const WIT: &str = include_str!("../../../wit/magic-controller.wit");

/// What a `controller.wasm` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// A core module (componentized at load).
    CoreModule,
    /// A component.
    Component,
}

/// Recognise `bytes` by their preamble.
pub fn kind(bytes: &[u8]) -> Result<Binary, WasmError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(Binary::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(Binary::Component),
        _ => Err(WasmError::Invalid(
            "controller.wasm is neither a WebAssembly core module nor a component".into(),
        )),
    }
}

/// A component of the world from `bytes` (a component as it is, a core module componentized).
pub fn to_component(bytes: &[u8]) -> Result<Vec<u8>, WasmError> {
    match kind(bytes)? {
        Binary::Component => Ok(bytes.to_vec()),
        Binary::CoreModule => componentize(bytes),
    }
}

fn componentize(module: &[u8]) -> Result<Vec<u8>, WasmError> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("magic-controller.wit", WIT)
        .map_err(internal)?;
    let world = resolve
        .select_world(&[package], Some("controller"))
        .map_err(internal)?;
    let mut bytes = module.to_vec();
    wit_component::embed_component_metadata(
        &mut bytes,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(internal)?;
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&bytes)
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| {
            WasmError::Invalid(format!(
                "controller.wasm is a core module that does not fit the magic:controller world \
                 (see docs/wasm.md): {e:#}"
            ))
        })
}

fn internal<E: std::fmt::Display>(e: E) -> WasmError {
    WasmError::Internal(format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_binaries() {
        let cases: [(&[u8], Option<Binary>); 5] = [
            (b"\0asm\x01\0\0\0", Some(Binary::CoreModule)),
            (b"\0asm\x0d\0\x01\0", Some(Binary::Component)),
            (b"\0asm", None),
            (b"MZ\x90\0\0\0\0\0", None),
            (b"", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(kind(bytes).ok(), want, "{bytes:?}");
        }
    }

    #[test]
    fn the_world_parses() {
        let mut resolve = wit_parser::Resolve::default();
        let pkg = resolve.push_str("magic-controller.wit", WIT).unwrap();
        resolve.select_world(&[pkg], Some("controller")).unwrap();
    }

    #[test]
    fn a_module_without_execute_is_refused_clearly() {
        let module = wat::parse_str("(module (memory (export \"memory\") 1))").unwrap();
        let err = to_component(&module).unwrap_err();
        assert!(matches!(err, WasmError::Invalid(_)), "{err}");
    }
}
