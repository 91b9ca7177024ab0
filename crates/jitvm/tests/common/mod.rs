//! Helpers shared by jitvm's integration tests: the example programs, the reference
//! interpreter run, and the `jitvm` binary (through an emulator when the tests run under one).

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::path::PathBuf;

use jitvm::interp::{self, PlainEngine};
use jitvm::vm::Ended;
use jitvm::{Limits, Program, Stop};

/// The example programs' paths (`programs/*.jvm`), sorted.
pub fn program_paths() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("programs");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jvm"))
        .collect();
    paths.sort();
    paths
}

/// The interpreter alone: the reference every tier is compared with.
pub fn interpret(program: &Program, limits: &Limits) -> (Vec<u8>, Ended) {
    let mut engine = PlainEngine::new(Vec::new());
    let ended = match interp::run(program, &mut engine, limits, false) {
        Ok(v) => Ended::Returned(v),
        Err(Stop::Halt) => Ended::Halted,
        Err(Stop::Trap(t)) => Ended::Trapped(t),
    };
    (engine.into_output(), ended)
}

/// The `jitvm` binary; under an emulator (`JITMEM_TEST_RUNNER`, e.g. "qemu-aarch64 -L /")
/// it runs through it, as cargo runs the tests themselves.
#[cfg(feature = "cli")]
pub fn jitvm() -> std::process::Command {
    use std::process::Command;
    let runner = std::env::var("JITMEM_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_jitvm"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_jitvm")),
    }
}
