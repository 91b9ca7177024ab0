//! The one error type of the encoders.

/// What can go wrong while encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A label was used by a branch but never bound before `finish`.
    #[error("label {0} is used but never bound")]
    UnboundLabel(u32),
    /// A label was bound twice.
    #[error("label {0} is bound twice")]
    LabelBoundTwice(u32),
    /// A label that this assembler did not create.
    #[error("label {0} does not belong to this assembler")]
    UnknownLabel(u32),
    /// A branch target is farther than the instruction can reach.
    #[error("branch at offset {at:#x} to {target:#x} is out of range (+-{range} bytes)")]
    BranchOutOfRange {
        /// Offset of the branch instruction.
        at: usize,
        /// Offset of its target.
        target: usize,
        /// The instruction's reach, in bytes, either way.
        range: usize,
    },
    /// An immediate or offset that the instruction form cannot encode.
    #[error("{what}: {value} cannot be encoded")]
    ImmediateOutOfRange {
        /// The instruction form and operand.
        what: &'static str,
        /// The value asked for.
        value: i64,
    },
    /// A register that the instruction form does not accept (for example SP where only
    /// general registers are allowed).
    #[error("{what}: register not allowed here")]
    InvalidRegister {
        /// The instruction form and operand.
        what: &'static str,
    },
    /// The code buffer would exceed the encoders' 2 GiB limit on a function.
    #[error("code buffer exceeds 2 GiB")]
    CodeTooLarge,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
