//! The x86-64 half of the template JIT (System V calling convention on every OS).
//!
//! Registers: the value stack uses RCX, RSI, RDI, R8, R9, R10; locals live in RBX, RBP, R12,
//! R13 (callee-saved) or in the frame; R14 holds the remaining call depth and R15 the context
//! across all compiled code; RAX, RDX and R11 are this module's temporaries (RAX/RDX for IDIV
//! and results). The frame is `[outgoing stack arguments][frame slots]` above RSP, with RSP
//! 16-byte aligned in the body so that helpers can be called directly.

use jitasm::Label;
use jitasm::x64::{Assembler, Cond, Mem, Reg};

use super::JitError;
use super::masm::{
    ArithOp, CallTarget, CmpOp, DivOp, Frame, FrameStep, HelperCall, Helpers, Home, MacroAssembler,
    Operand, Result, RuntimeStubs, Target, parallel_moves, signed_magic,
};
use super::runtime::ctx_offsets as off;
use crate::FuncId;

/// Register carrying the context pointer.
const CTX: Reg = Reg::R15;
/// Register carrying the remaining call depth.
const DEPTH: Reg = Reg::R14;
/// Private temporary.
const TMP: Reg = Reg::R11;
/// System V integer argument registers.
const ARGS: [Reg; 6] = [Reg::Rdi, Reg::Rsi, Reg::Rdx, Reg::Rcx, Reg::R8, Reg::R9];

/// The x86-64 macro-assembler.
pub(crate) struct X64 {
    asm: Assembler,
    /// The frame of the function being compiled (set by `native_entry`).
    frame: Option<Frame<Reg>>,
    /// How the frame changes, for CFI (see [`FrameStep`]).
    steps: Vec<FrameStep>,
    target: Target,
    helper_calls: Vec<HelperCall>,
}

/// DWARF register numbers of RSP and RBP (System V x86-64 psABI, figure 3.36).
const DWARF_RSP: u16 = 7;
const DWARF_RBP: u16 = 6;

/// The DWARF register number of `r` (System V x86-64 psABI, figure 3.36: RAX, RDX, RCX, RBX,
/// RSI, RDI, RBP, RSP, R8-R15).
pub(crate) fn dwarf(r: Reg) -> u16 {
    const BY_ENCODING: [u16; 16] = [0, 2, 1, 3, 7, 6, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];
    BY_ENCODING[r as usize & 15]
}

fn ctx(field: i32) -> Mem {
    Mem::base(CTX, field)
}

fn cond(op: CmpOp) -> Cond {
    match op {
        CmpOp::Lt => Cond::L,
        CmpOp::Le => Cond::Le,
        CmpOp::Gt => Cond::G,
        CmpOp::Ge => Cond::Ge,
        CmpOp::Eq => Cond::E,
        CmpOp::Ne => Cond::Ne,
    }
}

fn fits_i32(v: i64) -> Option<i32> {
    i32::try_from(v).ok()
}

/// Bytes the body reserves below the saved registers (keeps RSP 16-byte aligned).
fn frame_bytes(frame: &Frame<Reg>) -> Result<i32> {
    let words = u64::from(frame.outgoing) + u64::from(frame.slots);
    let saved = frame.saved.len() as u64;
    let mut bytes = words * 8;
    if (8 + saved * 8 + bytes) % 16 != 0 {
        bytes += 8;
    }
    i32::try_from(bytes).map_err(|_| JitError::Internal("frame larger than 2 GiB"))
}

fn slot_mem(frame: &Frame<Reg>, slot: u32) -> Result<Mem> {
    let disp = (u64::from(frame.outgoing) + u64::from(slot)) * 8;
    let disp = i32::try_from(disp).map_err(|_| JitError::Internal("slot beyond 2 GiB"))?;
    Ok(Mem::base(Reg::Rsp, disp))
}

