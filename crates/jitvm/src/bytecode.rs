//! The opcode table and the unverified module.
//!
//! [`Opcode`] and everything about it (text name, byte, operand kind, stack effect, control
//! flow) come from ONE table, expanded by a macro; the text parser and printer, the binary
//! encoder and decoder, the verifier and the listing all read it. An instruction is its opcode
//! byte followed by its operand, little-endian, of the size its [`OperandKind`] says.
//!
//! A [`Module`] is what the text parser and the binary decoder produce: function headers and raw
//! code bytes, not checked. Only [`crate::verify::verify`] turns it into a
//! [`crate::program::Program`].

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

/// The kind (and size in the bytecode) of an instruction's operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperandKind {
    /// No operand.
    None,
    /// A signed 64-bit constant, 8 bytes.
    Imm64,
    /// A local index, u16 (2 bytes).
    Local,
    /// A jump target: byte offset in the function, u32 (4 bytes).
    Target,
    /// A callee: function index in the module, u32 (4 bytes).
    Func,
}

impl OperandKind {
    /// Bytes the operand takes after the opcode byte.
    pub const fn size(self) -> usize {
        match self {
            OperandKind::None => 0,
            OperandKind::Imm64 => 8,
            OperandKind::Local => 2,
            OperandKind::Target | OperandKind::Func => 4,
        }
    }
}

/// What an instruction does to control flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Continues with the next instruction.
    Next,
    /// Continues with the next instruction or jumps (`jump_if_false`).
    Branch,
    /// Always jumps (`jump`).
    Jump,
    /// Leaves the function or the program (`return`, `return_nil`, `halt`).
    Exit,
}

/// A decoded operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// No operand.
    None,
    /// A constant.
    Imm(i64),
    /// A local index.
    Local(u16),
    /// A jump target (byte offset in the function).
    Target(u32),
    /// A callee (function index).
    Func(u32),
}

