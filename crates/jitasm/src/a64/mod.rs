//! AArch64 encoder: fixed 32-bit little-endian instruction words, labels and fixups.
//!
//! Every data-processing form is the 64-bit (X register) variant. Each method documents what
//! register number 31 means for each of its operands: either the zero register ([`XZR`]) or the
//! stack pointer ([`SP`]). The two are distinct [`Reg`] values here, and passing the one the form
//! cannot encode is [`Error::InvalidRegister`], never a silent reinterpretation.
//!
//! Branches may name a [`Label`] before it is bound; the offset is patched when the label is
//! bound. A target beyond the form's reach is [`Error::BranchOutOfRange`]: reported by the branch
//! itself when the label is already bound (and nothing is emitted), otherwise by
//! [`Assembler::bind`] and again by [`Assembler::finish`].
//!
//! Labels, fix-ups and the 2 GiB size limit are the shared [`CodeBuffer`]'s: past the limit
//! nothing more is appended, label-relative methods return [`Error::CodeTooLarge`] and so does
//! [`Assembler::finish`].
//!
//! ```
//! use jitasm::a64::{Assembler, X0, X1};
//! let mut a = Assembler::new();
//! a.add_ri(X0, X1, 16)?;
//! a.ret();
//! assert_eq!(a.finish()?, [0x20, 0x40, 0x00, 0x91, 0xc0, 0x03, 0x5f, 0xd6]);
//! # Ok::<(), jitasm::Error>(())
//! ```

use crate::buffer::{CodeBuffer, FixupKind, displacement};
use crate::{Error, Label, Result};
use core::fmt;

#[cfg(test)]
mod tests;

/// A 64-bit general register: `X0`..`X30`, the zero register [`XZR`] or the stack pointer [`SP`].
///
/// [`XZR`] and [`SP`] share the encoding 31; which one an operand means depends on the
/// instruction form, and each method says which it accepts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg(u8);

/// Internal value of [`SP`] (distinct from [`XZR`], which is 31).
const SP_VALUE: u8 = 32;

impl Reg {
    /// `Xn` for `n` in `0..=30`; `None` otherwise (use [`XZR`] or [`SP`] for register 31).
    pub const fn x(n: u8) -> Option<Reg> {
        if n <= 30 { Some(Reg(n)) } else { None }
    }

    /// The 5-bit register number used in encodings (`0..=31`; both [`XZR`] and [`SP`] are 31).
    pub const fn number(self) -> u8 {
        if self.0 == SP_VALUE { 31 } else { self.0 }
    }

    /// Whether this is the zero register [`XZR`].
    pub const fn is_zr(self) -> bool {
        self.0 == 31
    }

    /// Whether this is the stack pointer [`SP`].
    pub const fn is_sp(self) -> bool {
        self.0 == SP_VALUE
    }
}

impl fmt::Debug for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            31 => f.write_str("xzr"),
            SP_VALUE => f.write_str("sp"),
            n => write!(f, "x{n}"),
        }
    }
}

macro_rules! xregs {
    ($($name:ident = $n:literal),* $(,)?) => {
        $(
            #[doc = concat!("General register `X", stringify!($n), "`.")]
            pub const $name: Reg = Reg($n);
        )*
    };
}

xregs!(
    X0 = 0,
    X1 = 1,
    X2 = 2,
    X3 = 3,
    X4 = 4,
    X5 = 5,
    X6 = 6,
    X7 = 7,
    X8 = 8,
    X9 = 9,
    X10 = 10,
    X11 = 11,
    X12 = 12,
    X13 = 13,
    X14 = 14,
    X15 = 15,
    X16 = 16,
    X17 = 17,
    X18 = 18,
    X19 = 19,
    X20 = 20,
    X21 = 21,
    X22 = 22,
    X23 = 23,
    X24 = 24,
    X25 = 25,
    X26 = 26,
    X27 = 27,
    X28 = 28,
    X29 = 29,
    X30 = 30,
);

/// The zero register (encoding 31 in forms where 31 means XZR): reads as 0, writes are discarded.
pub const XZR: Reg = Reg(31);
/// The stack pointer (encoding 31 in forms where 31 means SP).
pub const SP: Reg = Reg(SP_VALUE);
/// The frame pointer, `X29`.
pub const FP: Reg = X29;
/// The link register, `X30`.
pub const LR: Reg = X30;

/// A condition code for `B.cond`, `CSEL` and friends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// Equal (Z).
    Eq,
    /// Not equal (!Z).
    Ne,
    /// Unsigned higher or same, carry set (C).
    Hs,
    /// Unsigned lower, carry clear (!C).
    Lo,
    /// Minus, negative (N).
    Mi,
    /// Plus, positive or zero (!N).
    Pl,
    /// Overflow (V).
    Vs,
    /// No overflow (!V).
    Vc,
    /// Unsigned higher (C && !Z).
    Hi,
    /// Unsigned lower or same (!C || Z).
    Ls,
    /// Signed greater than or equal (N == V).
    Ge,
    /// Signed less than (N != V).
    Lt,
    /// Signed greater than (!Z && N == V).
    Gt,
    /// Signed less than or equal (Z || N != V).
    Le,
    /// Always.
    Al,
}

impl Cond {
    /// The opposite condition (`Eq` <-> `Ne`, `Hs` <-> `Lo`, ...).
    ///
    /// `Al` has no opposite here (the architecture's `NV` encoding also means "always"), so
    /// `Al.invert()` is `Al`; do not rely on inverting `Al` to mean "never".
    pub const fn invert(self) -> Cond {
        match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Hs => Cond::Lo,
            Cond::Lo => Cond::Hs,
            Cond::Mi => Cond::Pl,
            Cond::Pl => Cond::Mi,
            Cond::Vs => Cond::Vc,
            Cond::Vc => Cond::Vs,
            Cond::Hi => Cond::Ls,
            Cond::Ls => Cond::Hi,
            Cond::Ge => Cond::Lt,
            Cond::Lt => Cond::Ge,
            Cond::Gt => Cond::Le,
            Cond::Le => Cond::Gt,
            Cond::Al => Cond::Al,
        }
    }

    /// The 4-bit encoding of the condition (`Eq` = 0 .. `Al` = 14).
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// The shift applied to the last register operand of a shifted-register form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shift {
    /// Logical shift left.
    Lsl,
    /// Logical shift right.
    Lsr,
    /// Arithmetic shift right.
    Asr,
}

