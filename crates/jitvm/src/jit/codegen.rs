//! The ISA-neutral template compiler: one verified function in, machine code out.
//!
//! One template per opcode, emitted through a [`MacroAssembler`]. The operand stack is a lazy
//! value stack (as in winch): an entry is a constant, a reference to a local, a scratch register
//! or its own frame slot; constants and locals are materialised only when an instruction needs
//! them in a register, so `load_local i; load_imm 1; add_ii; store_local i` becomes one `add`
//! on the local's register. At every jump target the stack is flushed to its frame slots (the
//! verifier guarantees the same depth on every path), so blocks meet in one canonical state.
//! Compare followed by `jump_if_false` is fused into compare-and-branch.

use std::collections::HashMap;

use jitasm::Label;

use super::JitError;
use super::masm::{
    ArithOp, CallTarget, CmpOp, DivOp, Frame, FrameStep, HelperCall, Home, MacroAssembler, Operand,
    Result, Target,
};
use super::runtime::{HALT_CODE, trap_code};
use crate::{FuncId, Insn, Program, TrapKind};

/// What compiled code must do besides computing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CodegenOptions {
    /// Count steps (calls and taken backward jumps) against the step limit.
    pub steps: bool,
    /// Count executed instructions for `--stats`.
    pub count: bool,
    /// Direct helper calls and BTI landing pads.
    pub target: Target,
    /// Compile calls of other functions as linkable calls ([`CallTarget::Linked`]), for a
    /// runtime that links them ([`CompiledCode::call_sites`]); through the table otherwise.
    pub link_calls: bool,
}

/// A compiled function, position independent but for its direct helper calls.
#[derive(Clone, Debug)]
pub(crate) struct CompiledCode {
    /// The machine code.
    pub code: Vec<u8>,
    /// Offset of the entry compiled callers use (arguments per the ABI).
    pub native_entry: usize,
    /// Offset of the array entry at the start of the function.
    pub start_entry: usize,
    /// On-stack-replacement entries: (index of a `loop_header`, offset of an array entry that
    /// continues just after it).
    pub osr_entries: Vec<(u32, usize)>,
    /// How the native frame changes along the code (for CFI).
    #[cfg_attr(
        not(feature = "debuginfo"),
        expect(dead_code, reason = "read only to describe frames for debuggers")
    )]
    pub frame_steps: Vec<FrameStep>,
    /// Direct helper calls, patched when the code is published (the code is position
    /// independent but for them).
    pub helper_calls: Vec<HelperCall>,
    /// Calls compiled inline (small leaf callees).
    pub inlined_calls: u32,
    /// Linkable calls ([`CallTarget::Linked`]): (offset of the call instruction, callee), to
    /// patch with [`MacroAssembler::link_call`] once the callee is compiled.
    pub call_sites: Vec<(usize, FuncId)>,
}

/// One value-stack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val<R> {
    Imm(i64),
    Local(u32),
    Reg(R),
    /// In the frame slot of its own depth.
    Slot,
    /// An argument of a callee being compiled inline, in a scratch register the inline body
    /// only reads (like a local's home: not owned by the entry, never freed with it).
    Arg(R),
}

struct Codegen<'a, M: MacroAssembler> {
    masm: M,
    program: &'a Program,
    func: FuncId,
    frame: Frame<M::Reg>,
    /// Frame slot of operand depth 0.
    stack_base: u32,
    stack: Vec<Val<M::Reg>>,
    free: Vec<M::Reg>,
    labels: Vec<Option<Label>>,
    /// Labels just after each `loop_header` (where on-stack replacement enters).
    after_headers: Vec<(u32, Label)>,
    traps: HashMap<u64, Label>,
    options: CodegenOptions,
    inlined_calls: u32,
    /// This function's native entry: recursive calls go straight there.
    self_entry: Option<Label>,
    /// The thunk of each callee called through a linkable call (emitted after the body).
    thunks: Vec<(FuncId, Label)>,
    /// See [`CompiledCode::call_sites`].
    call_sites: Vec<(usize, FuncId)>,
}

