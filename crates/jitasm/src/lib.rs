//! # jitasm: hand-written machine-code encoders
//!
//! Two assemblers, one per instruction set, with the same shape: a growable code buffer,
//! [`Label`]s that may be used before they are bound, and fixups patched when a label is bound.
//! Every method encodes one instruction form by hand (prefixes, ModRM/SIB, fields); nothing here
//! runs code or touches executable memory. Encoding errors (an unbound label, a branch target
//! out of range, an immediate that does not fit) are reported as [`Error`], never as wrong bytes.
//!
//! - [`x64`]: x86-64 (REX, ModRM, SIB, displacements, rel8/rel32 branches).
//! - [`a64`]: AArch64 (fixed 32-bit words, B/BL +-128 MiB, B.cond/CBZ +-1 MiB).

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
