//! The AArch64 half of the template JIT (AAPCS64).
//!
//! Registers: the value stack uses X9-X15; locals live in X19-X26 (callee-saved) or in the
//! frame; X27 holds the remaining call depth and X28 the context across all compiled code;
//! X16/X17 (IP0/IP1) are this module's temporaries and X8 carries a callee's id to the bridge.
//! X18 (the platform register on Apple and Windows) is never touched. Frames are linked through
//! X29; SP stays 16-byte aligned.

use jitasm::Label;
use jitasm::a64::{
    Assembler, BtiTargets, Cond, Reg, SP, Shift, X0, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11,
    X12, X13, X14, X15, X16, X17, X19, X20, X21, X22, X23, X24, X25, X26, X27, X28, X29, X30, XZR,
};

use super::JitError;
use super::masm::{
    ArithOp, CallTarget, CmpOp, DivOp, Frame, FrameStep, HelperCall, Helpers, Home, MacroAssembler,
    Operand, Result, RuntimeStubs, Target, parallel_moves, signed_magic,
};
use super::runtime::ctx_offsets as off;
use crate::FuncId;

/// Register carrying the context pointer.
const CTX: Reg = X28;
/// Register carrying the remaining call depth.
const DEPTH: Reg = X27;
/// Private temporaries.
const TMP: Reg = X16;
const TMP2: Reg = X17;
/// Register carrying a callee's id into the bridge.
const CALLEE: Reg = X8;
/// AAPCS64 integer argument registers.
const ARGS: [Reg; 8] = [X0, X1, X2, X3, X4, X5, X6, X7];

/// The AArch64 macro-assembler.
pub(crate) struct A64 {
    asm: Assembler,
    /// The frame of the function being compiled (set by `native_entry`).
    frame: Option<Frame<Reg>>,
    /// How the frame changes, for CFI (see [`FrameStep`]).
    steps: Vec<FrameStep>,
    target: Target,
    helper_calls: Vec<HelperCall>,
}

/// DWARF register numbers (AAPCS64's DWARF supplement: X0-X30 are 0-30, SP is 31).
fn dwarf(r: Reg) -> u16 {
    u16::from(r.number())
}
const DWARF_FP: u16 = 29;
const DWARF_LR: u16 = 30;
const DWARF_SP: u16 = 31;

fn cond(op: CmpOp) -> Cond {
    match op {
        CmpOp::Lt => Cond::Lt,
        CmpOp::Le => Cond::Le,
        CmpOp::Gt => Cond::Gt,
        CmpOp::Ge => Cond::Ge,
        CmpOp::Eq => Cond::Eq,
        CmpOp::Ne => Cond::Ne,
    }
}

/// Bytes of the body's frame (outgoing arguments and slots), a multiple of 16.
fn frame_bytes(frame: &Frame<Reg>) -> u64 {
    let bytes = (u64::from(frame.outgoing) + u64::from(frame.slots)) * 8;
    bytes.div_ceil(16) * 16
}

/// Bytes of the saved local registers, a multiple of 16.
fn saved_bytes(frame: &Frame<Reg>) -> u64 {
    (frame.saved.len() as u64).div_ceil(2) * 16
}

impl A64 {
    fn slot_offset(&self, slot: u32) -> Result<i64> {
        let frame = self
            .frame
            .as_ref()
            .ok_or(JitError::Internal("slot used before the frame was set"))?;
        Ok(((u64::from(frame.outgoing) + u64::from(slot)) * 8) as i64)
    }

    /// A base register and an offset that `ldr`/`str` can encode for `base + offset`.
    fn address(&mut self, base: Reg, offset: i64) -> Result<(Reg, i64)> {
        if (0..=32760).contains(&offset) && offset % 8 == 0 {
            return Ok((base, offset));
        }
        let high = offset & !0xfff;
        if !(0..(1 << 24)).contains(&high) {
            return Err(JitError::Internal("frame offset beyond 16 MiB"));
        }
        self.asm.add_ri(TMP2, base, high as u64)?;
        Ok((TMP2, offset & 0xfff))
    }