macro_rules! opcode_table {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $byte:literal, $name:literal, $operand:ident,
            pops $pops:literal, pushes $pushes:literal, $flow:ident;
    )*) => {
        /// An opcode of the bytecode (the byte is its discriminant).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $( $(#[doc = $doc])* $variant = $byte, )*
        }

        impl Opcode {
            /// Every opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$variant),*];

            /// The opcode with this byte.
            pub const fn from_byte(byte: u8) -> Option<Opcode> {
                match byte {
                    $( $byte => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            /// The opcode with this text name.
            pub fn from_name(name: &str) -> Option<Opcode> {
                match name {
                    $( $name => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            /// The byte in the binary bytecode.
            pub const fn byte(self) -> u8 {
                self as u8
            }

            /// The name in the text format.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Opcode::$variant => $name, )*
                }
            }

            /// The operand that follows the opcode byte.
            pub const fn operand(self) -> OperandKind {
                match self {
                    $( Opcode::$variant => OperandKind::$operand, )*
                }
            }

            /// Values popped from the operand stack (for `call`, plus the callee's arguments).
            pub const fn pops(self) -> u32 {
                match self {
                    $( Opcode::$variant => $pops, )*
                }
            }

            /// Values pushed on the operand stack.
            pub const fn pushes(self) -> u32 {
                match self {
                    $( Opcode::$variant => $pushes, )*
                }
            }

            /// Effect on control flow.
            pub const fn flow(self) -> Flow {
                match self {
                    $( Opcode::$variant => Flow::$flow, )*
                }
            }

            /// Size of the whole instruction in bytes (opcode and operand).
            pub const fn size(self) -> usize {
                1 + self.operand().size()
            }
        }
    };
}

opcode_table! {
    /// `load_imm I64`: push the constant.
    LoadImm = 0x01, "load_imm", Imm64, pops 0, pushes 1, Next;
    /// `load_local N`: push local N.
    LoadLocal = 0x02, "load_local", Local, pops 0, pushes 1, Next;
    /// `store_local N`: pop into local N.
    StoreLocal = 0x03, "store_local", Local, pops 1, pushes 0, Next;
    /// `load_local_0`: push local 0.
    LoadLocal0 = 0x04, "load_local_0", None, pops 0, pushes 1, Next;
    /// `load_local_1`: push local 1.
    LoadLocal1 = 0x05, "load_local_1", None, pops 0, pushes 1, Next;
    /// `add_ii`: a + b, wrapping.
    Add = 0x10, "add_ii", None, pops 2, pushes 1, Next;
    /// `sub_ii`: a - b, wrapping.
    Sub = 0x11, "sub_ii", None, pops 2, pushes 1, Next;
    /// `mul_ii`: a * b, wrapping.
    Mul = 0x12, "mul_ii", None, pops 2, pushes 1, Next;
    /// `div_ii`: a / b toward zero; traps on b == 0 and `i64::MIN / -1`.
    Div = 0x13, "div_ii", None, pops 2, pushes 1, Next;
    /// `mod_ii`: a % b (sign of a); traps on b == 0; `i64::MIN % -1` is 0.
    Mod = 0x14, "mod_ii", None, pops 2, pushes 1, Next;
    /// `neg_i`: -a, wrapping.
    Neg = 0x15, "neg_i", None, pops 1, pushes 1, Next;
    /// `lt_ii`: 1 if a < b else 0.
    Lt = 0x20, "lt_ii", None, pops 2, pushes 1, Next;
    /// `le_ii`: 1 if a <= b else 0.
    Le = 0x21, "le_ii", None, pops 2, pushes 1, Next;
    /// `gt_ii`: 1 if a > b else 0.
    Gt = 0x22, "gt_ii", None, pops 2, pushes 1, Next;
    /// `ge_ii`: 1 if a >= b else 0.
    Ge = 0x23, "ge_ii", None, pops 2, pushes 1, Next;
    /// `eq_ii`: 1 if a == b else 0.
    Eq = 0x24, "eq_ii", None, pops 2, pushes 1, Next;
    /// `ne_ii`: 1 if a != b else 0.
    Ne = 0x25, "ne_ii", None, pops 2, pushes 1, Next;
    /// `jump LABEL`.
    Jump = 0x30, "jump", Target, pops 0, pushes 0, Jump;
    /// `jump_if_false LABEL`: pop; jump if zero.
    JumpIfFalse = 0x31, "jump_if_false", Target, pops 1, pushes 0, Branch;
    /// `loop_header`: a loop entry (operand stack empty).
    LoopHeader = 0x32, "loop_header", None, pops 0, pushes 0, Next;
    /// `call NAME`: pop the callee's arguments, push its result.
    Call = 0x40, "call", Func, pops 0, pushes 1, Next;
    /// `return`: pop the result and return it.
    Return = 0x41, "return", None, pops 1, pushes 0, Exit;
    /// `return_nil`: return 0.
    ReturnNil = 0x42, "return_nil", None, pops 0, pushes 0, Exit;
    /// `pop`: drop the top value.
    Pop = 0x50, "pop", None, pops 1, pushes 0, Next;
    /// `dup`: duplicate the top value.
    Dup = 0x51, "dup", None, pops 1, pushes 2, Next;
    /// `print`: pop and print the value and a newline.
    Print = 0x52, "print", None, pops 1, pushes 0, Next;
    /// `halt`: end the program.
    Halt = 0x53, "halt", None, pops 0, pushes 0, Exit;
}

/// Why an instruction could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeInsnError {
    /// `at` is at or past the end of the code.
    End,
    /// The byte is not an opcode.
    UnknownOpcode(u8),
    /// The code ends inside the operand of this opcode.
    Truncated(Opcode),
}

/// One decoded instruction: its opcode, operand and byte length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The opcode.
    pub opcode: Opcode,
    /// The operand (matching `opcode.operand()`).
    pub operand: Operand,
    /// Bytes taken (opcode and operand).
    pub len: usize,
}

fn le_bytes<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.get(..N)?.try_into().ok()
}

