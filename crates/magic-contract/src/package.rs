//! Controller packages: the folder a user deploys.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{CompiledContract, ContractErrors, Problem};

/// Largest package (sum of file sizes) accepted.
pub const MAX_PACKAGE_BYTES: u64 = 16 * 1024 * 1024;

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

/// Check a package given as files (relative path → bytes).
pub fn check_package(_files: BTreeMap<String, Vec<u8>>) -> Result<Package, ContractErrors> {
    Err(ContractErrors(vec![Problem {
        file: String::new(),
        field: String::new(),
        reason: "package checking is not implemented yet".into(),
    }]))
}

/// Read a package folder into memory, refusing anything that escapes it.
pub fn read_package_dir(_dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, ContractErrors> {
    Err(ContractErrors(vec![Problem {
        file: String::new(),
        field: String::new(),
        reason: "package reading is not implemented yet".into(),
    }]))
}
