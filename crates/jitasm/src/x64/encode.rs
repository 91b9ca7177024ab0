//! Byte-level pieces of one instruction: REX, ModRM, SIB, displacement and immediates.
//!
//! Every function here builds a whole instruction into an [`Inst`] (a small array on the
//! stack) so that the assembler appends an instruction all at once or not at all.

use super::{Mem, Reg};
use crate::{Error, Result};

/// The architectural limit on the length of one x86 instruction.
const MAX_LEN: usize = 15;

/// One encoded instruction, at most [`MAX_LEN`] bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Inst {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl Inst {
    /// Appends one byte (the forms built here are at most 12 bytes, so it always fits).
    pub(super) fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// Appends bytes.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    /// Appends an 8-bit immediate.
    pub(super) fn imm8(&mut self, v: i8) {
        self.extend(&v.to_le_bytes());
    }

    /// Appends a 32-bit immediate or displacement, little-endian.
    pub(super) fn imm32(&mut self, v: i32) {
        self.extend(&v.to_le_bytes());
    }

    /// Appends a 64-bit immediate, little-endian.
    pub(super) fn imm64(&mut self, v: i64) {
        self.extend(&v.to_le_bytes());
    }

    /// The bytes so far.
    pub(super) fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// `REX.W`: 64-bit operand size.
pub(super) const W64: bool = true;
/// No `REX.W`: the default operand size (32-bit, or 64-bit for push/pop/jmp/call).
pub(super) const W32: bool = false;

/// A REX prefix from the W bit and the high (fourth) bits of the ModRM.reg, SIB.index and
/// ModRM.rm/SIB.base/opcode register numbers. `0x40` means "no bit set".
fn rex(w: bool, reg: u8, index: u8, base: u8) -> u8 {
    0x40 | (u8::from(w) << 3) | ((reg >> 3) & 1) << 2 | ((index >> 3) & 1) << 1 | ((base >> 3) & 1)
}

fn modrm(md: u8, reg: u8, rm: u8) -> u8 {
    (md << 6) | (reg & 7) << 3 | (rm & 7)
}

/// Whether `r` as an 8-bit register needs a REX prefix to mean SPL/BPL/SIL/DIL rather than
/// AH/CH/DH/BH.
fn needs_rex_as_byte(r: u8) -> bool {
    (4..8).contains(&r)
}

/// `[REX] opcode ModRM(11, reg, rm)`: a register-direct operand. `reg` is a register number
/// or an opcode extension (`/digit`). `byte_rm` says that `rm` names an 8-bit register.
pub(super) fn rr(w: bool, byte_rm: bool, opcode: &[u8], reg: u8, rm: u8) -> Inst {
    let mut i = Inst::default();
    let rex = rex(w, reg, 0, rm);
    if rex != 0x40 || (byte_rm && needs_rex_as_byte(rm)) {
        i.push(rex);
    }
    i.extend(opcode);
    i.push(modrm(0b11, reg, rm));
    i
}

/// `[REX] (opcode + r)`: the register is in the low three bits of the opcode, its fourth bit
/// in REX.B.
pub(super) fn plus_r(w: bool, opcode: u8, r: Reg) -> Inst {
    let mut i = Inst::default();
    let n = r.number();
    let rex = rex(w, 0, 0, n);
    if rex != 0x40 {
        i.push(rex);
    }
    i.push(opcode | (n & 7));
    i
}

/// `[REX] opcode`: no operands in ModRM.
pub(super) fn plain(w: bool, opcode: &[u8]) -> Inst {
    let mut i = Inst::default();
    if w {
        i.push(rex(w, 0, 0, 0));
    }
    i.extend(opcode);
    i
}

/// `[REX] opcode ModRM [SIB] [disp8|disp32]`: a memory operand.
///
/// - RSP/R12 as a base (rm = 100) need a SIB byte (index 100 = none);
/// - RBP/R13 as a base (rm = 101 with mod 00 means RIP-relative, or no base with a SIB) need a
///   displacement, so a zero displacement becomes disp8 0;
/// - the displacement is disp8 when it fits in an `i8`, else disp32;
/// - RSP cannot be an index (index 100 means "none"): [`Error::InvalidRegister`].
pub(super) fn mem(w: bool, opcode: &[u8], reg: u8, m: Mem) -> Result<Inst> {
    let base = m.base.number();
    let (index, scale) = match m.index {
        None => (None, 0),
        Some((Reg::Rsp, _)) => {
            return Err(Error::InvalidRegister {
                what: "memory operand index (RSP cannot be an index)",
            });
        }
        Some((r, s)) => (Some(r.number()), s.bits()),
    };
    let mut i = Inst::default();
    let rex = rex(w, reg, index.unwrap_or(0), base);
    if rex != 0x40 {
        i.push(rex);
    }
    i.extend(opcode);
    let disp8 = i8::try_from(m.disp).ok();
    let md = match disp8 {
        Some(0) if base & 7 != 0b101 => 0b00,
        Some(_) => 0b01,
        None => 0b10,
    };
    if index.is_some() || base & 7 == 0b100 {
        i.push(modrm(md, reg, 0b100));
        i.push(modrm(scale, index.unwrap_or(0b100), base));
    } else {
        i.push(modrm(md, reg, base));
    }
    match (md, disp8) {
        (0b01, Some(d)) => i.imm8(d),
        (0b10, _) => i.imm32(m.disp),
        _ => {}
    }
    Ok(i)
}

/// The recommended multi-byte NOPs (Intel SDM Vol. 2B, "NOP"), by length 1..=9.
pub(super) const NOPS: [&[u8]; 9] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0F, 0x1F, 0x00],
    &[0x0F, 0x1F, 0x40, 0x00],
    &[0x0F, 0x1F, 0x44, 0x00, 0x00],
    &[0x66, 0x0F, 0x1F, 0x44, 0x00, 0x00],
    &[0x0F, 0x1F, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];
