//! Lowering a verified function to the interpreter's register form.
//!
//! Every frame is a window of `locals + max_stack` slots: locals first, then the operand stack
//! (the value at stack depth `j` lives in slot `locals + j`, its *home*). Since the verifier
//! fixes the depth before every instruction, stack code maps to three-address operations on
//! slots. Within a basic block the lowering keeps a symbolic stack: `load_local`, `load_imm`,
//! `dup` and `pop` emit nothing, they push or drop a reference to a local, a constant or a slot;
//! an operation reads its operands straight from there and writes its home slot, and a
//! `store_local` right after the operation that produced the value retargets it to the local.
//! A compare followed by `jump_if_false` becomes one compare-and-branch. Before anything that
//! leaves the block (jumps, branches, calls, block boundaries) pending values are written to
//! their homes, so at block boundaries the frame is exactly the stack machine's state.
//!
//! Counting stays exact: each operation carries how many source instructions it accounts for
//! (instructions that emitted nothing are charged to the next operation of the block, or to a
//! `Nop` at its end), and is charged when it starts, so at every trap and every call into the
//! engine the count is the number of instructions begun. When a trapping operation also carries
//! a following `store_local`, its trap record says how many to take back.

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::{Lowered, Op, Reg};
use crate::program::{Function, Insn};

/// A value on the symbolic stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// In this slot (a local, or a stack slot at or below the entry's own depth).
    Slot(Reg),
    /// This constant.
    Imm(i64),
}

/// A binary operation, for choosing the operation form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Bin {
    fn of(insn: Insn) -> Option<Bin> {
        Some(match insn {
            Insn::Add => Bin::Add,
            Insn::Sub => Bin::Sub,
            Insn::Mul => Bin::Mul,
            Insn::Div => Bin::Div,
            Insn::Mod => Bin::Mod,
            Insn::Lt => Bin::Lt,
            Insn::Le => Bin::Le,
            Insn::Gt => Bin::Gt,
            Insn::Ge => Bin::Ge,
            Insn::Eq => Bin::Eq,
            Insn::Ne => Bin::Ne,
            _ => return None,
        })
    }

    /// The operation with its operands swapped, when there is one (`a < b` is `b > a`).
    fn swapped(self) -> Option<Bin> {
        Some(match self {
            Bin::Add | Bin::Mul | Bin::Eq | Bin::Ne => self,
            Bin::Lt => Bin::Gt,
            Bin::Le => Bin::Ge,
            Bin::Gt => Bin::Lt,
            Bin::Ge => Bin::Le,
            Bin::Sub | Bin::Div | Bin::Mod => return None,
        })
    }

    fn is_compare(self) -> bool {
        matches!(
            self,
            Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge | Bin::Eq | Bin::Ne
        )
    }

    /// Constant folding for the operations that cannot trap.
    fn fold(self, a: i64, b: i64) -> Option<i64> {
        Some(match self {
            Bin::Add => a.wrapping_add(b),
            Bin::Sub => a.wrapping_sub(b),
            Bin::Mul => a.wrapping_mul(b),
            Bin::Lt => i64::from(a < b),
            Bin::Le => i64::from(a <= b),
            Bin::Gt => i64::from(a > b),
            Bin::Ge => i64::from(a >= b),
            Bin::Eq => i64::from(a == b),
            Bin::Ne => i64::from(a != b),
            Bin::Div | Bin::Mod => return None,
        })
    }
}