/// Compiles function `func` of `program` for the ISA of `M`.
pub(crate) fn compile<M: MacroAssembler>(
    program: &Program,
    func: FuncId,
    options: CodegenOptions,
) -> Result<CompiledCode> {
    let function = program
        .function(func)
        .ok_or(JitError::Internal("compile: no such function"))?;
    let (frame, stack_base) = plan_frame::<M>(program, func)?;
    let mut cg = Codegen {
        masm: M::new(options.target),
        program,
        func,
        frame,
        stack_base,
        stack: Vec::with_capacity(function.max_stack() as usize),
        free: M::SCRATCH.iter().rev().copied().collect(),
        labels: vec![None; function.code().len()],
        after_headers: Vec::new(),
        traps: HashMap::new(),
        options,
        inlined_calls: 0,
        self_entry: None,
        thunks: Vec::new(),
        call_sites: Vec::new(),
    };
    let stack_trap = cg.trap_label(TrapKind::NativeStack, 0);
    let entry = cg.masm.new_label();
    cg.masm.bind(entry)?;
    cg.self_entry = Some(entry);
    cg.masm.native_entry(&cg.frame, stack_trap)?;
    let native_entry = 0;
    cg.body()?;
    let start = cg.masm.new_label();
    cg.masm.bind(start)?;
    let target = cg.label(0)?;
    cg.masm.array_entry(&cg.frame, stack_trap, target)?;
    let mut entries = Vec::new();
    for (index, target) in std::mem::take(&mut cg.after_headers) {
        let entry = cg.masm.new_label();
        cg.masm.bind(entry)?;
        cg.masm.array_entry(&cg.frame, stack_trap, target)?;
        entries.push((index, entry));
    }
    let mut traps: Vec<(u64, Label)> = cg.traps.iter().map(|(c, l)| (*c, *l)).collect();
    traps.sort_unstable_by_key(|(code, _)| *code);
    for (code, label) in traps {
        cg.masm.bind(label)?;
        cg.masm.exit(code)?;
    }
    // Last: each thunk starts in its caller's call state (the trap exits above are reached
    // from the body, in its frame).
    for (callee, label) in std::mem::take(&mut cg.thunks) {
        cg.masm.bind(label)?;
        cg.masm.call_thunk(callee)?;
    }
    let start_entry = cg
        .masm
        .label_offset(start)
        .ok_or(JitError::Internal("start entry label unbound"))?;
    let mut osr_entries = Vec::with_capacity(entries.len());
    for (index, label) in entries {
        let offset = cg
            .masm
            .label_offset(label)
            .ok_or(JitError::Internal("array entry label unbound"))?;
        osr_entries.push((index, offset));
    }
    let frame_steps = cg.masm.take_frame_steps();
    let (code, helper_calls) = cg.masm.finish()?;
    Ok(CompiledCode {
        code,
        native_entry,
        start_entry,
        osr_entries,
        frame_steps,
        helper_calls,
        inlined_calls: cg.inlined_calls,
        call_sites: cg.call_sites,
    })
}

/// Gives the most used locals the callee-saved registers, the others frame slots.
fn plan_frame<M: MacroAssembler>(program: &Program, func: FuncId) -> Result<(Frame<M::Reg>, u32)> {
    let function = program
        .function(func)
        .ok_or(JitError::Internal("plan_frame: no such function"))?;
    let locals = function.locals() as usize;
    let mut uses = vec![0u64; locals];
    let mut outgoing = 0u32;
    for insn in function.code() {
        match *insn {
            Insn::LoadLocal(n) | Insn::StoreLocal(n) => {
                if let Some(u) = uses.get_mut(n as usize) {
                    *u += 1;
                }
            }
            Insn::Call(callee) => {
                let args = program.function(callee).map_or(0, |f| f.args());
                outgoing = outgoing.max(args.saturating_sub(M::REG_ARGS));
            }
            _ => {}
        }
    }
    let mut order: Vec<usize> = (0..locals).filter(|&l| uses[l] > 0).collect();
    order.sort_by_key(|&l| (std::cmp::Reverse(uses[l]), l));
    let mut homes = vec![Home::Slot(0); locals];
    let mut saved = Vec::new();
    for (&local, &reg) in order.iter().zip(M::LOCAL_REGS) {
        homes[local] = Home::Reg(reg);
        saved.push(reg);
    }
    let mut slots = 0u32;
    for home in homes.iter_mut() {
        if let Home::Slot(s) = home {
            *s = slots;
            slots += 1;
        }
    }
    let stack_base = slots;
    slots += function.max_stack();
    let frame = Frame {
        args: function.args(),
        homes,
        slots,
        outgoing,
        saved,
    };
    Ok((frame, stack_base))
}

