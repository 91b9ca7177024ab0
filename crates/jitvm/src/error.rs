//! The one error type of the crate: text parsing, binary decoding and verification.
//!
//! Parse errors carry the 1-based source line (`Display` starts with `LINE: `, so a caller
//! prints `{file}:{error}`); verifier errors name the function and the byte offset of the
//! instruction in its bytecode.

/// What can go wrong before a program runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // ---- text (.jvm) parser ----
    /// A line that is not a function header, label, instruction or `end` where one is expected,
    /// or a malformed function header.
    #[error("{line}: {message}")]
    Syntax {
        /// 1-based line.
        line: u32,
        /// What is wrong.
        message: String,
    },
    /// An instruction name that is not in the opcode table.
    #[error("{line}: unknown opcode `{name}`", name = quote(.name))]
    UnknownMnemonic {
        /// 1-based line.
        line: u32,
        /// The name as written.
        name: String,
    },
    /// A missing, extra or malformed operand.
    #[error("{line}: bad operand for `{opcode}`: {message}")]
    BadOperand {
        /// 1-based line.
        line: u32,
        /// The opcode's name.
        opcode: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A jump to a label that the function does not define.
    #[error("{line}: unknown label `{label}`", label = quote(.label))]
    UnknownLabel {
        /// 1-based line.
        line: u32,
        /// The label.
        label: String,
    },
    /// A call to a function that the file does not define.
    #[error("{line}: unknown function `{name}`", name = quote(.name))]
    UnknownFunction {
        /// 1-based line.
        line: u32,
        /// The function name.
        name: String,
    },
    /// Two functions with the same name.
    #[error("{line}: duplicate function `{name}`", name = quote(.name))]
    DuplicateFunction {
        /// 1-based line of the second definition.
        line: u32,
        /// The function name.
        name: String,
    },
    /// Two labels with the same name in one function.
    #[error("{line}: duplicate label `{label}`", label = quote(.label))]
    DuplicateLabel {
        /// 1-based line of the second definition.
        line: u32,
        /// The label.
        label: String,
    },
    /// A function without its `end`.
    #[error("{line}: function `{name}` has no `end`", name = quote(.name))]
    MissingEnd {
        /// 1-based line of the function header.
        line: u32,
        /// The function name.
        name: String,
    },
    /// The file defines no `main`.
    #[error("{line}: no function `main`")]
    NoMainFunction {
        /// The last line of the file.
        line: u32,
    },
    /// `main` declares arguments.
    #[error("{line}: `main` must take no arguments (it declares {args})")]
    MainWithArgs {
        /// 1-based line of main's header.
        line: u32,
        /// The declared argument count.
        args: u32,
    },

    // ---- any input ----
    /// The input is larger than [`crate::MAX_INPUT`].
    #[error("input is {len} bytes, above the limit of {limit} bytes")]
    InputTooLarge {
        /// The input's length.
        len: usize,
        /// The limit.
        limit: usize,
    },

    // ---- binary decoder ----
    /// The input does not start with the binary magic.
    #[error("not a jitvm binary (bad magic)")]
    BadMagic,
    /// A binary format version this build does not read.
    #[error("unsupported binary format version {0}")]
    UnsupportedVersion(u32),
    /// The input ends inside a header or a function record.
    #[error("binary truncated in {what} at byte {at}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Byte position in the input.
        at: usize,
    },
    /// Bytes after the last function record.
    #[error("{count} trailing bytes after the last function, at byte {at}")]
    TrailingBytes {
        /// Byte position in the input.
        at: usize,
        /// How many bytes are left over.
        count: usize,
    },
    /// A function name that is not an identifier (`[A-Za-z_.$][A-Za-z0-9_.$]*`).
    #[error("invalid function name at byte {at}")]
    BadName {
        /// Byte position in the input.
        at: usize,
    },

    // ---- verifier (also reported by the binary-to-text printer) ----
    /// A byte that is not an opcode.
    #[error("{func} at {offset}: unknown opcode byte {byte:#04x}", func = quote(.func))]
    UnknownOpcode {
        /// The function.
        func: String,
        /// Byte offset of the instruction.
        offset: u32,
        /// The byte.
        byte: u8,
    },
    /// The code ends inside an instruction's operand.
    #[error("{func} at {offset}: truncated operand of `{opcode}`", func = quote(.func))]
    TruncatedOperand {
        /// The function.
        func: String,
        /// Byte offset of the instruction.
        offset: u32,
        /// The opcode's name.
        opcode: &'static str,
    },
    /// A jump target at or past the end of the function's code.
    #[error("{func} at {offset}: jump to {target} is outside the function", func = quote(.func))]
    JumpOutOfFunction {
        /// The function.
        func: String,
        /// Byte offset of the jump.
        offset: u32,
        /// The target byte offset.
        target: u32,
    },
    /// A jump target that is not the first byte of an instruction.
    #[error("{func} at {offset}: jump to {target} lands inside an instruction", func = quote(.func))]
    JumpIntoInstruction {
        /// The function.
        func: String,
        /// Byte offset of the jump.
        offset: u32,
        /// The target byte offset.
        target: u32,
    },
    /// An instruction pops more values than the operand stack holds.
    #[error("{func} at {offset}: stack underflow (needs {needs}, has {depth})", func = quote(.func))]
    StackUnderflow {
        /// The function.
        func: String,
        /// Byte offset of the instruction.
        offset: u32,
        /// Values the instruction pops.
        needs: u32,
        /// Values on the stack.
        depth: u32,
    },
    /// Two paths reach an instruction with different stack depths.
    #[error("{func} at {offset}: stack depth {found} differs from {expected} on another path", func = quote(.func))]
    StackMismatch {
        /// The function.
        func: String,
        /// Byte offset of the instruction where the paths merge.
        offset: u32,
        /// The depth seen first.
        expected: u32,
        /// The other depth.
        found: u32,
    },
    /// The operand stack would grow above [`crate::program::MAX_STACK`].
    #[error("{func} at {offset}: operand stack above the limit of {limit}", func = quote(.func))]
    StackOverflow {
        /// The function.
        func: String,
        /// Byte offset of the instruction.
        offset: u32,
        /// The limit.
        limit: u32,
    },
    /// A local index not below the function's local count.
    #[error("{func} at {offset}: local {index} out of range (the function has {locals})", func = quote(.func))]
    LocalOutOfRange {
        /// The function.
        func: String,
        /// Byte offset of the instruction.
        offset: u32,
        /// The index.
        index: u32,
        /// The function's local count.
        locals: u32,
    },
    /// A call to a function index that does not exist.
    #[error("{func} at {offset}: call to unknown function index {callee}", func = quote(.func))]
    UnknownCallee {
        /// The function.
        func: String,
        /// Byte offset of the call.
        offset: u32,
        /// The function index.
        callee: u32,
    },
    /// A call where the stack holds fewer values than the callee's declared arguments.
    #[error("{func} at {offset}: call to `{callee}` needs {args} arguments, the stack has {depth}", func = quote(.func), callee = quote(.callee))]
    CallArgCount {
        /// The function.
        func: String,
        /// Byte offset of the call.
        offset: u32,
        /// The callee's name.
        callee: String,
        /// The callee's declared arguments.
        args: u32,
        /// Values on the stack.
        depth: u32,
    },
    /// A `loop_header` reached with values on the operand stack.
    #[error("{func} at {offset}: loop_header with {depth} values on the operand stack", func = quote(.func))]
    LoopHeaderStack {
        /// The function.
        func: String,
        /// Byte offset of the loop header.
        offset: u32,
        /// Values on the stack.
        depth: u32,
    },
    /// Execution can run past the last instruction.
    #[error("{func} at {offset}: execution can fall off the end of the function", func = quote(.func))]
    FallsOffEnd {
        /// The function.
        func: String,
        /// Byte offset of the last instruction, which falls through.
        offset: u32,
    },
    /// Fewer locals than arguments.
    #[error("{func}: {locals} locals is fewer than its {args} arguments", func = quote(.func))]
    LocalsBelowArgs {
        /// The function.
        func: String,
        /// Declared arguments.
        args: u32,
        /// Declared locals.
        locals: u32,
    },
    /// More locals than [`crate::program::MAX_LOCALS`].
    #[error("{func}: {locals} locals is above the limit of {limit}", func = quote(.func))]
    TooManyLocals {
        /// The function.
        func: String,
        /// Declared locals.
        locals: u32,
        /// The limit.
        limit: u32,
    },
    /// A function without instructions.
    #[error("{func}: empty function", func = quote(.func))]
    EmptyFunction {
        /// The function.
        func: String,
    },
    /// Two functions with the same name.
    #[error("{func}: duplicate function name", func = quote(.func))]
    DuplicateName {
        /// The function.
        func: String,
    },
    /// No function is called `main`.
    #[error("no function `main`")]
    MissingMain,
    /// `main` declares arguments.
    #[error("main: must take no arguments (it declares {args})")]
    MainHasArgs {
        /// The declared argument count.
        args: u32,
    },
}