/// Decodes the instruction at `code[at..]`.
pub fn decode_insn(code: &[u8], at: usize) -> Result<Decoded, DecodeInsnError> {
    let rest = code.get(at..).unwrap_or(&[]);
    let Some((&byte, operand)) = rest.split_first() else {
        return Err(DecodeInsnError::End);
    };
    let opcode = Opcode::from_byte(byte).ok_or(DecodeInsnError::UnknownOpcode(byte))?;
    let truncated = DecodeInsnError::Truncated(opcode);
    let operand = match opcode.operand() {
        OperandKind::None => Operand::None,
        OperandKind::Imm64 => Operand::Imm(i64::from_le_bytes(le_bytes(operand).ok_or(truncated)?)),
        OperandKind::Local => {
            Operand::Local(u16::from_le_bytes(le_bytes(operand).ok_or(truncated)?))
        }
        OperandKind::Target => {
            Operand::Target(u32::from_le_bytes(le_bytes(operand).ok_or(truncated)?))
        }
        OperandKind::Func => Operand::Func(u32::from_le_bytes(le_bytes(operand).ok_or(truncated)?)),
    };
    Ok(Decoded {
        opcode,
        operand,
        len: opcode.size(),
    })
}

/// Appends one instruction. An operand of the wrong kind for the opcode is written as zero
/// bytes of the right size (the text parser never builds one).
pub fn encode_insn(out: &mut Vec<u8>, opcode: Opcode, operand: Operand) {
    out.push(opcode.byte());
    match (opcode.operand(), operand) {
        (OperandKind::None, _) => {}
        (OperandKind::Imm64, Operand::Imm(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (OperandKind::Local, Operand::Local(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (OperandKind::Target, Operand::Target(v)) | (OperandKind::Func, Operand::Func(v)) => {
            out.extend_from_slice(&v.to_le_bytes())
        }
        (kind, _) => out.extend(std::iter::repeat_n(0, kind.size())),
    }
}

/// One function as parsed or decoded: header and raw code bytes, not verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawFunction {
    /// The name (an identifier).
    pub name: String,
    /// Arguments; they arrive in locals `0..args`.
    pub args: u32,
    /// Locals, arguments included.
    pub locals: u32,
    /// The bytecode.
    pub code: Vec<u8>,
}

/// An unverified module: what the parser and the binary decoder produce, what the verifier
/// takes. A `call` operand is an index into `funcs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// The functions.
    pub funcs: Vec<RawFunction>,
}

/// Whether `name` is a valid function or label name: `[A-Za-z_.$][A-Za-z0-9_.$]*`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '.' | '$'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_byte(op.byte()), Some(op));
            assert_eq!(Opcode::from_name(op.name()), Some(op));
        }
        let mut bytes: Vec<u8> = Opcode::ALL.iter().map(|o| o.byte()).collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), Opcode::ALL.len());
        assert_eq!(Opcode::from_byte(0), None);
    }

    #[test]
    fn encode_decode() {
        let cases = [
            (Opcode::LoadImm, Operand::Imm(i64::MIN)),
            (Opcode::LoadLocal, Operand::Local(65535)),
            (Opcode::Jump, Operand::Target(0x0102_0304)),
            (Opcode::Call, Operand::Func(7)),
            (Opcode::Add, Operand::None),
        ];
        for (op, operand) in cases {
            let mut code = vec![];
            encode_insn(&mut code, op, operand);
            assert_eq!(code.len(), op.size());
            let d = decode_insn(&code, 0).unwrap();
            assert_eq!((d.opcode, d.operand, d.len), (op, operand, op.size()));
            if op.size() > 1 {
                assert_eq!(
                    decode_insn(&code[..code.len() - 1], 0),
                    Err(DecodeInsnError::Truncated(op))
                );
            }
        }
        assert_eq!(
            decode_insn(&[0xff], 0),
            Err(DecodeInsnError::UnknownOpcode(0xff))
        );
    }
}
