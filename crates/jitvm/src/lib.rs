//! # jitvm: a bytecode VM with a verifier, an interpreter and a baseline template JIT
//!
//! Text (`.jvm`) or binary bytecode is parsed, then verified into a [`Program`]; only a verified
//! program is interpreted or compiled. The JIT puts its code in memory from [`jitmem`].
//!
//! - [`bytecode`]: the opcode table (one table for everything) and the unverified [`Module`].
//! - [`text`]: the `.jvm` parser and printer; [`binary`]: the binary format.
//! - [`verify`]: the verifier, the only producer of [`Program`].
//! - [`interp`]: the interpreter ([`interp::run`], [`interp::call`], [`PlainEngine`]).
//! - [`disasm`]: the listing with byte offsets and stack depths.
//! - [`jit`]: the template JIT; [`tier`]: the engine that tiers up into it; [`vm`]: a whole run.
//!
//! # Features
//!
//! - `disasm`: `jit::disasm`, listings of compiled code (iced-x86, yaxpeax-arm).
//! - `bench`: the `bench` module, the benchmark workloads and the report of `jitvm bench`
//!   (which runs `lua5.4` and `luajit` when they are installed).
//! - `cli` (default): the `jitvm` binary (clap), with both of the above.
//!
//! Without them (`default-features = false`) the library depends only on `jitmem`, `jitasm`
//! and `thiserror`.
//!
//! ```
//! let module = jitvm::text::parse("func main args=0 locals=0\n load_imm 6\n load_imm 7\n mul_ii\n return\nend\n")?;
//! let program = jitvm::verify::verify(&module)?;
//! let mut engine = jitvm::PlainEngine::new(Vec::new());
//! let result = jitvm::interp::run(&program, &mut engine, &jitvm::Limits::default(), false);
//! assert_eq!(result, Ok(42));
//! # Ok::<(), jitvm::Error>(())
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "bench")]
pub mod bench;
pub mod binary;
pub mod bytecode;
pub mod disasm;
mod error;
pub mod interp;
mod ir;
pub mod jit;
pub mod program;
pub mod text;
pub mod tier;
pub mod verify;
pub mod vm;

pub use bytecode::{Module, Opcode, RawFunction};
pub use error::{Error, QUOTE_MAX, Quoted, Result, quote};
pub use interp::PlainEngine;
pub use program::{
    Counters, Engine, FuncId, Function, Insn, Limits, Program, Stop, Trap, TrapKind,
};

/// The largest program input (text or binary) jitvm reads: 64 MiB.
pub const MAX_INPUT: usize = 64 << 20;

/// Reads a program file of at most [`MAX_INPUT`] bytes; a larger one is refused with an error
/// of kind [`std::io::ErrorKind::InvalidData`] saying so (without reading it all).
pub fn read_input(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let too_large = |len: Option<u64>| {
        let size = len.map_or_else(|| "more than".to_string(), |l| format!("{l} bytes,"));
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "input is {size} above the limit of {MAX_INPUT} bytes ({} MiB)",
                MAX_INPUT >> 20
            ),
        )
    };
    if let Ok(meta) = file.metadata()
        && meta.is_file()
        && meta.len() > MAX_INPUT as u64
    {
        return Err(too_large(Some(meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_INPUT as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_INPUT {
        return Err(too_large(None));
    }
    Ok(bytes)
}

/// Reads a module from bytes: binary if they start with [`binary::MAGIC`], else text. For text
/// also returns the source line of each instruction (to report verifier errors by line).
/// Inputs above [`MAX_INPUT`] bytes are refused ([`Error::InputTooLarge`]).
pub fn load_module(bytes: &[u8]) -> Result<(Module, Option<text::LineMap>)> {
    if bytes.len() > MAX_INPUT {
        return Err(Error::InputTooLarge {
            len: bytes.len(),
            limit: MAX_INPUT,
        });
    }
    if binary::is_binary(bytes) {
        Ok((binary::decode(bytes)?, None))
    } else {
        let (module, lines) = text::parse_bytes(bytes)?;
        Ok((module, Some(lines)))
    }
}
