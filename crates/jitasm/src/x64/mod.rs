//! x86-64 encoder.
//!
//! An [`Assembler`] appends hand-encoded instructions to a growable buffer. Names follow the
//! manual's operand forms: `r` a register, `m` a memory operand ([`Mem`]), `i` an immediate, in
//! operand order (`add_rm` is `add r64, r/m64` with a memory source). All operations are 64-bit
//! unless the name or the documentation says otherwise.
//!
//! Branches name [`Label`]s, which may be bound before or after use: a branch to a bound label
//! in reach takes the short (rel8) form, any other takes rel32 and is patched when the label is
//! bound. [`Assembler::finish`] fails if a used label was never bound.
//!
//! Infallible methods cannot report that the code has grown past [`MAX_CODE_SIZE`]; instead the
//! assembler stops emitting, every later fallible method returns [`Error::CodeTooLarge`], and so
//! does [`Assembler::finish`]. No partial instruction is ever written.
//!
//! ```
//! use jitasm::x64::{Assembler, Cond, Mem, Reg};
//!
//! let mut a = Assembler::new();
//! let top = a.new_label();
//! a.bind(top)?;
//! a.add_rm(Reg::Rax, Mem::indexed(Reg::Rdi, Reg::Rcx, jitasm::x64::Scale::S8, 0))?;
//! a.sub_ri(Reg::Rcx, 1);
//! a.jcc(Cond::Ne, top)?;
//! a.ret();
//! assert_eq!(
//!     a.finish()?,
//!     [0x48, 0x03, 0x04, 0xCF, 0x48, 0x83, 0xE9, 0x01, 0x75, 0xF6, 0xC3]
//! );
//! # Ok::<(), jitasm::Error>(())
//! ```

mod encode;
#[cfg(test)]
mod tests;

use crate::buffer::{CodeBuffer, FixupKind, displacement};
use crate::{Error, Label, Result};
use encode::{Inst, W32, W64};

/// The largest code buffer an [`Assembler`] produces, in bytes (just under 2 GiB, so that every
/// rel32 branch within the buffer is in range).
pub use crate::buffer::MAX_CODE_SIZE;

/// A 64-bit general-purpose register, numbered as in the instruction encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Reg {
    /// RAX (0), accumulator; return value; implicit in `cqo`/`idiv`.
    Rax,
    /// RCX (1).
    Rcx,
    /// RDX (2); implicit in `cqo`/`idiv`.
    Rdx,
    /// RBX (3).
    Rbx,
    /// RSP (4), the stack pointer. As a base it needs a SIB byte; it cannot be an index.
    Rsp,
    /// RBP (5). As a base it needs a displacement (disp8 0 when zero).
    Rbp,
    /// RSI (6).
    Rsi,
    /// RDI (7).
    Rdi,
    /// R8 (8).
    R8,
    /// R9 (9).
    R9,
    /// R10 (10).
    R10,
    /// R11 (11).
    R11,
    /// R12 (12). As a base it needs a SIB byte, like RSP (it can be an index).
    R12,
    /// R13 (13). As a base it needs a displacement, like RBP.
    R13,
    /// R14 (14).
    R14,
    /// R15 (15).
    R15,
}

impl Reg {
    /// All sixteen registers, in encoding order.
    pub const ALL: [Reg; 16] = [
        Reg::Rax,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rbx,
        Reg::Rsp,
        Reg::Rbp,
        Reg::Rsi,
        Reg::Rdi,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
    ];

    /// The register's encoding number, 0..=15 (the fourth bit goes in a REX prefix).
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The register numbered `n` (0..=15), or `None`.
    pub fn from_number(n: u8) -> Option<Reg> {
        Reg::ALL.get(usize::from(n)).copied()
    }
}

/// The scale of an index register in a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scale {
    /// index * 1
    S1,
    /// index * 2
    S2,
    /// index * 4
    S4,
    /// index * 8
    S8,
}

impl Scale {
    /// All four scales.
    pub const ALL: [Scale; 4] = [Scale::S1, Scale::S2, Scale::S4, Scale::S8];

