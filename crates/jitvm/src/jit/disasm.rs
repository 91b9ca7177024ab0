//! Listings of compiled code, formatted by independent decoders (iced-x86, yaxpeax-arm).

use std::fmt::Write as _;

use super::{CodegenOptions, Isa, JitError, compile_for};
use crate::{FuncId, Program};

/// The machine code the JIT makes for `func` on `isa`, one instruction per line with its offset
/// and bytes; entry points and linkable calls are marked. Calls of other functions are listed
/// as compiled, to their thunk: the tiered JIT links them to the callee's code once both are
/// compiled.
pub fn native_listing(
    isa: Isa,
    program: &Program,
    func: FuncId,
    steps: bool,
) -> Result<String, JitError> {
    let code = compile_for(
        isa,
        program,
        func,
        CodegenOptions {
            steps,
            link_calls: true,
            ..CodegenOptions::default()
        },
    )?;
    let mut marks: Vec<(usize, String)> = vec![
        (code.native_entry, "native entry".into()),
        (code.start_entry, "array entry".into()),
    ];
    for (index, offset) in &code.osr_entries {
        marks.push((
            *offset,
            format!("OSR entry after the loop_header at instruction {index}"),
        ));
    }
    for &(at, callee) in &code.call_sites {
        let name = program.function(callee).map_or("?", |f| f.name());
        marks.push((
            at,
            format!("call of {name}: to its thunk until linked to its code"),
        ));
    }
    let lines = match isa {
        Isa::X64 => x64_lines(&code.code),
        Isa::A64 => a64_lines(&code.code),
    };
    let mut out = String::new();
    for (offset, bytes, text) in lines {
        for (_, mark) in marks.iter().filter(|(at, _)| *at == offset) {
            let _ = writeln!(out, "      ; {mark}");
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "  {offset:5x}: {hex:<24} {text}");
    }
    let _ = writeln!(out, "  ; {} bytes of {}", code.code.len(), isa.name());
    Ok(out)
}

fn x64_lines(code: &[u8]) -> Vec<(usize, Vec<u8>, String)> {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut lines = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        let start = insn.ip() as usize;
        let end = start + insn.len();
        let mut text = String::new();
        formatter.format(&insn, &mut text);
        lines.push((start, code.get(start..end).unwrap_or(&[]).to_vec(), text));
    }
    lines
}

fn a64_lines(code: &[u8]) -> Vec<(usize, Vec<u8>, String)> {
    use yaxpeax_arch::{Decoder, U8Reader};
    use yaxpeax_arm::armv8::a64::InstDecoder;
    let decoder = InstDecoder::default();
    code.chunks(4)
        .enumerate()
        .map(|(i, word)| {
            let mut reader = U8Reader::new(word);
            let text = match decoder.decode(&mut reader) {
                Ok(insn) => insn.to_string(),
                Err(e) => format!("(undecodable: {e})"),
            };
            (i * 4, word.to_vec(), text)
        })
        .collect()
}

#[cfg(all(test, feature = "bench"))]
mod tests {
    use super::*;

    /// A recursive call goes straight to the function's own entry (offset 0), read back by the
    /// independent decoders; a call of another function goes to a thunk that goes on through
    /// the table.
    #[test]
    fn recursive_calls_are_direct_and_others_through_a_thunk() {
        let source = crate::bench::Workload::Fib.source(20);
        let program = crate::verify::verify(&crate::text::parse(&source).unwrap()).unwrap();
        let fib = 1;
        let x64 = native_listing(Isa::X64, &program, fib, false).unwrap();
        let direct = x64.lines().filter(|l| l.ends_with("call 0")).count();
        assert_eq!(direct, 2, "{x64}");
        let a64 = native_listing(Isa::A64, &program, fib, false).unwrap();
        let bl_to_start = a64
            .lines()
            .filter(|l| {
                let Some((offset, rest)) = l.trim().split_once(':') else {
                    return false;
                };
                let offset = i64::from_str_radix(offset.trim(), 16).unwrap_or(-1);
                rest.trim_end().ends_with(&format!("bl $-{offset:#x}"))
            })
            .count();
        assert_eq!(bl_to_start, 2, "{a64}");
        let main = native_listing(Isa::X64, &program, 0, false).unwrap();
        assert!(main.contains("; call of fib: to its thunk"), "{main}");
        assert!(main.contains("jmp qword ptr [r11+8]"), "{main}");
    }
}