    /// `CALLEE = callee` (the bridge reads it) and `TMP` = its function table entry.
    fn table_entry(&mut self, callee: FuncId) -> Result<()> {
        self.asm.mov_imm(CALLEE, i64::from(callee))?;
        self.ldr(TMP2, CTX, i64::from(off::TABLE))?;
        self.ldr(TMP, TMP2, i64::from(callee) * 8)
    }

    fn ldr(&mut self, rt: Reg, base: Reg, offset: i64) -> Result<()> {
        let (b, o) = self.address(base, offset)?;
        Ok(self.asm.ldr(rt, b, o)?)
    }

    fn str(&mut self, rt: Reg, base: Reg, offset: i64) -> Result<()> {
        let (b, o) = self.address(base, offset)?;
        Ok(self.asm.str(rt, b, o)?)
    }

    /// The operand in a register (its own, or `TMP` loaded with it).
    fn reg_of(&mut self, src: Operand<Reg>) -> Result<Reg> {
        match src {
            Operand::Reg(r) => Ok(r),
            Operand::Imm(0) => Ok(XZR),
            other => {
                self.load(TMP, other)?;
                Ok(TMP)
            }
        }
    }

    fn cmp(&mut self, lhs: Reg, rhs: Operand<Reg>) -> Result<()> {
        match rhs {
            Operand::Imm(v) if (0..4096).contains(&v) => self.asm.cmp_ri(lhs, v as u64)?,
            Operand::Imm(v) if (-4095..0).contains(&v) => self.asm.cmn_ri(lhs, v.unsigned_abs())?,
            other => {
                let r = self.reg_of(other)?;
                self.asm.cmp_rr(lhs, r)?;
            }
        }
        Ok(())
    }

    fn prologue(&mut self, frame: &Frame<Reg>, stack_trap: Label) -> Result<()> {
        let body = frame_bytes(frame);
        let saved = saved_bytes(frame);
        let total = 16 + saved + body;
        self.note(|at| FrameStep::Entry { at });
        self.asm.mov_sp(TMP, SP)?;
        self.asm.mov_imm(TMP2, total as i64)?;
        self.asm.sub_rr(TMP, TMP, TMP2)?;
        self.ldr(TMP2, CTX, i64::from(off::STACK_LIMIT))?;
        self.asm.cmp_rr(TMP, TMP2)?;
        self.asm.b_cond(Cond::Lo, stack_trap)?;
        self.asm.stp_pre(X29, X30, SP, -16)?;
        self.note_frame_record(16)?;
        if saved > 0 {
            self.sub_sp(saved)?;
            for (i, pair) in frame.saved.chunks(2).enumerate() {
                let second = pair.get(1).copied().unwrap_or(XZR);
                self.asm.stp(pair[0], second, SP, i as i64 * 16)?;
                let offset = -16 - saved as i32 + i as i32 * 16;
                self.note_saved(pair, offset);
            }
        }
        if body > 0 {
            self.sub_sp(body)?;
        }
        Ok(())
    }

    /// Records a frame step at the current offset.
    fn note(&mut self, step: impl FnOnce(usize) -> FrameStep) {
        let at = self.asm.offset();
        self.steps.push(step(at));
    }

    /// After `stp x29, x30, [sp, #-cfa]!`: emits `mov x29, sp` and records that the frame
    /// record is saved and the CFA is `x29 + cfa` from here.
    fn note_frame_record(&mut self, cfa: i32) -> Result<()> {
        self.note(|at| FrameStep::CfaOffset { at, offset: cfa });
        self.note(|at| FrameStep::Saved {
            at,
            reg: DWARF_FP,
            offset: -cfa,
        });
        self.note(|at| FrameStep::Saved {
            at,
            reg: DWARF_LR,
            offset: 8 - cfa,
        });
        self.asm.mov_sp(X29, SP)?;
        self.note(|at| FrameStep::Cfa {
            at,
            reg: DWARF_FP,
            offset: cfa,
        });
        Ok(())
    }

    /// After an `stp` of `pair` at `CFA + offset`.
    fn note_saved(&mut self, pair: &[Reg], offset: i32) {
        for (k, &r) in pair.iter().enumerate() {
            if r != XZR {
                self.note(|at| FrameStep::Saved {
                    at,
                    reg: dwarf(r),
                    offset: offset + 8 * k as i32,
                });
            }
        }
    }

