//! `magikrun`: OCI runtime abstraction layer (see `crates/magikrun/README.md`).
