//! # jitvm: a bytecode VM with a verifier, an interpreter and a baseline template JIT
//!
//! Text (`.jvm`) or binary bytecode is parsed, then verified into a [`Program`]; only a verified
//! program is interpreted or compiled. The JIT puts its code in memory from [`jitmem`].

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod program;

pub use program::{
    Counters, Engine, FuncId, Function, Insn, Limits, Program, Stop, Trap, TrapKind,
};
