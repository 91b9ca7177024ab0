//! Arbitrary bytes -> binary decode -> verify -> interpret (with a step and depth limit), plus
//! the text printer and the listing on whatever decodes. Nothing may panic; a program that
//! verifies must also print as text that parses back to the same module.
//!
//! Run (nightly): `cd crates/jitvm/fuzz && cargo +nightly fuzz run decode_verify_run`
//! Without the binary magic the input is prefixed with it (and version 1), so the fuzzer
//! spends its time on function records and code rather than on the magic.

#![no_main]

use jitvm::{Limits, PlainEngine, binary, interp, text, verify::verify};
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
    for count in [false, true] {
        let mut engine = PlainEngine::new(std::io::sink());
        let _ = interp::run(&program, &mut engine, &limits, count);
    }
});