impl<M: MacroAssembler> Codegen<'_, M> {
    fn label(&mut self, index: usize) -> Result<Label> {
        let slot = self
            .labels
            .get_mut(index)
            .ok_or(JitError::Internal("jump target out of range"))?;
        Ok(match slot {
            Some(l) => *l,
            None => {
                let l = self.masm.new_label();
                *slot = Some(l);
                l
            }
        })
    }

    fn trap_label(&mut self, kind: TrapKind, offset: u32) -> Label {
        let code = trap_code(kind, self.func, offset);
        if let Some(l) = self.traps.get(&code) {
            return *l;
        }
        let l = self.masm.new_label();
        self.traps.insert(code, l);
        l
    }

    fn body(&mut self) -> Result<()> {
        let function = self
            .program
            .function(self.func)
            .ok_or(JitError::Internal("body: no such function"))?;
        let code = function.code();
        let mut live = true;
        let mut index = 0;
        while index < code.len() {
            let Some(depth) = function.depth_at(index) else {
                index += 1;
                continue;
            };
            let insn = code[index];
            let boundary =
                index == 0 || function.is_jump_target(index) || matches!(insn, Insn::LoopHeader);
            if boundary {
                if live {
                    self.flush()?;
                } else {
                    self.reset(depth);
                }
                let l = self.label(index)?;
                self.masm.bind(l)?;
                self.reset(depth);
            } else if !live {
                return Err(JitError::Internal("reachable code after a terminator"));
            }
            if self.options.count && (boundary || ends_run(code[index - 1])) {
                self.masm.count(run_length(function, index))?;
            }
            if self.stack.len() != depth as usize {
                return Err(JitError::Internal(
                    "value stack depth disagrees with the verifier",
                ));
            }
            let offset = function.offset_of(index);
            let next = code
                .get(index + 1)
                .copied()
                .filter(|_| !function.is_jump_target(index + 1));
            let consumed = self.insn(index, insn, offset, next)?;
            live = !matches!(
                insn,
                Insn::Jump(_) | Insn::Return | Insn::ReturnNil | Insn::Halt
            );
            index += if consumed { 2 } else { 1 };
        }
        Ok(())
    }

    /// Emits one instruction; returns `true` when it also consumed the next one (fusion).
    fn insn(&mut self, index: usize, insn: Insn, offset: u32, next: Option<Insn>) -> Result<bool> {
        match insn {
            Insn::LoadImm(v) => self.stack.push(Val::Imm(v)),
            Insn::LoadLocal(n) => self.stack.push(Val::Local(n)),
            Insn::StoreLocal(n) => {
                let v = self.pop()?;
                self.store_local(n, v)?;
            }
            Insn::Add => return self.arith(ArithOp::Add, next),
            Insn::Sub => return self.arith(ArithOp::Sub, next),
            Insn::Mul => return self.arith(ArithOp::Mul, next),
            Insn::Div => self.divmod(DivOp::Div, offset)?,
            Insn::Mod => self.divmod(DivOp::Mod, offset)?,
            Insn::Neg => {
                let v = self.pop()?;
                if let Val::Imm(a) = v.0 {
                    self.stack.push(Val::Imm(a.wrapping_neg()));
                } else {
                    let (src, owned) = self.use_reg(v)?;
                    let dst = if owned { src } else { self.alloc()? };
                    self.masm.neg(dst, src)?;
                    self.stack.push(Val::Reg(dst));
                }
            }
            Insn::Lt => return self.compare(index, CmpOp::Lt, next),
            Insn::Le => return self.compare(index, CmpOp::Le, next),
            Insn::Gt => return self.compare(index, CmpOp::Gt, next),
            Insn::Ge => return self.compare(index, CmpOp::Ge, next),
            Insn::Eq => return self.compare(index, CmpOp::Eq, next),
            Insn::Ne => return self.compare(index, CmpOp::Ne, next),
            Insn::Jump(target) => {
                self.flush()?;
                if self.options.steps && target as usize <= index {
                    let trap = self.trap_label(TrapKind::StepLimit, offset);
                    self.masm.step(trap)?;
                }
                let l = self.label(target as usize)?;
                self.masm.jump(l)?;
            }
            Insn::JumpIfFalse(target) => {
                let v = self.pop()?;
                self.jump_if_false(index, v, target, offset)?;
            }
            Insn::LoopHeader => {
                // The interpreter has executed (and counted) the header when it enters here.
                let after = self.masm.new_label();
                self.masm.bind(after)?;
                self.after_headers.push((index as u32, after));
            }
            Insn::Call(callee) => self.call(callee, offset)?,
            Insn::Return => {
                let v = self.pop()?;
                let op = self.operand(v);
                self.masm.ret(&self.frame, op)?;
                self.release(v);
            }
            Insn::ReturnNil => self.masm.ret(&self.frame, Operand::Imm(0))?,
            Insn::Pop => {
                let v = self.pop()?;
                self.release(v);
            }
            Insn::Dup => {
                let depth = self
                    .stack
                    .len()
                    .checked_sub(1)
                    .ok_or(JitError::Internal("dup on an empty stack"))?;
                let top = self.stack[depth];
                match top {
                    Val::Imm(_) | Val::Local(_) | Val::Arg(_) => self.stack.push(top),
                    Val::Reg(_) | Val::Slot => {
                        let src = self.operand((top, depth));
                        let dst = self.alloc()?;
                        self.masm.load(dst, src)?;
                        self.stack.push(Val::Reg(dst));
                    }
                }
            }
            Insn::Print => {
                let v = self.pop()?;
                self.spill_regs()?;
                let op = self.operand(v);
                self.masm.print(op)?;
                self.release(v);
            }
            Insn::Halt => self.masm.exit(HALT_CODE)?,
        }
        Ok(false)
    }

    fn pop(&mut self) -> Result<(Val<M::Reg>, usize)> {
        let v = self
            .stack
            .pop()
            .ok_or(JitError::Internal("value stack underflow"))?;
        Ok((v, self.stack.len()))
    }

    fn operand(&self, (v, depth): (Val<M::Reg>, usize)) -> Operand<M::Reg> {
        match v {
            Val::Imm(i) => Operand::Imm(i),
            Val::Reg(r) | Val::Arg(r) => Operand::Reg(r),
            Val::Slot => Operand::Slot(self.stack_base + depth as u32),
            Val::Local(n) => match self.frame.homes.get(n as usize) {
                Some(Home::Reg(r)) => Operand::Reg(*r),
                Some(Home::Slot(s)) => Operand::Slot(*s),
                None => Operand::Imm(0),
            },
        }
    }

    /// Frees the scratch register of a consumed entry.
    fn release(&mut self, (v, _): (Val<M::Reg>, usize)) {
        if let Val::Reg(r) = v {
            self.free.push(r);
        }
    }

    /// A scratch register, spilling the deepest register entry if none is free.
    fn alloc(&mut self) -> Result<M::Reg> {
        if let Some(r) = self.free.pop() {
            return Ok(r);
        }
        let depth = self
            .stack
            .iter()
            .position(|v| matches!(v, Val::Reg(_)))
            .ok_or(JitError::Internal("out of scratch registers"))?;
        if let Val::Reg(r) = self.stack[depth] {
            self.masm
                .store(self.stack_base + depth as u32, Operand::Reg(r))?;
            self.stack[depth] = Val::Slot;
            return Ok(r);
        }
        Err(JitError::Internal("spill found no register"))
    }

    /// The entry in a register: its own scratch register (owned) or a local's home (borrowed).
    fn use_reg(&mut self, v: (Val<M::Reg>, usize)) -> Result<(M::Reg, bool)> {
        match self.operand(v) {
            Operand::Reg(r) => Ok((r, matches!(v.0, Val::Reg(_)))),
            op => {
                let r = self.alloc()?;
                self.masm.load(r, op)?;
                Ok((r, true))
            }
        }
    }

    /// Stores every entry that is not in its own slot there (a block boundary).
    fn flush(&mut self) -> Result<()> {
        for depth in 0..self.stack.len() {
            let v = self.stack[depth];
            if v == Val::Slot {
                continue;
            }
            let op = self.operand((v, depth));
            self.masm.store(self.stack_base + depth as u32, op)?;
            self.stack[depth] = Val::Slot;
            if let Val::Reg(r) = v {
                self.free.push(r);
            }
        }
        Ok(())
    }

    /// Stores register entries to their slots (before code that clobbers scratch registers).
    fn spill_regs(&mut self) -> Result<()> {
        for depth in 0..self.stack.len() {
            if let Val::Reg(r) = self.stack[depth] {
                self.masm
                    .store(self.stack_base + depth as u32, Operand::Reg(r))?;
                self.stack[depth] = Val::Slot;
                self.free.push(r);
            }
        }
        Ok(())
    }

    /// The model at a jump target: every entry in its slot, every scratch register free.
    fn reset(&mut self, depth: u32) {
        self.stack.clear();
        self.stack.resize(depth as usize, Val::Slot);
        self.free = M::SCRATCH.iter().rev().copied().collect();
    }

    fn store_local(&mut self, n: u32, v: (Val<M::Reg>, usize)) -> Result<()> {
        if v.0 == Val::Local(n) {
            return Ok(());
        }
        self.materialize_local(n)?;
        let src = self.operand(v);
        match self.frame.homes.get(n as usize).copied() {
            Some(Home::Reg(h)) => self.masm.load(h, src)?,
            Some(Home::Slot(s)) => self.masm.store(s, src)?,
            None => return Err(JitError::Internal("store to a local out of range")),
        }
        self.release(v);
        Ok(())
    }

    /// Copies stack entries that still refer to local `n` before it changes.
    fn materialize_local(&mut self, n: u32) -> Result<()> {
        for depth in 0..self.stack.len() {
            if self.stack[depth] == Val::Local(n) {
                let src = self.operand((Val::Local(n), depth));
                let r = self.alloc()?;
                self.masm.load(r, src)?;
                self.stack[depth] = Val::Reg(r);
            }
        }
        Ok(())
    }

    fn arith(&mut self, op: ArithOp, next: Option<Insn>) -> Result<bool> {
        let b = self.pop()?;
        let mut a = self.pop()?;
        let mut b = b;
        if let (Val::Imm(x), Val::Imm(y)) = (a.0, b.0) {
            let v = match op {
                ArithOp::Add => x.wrapping_add(y),
                ArithOp::Sub => x.wrapping_sub(y),
                ArithOp::Mul => x.wrapping_mul(y),
            };
            self.stack.push(Val::Imm(v));
            return Ok(false);
        }
        let commutative = op != ArithOp::Sub;
        // `local = local op x`: compute in place in the local's register.
        if let Some(Insn::StoreLocal(n)) = next {
            if commutative && b.0 == Val::Local(n) && a.0 != Val::Local(n) {
                std::mem::swap(&mut a, &mut b);
            }
            let home = self.frame.homes.get(n as usize).copied();
            if let (Val::Local(m), Some(Home::Reg(h))) = (a.0, home) {
                if m == n && !self.stack.contains(&Val::Local(n)) {
                    let rhs = self.operand(b);
                    self.masm.arith(op, h, h, rhs)?;
                    self.release(b);
                    return Ok(true);
                }
            }
        }
        // Commutative: constants go right, and a register of our own goes left (it becomes
        // the destination).
        if commutative
            && (matches!(a.0, Val::Imm(_))
                || (!matches!(a.0, Val::Reg(_)) && matches!(b.0, Val::Reg(_))))
        {
            std::mem::swap(&mut a, &mut b);
        }
        let (lhs, owned) = self.use_reg(a)?;
        let rhs = self.operand(b);
        let dst = if owned { lhs } else { self.alloc()? };
        self.masm.arith(op, dst, lhs, rhs)?;
        self.release(b);
        self.stack.push(Val::Reg(dst));
        Ok(false)
    }

    fn divmod(&mut self, op: DivOp, offset: u32) -> Result<()> {
        let b = self.pop()?;
        let a = self.pop()?;
        if let (Val::Imm(x), Val::Imm(y)) = (a.0, b.0) {
            let folded = match op {
                DivOp::Div => x.checked_div(y),
                DivOp::Mod if y == -1 => Some(0),
                DivOp::Mod => x.checked_rem(y),
            };
            if let Some(v) = folded {
                self.stack.push(Val::Imm(v));
                return Ok(());
            }
        }
        let by_zero = self.trap_label(TrapKind::DivisionByZero, offset);
        let overflow = self.trap_label(TrapKind::IntegerOverflow, offset);
        let (lhs, owned) = self.use_reg(a)?;
        let rhs = self.operand(b);
        let dst = if owned { lhs } else { self.alloc()? };
        self.masm.divmod(op, dst, lhs, rhs, by_zero, overflow)?;
        self.release(b);
        self.stack.push(Val::Reg(dst));
        Ok(())
    }

    fn compare(&mut self, index: usize, op: CmpOp, next: Option<Insn>) -> Result<bool> {
        let mut b = self.pop()?;
        let mut a = self.pop()?;
        let mut op = op;
        if let (Val::Imm(x), Val::Imm(y)) = (a.0, b.0) {
            self.stack.push(Val::Imm(i64::from(op.eval(x, y))));
            return Ok(false);
        }
        if matches!(a.0, Val::Imm(_)) {
            std::mem::swap(&mut a, &mut b);
            op = op.swap();
        }
        if let Some(Insn::JumpIfFalse(target)) = next {
            let (lhs, owned) = self.use_reg(a)?;
            let rhs = self.operand(b);
            self.flush()?;
            let backward = self.options.steps && target as usize <= index + 1;
            if backward {
                let skip = self.masm.new_label();
                self.masm.branch_cmp(op, lhs, rhs, skip)?;
                let trap = self.trap_label(TrapKind::StepLimit, offset_after(self, index));
                self.masm.step(trap)?;
                let l = self.label(target as usize)?;
                self.masm.jump(l)?;
                self.masm.bind(skip)?;
            } else {
                let l = self.label(target as usize)?;
                self.masm.branch_cmp(op.negate(), lhs, rhs, l)?;
            }
            if owned {
                self.free.push(lhs);
            }
            self.release(b);
            return Ok(true);
        }
        let (lhs, owned) = self.use_reg(a)?;
        let rhs = self.operand(b);
        let dst = if owned { lhs } else { self.alloc()? };
        self.masm.set_cmp(op, dst, lhs, rhs)?;
        self.release(b);
        self.stack.push(Val::Reg(dst));
        Ok(false)
    }

    fn jump_if_false(
        &mut self,
        index: usize,
        v: (Val<M::Reg>, usize),
        target: u32,
        offset: u32,
    ) -> Result<()> {
        let backward = self.options.steps && target as usize <= index;
        let l = self.label(target as usize)?;
        if let Val::Imm(x) = v.0 {
            self.flush()?;
            if x == 0 {
                if backward {
                    let trap = self.trap_label(TrapKind::StepLimit, offset);
                    self.masm.step(trap)?;
                }
                self.masm.jump(l)?;
            }
            return Ok(());
        }
        let (r, owned) = self.use_reg(v)?;
        self.flush()?;
        if backward {
            let skip = self.masm.new_label();
            self.masm.branch_zero(r, false, skip)?;
            let trap = self.trap_label(TrapKind::StepLimit, offset);
            self.masm.step(trap)?;
            self.masm.jump(l)?;
            self.masm.bind(skip)?;
        } else {
            self.masm.branch_zero(r, true, l)?;
        }
        if owned {
            self.free.push(r);
        }
        Ok(())
    }

    fn call(&mut self, callee: FuncId, offset: u32) -> Result<()> {
        let nargs = self
            .program
            .function(callee)
            .ok_or(JitError::Internal("call to an unknown function"))?
            .args() as usize;
        if self.inlinable(callee) {
            return self.inline_call(callee, offset);
        }
        if self.options.steps {
            let trap = self.trap_label(TrapKind::StepLimit, offset);
            self.masm.step(trap)?;
        }
        let base = self
            .stack
            .len()
            .checked_sub(nargs)
            .ok_or(JitError::Internal("call with too few values"))?;
        let args: Vec<Operand<M::Reg>> = (base..self.stack.len())
            .map(|d| self.operand((self.stack[d], d)))
            .collect();
        for depth in base..self.stack.len() {
            let v = self.stack[depth];
            self.release((v, depth));
        }
        self.stack.truncate(base);
        self.spill_regs()?;
        let depth_trap = self.trap_label(TrapKind::CallDepth, offset);
        // A recursive call goes straight to this code's own entry: the table would lead to the
        // same code (a function is compiled once and its code lives while it runs). Other
        // calls go through a thunk to the table until the callee is compiled and the call is
        // linked to its code.
        let target = match self.self_entry {
            Some(entry) if callee == self.func => CallTarget::Entry(entry),
            _ if self.options.link_calls => CallTarget::Linked(self.thunk(callee)),
            _ => CallTarget::Table,
        };
        let dst = self.alloc()?;
        let site = self
            .masm
            .call(&self.frame, callee, &args, depth_trap, dst, target)?;
        if let Some(at) = site {
            self.call_sites.push((at, callee));
        }
        self.stack.push(Val::Reg(dst));
        Ok(())
    }

    /// The label of `callee`'s thunk (see [`MacroAssembler::call_thunk`]).
    fn thunk(&mut self, callee: FuncId) -> Label {
        if let Some(&(_, label)) = self.thunks.iter().find(|(f, _)| *f == callee) {
            return label;
        }
        let label = self.masm.new_label();
        self.thunks.push((callee, label));
        label
    }
}