impl Error {
    /// For a verifier error about one instruction: the function's name and the instruction's
    /// byte offset (used to map the error back to a source line).
    pub fn location(&self) -> Option<(&str, u32)> {
        match self {
            Error::UnknownOpcode { func, offset, .. }
            | Error::TruncatedOperand { func, offset, .. }
            | Error::JumpOutOfFunction { func, offset, .. }
            | Error::JumpIntoInstruction { func, offset, .. }
            | Error::StackUnderflow { func, offset, .. }
            | Error::StackMismatch { func, offset, .. }
            | Error::StackOverflow { func, offset, .. }
            | Error::LocalOutOfRange { func, offset, .. }
            | Error::UnknownCallee { func, offset, .. }
            | Error::CallArgCount { func, offset, .. }
            | Error::LoopHeaderStack { func, offset, .. }
            | Error::FallsOffEnd { func, offset } => Some((func.as_str(), *offset)),
            _ => None,
        }
    }

    /// For a verifier error about a whole function (its header: locals, emptiness, name): the
    /// function's name (used to map the error back to the function's header line).
    pub fn function(&self) -> Option<&str> {
        match self {
            Error::LocalsBelowArgs { func, .. }
            | Error::TooManyLocals { func, .. }
            | Error::EmptyFunction { func }
            | Error::DuplicateName { func } => Some(func.as_str()),
            _ => None,
        }
    }

    /// Whether this error comes from the text parser (its `Display` starts with the line).
    pub fn is_parse_error(&self) -> bool {
        matches!(
            self,
            Error::Syntax { .. }
                | Error::UnknownMnemonic { .. }
                | Error::BadOperand { .. }
                | Error::UnknownLabel { .. }
                | Error::UnknownFunction { .. }
                | Error::DuplicateFunction { .. }
                | Error::DuplicateLabel { .. }
                | Error::MissingEnd { .. }
                | Error::NoMainFunction { .. }
                | Error::MainWithArgs { .. }
        )
    }
}

/// Most characters of a token an error message quotes (longer ones are cut, with `...`).
pub const QUOTE_MAX: usize = 48;

/// A token from the input as messages show it: at most [`QUOTE_MAX`] characters, the rest
/// cut off with `...`, and control characters escaped (`\n`, `\u{1b}`), so a message never
/// echoes a huge token or raw control bytes to a terminal.
pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

/// See [`quote`].
#[derive(Clone, Copy, Debug)]
pub struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(QUOTE_MAX) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if chars.next().is_some() {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