    /// After an `ldp` of `pair`.
    fn note_restored(&mut self, pair: &[Reg]) {
        for &r in pair {
            if r != XZR {
                self.note(|at| FrameStep::Restored { at, reg: dwarf(r) });
            }
        }
    }

    /// After `ldp x29, x30, [sp], #n`: the caller's state.
    fn note_frame_record_restored(&mut self) {
        self.note(|at| FrameStep::Cfa {
            at,
            reg: DWARF_SP,
            offset: 0,
        });
        self.note(|at| FrameStep::Restored { at, reg: DWARF_FP });
        self.note(|at| FrameStep::Restored { at, reg: DWARF_LR });
    }

    fn sub_sp(&mut self, bytes: u64) -> Result<()> {
        if bytes < 4096 {
            self.asm.sub_ri(SP, SP, bytes)?;
        } else {
            self.asm.mov_sp(TMP, SP)?;
            self.asm.mov_imm(TMP2, bytes as i64)?;
            self.asm.sub_rr(TMP, TMP, TMP2)?;
            self.asm.mov_sp(SP, TMP)?;
        }
        Ok(())
    }

    fn set_home(&mut self, frame: &Frame<Reg>, local: usize, src: Operand<Reg>) -> Result<()> {
        match frame.homes.get(local) {
            Some(Home::Reg(h)) => self.load(*h, src),
            Some(Home::Slot(s)) => self.store(*s, src),
            None => Err(JitError::Internal("local without a home")),
        }
    }

    fn ctx_add(&mut self, field: i32, n: u64) -> Result<()> {
        self.ldr(TMP, CTX, i64::from(field))?;
        if n < 4096 {
            self.asm.add_ri(TMP, TMP, n)?;
        } else {
            self.asm.mov_imm(TMP2, n as i64)?;
            self.asm.add_rr(TMP, TMP, TMP2)?;
        }
        self.str(TMP, CTX, i64::from(field))
    }
}

impl MacroAssembler for A64 {
    type Reg = Reg;
    const SCRATCH: &'static [Reg] = &[X9, X10, X11, X12, X13, X14, X15];
    const LOCAL_REGS: &'static [Reg] = &[X19, X20, X21, X22, X23, X24, X25, X26];
    const REG_ARGS: u32 = 8;

    fn new(target: Target) -> Self {
        A64 {
            asm: Assembler::new(),
            frame: None,
            steps: Vec::new(),
            target,
            helper_calls: Vec::new(),
        }
    }

    fn new_label(&mut self) -> Label {
        self.asm.new_label()
    }

    fn bind(&mut self, label: Label) -> Result<()> {
        Ok(self.asm.bind(label)?)
    }

    fn label_offset(&self, label: Label) -> Option<usize> {
        self.asm.label_offset(label)
    }

    fn finish(self) -> Result<(Vec<u8>, Vec<HelperCall>)> {
        Ok((self.asm.finish()?, self.helper_calls))
    }

    fn take_frame_steps(&mut self) -> Vec<FrameStep> {
        std::mem::take(&mut self.steps)
    }

    fn native_entry(&mut self, frame: &Frame<Reg>, stack_trap: Label) -> Result<()> {
        self.frame = Some(frame.clone());
        self.landing_pad(BtiTargets::C);
        self.prologue(frame, stack_trap)?;
        for local in 0..frame.homes.len() {
            let src = if local < frame.args as usize {
                match ARGS.get(local) {
                    Some(r) => Operand::Reg(*r),
                    None => {
                        let at = 16 + (local - ARGS.len()) as i64 * 8;
                        self.ldr(TMP, X29, at)?;
                        Operand::Reg(TMP)
                    }
                }
            } else {
                Operand::Imm(0)
            };
            self.set_home(frame, local, src)?;
        }
        Ok(())
    }

