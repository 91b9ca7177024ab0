//! Arbitrary text -> parser -> verify -> interpret (with a step and depth limit). Nothing may
//! panic; whatever parses must survive binary encode/decode unchanged.
//!
//! Run (nightly): `cd crates/jitvm/fuzz && cargo +nightly fuzz run parse_text`

#![no_main]

use jitvm::{Limits, PlainEngine, binary, interp, text, verify::verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((module, _lines)) = text::parse_bytes(data) else {
        return;
    };
    let decoded = binary::decode(&binary::encode(&module)).expect("encoded modules decode");
    assert_eq!(decoded, module, "binary round trip");
    let Ok(program) = verify(&module) else {
        return;
    };
    let limits = Limits {
        max_depth: 200,
        max_steps: 10_000,
    };
    let mut engine = PlainEngine::new(std::io::sink());
    let _ = interp::run(&program, &mut engine, &limits, true);
});