impl X64 {
    /// Frame of the function being compiled: slot addresses depend on it. The code generator
    /// emits `native_entry` first, which records it.
    fn slot(&self, slot: u32) -> Result<Mem> {
        let frame = self
            .frame
            .as_ref()
            .ok_or(JitError::Internal("slot used before the frame was set"))?;
        slot_mem(frame, slot)
    }

    /// `cmp lhs, rhs`.
    fn cmp(&mut self, lhs: Reg, rhs: Operand<Reg>) -> Result<()> {
        match rhs {
            Operand::Reg(r) => self.asm.cmp_rr(lhs, r),
            Operand::Imm(v) => match fits_i32(v) {
                Some(i) => self.asm.cmp_ri(lhs, i),
                None => {
                    self.asm.mov_ri(TMP, v);
                    self.asm.cmp_rr(lhs, TMP);
                }
            },
            Operand::Slot(s) => {
                let m = self.slot(s)?;
                self.asm.cmp_rm(lhs, m)?;
            }
        }
        Ok(())
    }

    /// Checks the native stack for `bytes` more, then pushes the saved registers and reserves
    /// the frame.
    fn prologue(&mut self, frame: &Frame<Reg>, stack_trap: Label) -> Result<()> {
        self.note(|at| FrameStep::Entry { at });
        let bytes = frame_bytes(frame)?;
        let total = bytes
            .checked_add(frame.saved.len() as i32 * 8)
            .ok_or(JitError::Internal("frame larger than 2 GiB"))?;
        self.asm.lea(TMP, Mem::base(Reg::Rsp, -total))?;
        self.asm.cmp_rm(TMP, ctx(off::STACK_LIMIT))?;
        self.asm.jcc(Cond::B, stack_trap)?;
        let mut cfa = 8;
        for &r in &frame.saved {
            self.asm.push(r);
            cfa += 8;
            self.note(|at| FrameStep::CfaOffset { at, offset: cfa });
            self.note(|at| FrameStep::Saved {
                at,
                reg: dwarf(r),
                offset: -cfa,
            });
        }
        if bytes > 0 {
            self.asm.sub_ri(Reg::Rsp, bytes);
            self.note(|at| FrameStep::CfaOffset {
                at,
                offset: cfa + bytes,
            });
        }
        Ok(())
    }

    /// Records a frame step at the current offset.
    fn note(&mut self, step: impl FnOnce(usize) -> FrameStep) {
        let at = self.asm.offset();
        self.steps.push(step(at));
    }

    fn set_home(&mut self, frame: &Frame<Reg>, local: usize, src: Operand<Reg>) -> Result<()> {
        match frame.homes.get(local) {
            Some(Home::Reg(h)) => self.load(*h, src),
            Some(Home::Slot(s)) => self.store(*s, src),
            None => Err(JitError::Internal("local without a home")),
        }
    }
}

impl X64 {
    /// Calls a helper: `call rel32` to it when the code is placed within reach
    /// ([`Target::helpers`]), else `call [ctx + field]`.
    fn call_helper(&mut self, which: fn(&Helpers) -> usize, field: i32) -> Result<()> {
        match &self.target.helpers {
            Some(helpers) => {
                self.helper_calls.push(HelperCall {
                    at: self.asm.offset(),
                    target: which(helpers),
                });
                self.asm.call_rel32(0);
            }
            None => self.asm.call_m(ctx(field))?,
        }
        Ok(())
    }

    /// `rax = callee` (the bridge reads it), `TMP` = the function table; returns `callee`'s
    /// entry in it, to call or jump through.
    fn table_slot(&mut self, callee: FuncId) -> Result<Mem> {
        self.asm.mov_ri(Reg::Rax, i64::from(callee));
        self.asm.mov_rm(TMP, ctx(off::TABLE))?;
        let disp = i32::try_from(u64::from(callee) * 8)
            .map_err(|_| JitError::Internal("function index too large"))?;
        Ok(Mem::base(TMP, disp))
    }
}