    fn array_entry(&mut self, frame: &Frame<Reg>, stack_trap: Label, target: Label) -> Result<()> {
        self.landing_pad(BtiTargets::C);
        self.prologue(frame, stack_trap)?;
        for local in 0..frame.homes.len() {
            self.ldr(TMP, X0, local as i64 * 8)?;
            self.set_home(frame, local, Operand::Reg(TMP))?;
        }
        self.asm.b(target)?;
        Ok(())
    }

    fn ret(&mut self, frame: &Frame<Reg>, value: Operand<Reg>) -> Result<()> {
        self.load(X0, value)?;
        let saved = saved_bytes(frame);
        self.note(|at| FrameStep::Remember { at });
        if saved > 0 {
            self.asm.sub_ri(SP, X29, saved)?;
            for (i, pair) in frame.saved.chunks(2).enumerate() {
                let second = pair.get(1).copied().unwrap_or(XZR);
                self.asm.ldp(pair[0], second, SP, i as i64 * 16)?;
                self.note_restored(pair);
            }
        }
        self.asm.mov_sp(SP, X29)?;
        self.asm.ldp_post(X29, X30, SP, 16)?;
        self.note_frame_record_restored();
        self.asm.ret();
        self.note(|at| FrameStep::Restore { at });
        Ok(())
    }

    fn load(&mut self, dst: Reg, src: Operand<Reg>) -> Result<()> {
        match src {
            Operand::Reg(r) if r == dst => Ok(()),
            Operand::Reg(r) => Ok(self.asm.mov_rr(dst, r)?),
            Operand::Imm(v) => Ok(self.asm.mov_imm(dst, v)?),
            Operand::Slot(s) => {
                let at = self.slot_offset(s)?;
                self.ldr(dst, SP, at)
            }
        }
    }

    fn store(&mut self, slot: u32, src: Operand<Reg>) -> Result<()> {
        if src == Operand::Slot(slot) {
            return Ok(());
        }
        let r = self.reg_of(src)?;
        let at = self.slot_offset(slot)?;
        self.str(r, SP, at)
    }

    fn arith(&mut self, op: ArithOp, dst: Reg, lhs: Reg, rhs: Operand<Reg>) -> Result<()> {
        if let Operand::Imm(v) = rhs {
            let (add, magnitude) = match op {
                ArithOp::Add => (v >= 0, v.unsigned_abs()),
                ArithOp::Sub => (v < 0, v.unsigned_abs()),
                ArithOp::Mul => (false, u64::MAX),
            };
            if magnitude < 4096 {
                if add {
                    self.asm.add_ri(dst, lhs, magnitude)?;
                } else {
                    self.asm.sub_ri(dst, lhs, magnitude)?;
                }
                return Ok(());
            }
        }
        let r = match rhs {
            Operand::Imm(v) => {
                self.asm.mov_imm(TMP, v)?;
                TMP
            }
            other => self.reg_of(other)?,
        };
        match op {
            ArithOp::Add => self.asm.add_rr(dst, lhs, r)?,
            ArithOp::Sub => self.asm.sub_rr(dst, lhs, r)?,
            ArithOp::Mul => self.asm.mul(dst, lhs, r)?,
        }
        Ok(())
    }

    fn neg(&mut self, dst: Reg, src: Reg) -> Result<()> {
        Ok(self.asm.neg(dst, src)?)
    }

