//! What the CMake-driven tests (ctest.rs, install.rs) share.

use std::process::Command;

/// Runs `cmd`, fails the test (with its output) unless it succeeds, and returns
/// "command\nstdout\nstderr".
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot start: {e}"));
    let text = format!(
        "{cmd:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// Whether `tool` is installed. When it is not, the test says what it skipped (`skipped`), and
/// fails instead if `JITMEM_REQUIRE_CMAKE` is set (CI sets it).
pub fn have(tool: &str, skipped: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("JITMEM_REQUIRE_CMAKE").is_none(),
        "{tool} is required (JITMEM_REQUIRE_CMAKE is set) but not installed"
    );
    eprintln!("note: {tool} is not installed: {skipped} not run");
    false
}
