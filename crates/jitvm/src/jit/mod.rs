//! The baseline template JIT: one ISA-neutral code generator over one macro-assembler per
//! instruction set.
//!
//! The ISA is chosen here and only here ([`Isa::native`]); both backends build on every host, so
//! `jitvm disasm --native` and the encoder tests work everywhere, but only the host's runs.

pub(crate) mod a64;
#[cfg(feature = "debuginfo")]
pub(crate) mod cfi;
pub(crate) mod codegen;
#[cfg(feature = "disasm")]
pub mod disasm;
pub(crate) mod masm;
pub(crate) use masm::signed_magic;
pub(crate) mod runtime;
pub(crate) mod x64;

pub(crate) use codegen::{CodegenOptions, CompiledCode};
pub(crate) use masm::{Helpers, Target};

/// What can stop a function from being compiled or run natively.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The encoder refused an instruction (a bug in a backend, reported rather than emitted).
    #[error("code generation: {0}")]
    Asm(#[from] jitasm::Error),
    /// Executable memory could not be had.
    #[error("executable memory: {0}")]
    Memory(#[from] jitmem::Error),
    /// This build has no backend for the host's instruction set.
    #[error("no JIT backend for this instruction set")]
    UnsupportedIsa,
    /// A broken invariant of the JIT itself.
    #[error("internal JIT error: {0}")]
    Internal(&'static str),
}

/// An instruction set the JIT can emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64, System V calling convention.
    X64,
    /// AArch64, AAPCS64.
    A64,
}

impl Isa {
    /// The host's instruction set, if the JIT supports it.
    pub fn native() -> Option<Isa> {
        if cfg!(target_arch = "x86_64") {
            Some(Isa::X64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Isa::A64)
        } else {
            None
        }
    }

    /// Its name, as `disasm` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::X64 => "x86-64",
            Isa::A64 => "aarch64",
        }
    }
}

/// Compiles one function for `isa` (no executable memory involved).
pub(crate) fn compile_for(
    isa: Isa,
    program: &crate::Program,
    func: crate::FuncId,
    options: CodegenOptions,
) -> Result<CompiledCode, JitError> {
    match isa {
        Isa::X64 => codegen::compile::<x64::X64>(program, func, options),
        Isa::A64 => codegen::compile::<a64::A64>(program, func, options),
    }
}

/// Assembles the runtime stubs for the host and `target` and publishes them.
pub(crate) fn native_runtime(
    memory: &jitmem::JitMemory,
    target: Target,
) -> Result<runtime::Runtime, JitError> {
    match Isa::native() {
        Some(Isa::X64) => runtime::Runtime::new::<x64::X64>(memory, target),
        Some(Isa::A64) => runtime::Runtime::new::<a64::A64>(memory, target),
        None => Err(JitError::UnsupportedIsa),
    }
}

/// Copies compiled code into `memory`, patches its direct helper calls for its address with
/// `isa`'s encoder, and publishes it.
pub(crate) fn publish_compiled(
    isa: Isa,
    memory: &jitmem::JitMemory,
    code: &CompiledCode,
) -> Result<jitmem::CodeBlock, JitError> {
    let patch: runtime::PatchCall = match isa {
        Isa::X64 => <x64::X64 as masm::MacroAssembler>::patch_call,
        Isa::A64 => <a64::A64 as masm::MacroAssembler>::patch_call,
    };
    runtime::publish(memory, &code.code, &code.helper_calls, patch)
}

/// The patch linking the linkable call instruction at address `at` to `target` (see
/// [`masm::MacroAssembler::link_call`]): (offset from `at`, 4 bytes); `None` out of reach.
pub(crate) fn link_call(isa: Isa, at: usize, target: usize) -> Option<(usize, [u8; 4])> {
    match isa {
        Isa::X64 => <x64::X64 as masm::MacroAssembler>::link_call(at, target),
        Isa::A64 => <a64::A64 as masm::MacroAssembler>::link_call(at, target),
    }
}

/// How far a direct helper call reaches on `isa`: x86-64 `call rel32` +-2 GiB, AArch64 `bl`
/// +-128 MiB (the smaller side of each).
pub(crate) fn call_reach(isa: Isa) -> usize {
    match isa {
        Isa::X64 => i32::MAX as usize,
        Isa::A64 => (128 << 20) - 4,
    }
}

