//! The baseline template JIT: one ISA-neutral code generator over one macro-assembler per
//! instruction set.
//!
//! The ISA is chosen here and only here ([`Isa::native`]); both backends build on every host, so
//! `jitvm disasm --native` and the encoder tests work everywhere, but only the host's runs.

pub(crate) mod a64;
pub(crate) mod codegen;
#[cfg(feature = "disasm")]
pub mod disasm;
pub(crate) mod masm;
pub(crate) mod runtime;
pub(crate) mod x64;

pub(crate) use codegen::{CodegenOptions, CompiledCode};

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

/// Assembles the runtime stubs for the host and publishes them.
pub(crate) fn native_runtime(memory: &jitmem::JitMemory) -> Result<runtime::Runtime, JitError> {
    match Isa::native() {
        Some(Isa::X64) => runtime::Runtime::new::<x64::X64>(memory),
        Some(Isa::A64) => runtime::Runtime::new::<a64::A64>(memory),
        None => Err(JitError::UnsupportedIsa),
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
    let block = runtime::publish(memory, &code.code)?;
    Ok(block.len())
}