/// The operations each [`Bin`] lowers to: register-register, register-constant and, for the
/// compares, the two compare-and-branch forms (branch unless the compare holds).
macro_rules! forms {
    (@some) => { None };
    (@some $op:expr) => { Some($op) };
    ($($bin:ident => $rr:ident, $ri:ident $(, $jn_rr:ident, $jn_ri:ident)?;)*) => {
        impl Bin {
            fn rr(self, dst: Reg, a: Reg, b: Reg) -> Op {
                match self {
                    $(Bin::$bin => Op::$rr { dst, a, b },)*
                }
            }

            fn ri(self, dst: Reg, a: Reg, k: i64) -> Op {
                match self {
                    $(Bin::$bin => Op::$ri { dst, a, k },)*
                }
            }

            /// Branch to `t` unless the compare holds (`jump_if_false` after the compare).
            fn branch_rr(self, a: Reg, b: Reg, t: u32) -> Option<Op> {
                match self {
                    $(Bin::$bin => forms!(@some $(Op::$jn_rr { a, b, t })?),)*
                }
            }

            fn branch_ri(self, a: Reg, k: i64, t: u32) -> Option<Op> {
                match self {
                    $(Bin::$bin => forms!(@some $(Op::$jn_ri { a, k, t })?),)*
                }
            }
        }
    };
}

forms! {
    Add => AddRR, AddRI;
    Sub => SubRR, SubRI;
    Mul => MulRR, MulRI;
    Div => DivRR, DivRI;
    Mod => ModRR, ModRI;
    Lt => LtRR, LtRI, JnLtRR, JnLtRI;
    Le => LeRR, LeRI, JnLeRR, JnLeRI;
    Gt => GtRR, GtRI, JnGtRR, JnGtRI;
    Ge => GeRR, GeRI, JnGeRR, JnGeRI;
    Eq => EqRR, EqRI, JnEqRR, JnEqRI;
    Ne => NeRR, NeRI, JnNeRR, JnNeRI;
}

struct Lowerer<'a> {
    f: &'a Function,
    ops: Vec<Op>,
    counts: Vec<u32>,
    traps: Vec<(u32, u32)>,
    stack: Vec<Val>,
    /// Source instructions not yet charged to an operation.
    pending: u32,
    /// The last operation emitted wrote the home slot of the top of the stack (and nothing has
    /// been emitted since): a `store_local` may retarget it.
    producer: bool,
    /// Whether the last instruction left the block (no fall-through).
    closed: bool,
    /// Operations whose target is still a source instruction index.
    fixups: Vec<usize>,
}