    fn divmod(
        &mut self,
        op: DivOp,
        dst: Reg,
        lhs: Reg,
        rhs: Operand<Reg>,
        by_zero: Label,
        overflow: Label,
    ) -> Result<()> {
        let divisor = match rhs {
            Operand::Imm(0) => {
                self.asm.b(by_zero)?;
                return Ok(());
            }
            Operand::Imm(-1) => {
                match op {
                    DivOp::Div => {
                        self.asm.negs(TMP, lhs)?;
                        self.asm.b_cond(Cond::Vs, overflow)?;
                        self.asm.mov_rr(dst, TMP)?;
                    }
                    DivOp::Mod => self.asm.mov_imm(dst, 0)?,
                }
                return Ok(());
            }
            Operand::Imm(1) => {
                match op {
                    DivOp::Div => self.asm.mov_rr(dst, lhs)?,
                    DivOp::Mod => self.asm.mov_imm(dst, 0)?,
                }
                return Ok(());
            }
            Operand::Imm(d) if signed_magic(d).is_some() => {
                // Multiply by the reciprocal (masm::signed_magic): TMP = high half of
                // magic * n, corrected, shifted, plus its sign bit = n / d truncated.
                let (magic, shift) = signed_magic(d).ok_or(JitError::Internal("magic"))?;
                self.asm.mov_imm(TMP, magic)?;
                self.asm.smulh(TMP, lhs, TMP)?;
                if d > 0 && magic < 0 {
                    self.asm.add_rr(TMP, TMP, lhs)?;
                } else if d < 0 && magic > 0 {
                    self.asm.sub_rr(TMP, TMP, lhs)?;
                }
                if shift > 0 {
                    self.asm.asr_ri(TMP, TMP, shift)?;
                }
                self.asm.add_rrs(TMP, TMP, TMP, Shift::Lsr, 63)?;
                match op {
                    DivOp::Div => self.asm.mov_rr(dst, TMP)?,
                    DivOp::Mod => {
                        // n - q * d in one MSUB (dst may be lhs).
                        self.asm.mov_imm(TMP2, d)?;
                        self.asm.msub(dst, TMP, TMP2, lhs)?;
                    }
                }
                return Ok(());
            }
            Operand::Imm(v) => {
                self.asm.mov_imm(TMP, v)?;
                self.quotient(op, dst, lhs, TMP)?;
                return Ok(());
            }
            other => self.reg_of(other)?,
        };
        let divide = self.asm.new_label();
        let done = self.asm.new_label();
        self.asm.cbz(divisor, by_zero)?;
        self.asm.cmn_ri(divisor, 1)?;
        self.asm.b_cond(Cond::Ne, divide)?;
        match op {
            DivOp::Div => {
                self.asm.negs(TMP2, lhs)?;
                self.asm.b_cond(Cond::Vs, overflow)?;
                self.asm.mov_rr(dst, TMP2)?;
            }
            DivOp::Mod => self.asm.mov_imm(dst, 0)?,
        }
        self.asm.b(done)?;
        self.asm.bind(divide)?;
        self.quotient(op, dst, lhs, divisor)?;
        self.asm.bind(done)?;
        Ok(())
    }

    fn set_cmp(&mut self, op: CmpOp, dst: Reg, lhs: Reg, rhs: Operand<Reg>) -> Result<()> {
        self.cmp(lhs, rhs)?;
        Ok(self.asm.cset(dst, cond(op))?)
    }

    fn branch_cmp(&mut self, op: CmpOp, lhs: Reg, rhs: Operand<Reg>, target: Label) -> Result<()> {
        self.cmp(lhs, rhs)?;
        Ok(self.asm.b_cond(cond(op), target)?)
    }

    fn branch_zero(&mut self, value: Reg, if_zero: bool, target: Label) -> Result<()> {
        if if_zero {
            self.asm.cbz(value, target)?;
        } else {
            self.asm.cbnz(value, target)?;
        }
        Ok(())
    }

    fn jump(&mut self, target: Label) -> Result<()> {
        Ok(self.asm.b(target)?)
    }

    fn call(
        &mut self,
        _frame: &Frame<Reg>,
        callee: FuncId,
        args: &[Operand<Reg>],
        depth_trap: Label,
        dst: Reg,
        target: CallTarget,
    ) -> Result<Option<usize>> {
        let mut in_regs = Vec::with_capacity(ARGS.len());
        for (i, &arg) in args.iter().enumerate() {
            match ARGS.get(i) {
                Some(&r) => in_regs.push((r, arg)),
                None => {
                    let r = self.reg_of(arg)?;
                    self.str(r, SP, (i - ARGS.len()) as i64 * 8)?;
                }
            }
        }
        for (dst, src) in parallel_moves(&in_regs, TMP) {
            self.load(dst, src)?;
        }
        self.asm.subs_ri(DEPTH, DEPTH, 1)?;
        self.asm.b_cond(Cond::Lo, depth_trap)?;
        let mut site = None;
        match target {
            CallTarget::Entry(entry) => self.asm.bl(entry)?,
            CallTarget::Linked(thunk) => {
                site = Some(self.asm.offset());
                self.asm.bl(thunk)?;
            }
            CallTarget::Table => {
                self.table_entry(callee)?;
                self.asm.blr(TMP)?;
            }
        }
        self.asm.add_ri(DEPTH, DEPTH, 1)?;
        self.asm.mov_rr(dst, X0)?;
        Ok(site)
    }