impl Shift {
    const fn code(self) -> u32 {
        match self {
            Shift::Lsl => 0,
            Shift::Lsr => 1,
            Shift::Asr => 2,
        }
    }
}

/// How a label-relative field is encoded in an instruction word (the fix-up's field is the
/// whole word, and the offset is from the instruction's own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// B, BL: imm26 words at bit 0.
    Imm26,
    /// B.cond, CBZ, CBNZ: imm19 words at bit 5.
    Imm19,
    /// TBZ, TBNZ: imm14 words at bit 5.
    Imm14,
    /// ADR: 21-bit byte offset, immlo at bit 29, immhi at bit 5.
    Adr,
}

impl Fixup {
    /// Reach in bytes either way (the target must lie in `-range..range`).
    const fn range(self) -> usize {
        match self {
            Fixup::Imm26 => 1 << 27,
            Fixup::Imm19 | Fixup::Adr => 1 << 20,
            Fixup::Imm14 => 1 << 15,
        }
    }

    fn out_of_range(self, at: usize, target: usize) -> Error {
        Error::BranchOutOfRange {
            at,
            target,
            range: self.range(),
        }
    }

    /// The word with the offset from `at` to `target` inserted (the field in `word` is zero).
    fn insert(self, word: u32, at: usize, target: usize) -> Result<u32> {
        let range = self.range() as i64;
        let delta = displacement(at, target)
            .filter(|&d| (-range..range).contains(&d) && d % 4 == 0)
            .ok_or_else(|| self.out_of_range(at, target))?;
        let field = match self {
            Fixup::Imm26 => ((delta >> 2) as u32) & 0x03ff_ffff,
            Fixup::Imm19 => (((delta >> 2) as u32) & 0x7_ffff) << 5,
            Fixup::Imm14 => (((delta >> 2) as u32) & 0x3fff) << 5,
            Fixup::Adr => {
                let imm = delta as u32;
                ((imm & 3) << 29) | (((imm >> 2) & 0x7_ffff) << 5)
            }
        };
        Ok(word | field)
    }
}

impl FixupKind for Fixup {
    fn width(self) -> usize {
        4
    }

    fn patch(self, field: &mut [u8], at: usize, target: usize) -> Result<()> {
        let word: &mut [u8; 4] = field
            .try_into()
            .map_err(|_| self.out_of_range(at, target))?;
        *word = self
            .insert(u32::from_le_bytes(*word), at, target)?
            .to_le_bytes();
        Ok(())
    }
}

/// `NOP`.
const NOP: u32 = 0xd503_201f;

/// Which indirect branches a [`Assembler::bti`] landing pad admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BtiTargets {
    /// Calls: `BLR`, and `BR` through X16 or X17.
    C = 1,
    /// Jumps: `BR`.
    J = 2,
    /// Both.
    Jc = 3,
}

/// An AArch64 code buffer with labels and fixups.
///
/// Methods that can fail validate everything before emitting, so an `Err` leaves the buffer as
/// it was (except [`Assembler::bind`], which binds the label and patches what it can).
#[derive(Clone, Debug, Default)]
pub struct Assembler {
    buf: CodeBuffer<Fixup>,
}

/// Register 31 means XZR: accepts `X0..X30` and [`XZR`].
fn zr(r: Reg, what: &'static str) -> Result<u32> {
    if r.is_sp() {
        Err(Error::InvalidRegister { what })
    } else {
        Ok(u32::from(r.number()))
    }
}

/// Register 31 means SP: accepts `X0..X30` and [`SP`].
fn sp(r: Reg, what: &'static str) -> Result<u32> {
    if r.is_zr() {
        Err(Error::InvalidRegister { what })
    } else {
        Ok(u32::from(r.number()))
    }
}