impl Lowerer<'_> {
    fn home(&self, depth: usize) -> Reg {
        self.f
            .locals
            .saturating_add(u32::try_from(depth).unwrap_or(u32::MAX))
    }

    fn emit(&mut self, op: Op, offset: u32) {
        // Division by a constant: a multiplication by its reciprocal.
        let op = match op {
            Op::DivRI { dst, a, k } => match super::magic_for(k) {
                Some((magic, shift, adjust)) => Op::DivMagic {
                    dst,
                    a,
                    magic,
                    shift,
                    adjust,
                },
                None => op,
            },
            Op::ModRI { dst, a, k } => match (super::magic_for(k), i32::try_from(k)) {
                (Some((magic, shift, adjust)), Ok(k)) => Op::ModMagic {
                    dst,
                    a,
                    magic,
                    shift,
                    adjust,
                    k,
                },
                _ => op,
            },
            other => other,
        };
        self.ops.push(op);
        self.counts.push(self.pending);
        self.traps.push((offset, 0));
        self.pending = 0;
        self.producer = false;
    }

    fn emit_jump(&mut self, op: Op, offset: u32) {
        self.fixups.push(self.ops.len());
        self.emit(op, offset);
    }

    fn pop(&mut self) -> Val {
        let depth = self.stack.len().saturating_sub(1);
        let home = Val::Slot(self.home(depth));
        self.stack.pop().unwrap_or(home)
    }

    /// Writes entries `0..n` that are not in their home slots there.
    fn flush_below(&mut self, n: usize, offset: u32) {
        for j in 0..n.min(self.stack.len()) {
            let home = self.home(j);
            let op = match self.stack.get(j) {
                Some(&Val::Slot(r)) if r == home => continue,
                Some(&Val::Slot(src)) => Op::Mov { dst: home, src },
                Some(&Val::Imm(k)) => Op::Imm { dst: home, k },
                None => continue,
            };
            self.emit(op, offset);
            if let Some(v) = self.stack.get_mut(j) {
                *v = Val::Slot(home);
            }
        }
    }

    fn flush(&mut self, offset: u32) {
        self.flush_below(self.stack.len(), offset);
    }

    /// Puts the value into a slot, materialising a constant in the home of depth `depth`.
    fn in_slot(&mut self, v: Val, depth: usize, offset: u32) -> Reg {
        match v {
            Val::Slot(r) => r,
            Val::Imm(k) => {
                let dst = self.home(depth);
                self.emit(Op::Imm { dst, k }, offset);
                dst
            }
        }
    }

    fn end_block(&mut self, offset: u32) {
        self.flush(offset);
        if self.pending > 0 {
            self.emit(Op::Nop, offset);
        }
    }

    fn start_block(&mut self, depth: u32) {
        self.stack.clear();
        for j in 0..depth as usize {
            let home = self.home(j);
            self.stack.push(Val::Slot(home));
        }
        self.closed = false;
        self.producer = false;
    }

    fn is_backward(target: u32, at: usize) -> bool {
        target as usize <= at
    }

    fn store_local(&mut self, z: u32, offset: u32) {
        let top = self.pop();
        let depth = self.stack.len();
        let aliased = self.stack.contains(&Val::Slot(z));
        let home = self.home(depth);
        let produced = self.producer && self.ops.last().and_then(|op| op.dst()) == Some(home);
        if !aliased && produced && top == Val::Slot(home) {
            // Retarget the operation that produced the value.
            let carried = self.pending;
            self.pending = 0;
            if let (Some(op), Some(count), Some(trap)) = (
                self.ops.last_mut(),
                self.counts.last_mut(),
                self.traps.last_mut(),
            ) {
                op.set_dst(z);
                *count = count.saturating_add(carried);
                trap.1 = trap.1.saturating_add(carried);
            }
            self.producer = false;
            return;
        }
        if aliased {
            // Pending reads of the local must see its old value.
            for j in 0..depth {
                if self.stack.get(j) == Some(&Val::Slot(z)) {
                    let home = self.home(j);
                    self.emit(Op::Mov { dst: home, src: z }, offset);
                    if let Some(v) = self.stack.get_mut(j) {
                        *v = Val::Slot(home);
                    }
                }
            }
        }
        let op = match top {
            Val::Slot(src) => Op::Mov { dst: z, src },
            Val::Imm(k) => Op::Imm { dst: z, k },
        };
        self.emit(op, offset);
    }

    /// A binary operation; returns whether it consumed the following `jump_if_false` too.
    fn binary(&mut self, op: Bin, at: usize, offset: u32) -> bool {
        let b = self.pop();
        let a = self.pop();
        let depth = self.stack.len();
        let dst = self.home(depth);

        // compare + jump_if_false (forward, not a jump target) -> compare-and-branch
        if op.is_compare() {
            let next = at + 1;
            if let Some(&Insn::JumpIfFalse(t)) = self.f.code.get(next)
                && !self.f.is_jump_target(next)
                && !Self::is_backward(t, next)
            {
                self.pending += 1;
                self.flush(offset);
                let branch = match (a, b) {
                    (Val::Slot(a), Val::Slot(b)) => op.branch_rr(a, b, t),
                    (Val::Slot(a), Val::Imm(k)) => op.branch_ri(a, k, t),
                    (Val::Imm(k), Val::Slot(b)) => op.swapped().and_then(|s| s.branch_ri(b, k, t)),
                    (Val::Imm(ka), Val::Imm(kb)) => {
                        let a = self.in_slot(Val::Imm(ka), depth, offset);
                        op.branch_ri(a, kb, t)
                    }
                };
                if let Some(branch) = branch {
                    self.emit_jump(branch, offset);
                }
                return true;
            }
        }

        let emitted = match (a, b) {
            (Val::Slot(a), Val::Slot(b)) => op.rr(dst, a, b),
            (Val::Slot(a), Val::Imm(k)) => op.ri(dst, a, k),
            (Val::Imm(ka), Val::Imm(kb)) if op.fold(ka, kb).is_some() => {
                if let Some(v) = op.fold(ka, kb) {
                    self.stack.push(Val::Imm(v));
                }
                return false;
            }
            (Val::Imm(k), Val::Slot(b)) if op.swapped().is_some() => match op.swapped() {
                Some(s) => s.ri(dst, b, k),
                None => op.rr(dst, dst, b),
            },
            (Val::Imm(ka), b) => {
                let a = self.in_slot(Val::Imm(ka), depth, offset);
                match b {
                    Val::Slot(b) => op.rr(dst, a, b),
                    Val::Imm(kb) => op.ri(dst, a, kb),
                }
            }
        };
        // add_ii feeding an add or subtract of a constant: one operation, a + b + k.
        let fused = match (emitted, self.producer, self.ops.last()) {
            (
                Op::AddRI { dst, a, k } | Op::SubRI { dst, a, k },
                true,
                Some(&Op::AddRR {
                    dst: prev,
                    a: x,
                    b: y,
                }),
            ) if prev == a && a == dst => {
                let k = if matches!(emitted, Op::SubRI { .. }) {
                    k.wrapping_neg()
                } else {
                    k
                };
                Some(Op::AddRRI { dst, a: x, b: y, k })
            }
            _ => None,
        };
        match fused {
            Some(op) => {
                if let (Some(last), Some(count)) = (self.ops.last_mut(), self.counts.last_mut()) {
                    *last = op;
                    *count = count.saturating_add(self.pending);
                    self.pending = 0;
                }
            }
            None => self.emit(emitted, offset),
        }
        self.producer = true;
        self.stack.push(Val::Slot(dst));
        false
    }
}