impl MacroAssembler for X64 {
    type Reg = Reg;
    const SCRATCH: &'static [Reg] = &[Reg::Rcx, Reg::Rsi, Reg::Rdi, Reg::R8, Reg::R9, Reg::R10];
    const LOCAL_REGS: &'static [Reg] = &[Reg::Rbx, Reg::Rbp, Reg::R12, Reg::R13];
    const REG_ARGS: u32 = 6;

    fn new(target: Target) -> Self {
        X64 {
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
        self.prologue(frame, stack_trap)?;
        let bytes = frame_bytes(frame)?;
        let incoming = bytes + frame.saved.len() as i32 * 8 + 8;
        for local in 0..frame.homes.len() {
            let src = if local < frame.args as usize {
                match ARGS.get(local) {
                    Some(r) => Operand::Reg(*r),
                    None => {
                        let disp = (local as i32 - ARGS.len() as i32) * 8 + incoming;
                        self.asm.mov_rm(Reg::Rax, Mem::base(Reg::Rsp, disp))?;
                        Operand::Reg(Reg::Rax)
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
        self.prologue(frame, stack_trap)?;
        for local in 0..frame.homes.len() {
            let disp =
                i32::try_from(local * 8).map_err(|_| JitError::Internal("too many locals"))?;
            self.asm.mov_rm(Reg::Rax, Mem::base(Reg::Rdi, disp))?;
            self.set_home(frame, local, Operand::Reg(Reg::Rax))?;
        }
        self.asm.jmp(target)?;
        Ok(())
    }

    fn ret(&mut self, frame: &Frame<Reg>, value: Operand<Reg>) -> Result<()> {
        self.load(Reg::Rax, value)?;
        let bytes = frame_bytes(frame)?;
        self.note(|at| FrameStep::Remember { at });
        let mut cfa = 8 + 8 * frame.saved.len() as i32;
        if bytes > 0 {
            self.asm.add_ri(Reg::Rsp, bytes);
            self.note(|at| FrameStep::CfaOffset { at, offset: cfa });
        }
        for &r in frame.saved.iter().rev() {
            self.asm.pop(r);
            cfa -= 8;
            self.note(|at| FrameStep::CfaOffset { at, offset: cfa });
            self.note(|at| FrameStep::Restored { at, reg: dwarf(r) });
        }
        self.asm.ret();
        self.note(|at| FrameStep::Restore { at });
        Ok(())
    }

    fn load(&mut self, dst: Reg, src: Operand<Reg>) -> Result<()> {
        match src {
            Operand::Reg(r) if r == dst => {}
            Operand::Reg(r) => self.asm.mov_rr(dst, r),
            Operand::Imm(v) => self.asm.mov_ri(dst, v),
            Operand::Slot(s) => {
                let m = self.slot(s)?;
                self.asm.mov_rm(dst, m)?;
            }
        }
        Ok(())
    }

    fn store(&mut self, slot: u32, src: Operand<Reg>) -> Result<()> {
        let m = self.slot(slot)?;
        match src {
            Operand::Reg(r) => self.asm.mov_mr(m, r)?,
            Operand::Imm(v) => match fits_i32(v) {
                Some(i) => self.asm.mov_mi(m, i)?,
                None => {
                    self.asm.mov_ri(TMP, v);
                    self.asm.mov_mr(m, TMP)?;
                }
            },
            Operand::Slot(s) if s == slot => {}
            Operand::Slot(s) => {
                let from = self.slot(s)?;
                self.asm.mov_rm(TMP, from)?;
                self.asm.mov_mr(m, TMP)?;
            }
        }
        Ok(())
    }

    fn arith(&mut self, op: ArithOp, dst: Reg, lhs: Reg, rhs: Operand<Reg>) -> Result<()> {
        let rhs = match rhs {
            Operand::Imm(v) => match fits_i32(v) {
                Some(i) => {
                    match op {
                        ArithOp::Add if dst == lhs => self.asm.add_ri(dst, i),
                        ArithOp::Add => self.asm.lea(dst, Mem::base(lhs, i))?,
                        ArithOp::Sub if dst == lhs => self.asm.sub_ri(dst, i),
                        ArithOp::Sub => match i.checked_neg() {
                            Some(n) => self.asm.lea(dst, Mem::base(lhs, n))?,
                            None => {
                                self.asm.mov_rr(dst, lhs);
                                self.asm.sub_ri(dst, i);
                            }
                        },
                        ArithOp::Mul => self.asm.imul_rri(dst, lhs, i),
                    }
                    return Ok(());
                }
                None => {
                    self.asm.mov_ri(TMP, v);
                    Operand::Reg(TMP)
                }
            },
            other => other,
        };
        if let Operand::Reg(r) = rhs {
            if r == dst && dst != lhs {
                // dst = lhs op dst: compute in the temporary.
                self.asm.mov_rr(TMP, lhs);
                self.arith_in_place(op, TMP, Operand::Reg(r))?;
                self.asm.mov_rr(dst, TMP);
                return Ok(());
            }
        }
        if dst != lhs {
            self.asm.mov_rr(dst, lhs);
        }
        self.arith_in_place(op, dst, rhs)
    }

    fn neg(&mut self, dst: Reg, src: Reg) -> Result<()> {
        if dst != src {
            self.asm.mov_rr(dst, src);
        }
        self.asm.neg_r(dst);
        Ok(())
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
                self.asm.jmp(by_zero)?;
                return Ok(());
            }
            Operand::Imm(-1) => {
                match op {
                    DivOp::Div => {
                        self.asm.mov_rr(Reg::Rax, lhs);
                        self.asm.neg_r(Reg::Rax);
                        self.asm.jcc(Cond::O, overflow)?;
                        self.asm.mov_rr(dst, Reg::Rax);
                    }
                    DivOp::Mod => self.asm.mov_ri(dst, 0),
                }
                return Ok(());
            }
            Operand::Imm(1) => {
                match op {
                    DivOp::Div => self.asm.mov_rr(dst, lhs),
                    DivOp::Mod => self.asm.mov_ri(dst, 0),
                }
                return Ok(());
            }
            Operand::Imm(d) if signed_magic(d).is_some() => {
                // Multiply by the reciprocal (masm::signed_magic): RDX = high half of
                // magic * n, corrected, shifted, plus its sign bit = n / d truncated.
                let (magic, shift) = signed_magic(d).ok_or(JitError::Internal("magic"))?;
                self.asm.mov_ri(Reg::Rax, magic);
                self.asm.imul_wide_r(lhs);
                if d > 0 && magic < 0 {
                    self.asm.add_rr(Reg::Rdx, lhs);
                } else if d < 0 && magic > 0 {
                    self.asm.sub_rr(Reg::Rdx, lhs);
                }
                if shift > 0 {
                    self.asm.sar_ri(Reg::Rdx, shift);
                }
                self.asm.mov_rr(Reg::Rax, Reg::Rdx);
                self.asm.shr_ri(Reg::Rax, 63);
                self.asm.add_rr(Reg::Rdx, Reg::Rax);
                match op {
                    DivOp::Div => self.asm.mov_rr(dst, Reg::Rdx),
                    DivOp::Mod => {
                        // n - q * d (dst may be lhs: computed in RAX first).
                        match i32::try_from(d) {
                            Ok(d32) => self.asm.imul_rri(Reg::Rdx, Reg::Rdx, d32),
                            Err(_) => {
                                self.asm.mov_ri(TMP, d);
                                self.asm.imul_rr(Reg::Rdx, TMP);
                            }
                        }
                        self.asm.mov_rr(Reg::Rax, lhs);
                        self.asm.sub_rr(Reg::Rax, Reg::Rdx);
                        self.asm.mov_rr(dst, Reg::Rax);
                    }
                }
                return Ok(());
            }
            Operand::Imm(v) => {
                self.asm.mov_ri(TMP, v);
                self.asm.mov_rr(Reg::Rax, lhs);
                self.asm.cqo();
                self.asm.idiv_r(TMP);
                let result = if op == DivOp::Div { Reg::Rax } else { Reg::Rdx };
                self.asm.mov_rr(dst, result);
                return Ok(());
            }
            Operand::Reg(r) => r,
            Operand::Slot(s) => {
                let m = self.slot(s)?;
                self.asm.mov_rm(TMP, m)?;
                TMP
            }
        };
        let divide = self.asm.new_label();
        let done = self.asm.new_label();
        self.asm.test_rr(divisor, divisor);
        self.asm.jcc(Cond::E, by_zero)?;
        self.asm.cmp_ri(divisor, -1);
        self.asm.jcc(Cond::Ne, divide)?;
        match op {
            DivOp::Div => {
                self.asm.mov_rr(Reg::Rax, lhs);
                self.asm.neg_r(Reg::Rax);
                self.asm.jcc(Cond::O, overflow)?;
                self.asm.mov_rr(dst, Reg::Rax);
            }
            DivOp::Mod => self.asm.mov_ri(dst, 0),
        }
        self.asm.jmp(done)?;
        self.asm.bind(divide)?;
        self.asm.mov_rr(Reg::Rax, lhs);
        self.asm.cqo();
        self.asm.idiv_r(divisor);
        let result = if op == DivOp::Div { Reg::Rax } else { Reg::Rdx };
        self.asm.mov_rr(dst, result);
        self.asm.bind(done)?;
        Ok(())
    }

    fn set_cmp(&mut self, op: CmpOp, dst: Reg, lhs: Reg, rhs: Operand<Reg>) -> Result<()> {
        self.cmp(lhs, rhs)?;
        self.asm.setcc(cond(op), dst);
        self.asm.movzx_r8(dst, dst);
        Ok(())
    }

    fn branch_cmp(&mut self, op: CmpOp, lhs: Reg, rhs: Operand<Reg>, target: Label) -> Result<()> {
        self.cmp(lhs, rhs)?;
        self.asm.jcc(cond(op), target)?;
        Ok(())
    }

    fn branch_zero(&mut self, value: Reg, if_zero: bool, target: Label) -> Result<()> {
        self.asm.test_rr(value, value);
        self.asm
            .jcc(if if_zero { Cond::E } else { Cond::Ne }, target)?;
        Ok(())
    }

    fn jump(&mut self, target: Label) -> Result<()> {
        Ok(self.asm.jmp(target)?)
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
                    let disp = i32::try_from((i - ARGS.len()) * 8)
                        .map_err(|_| JitError::Internal("too many arguments"))?;
                    self.load(Reg::Rax, arg)?;
                    self.asm.mov_mr(Mem::base(Reg::Rsp, disp), Reg::Rax)?;
                }
            }
        }
        for (dst, src) in parallel_moves(&in_regs, TMP) {
            self.load(dst, src)?;
        }
        self.asm.sub_ri(DEPTH, 1);
        self.asm.jcc(Cond::B, depth_trap)?;
        let mut site = None;
        match target {
            CallTarget::Entry(entry) => self.asm.call_label(entry)?,
            CallTarget::Linked(thunk) => {
                // The displacement (after the 1-byte opcode) 4-byte aligned: linking it is one
                // aligned store.
                while (self.asm.offset() + 1) % 4 != 0 {
                    self.asm.nop();
                }
                site = Some(self.asm.offset());
                self.asm.call_label(thunk)?;
            }
            CallTarget::Table => {
                let slot = self.table_slot(callee)?;
                self.asm.call_m(slot)?;
            }
        }
        self.asm.add_ri(DEPTH, 1);
        self.asm.mov_rr(dst, Reg::Rax);
        Ok(site)
    }