/// `value` as an `i64` for error reports (saturating).
fn report(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The `(N, immr, imms)` fields of a 64-bit logical (bitmask) immediate, if `value` has one.
pub(crate) fn encode_bitmask(value: u64) -> Option<(u32, u32, u32)> {
    if value == 0 || value == u64::MAX {
        return None;
    }
    // Smallest element size whose replication gives the value.
    let mut size = 64u32;
    while size > 2 {
        let half = size / 2;
        let mask = (1u64 << half) - 1;
        if (value & mask) != ((value >> half) & mask) {
            break;
        }
        size = half;
    }
    let mask = if size == 64 {
        u64::MAX
    } else {
        (1u64 << size) - 1
    };
    let elem = value & mask;
    let ones = elem.count_ones();
    let run = if ones == 64 {
        u64::MAX
    } else {
        (1u64 << ones) - 1
    };
    // Find r with ROR_size(run, r) == elem.
    let rotr = |x: u64, r: u32| -> u64 {
        if r == 0 {
            x
        } else {
            ((x >> r) | (x << (size - r))) & mask
        }
    };
    let r = (0..size).find(|&r| rotr(run, r) == elem)?;
    let n = u32::from(size == 64);
    let imms = ((!(size - 1) << 1) & 0x3f) | (ones - 1);
    Some((n, r, imms))
}

impl Assembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    // `offset`, `bytes`, `new_label`, `bind`, `label_offset` and `finish` come with the shared
    // CodeBuffer (`impl_encoder!` at the end of this file).

    /// Appends one raw instruction word (little-endian). Past 2 GiB nothing is appended and
    /// [`Assembler::finish`] fails with [`Error::CodeTooLarge`].
    pub fn emit(&mut self, word: u32) {
        self.buf.emit(&word.to_le_bytes());
    }

    fn branch(&mut self, word: u32, kind: Fixup, l: Label) -> Result<()> {
        self.buf.emit_branch(&word.to_le_bytes(), 0, kind, l)
    }

    // ----- moves -------------------------------------------------------------------------

    fn move_wide(
        &mut self,
        base: u32,
        what: &'static str,
        rd: Reg,
        imm16: u16,
        shift: u8,
    ) -> Result<()> {
        let rd = zr(rd, what)?;
        if !matches!(shift, 0 | 16 | 32 | 48) {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: i64::from(shift),
            });
        }
        let hw = u32::from(shift / 16);
        self.emit(base | (hw << 21) | (u32::from(imm16) << 5) | rd);
        Ok(())
    }

    /// `MOVZ Xd, #imm16, LSL #shift`: `rd = imm16 << shift`. `shift` is 0, 16, 32 or 48.
    /// Register 31 is XZR.
    ///
    /// ```
    /// # use jitasm::a64::{Assembler, X3};
    /// let mut a = Assembler::new();
    /// a.movz(X3, 0x1234, 16)?;
    /// assert_eq!(a.bytes(), 0xd2a2_4683u32.to_le_bytes());
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn movz(&mut self, rd: Reg, imm16: u16, shift: u8) -> Result<()> {
        self.move_wide(0xd280_0000, "movz", rd, imm16, shift)
    }

    /// `MOVK Xd, #imm16, LSL #shift`: replaces 16 bits of `rd`. `shift` is 0, 16, 32 or 48.
    /// Register 31 is XZR.
    pub fn movk(&mut self, rd: Reg, imm16: u16, shift: u8) -> Result<()> {
        self.move_wide(0xf280_0000, "movk", rd, imm16, shift)
    }

    /// `MOVN Xd, #imm16, LSL #shift`: `rd = !(imm16 << shift)`. `shift` is 0, 16, 32 or 48.
    /// Register 31 is XZR.
    pub fn movn(&mut self, rd: Reg, imm16: u16, shift: u8) -> Result<()> {
        self.move_wide(0x9280_0000, "movn", rd, imm16, shift)
    }

    /// `rd = imm` in the fewest instructions: one `ORR Xd, XZR, #bitmask` when `imm` is a
    /// logical immediate and MOVZ/MOVN would need more than one instruction, otherwise `MOVZ`
    /// (or `MOVN`, whichever leaves fewer chunks) followed by one `MOVK` per remaining 16-bit
    /// chunk that differs from the background (1 to 4 instructions). Register 31 is XZR (the
    /// ORR form is then not used, since its register 31 is SP).
    ///
    /// ```
    /// # use jitasm::a64::{Assembler, X0};
    /// let mut a = Assembler::new();
    /// a.mov_imm(X0, -2)?; // movn x0, #1
    /// assert_eq!(a.bytes(), 0x9280_0020u32.to_le_bytes());
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn mov_imm(&mut self, rd: Reg, imm: i64) -> Result<()> {
        let d = zr(rd, "mov_imm: rd")?;
        let v = imm as u64;
        let chunk = |i: u32| ((v >> (16 * i)) & 0xffff) as u16;
        let zeros = (0..4).filter(|&i| chunk(i) == 0).count();
        let ones = (0..4).filter(|&i| chunk(i) == 0xffff).count();
        let inverted = ones > zeros;
        let background = if inverted { 0xffff } else { 0 };
        let needed = 4 - zeros.max(ones);
        if needed > 1 && d != 31 {
            if let Some((n, immr, imms)) = encode_bitmask(v) {
                self.emit(0xb200_0000 | (n << 22) | (immr << 16) | (imms << 10) | (31 << 5) | d);
                return Ok(());
            }
        }
        let mut first = true;
        for i in 0..4u32 {
            let c = chunk(i);
            if c == background {
                continue;
            }
            let hw = i << 21;
            let word = if !first {
                0xf280_0000 | hw | (u32::from(c) << 5) | d
            } else if inverted {
                0x9280_0000 | hw | (u32::from(!c) << 5) | d
            } else {
                0xd280_0000 | hw | (u32::from(c) << 5) | d
            };
            self.emit(word);
            first = false;
        }
        if first {
            // Every chunk is background: 0 or -1.
            let base = if inverted { 0x9280_0000 } else { 0xd280_0000 };
            self.emit(base | d);
        }
        Ok(())
    }

    /// `MOV Xd, Xm` (`ORR Xd, XZR, Xm`). Register 31 is XZR; use [`Assembler::mov_sp`] for SP.
    pub fn mov_rr(&mut self, rd: Reg, rm: Reg) -> Result<()> {
        let d = zr(rd, "mov: rd")?;
        let m = zr(rm, "mov: rm")?;
        self.emit(0xaa00_03e0 | (m << 16) | d);
        Ok(())
    }

    /// `MOV Xd|SP, Xn|SP` (`ADD Xd, Xn, #0`), to or from the stack pointer. Register 31 is SP.
    pub fn mov_sp(&mut self, rd: Reg, rn: Reg) -> Result<()> {
        let d = sp(rd, "mov (sp): rd")?;
        let n = sp(rn, "mov (sp): rn")?;
        self.emit(0x9100_0000 | (n << 5) | d);
        Ok(())
    }

    // ----- add / subtract ----------------------------------------------------------------

    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per field of the instruction encoding"
    )]
    fn addsub_rrs(
        &mut self,
        base: u32,
        what: &'static str,
        rd: Reg,
        rn: Reg,
        rm: Reg,
        shift: Shift,
        amount: u8,
    ) -> Result<()> {
        let d = zr(rd, what)?;
        let n = zr(rn, what)?;
        let m = zr(rm, what)?;
        if amount > 63 {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: i64::from(amount),
            });
        }
        self.emit(
            base | (shift.code() << 22) | (m << 16) | (u32::from(amount) << 10) | (n << 5) | d,
        );
        Ok(())
    }

    /// `ADD Xd, Xn, Xm` (shifted-register form). Register 31 is XZR for all operands.
    pub fn add_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.add_rrs(rd, rn, rm, Shift::Lsl, 0)
    }

    /// `ADD Xd, Xn, Xm, <shift> #amount`, `amount` in `0..=63`. Register 31 is XZR.
    pub fn add_rrs(&mut self, rd: Reg, rn: Reg, rm: Reg, shift: Shift, amount: u8) -> Result<()> {
        self.addsub_rrs(0x8b00_0000, "add (register)", rd, rn, rm, shift, amount)
    }

    /// `SUB Xd, Xn, Xm`. Register 31 is XZR.
    pub fn sub_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.sub_rrs(rd, rn, rm, Shift::Lsl, 0)
    }

    /// `SUB Xd, Xn, Xm, <shift> #amount`, `amount` in `0..=63`. Register 31 is XZR.
    pub fn sub_rrs(&mut self, rd: Reg, rn: Reg, rm: Reg, shift: Shift, amount: u8) -> Result<()> {
        self.addsub_rrs(0xcb00_0000, "sub (register)", rd, rn, rm, shift, amount)
    }

    /// `ADDS Xd, Xn, Xm` (sets flags). Register 31 is XZR.
    pub fn adds_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.adds_rrs(rd, rn, rm, Shift::Lsl, 0)
    }

    /// `ADDS Xd, Xn, Xm, <shift> #amount`, `amount` in `0..=63`. Register 31 is XZR.
    pub fn adds_rrs(&mut self, rd: Reg, rn: Reg, rm: Reg, shift: Shift, amount: u8) -> Result<()> {
        self.addsub_rrs(0xab00_0000, "adds (register)", rd, rn, rm, shift, amount)
    }

    /// `SUBS Xd, Xn, Xm` (sets flags). Register 31 is XZR.
    pub fn subs_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.subs_rrs(rd, rn, rm, Shift::Lsl, 0)
    }

    /// `SUBS Xd, Xn, Xm, <shift> #amount`, `amount` in `0..=63`. Register 31 is XZR.
    pub fn subs_rrs(&mut self, rd: Reg, rn: Reg, rm: Reg, shift: Shift, amount: u8) -> Result<()> {
        self.addsub_rrs(0xeb00_0000, "subs (register)", rd, rn, rm, shift, amount)
    }

    /// `CMP Xn, Xm` (`SUBS XZR, Xn, Xm`). Register 31 is XZR.
    pub fn cmp_rr(&mut self, rn: Reg, rm: Reg) -> Result<()> {
        self.subs_rr(XZR, rn, rm)
    }

    /// `CMN Xn, Xm` (`ADDS XZR, Xn, Xm`). Register 31 is XZR.
    pub fn cmn_rr(&mut self, rn: Reg, rm: Reg) -> Result<()> {
        self.adds_rr(XZR, rn, rm)
    }

    /// `NEG Xd, Xm` (`SUB Xd, XZR, Xm`). Register 31 is XZR.
    pub fn neg(&mut self, rd: Reg, rm: Reg) -> Result<()> {
        self.sub_rr(rd, XZR, rm)
    }

    /// `NEGS Xd, Xm` (`SUBS Xd, XZR, Xm`). Register 31 is XZR.
    pub fn negs(&mut self, rd: Reg, rm: Reg) -> Result<()> {
        self.subs_rr(rd, XZR, rm)
    }

    fn addsub_ri(
        &mut self,
        base: u32,
        what: &'static str,
        d: u32,
        rn: Reg,
        imm: u64,
    ) -> Result<()> {
        let n = sp(rn, what)?;
        let (sh, imm12) = if imm < 0x1000 {
            (0, imm)
        } else if imm & 0xfff == 0 && imm < 0x100_0000 {
            (1, imm >> 12)
        } else {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: report(imm),
            });
        };
        self.emit(base | (sh << 22) | ((imm12 as u32) << 10) | (n << 5) | d);
        Ok(())
    }

    /// `ADD Xd|SP, Xn|SP, #imm`: `imm` in `0..=4095`, or a multiple of 4096 up to
    /// `4095 << 12` (encoded `LSL #12`); anything else is [`Error::ImmediateOutOfRange`].
    /// Register 31 is SP for both `rd` and `rn`.
    ///
    /// ```
    /// # use jitasm::a64::{Assembler, SP};
    /// let mut a = Assembler::new();
    /// a.add_ri(SP, SP, 0x10000)?; // add sp, sp, #0x10, lsl #12
    /// assert_eq!(a.bytes(), 0x9140_43ffu32.to_le_bytes());
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn add_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = sp(rd, "add (immediate): rd")?;
        self.addsub_ri(0x9100_0000, "add (immediate)", d, rn, imm)
    }

    /// `SUB Xd|SP, Xn|SP, #imm` (immediate as for [`Assembler::add_ri`]). Register 31 is SP.
    pub fn sub_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = sp(rd, "sub (immediate): rd")?;
        self.addsub_ri(0xd100_0000, "sub (immediate)", d, rn, imm)
    }

    /// `ADDS Xd, Xn|SP, #imm` (immediate as for [`Assembler::add_ri`]). Register 31 is XZR for
    /// `rd`, SP for `rn`.
    pub fn adds_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = zr(rd, "adds (immediate): rd")?;
        self.addsub_ri(0xb100_0000, "adds (immediate)", d, rn, imm)
    }

    /// `SUBS Xd, Xn|SP, #imm` (immediate as for [`Assembler::add_ri`]). Register 31 is XZR for
    /// `rd`, SP for `rn`.
    pub fn subs_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = zr(rd, "subs (immediate): rd")?;
        self.addsub_ri(0xf100_0000, "subs (immediate)", d, rn, imm)
    }

    /// `CMP Xn|SP, #imm` (`SUBS XZR, Xn, #imm`). Register 31 is SP.
    pub fn cmp_ri(&mut self, rn: Reg, imm: u64) -> Result<()> {
        self.subs_ri(XZR, rn, imm)
    }

    /// `CMN Xn|SP, #imm` (`ADDS XZR, Xn, #imm`). Register 31 is SP.
    pub fn cmn_ri(&mut self, rn: Reg, imm: u64) -> Result<()> {
        self.adds_ri(XZR, rn, imm)
    }

    // ----- multiply / divide -------------------------------------------------------------

    fn dp3(
        &mut self,
        base: u32,
        what: &'static str,
        rd: Reg,
        rn: Reg,
        rm: Reg,
        ra: Reg,
    ) -> Result<()> {
        let d = zr(rd, what)?;
        let n = zr(rn, what)?;
        let m = zr(rm, what)?;
        let a = zr(ra, what)?;
        self.emit(base | (m << 16) | (a << 10) | (n << 5) | d);
        Ok(())
    }

    fn dp2(&mut self, base: u32, what: &'static str, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        let d = zr(rd, what)?;
        let n = zr(rn, what)?;
        let m = zr(rm, what)?;
        self.emit(base | (m << 16) | (n << 5) | d);
        Ok(())
    }

    /// `MADD Xd, Xn, Xm, Xa`: `rd = ra + rn * rm`. Register 31 is XZR.
    pub fn madd(&mut self, rd: Reg, rn: Reg, rm: Reg, ra: Reg) -> Result<()> {
        self.dp3(0x9b00_0000, "madd", rd, rn, rm, ra)
    }

    /// `MSUB Xd, Xn, Xm, Xa`: `rd = ra - rn * rm`. Register 31 is XZR.
    pub fn msub(&mut self, rd: Reg, rn: Reg, rm: Reg, ra: Reg) -> Result<()> {
        self.dp3(0x9b00_8000, "msub", rd, rn, rm, ra)
    }

    /// `MUL Xd, Xn, Xm` (`MADD Xd, Xn, Xm, XZR`). Register 31 is XZR.
    pub fn mul(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp3(0x9b00_0000, "mul", rd, rn, rm, XZR)
    }

    /// `SMULH Xd, Xn, Xm`: high 64 bits of the signed 128-bit product. Register 31 is XZR.
    pub fn smulh(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9b40_7c00, "smulh", rd, rn, rm)
    }

    /// `UMULH Xd, Xn, Xm`: high 64 bits of the unsigned 128-bit product. Register 31 is XZR.
    pub fn umulh(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9bc0_7c00, "umulh", rd, rn, rm)
    }

    /// `SDIV Xd, Xn, Xm` (division by zero gives 0; `MIN / -1` gives `MIN`). Register 31 is XZR.
    pub fn sdiv(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9ac0_0c00, "sdiv", rd, rn, rm)
    }

    /// `UDIV Xd, Xn, Xm` (division by zero gives 0). Register 31 is XZR.
    pub fn udiv(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9ac0_0800, "udiv", rd, rn, rm)
    }

    // ----- logical and shifts ------------------------------------------------------------

    /// `AND Xd, Xn, Xm`. Register 31 is XZR.
    pub fn and_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x8a00_0000, "and (register)", rd, rn, rm)
    }

    /// `ORR Xd, Xn, Xm`. Register 31 is XZR.
    pub fn orr_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0xaa00_0000, "orr (register)", rd, rn, rm)
    }

    /// `EOR Xd, Xn, Xm`. Register 31 is XZR.
    pub fn eor_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0xca00_0000, "eor (register)", rd, rn, rm)
    }

    /// `ANDS Xd, Xn, Xm` (sets N and Z, clears C and V). Register 31 is XZR.
    pub fn ands_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0xea00_0000, "ands (register)", rd, rn, rm)
    }

    /// `TST Xn, Xm` (`ANDS XZR, Xn, Xm`). Register 31 is XZR.
    pub fn tst_rr(&mut self, rn: Reg, rm: Reg) -> Result<()> {
        self.ands_rr(XZR, rn, rm)
    }

    /// `MVN Xd, Xm` (`ORN Xd, XZR, Xm`): bitwise not. Register 31 is XZR.
    pub fn mvn(&mut self, rd: Reg, rm: Reg) -> Result<()> {
        self.dp2(0xaa20_03e0, "mvn", rd, XZR, rm)
    }

    fn logical_ri(
        &mut self,
        base: u32,
        what: &'static str,
        d: u32,
        rn: Reg,
        imm: u64,
    ) -> Result<()> {
        let n = zr(rn, what)?;
        let Some((bn, immr, imms)) = encode_bitmask(imm) else {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: imm as i64,
            });
        };
        self.emit(base | (bn << 22) | (immr << 16) | (imms << 10) | (n << 5) | d);
        Ok(())
    }

    /// `AND Xd|SP, Xn, #imm` with a logical (bitmask) immediate: a rotated run of ones
    /// replicated in 2, 4, ..., 64-bit elements (not 0 or all ones); anything else is
    /// [`Error::ImmediateOutOfRange`]. Register 31 is SP for `rd`, XZR for `rn`.
    pub fn and_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = sp(rd, "and (immediate): rd")?;
        self.logical_ri(0x9200_0000, "and (immediate)", d, rn, imm)
    }

    /// `ORR Xd|SP, Xn, #imm` (bitmask immediate as for [`Assembler::and_ri`]). Register 31 is
    /// SP for `rd`, XZR for `rn`.
    pub fn orr_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = sp(rd, "orr (immediate): rd")?;
        self.logical_ri(0xb200_0000, "orr (immediate)", d, rn, imm)
    }

    /// `EOR Xd|SP, Xn, #imm` (bitmask immediate as for [`Assembler::and_ri`]). Register 31 is
    /// SP for `rd`, XZR for `rn`.
    pub fn eor_ri(&mut self, rd: Reg, rn: Reg, imm: u64) -> Result<()> {
        let d = sp(rd, "eor (immediate): rd")?;
        self.logical_ri(0xd200_0000, "eor (immediate)", d, rn, imm)
    }

    /// `TST Xn, #imm` (`ANDS XZR, Xn, #imm`, bitmask immediate as for [`Assembler::and_ri`]).
    /// Register 31 is XZR.
    pub fn tst_ri(&mut self, rn: Reg, imm: u64) -> Result<()> {
        self.logical_ri(0xf200_0000, "tst (immediate)", 31, rn, imm)
    }

    fn bitfield(
        &mut self,
        base: u32,
        what: &'static str,
        rd: Reg,
        rn: Reg,
        immr: u32,
        imms: u32,
    ) -> Result<()> {
        let d = zr(rd, what)?;
        let n = zr(rn, what)?;
        self.emit(base | (immr << 16) | (imms << 10) | (n << 5) | d);
        Ok(())
    }

    fn shift_amount(what: &'static str, amount: u8) -> Result<u32> {
        if amount > 63 {
            Err(Error::ImmediateOutOfRange {
                what,
                value: i64::from(amount),
            })
        } else {
            Ok(u32::from(amount))
        }
    }

    /// `LSL Xd, Xn, #amount` (`UBFM`), `amount` in `0..=63`. Register 31 is XZR.
    pub fn lsl_ri(&mut self, rd: Reg, rn: Reg, amount: u8) -> Result<()> {
        let s = Self::shift_amount("lsl (immediate)", amount)?;
        self.bitfield(
            0xd340_0000,
            "lsl (immediate)",
            rd,
            rn,
            (64 - s) & 63,
            63 - s,
        )
    }

    /// `LSR Xd, Xn, #amount` (`UBFM`), `amount` in `0..=63`. Register 31 is XZR.
    pub fn lsr_ri(&mut self, rd: Reg, rn: Reg, amount: u8) -> Result<()> {
        let s = Self::shift_amount("lsr (immediate)", amount)?;
        self.bitfield(0xd340_0000, "lsr (immediate)", rd, rn, s, 63)
    }

    /// `ASR Xd, Xn, #amount` (`SBFM`), `amount` in `0..=63`. Register 31 is XZR.
    pub fn asr_ri(&mut self, rd: Reg, rn: Reg, amount: u8) -> Result<()> {
        let s = Self::shift_amount("asr (immediate)", amount)?;
        self.bitfield(0x9340_0000, "asr (immediate)", rd, rn, s, 63)
    }

    /// `LSL Xd, Xn, Xm` (`LSLV`; the shift is `rm mod 64`). Register 31 is XZR.
    pub fn lsl_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9ac0_2000, "lslv", rd, rn, rm)
    }

    /// `LSR Xd, Xn, Xm` (`LSRV`; the shift is `rm mod 64`). Register 31 is XZR.
    pub fn lsr_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9ac0_2400, "lsrv", rd, rn, rm)
    }

    /// `ASR Xd, Xn, Xm` (`ASRV`; the shift is `rm mod 64`). Register 31 is XZR.
    pub fn asr_rr(&mut self, rd: Reg, rn: Reg, rm: Reg) -> Result<()> {
        self.dp2(0x9ac0_2800, "asrv", rd, rn, rm)
    }

    // ----- conditional select ------------------------------------------------------------

    fn condsel(
        &mut self,
        base: u32,
        what: &'static str,
        rd: Reg,
        rn: Reg,
        rm: Reg,
        c: Cond,
    ) -> Result<()> {
        let d = zr(rd, what)?;
        let n = zr(rn, what)?;
        let m = zr(rm, what)?;
        self.emit(base | (m << 16) | (u32::from(c.code()) << 12) | (n << 5) | d);
        Ok(())
    }

    /// `CSET Xd, c` (`CSINC Xd, XZR, XZR, invert(c)`): `rd = c ? 1 : 0`. For `Cond::Al`, which
    /// `CSET` cannot express, this emits `MOVZ Xd, #1`. Register 31 is XZR.
    pub fn cset(&mut self, rd: Reg, c: Cond) -> Result<()> {
        if c == Cond::Al {
            return self.movz(rd, 1, 0);
        }
        self.condsel(0x9a80_0400, "cset", rd, XZR, XZR, c.invert())
    }

    /// `CSETM Xd, c` (`CSINV Xd, XZR, XZR, invert(c)`): `rd = c ? -1 : 0`. For `Cond::Al` this
    /// emits `MOVN Xd, #0`. Register 31 is XZR.
    pub fn csetm(&mut self, rd: Reg, c: Cond) -> Result<()> {
        if c == Cond::Al {
            return self.movn(rd, 0, 0);
        }
        self.condsel(0xda80_0000, "csetm", rd, XZR, XZR, c.invert())
    }

    /// `CSEL Xd, Xn, Xm, c`: `rd = c ? rn : rm`. Register 31 is XZR.
    pub fn csel(&mut self, rd: Reg, rn: Reg, rm: Reg, c: Cond) -> Result<()> {
        self.condsel(0x9a80_0000, "csel", rd, rn, rm, c)
    }

    /// `CSINC Xd, Xn, Xm, c`: `rd = c ? rn : rm + 1`. Register 31 is XZR.
    pub fn csinc(&mut self, rd: Reg, rn: Reg, rm: Reg, c: Cond) -> Result<()> {
        self.condsel(0x9a80_0400, "csinc", rd, rn, rm, c)
    }

    /// `CSINV Xd, Xn, Xm, c`: `rd = c ? rn : !rm`. Register 31 is XZR.
    pub fn csinv(&mut self, rd: Reg, rn: Reg, rm: Reg, c: Cond) -> Result<()> {
        self.condsel(0xda80_0000, "csinv", rd, rn, rm, c)
    }

    /// `CSNEG Xd, Xn, Xm, c`: `rd = c ? rn : -rm`. Register 31 is XZR.
    pub fn csneg(&mut self, rd: Reg, rn: Reg, rm: Reg, c: Cond) -> Result<()> {
        self.condsel(0xda80_0400, "csneg", rd, rn, rm, c)
    }

    // ----- branches ----------------------------------------------------------------------

    /// `B label` (reach +-128 MiB).
    ///
    /// ```
    /// # use jitasm::a64::Assembler;
    /// let mut a = Assembler::new();
    /// let l = a.new_label();
    /// a.b(l)?;
    /// a.nop();
    /// a.bind(l)?;
    /// assert_eq!(&a.finish()?[..4], 0x1400_0002u32.to_le_bytes());
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn b(&mut self, l: Label) -> Result<()> {
        self.branch(0x1400_0000, Fixup::Imm26, l)
    }

    /// `BL label` (reach +-128 MiB); the return address goes to X30.
    pub fn bl(&mut self, l: Label) -> Result<()> {
        self.branch(0x9400_0000, Fixup::Imm26, l)
    }

    /// `B.cond label` (reach +-1 MiB).
    pub fn b_cond(&mut self, c: Cond, l: Label) -> Result<()> {
        self.branch(0x5400_0000 | u32::from(c.code()), Fixup::Imm19, l)
    }

    /// `CBZ Xt, label` (reach +-1 MiB). Register 31 is XZR.
    pub fn cbz(&mut self, rt: Reg, l: Label) -> Result<()> {
        let t = zr(rt, "cbz")?;
        self.branch(0xb400_0000 | t, Fixup::Imm19, l)
    }

    /// `CBNZ Xt, label` (reach +-1 MiB). Register 31 is XZR.
    pub fn cbnz(&mut self, rt: Reg, l: Label) -> Result<()> {
        let t = zr(rt, "cbnz")?;
        self.branch(0xb500_0000 | t, Fixup::Imm19, l)
    }

    fn test_branch(
        &mut self,
        base: u32,
        what: &'static str,
        rt: Reg,
        bit: u8,
        l: Label,
    ) -> Result<()> {
        let t = zr(rt, what)?;
        if bit > 63 {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: i64::from(bit),
            });
        }
        let bit = u32::from(bit);
        let word = base | ((bit >> 5) << 31) | ((bit & 31) << 19) | t;
        self.branch(word, Fixup::Imm14, l)
    }

    /// `TBZ Xt, #bit, label`: branch if bit `bit` (`0..=63`) of `rt` is zero (reach +-32 KiB).
    /// Register 31 is XZR.
    pub fn tbz(&mut self, rt: Reg, bit: u8, l: Label) -> Result<()> {
        self.test_branch(0x3600_0000, "tbz", rt, bit, l)
    }

    /// `TBNZ Xt, #bit, label`: branch if bit `bit` (`0..=63`) of `rt` is one (reach +-32 KiB).
    /// Register 31 is XZR.
    pub fn tbnz(&mut self, rt: Reg, bit: u8, l: Label) -> Result<()> {
        self.test_branch(0x3700_0000, "tbnz", rt, bit, l)
    }

    /// `ADR Xd, label`: the label's address (reach +-1 MiB). Register 31 is XZR.
    pub fn adr(&mut self, rd: Reg, l: Label) -> Result<()> {
        let d = zr(rd, "adr")?;
        self.branch(0x1000_0000 | d, Fixup::Adr, l)
    }

    /// `BLR Xn`: call the address in `rn`. Register 31 is XZR.
    pub fn blr(&mut self, rn: Reg) -> Result<()> {
        let n = zr(rn, "blr")?;
        self.emit(0xd63f_0000 | (n << 5));
        Ok(())
    }

    /// `BR Xn`: jump to the address in `rn`. Register 31 is XZR.
    pub fn br(&mut self, rn: Reg) -> Result<()> {
        let n = zr(rn, "br")?;
        self.emit(0xd61f_0000 | (n << 5));
        Ok(())
    }

    /// `RET` (`RET X30`).
    pub fn ret(&mut self) {
        self.emit(0xd65f_03c0);
    }

    // ----- loads and stores --------------------------------------------------------------

    fn ldst(&mut self, load: bool, rt: Reg, rn: Reg, offset: i64) -> Result<()> {
        let what = if load { "ldr" } else { "str" };
        let t = zr(rt, what)?;
        let n = sp(rn, what)?;
        let word = if offset % 8 == 0 && (0..=32760).contains(&offset) {
            let base = if load { 0xf940_0000 } else { 0xf900_0000 };
            base | (((offset / 8) as u32) << 10)
        } else if (-256..=255).contains(&offset) {
            let base = if load { 0xf840_0000 } else { 0xf800_0000 };
            base | (((offset as u32) & 0x1ff) << 12)
        } else {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: offset,
            });
        };
        self.emit(word | (n << 5) | t);
        Ok(())
    }

    /// `LDR Xt, [Xn|SP, #offset]`: the scaled unsigned form when `offset` is a multiple of 8 in
    /// `0..=32760`, else `LDUR` when `offset` is in `-256..=255`, else
    /// [`Error::ImmediateOutOfRange`]. Register 31 is XZR for `rt`, SP for `rn`.
    ///
    /// ```
    /// # use jitasm::a64::{Assembler, X0, SP};
    /// let mut a = Assembler::new();
    /// a.ldr(X0, SP, 8)?; // ldr x0, [sp, #8]
    /// a.ldr(X0, SP, -8)?; // ldur x0, [sp, #-8]
    /// assert_eq!(a.bytes()[..4], 0xf940_07e0u32.to_le_bytes());
    /// assert_eq!(a.bytes()[4..], 0xf85f_83e0u32.to_le_bytes());
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn ldr(&mut self, rt: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.ldst(true, rt, rn, offset)
    }

    /// `STR Xt, [Xn|SP, #offset]` (or `STUR`; offsets as for [`Assembler::ldr`]). Register 31 is
    /// XZR for `rt`, SP for `rn`.
    pub fn str(&mut self, rt: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.ldst(false, rt, rn, offset)
    }

    fn ldst_wb(
        &mut self,
        base: u32,
        what: &'static str,
        rt: Reg,
        rn: Reg,
        imm9: i64,
    ) -> Result<()> {
        let t = zr(rt, what)?;
        let n = sp(rn, what)?;
        if rt == rn {
            // Writeback with Rt == Rn (not SP) is CONSTRAINED UNPREDICTABLE.
            return Err(Error::InvalidRegister { what });
        }
        if !(-256..=255).contains(&imm9) {
            return Err(Error::ImmediateOutOfRange { what, value: imm9 });
        }
        self.emit(base | (((imm9 as u32) & 0x1ff) << 12) | (n << 5) | t);
        Ok(())
    }

    /// `LDR Xt, [Xn|SP, #imm9]!` (pre-index, `imm9` in `-256..=255`). Register 31 is XZR for
    /// `rt`, SP for `rn`; `rt == rn` is [`Error::InvalidRegister`] (unpredictable).
    pub fn ldr_pre(&mut self, rt: Reg, rn: Reg, imm9: i64) -> Result<()> {
        self.ldst_wb(0xf840_0c00, "ldr (pre-index)", rt, rn, imm9)
    }

    /// `LDR Xt, [Xn|SP], #imm9` (post-index, `imm9` in `-256..=255`). Registers as for
    /// [`Assembler::ldr_pre`].
    pub fn ldr_post(&mut self, rt: Reg, rn: Reg, imm9: i64) -> Result<()> {
        self.ldst_wb(0xf840_0400, "ldr (post-index)", rt, rn, imm9)
    }

    /// `STR Xt, [Xn|SP, #imm9]!` (pre-index, `imm9` in `-256..=255`). Registers as for
    /// [`Assembler::ldr_pre`].
    pub fn str_pre(&mut self, rt: Reg, rn: Reg, imm9: i64) -> Result<()> {
        self.ldst_wb(0xf800_0c00, "str (pre-index)", rt, rn, imm9)
    }

    /// `STR Xt, [Xn|SP], #imm9` (post-index, `imm9` in `-256..=255`). Registers as for
    /// [`Assembler::ldr_pre`].
    pub fn str_post(&mut self, rt: Reg, rn: Reg, imm9: i64) -> Result<()> {
        self.ldst_wb(0xf800_0400, "str (post-index)", rt, rn, imm9)
    }

    fn ldst_rr(
        &mut self,
        base: u32,
        what: &'static str,
        rt: Reg,
        rn: Reg,
        rm: Reg,
        scaled: bool,
    ) -> Result<()> {
        let t = zr(rt, what)?;
        let n = sp(rn, what)?;
        let m = zr(rm, what)?;
        self.emit(base | (m << 16) | (u32::from(scaled) << 12) | (n << 5) | t);
        Ok(())
    }

    /// `LDR Xt, [Xn|SP, Xm{, LSL #3}]` (`LSL #3` when `scaled`). Register 31 is XZR for `rt`
    /// and `rm`, SP for `rn`.
    pub fn ldr_rr(&mut self, rt: Reg, rn: Reg, rm: Reg, scaled: bool) -> Result<()> {
        self.ldst_rr(0xf860_6800, "ldr (register)", rt, rn, rm, scaled)
    }

    /// `STR Xt, [Xn|SP, Xm{, LSL #3}]` (`LSL #3` when `scaled`). Registers as for
    /// [`Assembler::ldr_rr`].
    pub fn str_rr(&mut self, rt: Reg, rn: Reg, rm: Reg, scaled: bool) -> Result<()> {
        self.ldst_rr(0xf820_6800, "str (register)", rt, rn, rm, scaled)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per field of the instruction encoding"
    )]
    fn pair(
        &mut self,
        base: u32,
        what: &'static str,
        load: bool,
        writeback: bool,
        rt1: Reg,
        rt2: Reg,
        rn: Reg,
        offset: i64,
    ) -> Result<()> {
        let t1 = zr(rt1, what)?;
        let t2 = zr(rt2, what)?;
        let n = sp(rn, what)?;
        // Unpredictable: LDP with Rt == Rt2; writeback with Rn (not SP) in the pair.
        if (load && rt1 == rt2) || (writeback && (rt1 == rn || rt2 == rn)) {
            return Err(Error::InvalidRegister { what });
        }
        if offset % 8 != 0 || !(-512..=504).contains(&offset) {
            return Err(Error::ImmediateOutOfRange {
                what,
                value: offset,
            });
        }
        let imm7 = ((offset / 8) as u32) & 0x7f;
        self.emit(base | (imm7 << 15) | (t2 << 10) | (n << 5) | t1);
        Ok(())
    }

    /// `STP Xt1, Xt2, [Xn|SP, #offset]`: `offset` a multiple of 8 in `-512..=504`. Register 31
    /// is XZR for `rt1`/`rt2`, SP for `rn`.
    pub fn stp(&mut self, rt1: Reg, rt2: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.pair(0xa900_0000, "stp", false, false, rt1, rt2, rn, offset)
    }

    /// `LDP Xt1, Xt2, [Xn|SP, #offset]` (offset as for [`Assembler::stp`]); `rt1 == rt2` is
    /// [`Error::InvalidRegister`] (unpredictable).
    pub fn ldp(&mut self, rt1: Reg, rt2: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.pair(0xa940_0000, "ldp", true, false, rt1, rt2, rn, offset)
    }

    /// `STP Xt1, Xt2, [Xn|SP, #offset]!` (pre-index; offset as for [`Assembler::stp`]). `rn`
    /// equal to `rt1` or `rt2` is [`Error::InvalidRegister`] (unpredictable).
    pub fn stp_pre(&mut self, rt1: Reg, rt2: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.pair(
            0xa980_0000,
            "stp (pre-index)",
            false,
            true,
            rt1,
            rt2,
            rn,
            offset,
        )
    }

    /// `STP Xt1, Xt2, [Xn|SP], #offset` (post-index; registers as for [`Assembler::stp_pre`]).
    pub fn stp_post(&mut self, rt1: Reg, rt2: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.pair(
            0xa880_0000,
            "stp (post-index)",
            false,
            true,
            rt1,
            rt2,
            rn,
            offset,
        )
    }

    /// `LDP Xt1, Xt2, [Xn|SP, #offset]!` (pre-index; registers as for [`Assembler::ldp`] and
    /// [`Assembler::stp_pre`]).
    pub fn ldp_pre(&mut self, rt1: Reg, rt2: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.pair(
            0xa9c0_0000,
            "ldp (pre-index)",
            true,
            true,
            rt1,
            rt2,
            rn,
            offset,
        )
    }

    /// `LDP Xt1, Xt2, [Xn|SP], #offset` (post-index; registers as for [`Assembler::ldp`] and
    /// [`Assembler::stp_pre`]).
    pub fn ldp_post(&mut self, rt1: Reg, rt2: Reg, rn: Reg, offset: i64) -> Result<()> {
        self.pair(
            0xa8c0_0000,
            "ldp (post-index)",
            true,
            true,
            rt1,
            rt2,
            rn,
            offset,
        )
    }

    // ----- misc --------------------------------------------------------------------------

    /// `BTI c`, `BTI j` or `BTI jc`: a landing pad for indirect branches into pages guarded by
    /// BTI (`PROT_BTI`); a hint (a `NOP`) where BTI is off. `c` admits calls (`BLR`, and `BR`
    /// through X16/X17), `j` jumps (`BR`), `jc` both (Arm ARM, "BTI": `HINT #32 | targets << 1`).
    ///
    /// ```
    /// use jitasm::a64::{Assembler, BtiTargets};
    /// let mut a = Assembler::new();
    /// a.bti(BtiTargets::C);
    /// assert_eq!(a.finish()?, 0xd503_245fu32.to_le_bytes());
    /// # Ok::<(), jitasm::Error>(())
    /// ```
    pub fn bti(&mut self, targets: BtiTargets) {
        self.emit(0xd503_241f | (targets as u32) << 6);
    }

    /// `BL` to the address `disp` bytes from this instruction (a multiple of 4, reach
    /// +-128 MiB): a direct call to code outside the buffer, whose displacement the caller
    /// knows (or patches in later).
    ///
    /// # Errors
    ///
    /// [`Error::ImmediateOutOfRange`] if `disp` is misaligned or out of reach.
    pub fn bl_disp(&mut self, disp: i64) -> Result<()> {
        if disp % 4 != 0 || !(-(1 << 27)..(1 << 27)).contains(&disp) {
            return Err(Error::ImmediateOutOfRange {
                what: "bl displacement",
                value: disp,
            });
        }
        self.emit(0x9400_0000 | ((disp >> 2) as u32 & 0x03ff_ffff));
        Ok(())
    }

    /// `BRK #imm16` (breakpoint).
    pub fn brk(&mut self, imm16: u16) {
        self.emit(0xd420_0000 | (u32::from(imm16) << 5));
    }

    /// `NOP`.
    pub fn nop(&mut self) {
        self.emit(NOP);
    }

    /// `count` NOPs, appended in bulk (cheap even for millions of words).
    pub fn nops(&mut self, count: usize) {
        self.buf.fill(&NOP.to_le_bytes(), count);
    }

    /// Pads with NOPs until the offset is a multiple of `n` (`n` is rounded up to a power of
    /// two, at least 4).
    pub fn align(&mut self, n: usize) {
        let n = n.max(4).checked_next_power_of_two().unwrap_or(4);
        let rem = self.offset() % n;
        if rem != 0 {
            self.nops((n - rem) / 4);
        }
    }
}

crate::buffer::impl_encoder!(Assembler, Fixup);