/// Lowers a verified function. `args` holds every function's argument count.
pub(crate) fn lower(f: &Function, args: &[u32]) -> Lowered {
    let n = f.code.len();
    let mut l = Lowerer {
        f,
        ops: Vec::with_capacity(n),
        counts: Vec::with_capacity(n),
        traps: Vec::with_capacity(n),
        stack: Vec::new(),
        pending: 0,
        producer: false,
        closed: true,
        fixups: Vec::new(),
    };
    let mut start = vec![u32::MAX; n];
    let mut skip = false;
    for (i, &insn) in f.code.iter().enumerate() {
        if std::mem::take(&mut skip) {
            continue;
        }
        let Some(depth) = f.depth_at(i) else {
            continue;
        };
        let offset = f.offset_of(i);
        if f.is_jump_target(i) || l.closed || l.stack.len() != depth as usize {
            if !l.closed {
                l.end_block(offset);
            }
            l.start_block(depth);
        }
        if let Some(s) = start.get_mut(i) {
            *s = u32::try_from(l.ops.len()).unwrap_or(u32::MAX);
        }
        l.pending += 1;
        match insn {
            Insn::LoadImm(k) => l.stack.push(Val::Imm(k)),
            Insn::LoadLocal(x) => l.stack.push(Val::Slot(x)),
            Insn::StoreLocal(z) => l.store_local(z, offset),
            Insn::Neg => {
                let a = l.pop();
                let dst = l.home(l.stack.len());
                match a {
                    Val::Imm(k) => l.stack.push(Val::Imm(k.wrapping_neg())),
                    Val::Slot(src) => {
                        l.emit(Op::Neg { dst, src }, offset);
                        l.producer = true;
                        l.stack.push(Val::Slot(dst));
                    }
                }
            }
            Insn::Jump(t) => {
                l.flush(offset);
                let back = Lowerer::is_backward(t, i);
                let op = if back && f.code.get(t as usize) == Some(&Insn::LoopHeader) {
                    Op::LoopBack { t, at: t }
                } else if back {
                    Op::JumpBack { t }
                } else {
                    Op::Jump { t }
                };
                l.emit_jump(op, offset);
                l.closed = true;
            }
            Insn::JumpIfFalse(t) => {
                let c = l.pop();
                l.flush(offset);
                let c = l.in_slot(c, l.stack.len(), offset);
                let op = if Lowerer::is_backward(t, i) {
                    Op::JzBack { c, t }
                } else {
                    Op::Jz { c, t }
                };
                l.emit_jump(op, offset);
            }
            Insn::LoopHeader => {
                l.flush(offset);
                l.emit(
                    Op::LoopHeader {
                        at: u32::try_from(i).unwrap_or(u32::MAX),
                    },
                    offset,
                );
            }
            Insn::Call(func) => {
                l.flush(offset);
                let nargs = args.get(func as usize).copied().unwrap_or(0) as usize;
                let first = l.stack.len().saturating_sub(nargs);
                let base = l.home(first);
                l.emit(
                    Op::Call {
                        dst: base,
                        func,
                        base,
                    },
                    offset,
                );
                l.stack.truncate(first);
                l.stack.push(Val::Slot(base));
                // A `store_local` next sends the result straight to its local.
                l.producer = true;
            }
            Insn::Return => {
                let op = match l.pop() {
                    Val::Slot(src) => Op::Ret { src },
                    Val::Imm(k) => Op::RetImm { k },
                };
                l.emit(op, offset);
                l.closed = true;
            }
            Insn::ReturnNil => {
                l.emit(Op::RetImm { k: 0 }, offset);
                l.closed = true;
            }
            Insn::Pop => {
                l.pop();
            }
            Insn::Dup => {
                let top = l.pop();
                l.stack.push(top);
                l.stack.push(top);
            }
            Insn::Print => {
                let v = l.pop();
                let src = l.in_slot(v, l.stack.len(), offset);
                l.emit(Op::Print { src }, offset);
            }
            Insn::Halt => {
                l.emit(Op::Halt, offset);
                l.closed = true;
            }
            Insn::Add
            | Insn::Sub
            | Insn::Mul
            | Insn::Div
            | Insn::Mod
            | Insn::Lt
            | Insn::Le
            | Insn::Gt
            | Insn::Ge
            | Insn::Eq
            | Insn::Ne => {
                if let Some(op) = Bin::of(insn) {
                    skip = l.binary(op, i, offset);
                }
            }
        }
    }
    if !l.closed {
        // Unreachable for verified code (nothing falls off the end); stay well-formed anyway.
        l.end_block(f.offset_of(n.saturating_sub(1)));
        l.emit(Op::RetImm { k: 0 }, f.offset_of(n.saturating_sub(1)));
    }
    for &at in &l.fixups {
        let Some(&op) = l.ops.get(at) else {
            continue;
        };
        let target = op.target().unwrap_or(0);
        let mapped = start.get(target as usize).copied().unwrap_or(u32::MAX);
        let new = match op {
            // Continue after the loop header's own operation (this one does its work).
            Op::LoopBack { at: header, .. } => match l.ops.get(mapped as usize) {
                Some(&Op::LoopHeader { at }) if at == header => Op::LoopBack {
                    t: mapped.saturating_add(1),
                    at,
                },
                _ => Op::JumpBack { t: mapped },
            },
            mut op => {
                op.set_target(mapped);
                op
            }
        };
        if let Some(slot) = l.ops.get_mut(at) {
            *slot = new;
        }
    }
    // A back edge to a loop header whose loop is tested at its top takes the test with it:
    // one dispatch less per iteration.
    for i in 0..l.ops.len() {
        if let Some(&Op::LoopBack { t, .. }) = l.ops.get(i)
            && let Some(fused) = l.ops.get(t as usize).and_then(|op| op.fused_loop_back(t))
            && let Some(slot) = l.ops.get_mut(i)
        {
            *slot = fused;
        }
    }
    Lowered {
        ops: l.ops,
        counts: l.counts,
        traps: l.traps,
        frame: f.locals.saturating_add(f.max_stack),
    }
}
