//! `cargo run -p magic-contract --example validate -- DIR`: check a package folder offline and
//! print every problem (what `magic validate DIR` builds on).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: validate DIR");
        return ExitCode::from(2);
    };
    match magic_contract::check_package_dir(std::path::Path::new(&dir)) {
        Ok(package) => {
            let c = package.contract.contract();
            println!("{} {} is valid ({:?})", c.name, c.version, package.kind);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            ExitCode::from(1)
        }
    }
}