    /// `br x16`: a `bti c` landing pad accepts a `br` through x16 or x17 (the compiled entry),
    /// and the bridge's `bti jc` any.
    fn call_thunk(&mut self, callee: FuncId) -> Result<()> {
        // Reached by a call: the frame is the caller's call state until the jump.
        self.note(|at| FrameStep::Entry { at });
        self.table_entry(callee)?;
        self.asm.br(TMP)?;
        Ok(())
    }

    /// `bl`: one instruction (naturally aligned); the displacement counts from the instruction
    /// itself, +-128 MiB.
    fn link_call(at: usize, target: usize) -> Option<(usize, [u8; 4])> {
        let disp = (target as i64).checked_sub(at as i64)?;
        let mut a = Assembler::new();
        a.bl_disp(disp).ok()?;
        let bytes: [u8; 4] = a.finish().ok()?.try_into().ok()?;
        Some((0, bytes))
    }

    /// `call` takes one level with `subs DEPTH, DEPTH, 1` and traps on the borrow (`b.lo`): on
    /// DEPTH == 0.
    fn depth_check(&mut self, depth_trap: Label) -> Result<()> {
        Ok(self.asm.cbz(DEPTH, depth_trap)?)
    }

    fn print(&mut self, value: Operand<Reg>) -> Result<()> {
        self.load(X1, value)?;
        self.asm.mov_rr(X0, CTX)?;
        self.call_helper(|h| h.print, off::PRINT_FN)?;
        let ok = self.asm.new_label();
        self.ldr(TMP, CTX, i64::from(off::STOP))?;
        self.asm.cbz(TMP, ok)?;
        self.asm.mov_rr(X0, TMP)?;
        self.ldr(TMP, CTX, i64::from(off::UNWIND))?;
        self.asm.br(TMP)?;
        self.asm.bind(ok)?;
        Ok(())
    }

    fn step(&mut self, trap: Label) -> Result<()> {
        self.ldr(TMP, CTX, i64::from(off::STEPS))?;
        self.asm.subs_ri(TMP, TMP, 1)?;
        self.str(TMP, CTX, i64::from(off::STEPS))?;
        Ok(self.asm.b_cond(Cond::Lo, trap)?)
    }

    fn count(&mut self, n: u32) -> Result<()> {
        self.ctx_add(off::COMPILED, u64::from(n))
    }

    fn exit(&mut self, code: u64) -> Result<()> {
        self.asm.mov_imm(X0, code as i64)?;
        self.ldr(TMP, CTX, i64::from(off::UNWIND))?;
        Ok(self.asm.br(TMP)?)
    }

