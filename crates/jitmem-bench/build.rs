//! Records the versions of the peer crates that Cargo resolved (read from the workspace's
//! `Cargo.lock`) so that the report can name them, and compiles the C++ asmjit peer
//! (`cpp/asmjit_peer.cpp`) when asmjit's headers and library are installed (Debian:
//! `libasmjit-dev`).
//!
//! asmjit found: sets `cfg(jb_asmjit)`, `JB_VERSION_ASMJIT` and links the shim, `asmjit` and
//! the C++ standard library. Not found: the build goes on without the peer and
//! `JB_ASMJIT_UNAVAILABLE` says why (the `asmjit-*` rows print it). `JITMEM_BENCH_NO_ASMJIT=1`
//! leaves it out even when installed (to check that build).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates whose resolved version the report prints.
const CRATES: [&str; 4] = ["jit-allocator", "region", "memmap2", "dynasmrt"];

/// The asmjit header the shim needs, relative to an include directory.
const ASMJIT_HEADER: &str = "asmjit/core/jitallocator.h";

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
    asmjit(Path::new(&manifest_dir));
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

/// Compiles and links the asmjit shim if asmjit is installed; never fails the build.
fn asmjit(manifest_dir: &Path) {
    println!("cargo:rustc-check-cfg=cfg(jb_asmjit)");
    let shim = manifest_dir.join("cpp/asmjit_peer.cpp");
    println!("cargo:rerun-if-changed={}", shim.display());
    match build_asmjit(&shim) {
        Ok(version) => {
            println!("cargo:rustc-cfg=jb_asmjit");
            println!("cargo:rustc-env=JB_VERSION_ASMJIT={version}");
            println!("cargo:rustc-env=JB_ASMJIT_UNAVAILABLE=");
        }
        Err(why) => {
            println!("cargo:rustc-env=JB_VERSION_ASMJIT=");
            println!("cargo:rustc-env=JB_ASMJIT_UNAVAILABLE={why}");
        }
    }
}

/// Finds asmjit, compiles the shim; returns asmjit's version, or why the peer is left out.
fn build_asmjit(shim: &Path) -> Result<String, String> {
    println!("cargo:rerun-if-env-changed=JITMEM_BENCH_NO_ASMJIT");
    if std::env::var_os("JITMEM_BENCH_NO_ASMJIT").is_some() {
        return Err("left out of this build (JITMEM_BENCH_NO_ASMJIT is set)".into());
    }
    let unix = std::env::var("CARGO_CFG_UNIX").is_ok();
    let not_installed = "libasmjit-dev not installed (at build time: after installing it, touch \
                         crates/jitmem-bench/build.rs)";
    if !unix {
        return Err("asmjit peers are built on Unix only".into());
    }
    // Only where the header is: a missing header is no cause for a rebuild (a missing
    // rerun-if-changed path would rerun this script at every build).
    let header = ["/usr/include", "/usr/local/include"]
        .iter()
        .map(|dir| Path::new(dir).join(ASMJIT_HEADER))
        .find(|h| h.is_file())
        .ok_or(not_installed)?;
    println!("cargo:rerun-if-changed={}", header.display());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file(shim)
        .define("ASMJIT_STATIC", None)
        .cpp_link_stdlib(None)
        .cargo_warnings(false);
    let lib_dir = library_dir(&build, "libasmjit.a")
        .or_else(|| library_dir(&build, "libasmjit.so"))
        .ok_or(not_installed)?;
    build
        .try_compile("jb_asmjit_peer")
        .map_err(|e| format!("cpp/asmjit_peer.cpp did not compile: {e}"))?;
    // After the shim, which needs them: asmjit (static in Debian), then the C++ runtime that
    // asmjit and the shim use.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=asmjit");
    println!("cargo:rustc-link-lib=stdc++");
    let text = std::fs::read_to_string(header.with_file_name("api-config.h")).unwrap_or_default();
    Ok(library_version(&text).unwrap_or_else(|| "?".into()))
}

/// The directory in the C++ compiler's library search path that holds `file`
/// (`-print-file-name`, which echoes the bare name when nothing is found).
fn library_dir(build: &cc::Build, file: &str) -> Option<PathBuf> {
    let compiler = build.try_get_compiler().ok()?;
    let output = Command::new(compiler.path())
        .arg(format!("-print-file-name={file}"))
        .output()
        .ok()?;
    let found = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let found = found.canonicalize().ok().filter(|_| found.is_absolute())?;
    found.parent().map(Path::to_path_buf)
}

/// `ASMJIT_LIBRARY_VERSION 0x010900` in `api-config.h` as `1.9.0`.
fn library_version(api_config: &str) -> Option<String> {
    let line = api_config
        .lines()
        .find(|l| l.starts_with("#define ASMJIT_LIBRARY_VERSION"))?;
    let hex = line.split_whitespace().nth(2)?.strip_prefix("0x")?;
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff))
}
