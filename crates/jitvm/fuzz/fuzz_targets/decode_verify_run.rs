//! Arbitrary bytes -> binary decode -> verify -> interpret and JIT (with a step and depth limit), plus
//! the text printer and the listing on whatever decodes. Nothing may panic; a program that
//! verifies must also print as text that parses back to the same module, and the JIT (every
//! function compiled up front) must print, end and trap exactly as the interpreter.
//!
//! Run (nightly): `cd crates/jitvm/fuzz && cargo +nightly fuzz run decode_verify_run`
//! Without the binary magic the input is prefixed with it (and version 1), so the fuzzer
//! spends its time on function records and code rather than on the magic.

#![no_main]

use jitvm::tier::JitMode;
use jitvm::vm::{self, Ended, RunOptions};
use jitvm::{Limits, PlainEngine, Stop, binary, interp, text, verify::verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Vec::with_capacity(data.len() + 8);
    if !binary::is_binary(data) {
        bytes.extend_from_slice(&binary::MAGIC);
        bytes.extend_from_slice(&binary::VERSION.to_le_bytes());
    }
    bytes.extend_from_slice(data);
    let Ok(module) = binary::decode(&bytes) else {
        return;
    };
    let printed = text::print(&module);
    let Ok(program) = verify(&module) else {
        return;
    };
    let printed = printed.expect("a verified module prints");
    let reparsed = text::parse(&printed).expect("printed text parses");
    assert_eq!(reparsed, module, "text round trip");
    let _ = jitvm::disasm::listing(&module, &program);
    let limits = Limits {
        max_depth: 200,
        max_steps: 10_000,
    };
    let _ = interp::run(&program, &mut PlainEngine::new(std::io::sink()), &limits, true);
    let mut engine = PlainEngine::new(Vec::new());
    let expected = match interp::run(&program, &mut engine, &limits, false) {
        Ok(v) => Ended::Returned(v),
        Err(Stop::Halt) => Ended::Halted,
        Err(Stop::Trap(t)) => Ended::Trapped(t),
    };
    let options = RunOptions {
        jit: JitMode::Eager,
        limits,
        ..RunOptions::default()
    };
    let mut out = Vec::new();
    let report = vm::run(&program, &options, &mut out);
    assert!(report.jit.failures.is_empty(), "{:?}", report.jit.failures);
    assert_eq!(report.ended, Ok(expected), "JIT and interpreter end differently");
    assert_eq!(out, engine.into_output(), "JIT and interpreter print differently");
});