    fn call_thunk(&mut self, callee: FuncId) -> Result<()> {
        // Reached by a call: the frame is the caller's call state until the jump.
        self.note(|at| FrameStep::Entry { at });
        let slot = self.table_slot(callee)?;
        self.asm.jmp_m(slot)?;
        Ok(())
    }

    /// `call rel32`: the displacement, at byte 1, counts from the end of the instruction.
    fn link_call(at: usize, target: usize) -> Option<(usize, [u8; 4])> {
        let next = at.checked_add(5)?;
        let disp = i32::try_from(target as i64 - next as i64).ok()?;
        Some((1, disp.to_le_bytes()))
    }

    /// `call` takes one level with `sub DEPTH, 1` and traps on the borrow: on DEPTH == 0.
    fn depth_check(&mut self, depth_trap: Label) -> Result<()> {
        self.asm.test_rr(DEPTH, DEPTH);
        self.asm.jcc(Cond::E, depth_trap)?;
        Ok(())
    }

    fn print(&mut self, value: Operand<Reg>) -> Result<()> {
        self.load(Reg::Rsi, value)?;
        self.asm.mov_rr(Reg::Rdi, CTX);
        self.call_helper(|h| h.print, off::PRINT_FN)?;
        let ok = self.asm.new_label();
        self.asm.mov_rm(Reg::Rax, ctx(off::STOP))?;
        self.asm.test_rr(Reg::Rax, Reg::Rax);
        self.asm.jcc(Cond::E, ok)?;
        self.asm.jmp_m(ctx(off::UNWIND))?;
        self.asm.bind(ok)?;
        Ok(())
    }