    /// The factor: 1, 2, 4 or 8.
    pub fn factor(self) -> u8 {
        1 << self.bits()
    }

    /// The SIB.scale field.
    fn bits(self) -> u8 {
        match self {
            Scale::S1 => 0,
            Scale::S2 => 1,
            Scale::S4 => 2,
            Scale::S8 => 3,
        }
    }
}

/// A memory operand `[base + index * scale + disp]`.
///
/// Any register can be the base. RSP cannot be an index: methods given such an operand return
/// [`Error::InvalidRegister`] and emit nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mem {
    base: Reg,
    index: Option<(Reg, Scale)>,
    disp: i32,
}

impl Mem {
    /// `[base + disp]`.
    pub fn base(base: Reg, disp: i32) -> Mem {
        Mem {
            base,
            index: None,
            disp,
        }
    }

    /// `[base + index * scale + disp]`. An index of RSP is not encodable (reported when used).
    pub fn indexed(base: Reg, index: Reg, scale: Scale, disp: i32) -> Mem {
        Mem {
            base,
            index: Some((index, scale)),
            disp,
        }
    }

    /// The base register.
    pub fn base_reg(self) -> Reg {
        self.base
    }

    /// The index register and its scale, if any.
    pub fn index(self) -> Option<(Reg, Scale)> {
        self.index
    }

    /// The displacement.
    pub fn disp(self) -> i32 {
        self.disp
    }

    /// The same operand with `delta` added to the displacement, or `None` on overflow.
    pub fn offset(self, delta: i32) -> Option<Mem> {
        Some(Mem {
            disp: self.disp.checked_add(delta)?,
            ..self
        })
    }
}

/// A condition code (the low nibble of `Jcc`/`SETcc`/`CMOVcc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cond {
    /// Overflow (OF=1).
    O,
    /// No overflow (OF=0).
    No,
    /// Below, unsigned < (CF=1).
    B,
    /// Above or equal, unsigned >= (CF=0).
    Ae,
    /// Equal / zero (ZF=1).
    E,
    /// Not equal / not zero (ZF=0).
    Ne,
    /// Below or equal, unsigned <= (CF=1 or ZF=1).
    Be,
    /// Above, unsigned > (CF=0 and ZF=0).
    A,
    /// Sign (SF=1).
    S,
    /// No sign (SF=0).
    Ns,
    /// Parity even (PF=1).
    P,
    /// Parity odd (PF=0).
    Np,
    /// Less, signed < (SF!=OF).
    L,
    /// Greater or equal, signed >= (SF=OF).
    Ge,
    /// Less or equal, signed <= (ZF=1 or SF!=OF).
    Le,
    /// Greater, signed > (ZF=0 and SF=OF).
    G,
}

impl Cond {
    /// All sixteen conditions, in encoding order.
    pub const ALL: [Cond; 16] = [
        Cond::O,
        Cond::No,
        Cond::B,
        Cond::Ae,
        Cond::E,
        Cond::Ne,
        Cond::Be,
        Cond::A,
        Cond::S,
        Cond::Ns,
        Cond::P,
        Cond::Np,
        Cond::L,
        Cond::Ge,
        Cond::Le,
        Cond::G,
    ];

    /// The condition's encoding, 0..=15.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The opposite condition (true exactly when `self` is false).
    ///
    /// ```
    /// use jitasm::x64::Cond;
    /// assert_eq!(Cond::L.invert(), Cond::Ge);
    /// assert_eq!(Cond::Ne.invert(), Cond::E);
    /// ```
    pub fn invert(self) -> Cond {
        // Conditions come in pairs that differ in the lowest bit.
        Cond::ALL[usize::from(self.code() ^ 1) & 15]
    }
}

/// The x86-64 label-relative fields: a signed displacement from the end of the field (which
/// ends the instruction, for every branch here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// An 8-bit displacement (`EB`, `70+cc`).
    Rel8,
    /// A 32-bit displacement (`E9`, `0F 80+cc`, `E8`). It reaches anywhere in code of at most
    /// [`MAX_CODE_SIZE`] bytes, so binding a label never fails with
    /// [`Error::BranchOutOfRange`] here.
    Rel32,
}