/// Registers the host's ABI passes arguments in (the bridge reads the rest from the stack).
pub(crate) fn native_reg_args() -> usize {
    match Isa::native() {
        Some(Isa::A64) => <a64::A64 as masm::MacroAssembler>::REG_ARGS as usize,
        _ => <x64::X64 as masm::MacroAssembler>::REG_ARGS as usize,
    }
}

/// Compiles `func` for the host, allocates and publishes its code in `memory`, then frees it:
/// the whole cost of compiling one function (benchmarks; returns the code size).
pub fn compile_cost(
    program: &crate::Program,
    func: crate::FuncId,
    memory: &jitmem::JitMemory,
) -> Result<usize, JitError> {
    let isa = Isa::native().ok_or(JitError::UnsupportedIsa)?;
    let code = compile_for(isa, program, func, CodegenOptions::default())?;
    let block = publish_compiled(isa, memory, &code)?;
    Ok(block.len())
}

/// How many calls the JIT compiles inline when it compiles every function of `program` for
/// the host (tests and `--stats`-like reports; 0 where there is no JIT backend).
pub fn inlined_calls(program: &crate::Program) -> u32 {
    let Some(isa) = Isa::native() else {
        return 0;
    };
    (0..program.functions().len())
        .filter_map(|f| crate::FuncId::try_from(f).ok())
        .filter_map(|f| compile_for(isa, program, f, CodegenOptions::default()).ok())
        .map(|code| code.inlined_calls)
        .sum()
}