    fn step(&mut self, trap: Label) -> Result<()> {
        self.asm.sub_mi(ctx(off::STEPS), 1)?;
        self.asm.jcc(Cond::B, trap)?;
        Ok(())
    }

    fn count(&mut self, n: u32) -> Result<()> {
        let n = i32::try_from(n).map_err(|_| JitError::Internal("run too long to count"))?;
        self.asm.add_mi(ctx(off::COMPILED), n)?;
        Ok(())
    }

    fn exit(&mut self, code: u64) -> Result<()> {
        self.asm.mov_ri(Reg::Rax, code as i64);
        self.asm.jmp_m(ctx(off::UNWIND))?;
        Ok(())
    }

    fn runtime_stubs(&mut self) -> Result<RuntimeStubs> {
        let a = &mut self.asm;
        let saved = [Reg::Rbx, Reg::Rbp, Reg::R12, Reg::R13, Reg::R14, Reg::R15];
        // trampoline(ctx = rdi, entry = rsi, locals = rdx) -> rax
        let trampoline = a.offset();
        let steps = &mut self.steps;
        steps.push(FrameStep::Entry { at: trampoline });
        let mut cfa = 8;
        for r in saved {
            a.push(r);
            cfa += 8;
            let at = a.offset();
            steps.push(FrameStep::CfaOffset { at, offset: cfa });
            steps.push(FrameStep::Saved {
                at,
                reg: dwarf(r),
                offset: -cfa,
            });
        }
        a.mov_rr(CTX, Reg::Rdi);
        a.mov_rm(Reg::Rax, ctx(off::ENTRY_SP))?;
        a.push(Reg::Rax); // the outer trampoline's unwind target; 7 pushes keep RSP aligned
        steps.push(FrameStep::CfaOffset {
            at: a.offset(),
            offset: cfa + 8,
        });
        a.mov_mr(ctx(off::ENTRY_SP), Reg::Rsp)?;
        a.mov_rm(DEPTH, ctx(off::DEPTH_LEFT))?;
        a.mov_rr(Reg::Rdi, Reg::Rdx);
        a.call_r(Reg::Rsi);
        let done = a.new_label();
        a.bind(done)?;
        steps.push(FrameStep::Remember { at: a.offset() });
        a.pop(Reg::Rcx);
        steps.push(FrameStep::CfaOffset {
            at: a.offset(),
            offset: cfa,
        });
        a.mov_mr(ctx(off::ENTRY_SP), Reg::Rcx)?;
        for r in saved.iter().rev() {
            a.pop(*r);
            cfa -= 8;
            let at = a.offset();
            steps.push(FrameStep::CfaOffset { at, offset: cfa });
            steps.push(FrameStep::Restored { at, reg: dwarf(*r) });
        }
        a.ret();
        // The unwind stub runs on the trampoline's frame (it resets RSP to it).
        steps.push(FrameStep::Restore { at: a.offset() });
        // unwind(rax = stop code)
        let unwind = a.offset();
        a.mov_mr(ctx(off::STOP), Reg::Rax)?;
        let unwind_now = a.new_label();
        a.bind(unwind_now)?;
        a.mov_rm(Reg::Rsp, ctx(off::ENTRY_SP))?;
        a.jmp(done)?;
        // bridge(rax = callee, arguments as for a compiled function)
        let bridge = a.offset();
        steps.push(FrameStep::Entry { at: bridge });
        a.push(Reg::Rbp);
        let at = a.offset();
        steps.push(FrameStep::CfaOffset { at, offset: 16 });
        steps.push(FrameStep::Saved {
            at,
            reg: DWARF_RBP,
            offset: -16,
        });
        a.mov_rr(Reg::Rbp, Reg::Rsp);
        steps.push(FrameStep::Cfa {
            at: a.offset(),
            reg: DWARF_RBP,
            offset: 16,
        });
        a.sub_ri(Reg::Rsp, 48);
        for (i, r) in ARGS.iter().enumerate() {
            a.mov_mr(Mem::base(Reg::Rsp, i as i32 * 8), *r)?;
        }
        a.mov_mr(ctx(off::DEPTH_LEFT), DEPTH)?;
        a.mov_rr(Reg::Rdi, CTX);
        a.mov_rr(Reg::Rsi, Reg::Rax);
        a.mov_rr(Reg::Rdx, Reg::Rsp);
        a.lea(Reg::Rcx, Mem::base(Reg::Rbp, 16))?;
        self.call_helper(|h| h.bridge, off::BRIDGE_FN)?;
        let a = &mut self.asm;
        let steps = &mut self.steps;
        a.cmp_mi(ctx(off::STOP), 0)?;
        a.jcc(Cond::Ne, unwind_now)?;
        a.mov_rr(Reg::Rsp, Reg::Rbp);
        a.pop(Reg::Rbp);
        let at = a.offset();
        steps.push(FrameStep::Cfa {
            at,
            reg: DWARF_RSP,
            offset: 8,
        });
        steps.push(FrameStep::Restored { at, reg: DWARF_RBP });
        a.ret();
        Ok(RuntimeStubs {
            trampoline,
            unwind,
            bridge,
        })
    }
}

impl X64 {
    /// `dst = dst op rhs` with `rhs` a register or a slot.
    fn arith_in_place(&mut self, op: ArithOp, dst: Reg, rhs: Operand<Reg>) -> Result<()> {
        match rhs {
            Operand::Reg(r) => match op {
                ArithOp::Add => self.asm.add_rr(dst, r),
                ArithOp::Sub => self.asm.sub_rr(dst, r),
                ArithOp::Mul => self.asm.imul_rr(dst, r),
            },
            Operand::Slot(s) => {
                let m = self.slot(s)?;
                match op {
                    ArithOp::Add => self.asm.add_rm(dst, m)?,
                    ArithOp::Sub => self.asm.sub_rm(dst, m)?,
                    ArithOp::Mul => self.asm.imul_rm(dst, m)?,
                }
            }
            Operand::Imm(v) => {
                self.asm.mov_ri(TMP, v);
                return self.arith_in_place(op, dst, Operand::Reg(TMP));
            }
        }
        Ok(())
    }
}