impl FixupKind for Fixup {
    fn width(self) -> usize {
        match self {
            Fixup::Rel8 => 1,
            Fixup::Rel32 => 4,
        }
    }

    fn patch(self, field: &mut [u8], at: usize, target: usize) -> Result<()> {
        let (fits, range): (fn(i64) -> bool, usize) = match self {
            Fixup::Rel8 => (|d| i8::try_from(d).is_ok(), 128),
            Fixup::Rel32 => (|d| i32::try_from(d).is_ok(), MAX_CODE_SIZE),
        };
        let d = displacement(at + self.width(), target).filter(|&d| fits(d));
        // The low bytes of the two's complement displacement, little-endian.
        match d.map(i64::to_le_bytes) {
            Some(le) if field.len() == self.width() => {
                field.copy_from_slice(&le[..field.len()]);
                Ok(())
            }
            _ => Err(Error::BranchOutOfRange { at, target, range }),
        }
    }
}

/// An x86-64 code buffer with labels. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Assembler {
    buf: CodeBuffer<Fixup>,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new()
    }
}

/// The arithmetic operations that share the `00..3F` / `80 /digit` / `81 /digit` encodings;
/// the value is the `/digit`.
#[derive(Clone, Copy)]
enum Alu {
    Add = 0,
    Or = 1,
    And = 4,
    Sub = 5,
    Xor = 6,
    Cmp = 7,
}

/// Generates the five forms of one arithmetic operation.
macro_rules! alu_forms {
    ($op:expr, $name:literal, $rr:ident, $ri:ident, $rm:ident, $mr:ident, $mi:ident) => {
        #[doc = concat!("`", $name, " dst, src` (64-bit registers).")]
        pub fn $rr(&mut self, dst: Reg, src: Reg) {
            self.alu_rr($op, dst, src);
        }

        #[doc = concat!(
            "`", $name, " dst, imm` (sign-extended to 64 bits): the imm8 form when `imm` fits in ",
            "an `i8`, else the short RAX form or the imm32 form."
        )]
        pub fn $ri(&mut self, dst: Reg, imm: i32) {
            self.alu_ri($op, dst, imm);
        }

        #[doc = concat!("`", $name, " dst, qword [m]`.")]
        ///
        /// # Errors
        ///
        /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
        pub fn $rm(&mut self, dst: Reg, m: Mem) -> Result<()> {
            self.alu_rm($op, dst, m)
        }

        #[doc = concat!("`", $name, " qword [m], src`.")]
        ///
        /// # Errors
        ///
        /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
        pub fn $mr(&mut self, m: Mem, src: Reg) -> Result<()> {
            self.alu_mr($op, m, src)
        }

        #[doc = concat!(
            "`", $name, " qword [m], imm` (sign-extended): imm8 form when `imm` fits in an ",
            "`i8`, else imm32."
        )]
        ///
        /// # Errors
        ///
        /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
        pub fn $mi(&mut self, m: Mem, imm: i32) -> Result<()> {
            self.alu_mi($op, m, imm)
        }
    };
}

