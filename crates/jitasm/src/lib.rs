//! # jitasm: hand-written machine-code encoders
//!
//! Two assemblers, one per instruction set, built the same way. Every method encodes one
//! instruction form by hand (prefixes, ModRM/SIB, fields); nothing here runs code or touches
//! executable memory. Encoding errors (an unbound label, a branch target out of range, an
//! immediate that does not fit) are reported as [`Error`], never as wrong bytes or panics.
//!
//! The shape:
//!
//! - [`buffer::CodeBuffer`]: the one code buffer. It owns the bytes, the [`Label`]s (bound
//!   offsets), the pending fix-ups and the size limit ([`MAX_CODE_SIZE`]), and holds the rules
//!   for binding, patching and finishing. It is generic over a [`FixupKind`], the only
//!   ISA-specific part: how a fix-up's field is written and how far it reaches.
//! - [`Encoder`]: the trait for what every assembler has (`new_label`, `bind`, `label_offset`,
//!   `offset`, `bytes`, `finish`, `align`; errors are [`Error`]), provided by the buffer.
//! - [`x64`]: x86-64 (REX, ModRM, SIB, displacements); fix-ups [`x64::Fixup`] rel8/rel32.
//! - [`a64`]: AArch64 (fixed 32-bit words); fix-ups [`a64::Fixup`]: B/BL imm26 (+-128 MiB),
//!   B.cond/CBZ/CBNZ imm19 and ADR (+-1 MiB), TBZ/TBNZ imm14 (+-32 KiB).
//!
//! Each `Assembler` is a thin layer of instruction encodings over a `CodeBuffer`; it keeps the
//! `Encoder` methods as inherent methods too, so callers need not import the trait.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![forbid(unsafe_code)]

pub mod a64;
pub mod buffer;
mod error;
pub mod x64;

pub use buffer::{CodeBuffer, Encoder, FixupKind, MAX_CODE_SIZE};
pub use error::{Error, Result};

/// A position in the code that branches can name before it is bound.
///
/// Labels belong to the assembler that made them; using one with another assembler is reported
/// as [`Error::UnknownLabel`] when the index is out of that assembler's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label(pub(crate) u32);

impl Label {
    /// The label's index in its assembler (for diagnostics).
    pub fn index(self) -> u32 {
        self.0
    }
}