    fn runtime_stubs(&mut self) -> Result<RuntimeStubs> {
        let saved = [X19, X20, X21, X22, X23, X24, X25, X26, X27, X28];
        // trampoline(ctx = x0, entry = x1, locals = x2) -> x0
        let trampoline = self.asm.offset();
        self.note(|at| FrameStep::Entry { at });
        self.landing_pad(BtiTargets::C);
        self.asm.stp_pre(X29, X30, SP, -96)?;
        self.note_frame_record(96)?;
        for (i, pair) in saved.chunks(2).enumerate() {
            self.asm.stp(pair[0], pair[1], SP, 16 + i as i64 * 16)?;
            self.note_saved(pair, -96 + 16 + i as i32 * 16);
        }
        self.asm.mov_rr(CTX, X0)?;
        self.ldr(TMP, CTX, i64::from(off::ENTRY_SP))?;
        self.asm.str_pre(TMP, SP, -16)?;
        self.asm.mov_sp(TMP, SP)?;
        self.str(TMP, CTX, i64::from(off::ENTRY_SP))?;
        self.ldr(DEPTH, CTX, i64::from(off::DEPTH_LEFT))?;
        self.asm.mov_rr(X0, X2)?;
        self.asm.blr(X1)?;
        let done = self.asm.new_label();
        self.asm.bind(done)?;
        self.note(|at| FrameStep::Remember { at });
        self.asm.ldr_post(TMP, SP, 16)?;
        self.str(TMP, CTX, i64::from(off::ENTRY_SP))?;
        for (i, pair) in saved.chunks(2).enumerate() {
            self.asm.ldp(pair[0], pair[1], SP, 16 + i as i64 * 16)?;
            self.note_restored(pair);
        }
        self.asm.ldp_post(X29, X30, SP, 96)?;
        self.note_frame_record_restored();
        self.asm.ret();
        // The unwind stub runs on the trampoline's frame (it resets SP to it; X29 is kept).
        self.note(|at| FrameStep::Restore { at });
        // unwind(x0 = stop code)
        let unwind = self.asm.offset();
        // Reached by `br x16` (exits, `print`): `jc` admits it whatever BTYPE that sets.
        self.landing_pad(BtiTargets::Jc);
        self.str(X0, CTX, i64::from(off::STOP))?;
        let unwind_now = self.asm.new_label();
        self.asm.bind(unwind_now)?;
        self.ldr(TMP, CTX, i64::from(off::ENTRY_SP))?;
        self.asm.mov_sp(SP, TMP)?;
        self.asm.b(done)?;
        // bridge(x8 = callee, arguments as for a compiled function)
        let bridge = self.asm.offset();
        self.note(|at| FrameStep::Entry { at });
        self.landing_pad(BtiTargets::C);
        self.asm.stp_pre(X29, X30, SP, -16)?;
        self.note_frame_record(16)?;
        self.asm.sub_ri(SP, SP, 64)?;
        for (i, pair) in ARGS.chunks(2).enumerate() {
            self.asm.stp(pair[0], pair[1], SP, i as i64 * 16)?;
        }
        self.str(DEPTH, CTX, i64::from(off::DEPTH_LEFT))?;
        self.asm.mov_rr(X0, CTX)?;
        self.asm.mov_rr(X1, CALLEE)?;
        self.asm.mov_sp(X2, SP)?;
        self.asm.add_ri(X3, X29, 16)?;
        self.call_helper(|h| h.bridge, off::BRIDGE_FN)?;
        self.ldr(TMP, CTX, i64::from(off::STOP))?;
        self.asm.cbnz(TMP, unwind_now)?;
        self.asm.mov_sp(SP, X29)?;
        self.asm.ldp_post(X29, X30, SP, 16)?;
        self.note_frame_record_restored();
        self.asm.ret();
        Ok(RuntimeStubs {
            trampoline,
            unwind,
            bridge,
        })
    }
}

impl A64 {
    /// A BTI landing pad for `targets`, when the code runs in BTI-guarded pages
    /// ([`Target::bti`]); nothing otherwise.
    fn landing_pad(&mut self, targets: BtiTargets) {
        if self.target.bti {
            self.asm.bti(targets);
        }
    }

    /// Calls a helper: `bl` to it when the code is placed within reach ([`Target::helpers`]),
    /// else `ldr x16, [ctx, field]; blr x16`.
    fn call_helper(&mut self, which: fn(&Helpers) -> usize, field: i32) -> Result<()> {
        match &self.target.helpers {
            Some(helpers) => {
                self.helper_calls.push(HelperCall {
                    at: self.asm.offset(),
                    target: which(helpers),
                });
                self.asm.bl_disp(0)?;
            }
            None => {
                self.ldr(TMP, CTX, i64::from(field))?;
                self.asm.blr(TMP)?;
            }
        }
        Ok(())
    }

    /// `dst = lhs / divisor` or `lhs % divisor` (divisor non-zero, not -1).
    fn quotient(&mut self, op: DivOp, dst: Reg, lhs: Reg, divisor: Reg) -> Result<()> {
        match op {
            DivOp::Div => self.asm.sdiv(dst, lhs, divisor)?,
            DivOp::Mod => {
                self.asm.sdiv(TMP2, lhs, divisor)?;
                self.asm.msub(dst, TMP2, divisor, lhs)?;
            }
        }
        Ok(())
    }
}