impl Assembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty assembler whose buffer has room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Assembler {
            buf: CodeBuffer::with_capacity(bytes),
        }
    }

    /// An assembler with a smaller size limit, to test [`Error::CodeTooLarge`].
    #[cfg(test)]
    fn with_limit(limit: usize) -> Self {
        Assembler {
            buf: CodeBuffer::with_limit(limit),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Buffer and labels: `offset`, `bytes`, `new_label`, `bind`, `label_offset` and `finish`
    // come with the shared CodeBuffer (`impl_encoder!` at the end of this file).

    /// Appends one whole instruction, unless it would make the code too large. Returns whether
    /// it was appended.
    fn emit(&mut self, inst: Inst) -> bool {
        self.buf.emit(inst.bytes())
    }

    /// [`emit`](Self::emit) for fallible methods.
    fn put(&mut self, inst: Inst) -> Result<()> {
        self.buf.put(inst.bytes())
    }

    /// A branch to `l`: `short` (an opcode taking rel8) when given and the label is bound and
    /// in reach, else `long` followed by rel32.
    fn branch(&mut self, short: Option<u8>, long: &[u8], l: Label) -> Result<()> {
        if let (Some(op), Some(_)) = (short, self.buf.label_offset(l)) {
            match self.buf.emit_branch(&[op, 0], 1, Fixup::Rel8, l) {
                // Too far for rel8: the rel32 form below.
                Err(Error::BranchOutOfRange { .. }) => {}
                done => return done,
            }
        }
        let mut inst = Inst::default();
        inst.extend(long);
        inst.imm32(0);
        self.buf
            .emit_branch(inst.bytes(), long.len(), Fixup::Rel32, l)
    }

    /// `jmp l`: `EB rel8` when `l` is bound and within reach, else `E9 rel32`.
    ///
    /// ```
    /// use jitasm::x64::Assembler;
    /// let mut a = Assembler::new();
    /// let back = a.new_label();
    /// let fwd = a.new_label();
    /// a.bind(back)?;
    /// a.jmp(back)?; // bound: short form
    /// a.jmp(fwd)?; // not bound yet: rel32, patched by bind
    /// a.bind(fwd)?;
    /// assert_eq!(a.finish()?, [0xEB, 0xFE, 0xE9, 0x00, 0x00, 0x00, 0x00]);
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnknownLabel`], [`Error::CodeTooLarge`].
    pub fn jmp(&mut self, l: Label) -> Result<()> {
        self.branch(Some(0xEB), &[0xE9], l)
    }

    /// `jcc l`: `70+cc rel8` when `l` is bound and within reach, else `0F 80+cc rel32`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownLabel`], [`Error::CodeTooLarge`].
    pub fn jcc(&mut self, c: Cond, l: Label) -> Result<()> {
        self.branch(Some(0x70 | c.code()), &[0x0F, 0x80 | c.code()], l)
    }

    /// `call l` (`E8 rel32`).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownLabel`], [`Error::CodeTooLarge`].
    pub fn call_label(&mut self, l: Label) -> Result<()> {
        self.branch(None, &[0xE8], l)
    }

    // ---------------------------------------------------------------------------------------
    // Encoding helpers.

    /// A register-direct form, `[REX] opcode ModRM(11, reg, rm)`.
    fn rr(&mut self, w: bool, opcode: &[u8], reg: u8, rm: Reg) {
        self.emit(encode::rr(w, false, opcode, reg, rm.number()));
    }

    /// A memory form, `[REX] opcode ModRM [SIB] [disp]`, then `imm` bytes.
    fn rm(&mut self, w: bool, opcode: &[u8], reg: u8, m: Mem, imm: Imm) -> Result<()> {
        self.buf.check_size()?;
        let mut inst = encode::mem(w, opcode, reg, m)?;
        imm.append(&mut inst);
        self.put(inst)
    }

    // ---------------------------------------------------------------------------------------
    // Moves.

    /// `push r` (`50+r`).
    pub fn push(&mut self, r: Reg) {
        self.emit(encode::plus_r(W32, 0x50, r));
    }

    /// `pop r` (`58+r`).
    pub fn pop(&mut self, r: Reg) {
        self.emit(encode::plus_r(W32, 0x58, r));
    }

    /// `mov dst, src` (`REX.W 89 /r`).
    pub fn mov_rr(&mut self, dst: Reg, src: Reg) {
        self.rr(W64, &[0x89], src.number(), dst);
    }

    /// `mov dst, imm` in the shortest form that leaves the flags alone:
    /// `mov r32, imm32` (`B8+r`, zero-extends) when `0 <= imm <= u32::MAX`,
    /// `REX.W C7 /0 imm32` (sign-extends) when `imm` fits in an `i32`, else
    /// `movabs` (`REX.W B8+r imm64`).
    ///
    /// ```
    /// use jitasm::x64::{Assembler, Reg};
    /// let mut a = Assembler::new();
    /// a.mov_ri(Reg::R9, 1);
    /// a.mov_ri(Reg::Rax, -1);
    /// a.mov_ri(Reg::Rcx, 1 << 32);
    /// assert_eq!(
    ///     a.bytes(),
    ///     [
    ///         0x41, 0xB9, 1, 0, 0, 0, // mov r9d, 1
    ///         0x48, 0xC7, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF, // mov rax, -1
    ///         0x48, 0xB9, 0, 0, 0, 0, 1, 0, 0, 0, // movabs rcx, 1 << 32
    ///     ]
    /// );
    /// ```
    pub fn mov_ri(&mut self, dst: Reg, imm: i64) {
        if let Ok(imm) = u32::try_from(imm) {
            let mut inst = encode::plus_r(W32, 0xB8, dst);
            inst.extend(&imm.to_le_bytes());
            self.emit(inst);
        } else if let Ok(imm) = i32::try_from(imm) {
            self.mov_ri32(dst, imm);
        } else {
            self.mov_ri64(dst, imm);
        }
    }

    /// `mov dst, imm` with `imm` sign-extended to 64 bits (always `REX.W C7 /0 imm32`).
    pub fn mov_ri32(&mut self, dst: Reg, imm: i32) {
        let mut inst = encode::rr(W64, false, &[0xC7], 0, dst.number());
        inst.imm32(imm);
        self.emit(inst);
    }

    /// `movabs dst, imm` (always `REX.W B8+r imm64`, 10 bytes; the form to patch later).
    pub fn mov_ri64(&mut self, dst: Reg, imm: i64) {
        let mut inst = encode::plus_r(W64, 0xB8, dst);
        inst.imm64(imm);
        self.emit(inst);
    }

    /// `mov dst, qword [m]` (`REX.W 8B /r`).
    ///
    /// ```
    /// use jitasm::x64::{Assembler, Mem, Reg};
    /// let mut a = Assembler::new();
    /// a.mov_rm(Reg::Rax, Mem::base(Reg::R12, 0))?; // R12 base: SIB byte
    /// a.mov_rm(Reg::R8, Mem::base(Reg::R13, 0))?; // R13 base: disp8 0
    /// assert_eq!(a.bytes(), [0x49, 0x8B, 0x04, 0x24, 0x4D, 0x8B, 0x45, 0x00]);
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn mov_rm(&mut self, dst: Reg, m: Mem) -> Result<()> {
        self.rm(W64, &[0x8B], dst.number(), m, Imm::None)
    }

    /// `mov qword [m], src` (`REX.W 89 /r`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn mov_mr(&mut self, m: Mem, src: Reg) -> Result<()> {
        self.rm(W64, &[0x89], src.number(), m, Imm::None)
    }

    /// `mov qword [m], imm` with `imm` sign-extended (`REX.W C7 /0 imm32`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn mov_mi(&mut self, m: Mem, imm: i32) -> Result<()> {
        self.rm(W64, &[0xC7], 0, m, Imm::I32(imm))
    }

    /// `lea dst, [m]` (`REX.W 8D /r`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn lea(&mut self, dst: Reg, m: Mem) -> Result<()> {
        self.rm(W64, &[0x8D], dst.number(), m, Imm::None)
    }

    /// `movzx dst32, src8`: zero-extends the low byte of `src` into all of `dst`
    /// (`0F B6 /r`; a REX prefix makes `src` SPL/BPL/SIL/DIL rather than AH/CH/DH/BH).
    pub fn movzx_r8(&mut self, dst: Reg, src: Reg) {
        self.emit(encode::rr(
            W32,
            true,
            &[0x0F, 0xB6],
            dst.number(),
            src.number(),
        ));
    }

    /// `cmovcc dst, src` (`REX.W 0F 40+cc /r`).
    pub fn cmovcc(&mut self, c: Cond, dst: Reg, src: Reg) {
        self.rr(W64, &[0x0F, 0x40 | c.code()], dst.number(), src);
    }

    /// `setcc dst8` (`0F 90+cc /0`): sets the low byte of `dst` to 0 or 1 and leaves the rest.
    /// A REX prefix (`40`) selects SPL/BPL/SIL/DIL, `41` R8B-R15B.
    ///
    /// ```
    /// use jitasm::x64::{Assembler, Cond, Reg};
    /// let mut a = Assembler::new();
    /// a.setcc(Cond::E, Reg::Rax); // sete al
    /// a.setcc(Cond::L, Reg::Rsi); // setl sil
    /// a.setcc(Cond::G, Reg::R9); // setg r9b
    /// assert_eq!(
    ///     a.bytes(),
    ///     [0x0F, 0x94, 0xC0, 0x40, 0x0F, 0x9C, 0xC6, 0x41, 0x0F, 0x9F, 0xC1]
    /// );
    /// ```
    pub fn setcc(&mut self, c: Cond, dst: Reg) {
        self.emit(encode::rr(
            W32,
            true,
            &[0x0F, 0x90 | c.code()],
            0,
            dst.number(),
        ));
    }

    // ---------------------------------------------------------------------------------------
    // Arithmetic.

    fn alu_rr(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.rr(W64, &[(op as u8) << 3 | 0x01], src.number(), dst);
    }

    fn alu_ri(&mut self, op: Alu, dst: Reg, imm: i32) {
        let digit = op as u8;
        let inst = if let Ok(imm8) = i8::try_from(imm) {
            let mut inst = encode::rr(W64, false, &[0x83], digit, dst.number());
            inst.imm8(imm8);
            inst
        } else if dst == Reg::Rax {
            let mut inst = encode::plain(W64, &[digit << 3 | 0x05]);
            inst.imm32(imm);
            inst
        } else {
            let mut inst = encode::rr(W64, false, &[0x81], digit, dst.number());
            inst.imm32(imm);
            inst
        };
        self.emit(inst);
    }

    fn alu_rm(&mut self, op: Alu, dst: Reg, m: Mem) -> Result<()> {
        self.rm(W64, &[(op as u8) << 3 | 0x03], dst.number(), m, Imm::None)
    }

    fn alu_mr(&mut self, op: Alu, m: Mem, src: Reg) -> Result<()> {
        self.rm(W64, &[(op as u8) << 3 | 0x01], src.number(), m, Imm::None)
    }

    fn alu_mi(&mut self, op: Alu, m: Mem, imm: i32) -> Result<()> {
        match i8::try_from(imm) {
            Ok(imm8) => self.rm(W64, &[0x83], op as u8, m, Imm::I8(imm8)),
            Err(_) => self.rm(W64, &[0x81], op as u8, m, Imm::I32(imm)),
        }
    }

    alu_forms!(Alu::Add, "add", add_rr, add_ri, add_rm, add_mr, add_mi);
    alu_forms!(Alu::Sub, "sub", sub_rr, sub_ri, sub_rm, sub_mr, sub_mi);
    alu_forms!(Alu::And, "and", and_rr, and_ri, and_rm, and_mr, and_mi);
    alu_forms!(Alu::Or, "or", or_rr, or_ri, or_rm, or_mr, or_mi);
    alu_forms!(Alu::Xor, "xor", xor_rr, xor_ri, xor_rm, xor_mr, xor_mi);
    alu_forms!(Alu::Cmp, "cmp", cmp_rr, cmp_ri, cmp_rm, cmp_mr, cmp_mi);

    /// `test a, b` (`REX.W 85 /r`).
    pub fn test_rr(&mut self, a: Reg, b: Reg) {
        self.rr(W64, &[0x85], b.number(), a);
    }

    /// `test a, imm` with `imm` sign-extended (`REX.W F7 /0 imm32`, or `REX.W A9 imm32` for
    /// RAX; there is no imm8 form).
    pub fn test_ri(&mut self, a: Reg, imm: i32) {
        let mut inst = if a == Reg::Rax {
            encode::plain(W64, &[0xA9])
        } else {
            encode::rr(W64, false, &[0xF7], 0, a.number())
        };
        inst.imm32(imm);
        self.emit(inst);
    }

    /// `xor r32, r32`: sets `r` to zero (clobbers the flags; see [`mov_ri`](Self::mov_ri) for
    /// a flag-preserving form).
    pub fn zero(&mut self, r: Reg) {
        self.emit(encode::rr(W32, false, &[0x31], r.number(), r.number()));
    }

    /// `imul dst, src` (`REX.W 0F AF /r`), the low 64 bits of the product.
    pub fn imul_rr(&mut self, dst: Reg, src: Reg) {
        self.rr(W64, &[0x0F, 0xAF], dst.number(), src);
    }

    /// `imul dst, src, imm` (`REX.W 6B /r ib` when `imm` fits in an `i8`, else
    /// `REX.W 69 /r id`).
    pub fn imul_rri(&mut self, dst: Reg, src: Reg, imm: i32) {
        let inst = match i8::try_from(imm) {
            Ok(imm8) => {
                let mut inst = encode::rr(W64, false, &[0x6B], dst.number(), src.number());
                inst.imm8(imm8);
                inst
            }
            Err(_) => {
                let mut inst = encode::rr(W64, false, &[0x69], dst.number(), src.number());
                inst.imm32(imm);
                inst
            }
        };
        self.emit(inst);
    }

    /// `imul dst, qword [m]` (`REX.W 0F AF /r`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn imul_rm(&mut self, dst: Reg, m: Mem) -> Result<()> {
        self.rm(W64, &[0x0F, 0xAF], dst.number(), m, Imm::None)
    }

    /// `cqo` (`REX.W 99`): sign-extends RAX into RDX:RAX.
    pub fn cqo(&mut self) {
        self.emit(encode::plain(W64, &[0x99]));
    }

    /// `idiv src` (`REX.W F7 /7`): signed RDX:RAX / src, quotient in RAX, remainder in RDX.
    pub fn idiv_r(&mut self, src: Reg) {
        self.rr(W64, &[0xF7], 7, src);
    }

    /// `imul src`, the one-operand form (`REX.W F7 /5`): the signed 128-bit product RAX * src in
    /// RDX:RAX (RDX is the high half: division by a constant multiplies by its reciprocal).
    pub fn imul_wide_r(&mut self, src: Reg) {
        self.rr(W64, &[0xF7], 5, src);
    }

    /// `idiv qword [m]` (`REX.W F7 /7`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn idiv_m(&mut self, m: Mem) -> Result<()> {
        self.rm(W64, &[0xF7], 7, m, Imm::None)
    }

    /// `neg r` (`REX.W F7 /3`).
    pub fn neg_r(&mut self, r: Reg) {
        self.rr(W64, &[0xF7], 3, r);
    }

    /// `not r` (`REX.W F7 /2`).
    pub fn not_r(&mut self, r: Reg) {
        self.rr(W64, &[0xF7], 2, r);
    }

    /// A shift by an immediate: `D1 /digit` by one, else `C1 /digit ib`. The count is taken
    /// modulo 64, as the processor does.
    fn shift_ri(&mut self, digit: u8, r: Reg, n: u8) {
        let n = n & 63;
        let inst = if n == 1 {
            encode::rr(W64, false, &[0xD1], digit, r.number())
        } else {
            let mut inst = encode::rr(W64, false, &[0xC1], digit, r.number());
            inst.push(n);
            inst
        };
        self.emit(inst);
    }

    /// `shl r, n` (`REX.W D1 /4` when `n` is 1, else `REX.W C1 /4 ib`); `n` is taken modulo 64.
    pub fn shl_ri(&mut self, r: Reg, n: u8) {
        self.shift_ri(4, r, n);
    }

    /// `shr r, n` (logical; `REX.W D1 /5` or `REX.W C1 /5 ib`); `n` is taken modulo 64.
    pub fn shr_ri(&mut self, r: Reg, n: u8) {
        self.shift_ri(5, r, n);
    }

    /// `sar r, n` (arithmetic; `REX.W D1 /7` or `REX.W C1 /7 ib`); `n` is taken modulo 64.
    pub fn sar_ri(&mut self, r: Reg, n: u8) {
        self.shift_ri(7, r, n);
    }

    /// `shl r, cl` (`REX.W D3 /4`): shift by CL modulo 64.
    pub fn shl_r_cl(&mut self, r: Reg) {
        self.rr(W64, &[0xD3], 4, r);
    }

    /// `shr r, cl` (`REX.W D3 /5`): logical shift by CL modulo 64.
    pub fn shr_r_cl(&mut self, r: Reg) {
        self.rr(W64, &[0xD3], 5, r);
    }

    /// `sar r, cl` (`REX.W D3 /7`): arithmetic shift by CL modulo 64.
    pub fn sar_r_cl(&mut self, r: Reg) {
        self.rr(W64, &[0xD3], 7, r);
    }

    // ---------------------------------------------------------------------------------------
    // Control flow.

    /// `jmp r` (`FF /4`).
    pub fn jmp_r(&mut self, r: Reg) {
        self.rr(W32, &[0xFF], 4, r);
    }

    /// `jmp qword [m]` (`FF /4`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn jmp_m(&mut self, m: Mem) -> Result<()> {
        self.rm(W32, &[0xFF], 4, m, Imm::None)
    }

    /// `call rel32` (`E8 rel32`) to the address `disp` bytes from the end of this 5-byte
    /// instruction: a direct call to code outside the buffer, whose displacement the caller
    /// knows (or patches in later).
    ///
    /// ```
    /// let mut a = jitasm::x64::Assembler::new();
    /// a.call_rel32(-5);
    /// assert_eq!(a.finish()?, [0xE8, 0xFB, 0xFF, 0xFF, 0xFF]);
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn call_rel32(&mut self, disp: i32) {
        let mut bytes = [0xE8, 0, 0, 0, 0];
        bytes[1..].copy_from_slice(&disp.to_le_bytes());
        self.emit(encode::plain(W32, &bytes));
    }

    /// `call r` (`FF /2`).
    pub fn call_r(&mut self, r: Reg) {
        self.rr(W32, &[0xFF], 2, r);
    }

    /// `call qword [m]` (`FF /2`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegister`] if the index is RSP; [`Error::CodeTooLarge`].
    pub fn call_m(&mut self, m: Mem) -> Result<()> {
        self.rm(W32, &[0xFF], 2, m, Imm::None)
    }

    /// `ret` (`C3`).
    pub fn ret(&mut self) {
        self.emit(encode::plain(W32, &[0xC3]));
    }

    /// `nop` (`90`).
    pub fn nop(&mut self) {
        self.emit(encode::plain(W32, &[0x90]));
    }

    /// `int3` (`CC`), a breakpoint trap.
    pub fn int3(&mut self) {
        self.emit(encode::plain(W32, &[0xCC]));
    }

    /// `ud2` (`0F 0B`), an invalid-opcode trap.
    pub fn ud2(&mut self) {
        self.emit(encode::plain(W32, &[0x0F, 0x0B]));
    }

    /// Pads with the recommended multi-byte NOPs (at most 9 bytes each) until the offset is a
    /// multiple of `n` (meant to be a power of two; any other `n` > 0 works too, and 0 or 1 do
    /// nothing).
    ///
    /// ```
    /// use jitasm::x64::Assembler;
    /// let mut a = Assembler::new();
    /// a.ret();
    /// a.align(4);
    /// assert_eq!(a.bytes(), [0xC3, 0x0F, 0x1F, 0x00]); // ret; nop dword [rax]
    /// ```
    pub fn align(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let mut pad = (n - self.offset() % n) % n;
        if !self.buf.ensure_room(pad) {
            return;
        }
        while pad > 0 {
            let len = pad.min(encode::NOPS.len());
            let mut inst = Inst::default();
            inst.extend(encode::NOPS.get(len - 1).copied().unwrap_or(&[0x90]));
            if !self.emit(inst) {
                return;
            }
            pad -= len;
        }
    }
}

/// An immediate that follows a memory operand.
#[derive(Clone, Copy)]
enum Imm {
    None,
    I8(i8),
    I32(i32),
}

impl Imm {
    fn append(self, inst: &mut Inst) {
        match self {
            Imm::None => {}
            Imm::I8(v) => inst.imm8(v),
            Imm::I32(v) => inst.imm32(v),
        }
    }
}

crate::buffer::impl_encoder!(Assembler, Fixup);
