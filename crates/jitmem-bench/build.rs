//! Records the versions of the peer crates that Cargo resolved (read from the workspace's
//! `Cargo.lock`) so that the report can name them.

use std::path::Path;

/// The crates whose resolved version the report prints.
const CRATES: [&str; 4] = ["jit-allocator", "region", "memmap2", "dynasmrt"];

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let lock = Path::new(&manifest_dir).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for name in CRATES {
        let version = version_of(&text, name).unwrap_or_else(|| "?".to_string());
        let var = format!("JB_VERSION_{}", name.replace('-', "_").to_uppercase());
        println!("cargo:rustc-env={var}={version}");
    }
}

/// The version of the first `[[package]]` named `name` in a `Cargo.lock`.
fn version_of(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let next = lines.next()?;
            let version = next
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?;
            return Some(version.to_string());
        }
    }
    None
}