/// Where the direct call (`call rel32` / `bl`) at the start of `code`, placed at `address`,
/// goes: tests read generated and patched calls back with it.
#[cfg(test)]
pub(crate) fn call_destination(isa: Isa, code: &[u8], address: usize) -> usize {
    match isa {
        Isa::X64 => {
            assert_eq!(code[0], 0xE8, "call rel32");
            let rel = i32::from_le_bytes(code[1..5].try_into().unwrap());
            (address as i64 + 5 + i64::from(rel)) as usize
        }
        Isa::A64 => {
            let word = u32::from_le_bytes(code[..4].try_into().unwrap());
            assert_eq!(word >> 26, 0b100101, "bl");
            (address as i64 + ((word << 6) as i32 >> 6) as i64 * 4) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINTS: &str =
        "func main args=0 locals=0\n    load_imm 7\n    print\n    load_imm 0\n    return\nend\n";

    fn program() -> crate::Program {
        crate::verify::verify(&crate::text::parse(PRINTS).unwrap()).unwrap()
    }

    /// With helpers to call directly, `print` becomes one `call rel32` / `bl` whose
    /// displacement is patched for the code's address; out of reach is an error, not a
    /// wrong call.
    #[test]
    fn direct_helper_calls_are_patched_for_the_codes_address() {
        let base = 0x7000_0000_0000usize;
        let helpers = Helpers {
            print: base + (100 << 20),
            bridge: base - (1 << 20),
        };
        let options = CodegenOptions {
            target: Target {
                helpers: Some(helpers),
                bti: false,
            },
            ..CodegenOptions::default()
        };
        for isa in [Isa::X64, Isa::A64] {
            let code = compile_for(isa, &program(), 0, options).unwrap();
            assert_eq!(code.helper_calls.len(), 1, "{isa:?}: one print");
            let call = code.helper_calls[0];
            assert_eq!(call.target, helpers.print);
            let mut bytes = code.code.clone();
            let patch: runtime::PatchCall = match isa {
                Isa::X64 => <x64::X64 as masm::MacroAssembler>::patch_call,
                Isa::A64 => <a64::A64 as masm::MacroAssembler>::patch_call,
            };
            patch(&mut bytes, call, base).unwrap();
            let at = call.at;
            assert_eq!(
                call_destination(isa, &bytes[at..], base + at),
                helpers.print
            );
            if isa == Isa::A64 {
                // 200 MiB away: beyond bl's reach.
                let far = masm::HelperCall {
                    at,
                    target: base + (200 << 20),
                };
                assert!(patch(&mut bytes, far, base).is_err());
            }
            let no_direct = compile_for(isa, &program(), 0, CodegenOptions::default()).unwrap();
            assert!(no_direct.helper_calls.is_empty());
        }
    }

    /// With `link_calls`, a call of another function is one `call rel32` / `bl` to a thunk in
    /// the caller's own code (x86-64: its displacement 4-byte aligned), recorded as a call site;
    /// `link_call` makes the bytes that send it to a target within reach, and nothing beyond.
    #[test]
    fn linkable_calls_go_to_a_thunk_and_link_only_within_reach() {
        // `print` in the callee keeps it from being compiled inline.
        let src = "func main args=0 locals=0\n    load_imm 1\n    call f\n    load_imm 2\n    call f\n    add_ii\n    return\nend\nfunc f args=1 locals=1\n    load_local_0\n    print\n    load_local_0\n    return\nend\n";
        let program = crate::verify::verify(&crate::text::parse(src).unwrap()).unwrap();
        let linked = CodegenOptions {
            link_calls: true,
            ..CodegenOptions::default()
        };
        for isa in [Isa::X64, Isa::A64] {
            let code = compile_for(isa, &program, 0, linked).unwrap();
            assert_eq!(code.call_sites.len(), 2, "{isa:?}");
            let mut thunks = Vec::new();
            for &(at, callee) in &code.call_sites {
                assert_eq!(callee, 1);
                if isa == Isa::X64 {
                    assert_eq!((at + 1) % 4, 0, "the displacement is 4-byte aligned");
                }
                let target = call_destination(isa, &code.code[at..], at);
                assert!(
                    target > at && target < code.code.len(),
                    "{isa:?}: a thunk in the code"
                );
                thunks.push(target);
            }
            assert_eq!(thunks[0], thunks[1], "{isa:?}: one thunk per callee");
            let table = compile_for(isa, &program, 0, CodegenOptions::default()).unwrap();
            assert!(
                table.call_sites.is_empty(),
                "{isa:?}: without link_calls, the table"
            );

            let at = 0x7000_0000_0000usize;
            let (reach, width) = match isa {
                Isa::X64 => (i32::MAX as usize, 5),
                Isa::A64 => ((128 << 20) - 4, 0),
            };
            for target in [
                at + 0x1000,
                at - 0x1000,
                at + width + reach - 64,
                at + width - reach + 64,
            ] {
                let target = target & !3;
                let (offset, bytes) = link_call(isa, at, target).unwrap();
                assert_eq!(offset, if isa == Isa::X64 { 1 } else { 0 });
                // The patch applied to one of the generated calls.
                let site = code.call_sites[0].0;
                let mut call = code.code[site..site + offset + 4].to_vec();
                call[offset..].copy_from_slice(&bytes);
                assert_eq!(call_destination(isa, &call, at), target, "{isa:?}");
            }
            assert_eq!(link_call(isa, at, at + width + reach + 64), None, "{isa:?}");
            assert_eq!(link_call(isa, at, at - reach - 64), None, "{isa:?}");
        }
    }

    /// With BTI, every AArch64 function entry, array entry and runtime stub starts with a
    /// landing pad; without it, none does.
    #[test]
    fn bti_puts_a_landing_pad_at_every_indirect_branch_target() {
        let pad = |code: &[u8], at: usize| code[at..at + 4] == [0x5f, 0x24, 0x03, 0xd5];
        let pad_jc = |code: &[u8], at: usize| code[at..at + 4] == [0xdf, 0x24, 0x03, 0xd5];
        for bti in [true, false] {
            let target = Target { helpers: None, bti };
            let options = CodegenOptions {
                target,
                ..CodegenOptions::default()
            };
            let code = compile_for(Isa::A64, &program(), 0, options).unwrap();
            assert_eq!(pad(&code.code, code.native_entry), bti);
            assert_eq!(pad(&code.code, code.start_entry), bti);
            let mut masm = <a64::A64 as masm::MacroAssembler>::new(target);
            let stubs = masm::MacroAssembler::runtime_stubs(&mut masm).unwrap();
            let (stub_code, _) = masm::MacroAssembler::finish(masm).unwrap();
            assert_eq!(pad(&stub_code, stubs.trampoline), bti);
            assert_eq!(pad(&stub_code, stubs.bridge), bti);
            assert_eq!(pad_jc(&stub_code, stubs.unwind), bti);
        }
    }
}