impl<M: MacroAssembler> Codegen<'_, M> {
    /// Whether a call of `callee` here is compiled inline: `callee` is a small leaf expression
    /// (its arguments, constants, arithmetic and compares, then `return`: no jump, call, print,
    /// store or extra local), instructions are not being counted (`--stats` counts per run of
    /// straight-line code), and its operand stack fits the caller's frame slots and the
    /// scratch registers next to the arguments it pins.
    fn inlinable(&self, callee: FuncId) -> bool {
        const MAX_INSNS: usize = 24;
        let (Some(g), Some(f)) = (
            self.program.function(callee),
            self.program.function(self.func),
        ) else {
            return false;
        };
        let code = g.code();
        let args = g.args();
        if self.options.count || callee == self.func || g.locals() != args || code.len() > MAX_INSNS
        {
            return false;
        }
        let Some((last, body)) = code.split_last() else {
            return false;
        };
        let simple = body.iter().all(|insn| match *insn {
            Insn::LoadLocal(n) => n < args,
            Insn::LoadImm(_)
            | Insn::Add
            | Insn::Sub
            | Insn::Mul
            | Insn::Div
            | Insn::Mod
            | Insn::Neg
            | Insn::Lt
            | Insn::Le
            | Insn::Gt
            | Insn::Ge
            | Insn::Eq
            | Insn::Ne
            | Insn::Dup
            | Insn::Pop => true,
            _ => false,
        });
        if !simple || *last != Insn::Return {
            return false;
        }
        let Some(base) = self.stack.len().checked_sub(args as usize) else {
            return false;
        };
        let pinned = self.stack[base..]
            .iter()
            .filter(|v| matches!(v, Val::Reg(_) | Val::Slot))
            .count();
        base + g.max_stack() as usize <= f.max_stack() as usize
            && pinned + (g.max_stack() as usize) < M::SCRATCH.len()
    }

    /// Compiles a call of `callee` ([`inlinable`](Self::inlinable)) inline: the same step and
    /// call depth checks as a call, then the callee's instructions on the arguments in place,
    /// its traps reported at its own offsets, as the interpreter reports them.
    fn inline_call(&mut self, callee: FuncId, offset: u32) -> Result<()> {
        let g = self
            .program
            .function(callee)
            .ok_or(JitError::Internal("inline: no such function"))?;
        if self.options.steps {
            let trap = self.trap_label(TrapKind::StepLimit, offset);
            self.masm.step(trap)?;
        }
        let depth_trap = self.trap_label(TrapKind::CallDepth, offset);
        self.masm.depth_check(depth_trap)?;
        let base = self
            .stack
            .len()
            .checked_sub(g.args() as usize)
            .ok_or(JitError::Internal("call with too few values"))?;
        let passed: Vec<(Val<M::Reg>, usize)> = (base..self.stack.len())
            .map(|d| (self.stack[d], d))
            .collect();
        // Off the stack first, so that no allocation below spills an argument's register.
        self.stack.truncate(base);
        let mut argv = Vec::with_capacity(passed.len());
        let mut pinned = Vec::new();
        for (v, depth) in passed {
            argv.push(match v {
                Val::Imm(_) | Val::Local(_) | Val::Arg(_) => v,
                Val::Reg(r) => {
                    pinned.push(r);
                    Val::Arg(r)
                }
                Val::Slot => {
                    // Its slot is about to be reused by the callee's operand stack.
                    let src = self.operand((v, depth));
                    let r = self.alloc()?;
                    self.masm.load(r, src)?;
                    pinned.push(r);
                    Val::Arg(r)
                }
            });
        }
        let caller = std::mem::replace(&mut self.func, callee);
        let code = g.code();
        let mut result = None;
        for (i, &insn) in code.iter().enumerate() {
            match insn {
                Insn::LoadLocal(n) => {
                    let v = *argv
                        .get(n as usize)
                        .ok_or(JitError::Internal("inline: argument out of range"))?;
                    self.stack.push(v);
                }
                Insn::Return => {
                    result = Some(self.pop()?);
                    break;
                }
                _ => {
                    let next = code.get(i + 1).copied();
                    if self.insn(i, insn, g.offset_of(i), next)? {
                        return Err(JitError::Internal("inline: fused an instruction"));
                    }
                }
            }
        }
        self.func = caller;
        let (v, _) = result.ok_or(JitError::Internal("inline: no return"))?;
        if self.stack.len() != base {
            return Err(JitError::Internal("inline: operand stack unbalanced"));
        }
        let v = match v {
            // Returning an argument: its register becomes the result's own.
            Val::Arg(r) if pinned.contains(&r) => {
                pinned.retain(|&p| p != r);
                Val::Reg(r)
            }
            other => other,
        };
        self.free.extend(pinned);
        self.stack.push(v);
        self.inlined_calls += 1;
        Ok(())
    }
}

/// The byte offset of the instruction after `index` (the fused `jump_if_false`).
fn offset_after<M: MacroAssembler>(cg: &Codegen<'_, M>, index: usize) -> u32 {
    cg.program
        .function(cg.func)
        .map_or(0, |f| f.offset_of(index + 1))
}

/// Whether a counted run of straight-line instructions ends after `insn`.
fn ends_run(insn: Insn) -> bool {
    matches!(
        insn,
        Insn::Jump(_)
            | Insn::JumpIfFalse(_)
            | Insn::LoopHeader
            | Insn::Call(_)
            | Insn::Return
            | Insn::ReturnNil
            | Insn::Halt
    )
}

/// Instructions in the straight-line run that starts at `index`.
fn run_length(function: &crate::Function, index: usize) -> u32 {
    let code = function.code();
    let mut end = index;
    while end < code.len() {
        let insn = code[end];
        end += 1;
        if ends_run(insn)
            || function.is_jump_target(end)
            || matches!(code.get(end), Some(Insn::LoopHeader))
        {
            break;
        }
    }
    (end - index) as u32
}
