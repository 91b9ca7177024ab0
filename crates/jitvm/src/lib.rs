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

pub mod bench;
pub mod binary;
pub mod bytecode;
pub mod disasm;
mod error;
pub mod interp;
pub mod jit;
pub mod program;
pub mod text;
pub mod tier;
pub mod verify;
pub mod vm;

pub use bytecode::{Module, Opcode, RawFunction};
pub use error::{Error, Result};
pub use interp::PlainEngine;
pub use program::{
    Counters, Engine, FuncId, Function, Insn, Limits, Program, Stop, Trap, TrapKind,
};

/// Reads a module from bytes: binary if they start with [`binary::MAGIC`], else text. For text
/// also returns the source line of each instruction (to report verifier errors by line).
pub fn load_module(bytes: &[u8]) -> Result<(Module, Option<text::LineMap>)> {
    if binary::is_binary(bytes) {
        Ok((binary::decode(bytes)?, None))
    } else {
        let (module, lines) = text::parse_bytes(bytes)?;
        Ok((module, Some(lines)))
    }
}
