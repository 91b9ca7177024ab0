//! The interpreter.
//!
//! The verifier lowers every function once to a register form (see `ir`): each frame is
//! a window of `locals + max_stack` slots of one value stack shared by all frames of a run, and
//! the stack code becomes three-address operations on those slots, with compare-and-branch and
//! store-retargeting fused in. The loop below is one `match` per operation over that array.
//! A call needs no allocation once the stack and the frame list have grown: the callee's frame
//! starts at the caller's first argument slot, so the arguments are already its first locals, and
//! its result goes straight to the slot the call names (the first argument's, or the local a
//! following `store_local` stores it in).
//!
//! # Events, in the order compiled code must reproduce them
//!
//! - `call`: one step is taken (if none is left: [`TrapKind::StepLimit`] at the call), then the
//!   new depth is checked (above [`Limits::max_depth`]: [`TrapKind::CallDepth`] at the call),
//!   then the callee's locals past its arguments are zeroed and [`Engine::enter`] is asked; if
//!   it answers `None` the call is interpreted.
//! - A taken backward jump (`jump` or `jump_if_false` whose target is at or before the jump):
//!   one step (if none is left: [`TrapKind::StepLimit`] at the jump). Forward jumps are free.
//! - `loop_header`: [`Engine::loop_header`]; `Some(v)` returns `v` from the frame.
//! - `print`: [`Engine::print`].
//! - Counting (the `count` flag): every instruction begun, the trapping one included, is added
//!   to [`Counters::interpreted`] (a `halt` or `return` counts too); the count is added to the
//!   engine's counters before every call into the engine and when the interpreter returns.
//!   `steps_left` is used in place in the engine's counters (never copied), so compiled code
//!   run by the engine and the interpreter share it directly.
//!
//! A call whose frame cannot be allocated (the value stack would not fit in memory) traps with
//! [`TrapKind::CallDepth`] like a call beyond the depth limit.
//!
//! Division by zero traps with [`TrapKind::DivisionByZero`], `i64::MIN / -1` with
//! [`TrapKind::IntegerOverflow`]; `i64::MIN % -1` is 0.

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::io::{self, Write};

use crate::ir::{Op, Reg, magic_div};
use crate::program::{Counters, Engine, FuncId, Limits, Program, Stop, Trap, TrapKind};

/// An engine without a JIT: every call and loop is interpreted, `print` writes `{v}\n` to `W`.
#[derive(Debug)]
pub struct PlainEngine<W: Write> {
    out: W,
    counters: Counters,
    error: Option<io::Error>,
}

impl<W: Write> PlainEngine<W> {
    /// An engine printing to `out`.
    pub fn new(out: W) -> Self {
        PlainEngine {
            out,
            counters: Counters::default(),
            error: None,
        }
    }

    /// The output.
    pub fn output(&self) -> &W {
        &self.out
    }

    /// The output, mutably (e.g. to flush it).
    pub fn output_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Gives the output back.
    pub fn into_output(self) -> W {
        self.out
    }

    /// The first write error of `print`, if any (later prints are skipped after it).
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// The counters (instruction count, steps left).
    pub fn stats(&self) -> Counters {
        self.counters
    }
}

impl<W: Write> Engine for PlainEngine<W> {
    #[inline(always)]
    fn observes(&self) -> bool {
        false
    }

    #[inline(always)]
    fn enter(
        &mut self,
        _program: &Program,
        _func: FuncId,
        _locals: &mut [i64],
        _depth: u32,
    ) -> Result<Option<i64>, Stop> {
        Ok(None)
    }

    #[inline(always)]
    fn loop_header(
        &mut self,
        _program: &Program,
        _func: FuncId,
        _at: u32,
        _locals: &mut [i64],
        _depth: u32,
    ) -> Result<Option<i64>, Stop> {
        Ok(None)
    }

    fn print(&mut self, value: i64) {
        if self.error.is_none()
            && let Err(e) = writeln!(self.out, "{value}")
        {
            self.error = Some(e);
        }
    }

    #[inline(always)]
    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

/// The message a trap is reported with: `trap: <reason> in <func> at <offset>`.
pub fn trap_message(program: &Program, trap: &Trap) -> String {
    let name = program.function(trap.func).map_or("?", |f| f.name());
    format!(
        "trap: {} in {} at {}",
        trap.kind,
        crate::error::quote(name),
        trap.offset
    )
}

/// Runs `main` and returns its result. Sets `engine.counters().steps_left` to
/// `limits.max_steps` first; `count` adds every interpreted instruction to
/// `engine.counters().interpreted`.
pub fn run<E: Engine>(
    program: &Program,
    engine: &mut E,
    limits: &Limits,
    count: bool,
) -> Result<i64, Stop> {
    engine.counters().steps_left = limits.max_steps;
    let main = program.main();
    if limits.max_depth < 1 {
        return Err(Stop::Trap(Trap {
            kind: TrapKind::CallDepth,
            func: main,
            offset: 0,
        }));
    }
    call(program, engine, limits, main, &[], 1, count)
}

/// Runs one call of `func` with `args` as a new frame at depth `depth` (counting the frame:
/// main alone is 1) and returns its result.
///
/// For calls from compiled code: the caller has already taken the call's step and checked the
/// depth limit (see the module documentation); this zeroes the locals past the arguments, asks
/// [`Engine::enter`] (which may run the call natively) and otherwise interprets the frame and
/// the calls it makes. It is re-entrant: each invocation has its own value stack. `args` should
/// hold exactly the callee's argument count (missing ones are taken as 0, extra ones ignored);
/// an unknown `func` returns 0 (neither happens with a verified program).
pub fn call<E: Engine>(
    program: &Program,
    engine: &mut E,
    limits: &Limits,
    func: FuncId,
    args: &[i64],
    depth: u32,
    count: bool,
) -> Result<i64, Stop> {
    let Some(f) = program.function(func) else {
        return Ok(0);
    };
    let frame = f.lowered.frame as usize;
    let mut stack = vec![0i64; frame.max(WINDOW)];
    for (slot, &arg) in stack.iter_mut().zip(args.iter().take(f.args() as usize)) {
        *slot = arg;
    }
    if let Some(locals) = stack.get_mut(..f.locals() as usize)
        && let Some(v) = engine.enter(program, func, locals, depth)?
    {
        return Ok(v);
    }
    if count {
        exec::<E, true>(program, engine, limits, stack, func, depth)
    } else {
        exec::<E, false>(program, engine, limits, stack, func, depth)
    }
}

/// A suspended caller.
#[derive(Clone, Copy, Debug)]
struct Frame {
    func: FuncId,
    pc: usize,
    base: usize,
    /// Where the result of the call it is suspended in goes (a stack index).
    ret: usize,
    /// Instructions fused into the call after it (a `store_local` of its result), counted
    /// when it returns.
    after: u32,
}

/// Slots a frame of at most this many is addressed through: a `[i64; WINDOW]` view indexed by
/// the low byte of the slot number, so that reading and writing a slot needs no bounds check.
/// Larger frames (rare: over 256 locals and stack slots) are addressed through a slice with
/// checks. The value stack always has `WINDOW` slots from the base of the running frame.
const WINDOW: usize = 256;

/// The slots of the running frame, as the dispatch loop reads and writes them.
trait Slots {
    /// Slot `r` (0 for a slot beyond the frame, which a lowered function never names).
    fn rd(&self, r: Reg) -> i64;
    /// Writes slot `r` (ignored beyond the frame).
    fn wr(&mut self, r: Reg, v: i64);
    /// The first `n` slots, the locals (fewer if the frame has fewer).
    fn locals(&mut self, n: usize) -> &mut [i64];
}

/// A frame of at most [`WINDOW`] slots: every slot number the lowering gives it is below 256,
/// so its low byte is the slot number.
impl Slots for [i64; WINDOW] {
    #[inline(always)]
    fn rd(&self, r: Reg) -> i64 {
        // In bounds by type (a `u8` index into 256 slots): compiled without a check.
        self.get(usize::from(r as u8)).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn wr(&mut self, r: Reg, v: i64) {
        if let Some(s) = self.get_mut(usize::from(r as u8)) {
            *s = v;
        }
    }

    fn locals(&mut self, n: usize) -> &mut [i64] {
        self.as_mut_slice().locals(n)
    }
}

impl Slots for [i64] {
    #[inline(always)]
    fn rd(&self, r: Reg) -> i64 {
        self.get(r as usize).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn wr(&mut self, r: Reg, v: i64) {
        if let Some(s) = self.get_mut(r as usize) {
            *s = v;
        }
    }

    fn locals(&mut self, n: usize) -> &mut [i64] {
        let n = n.min(self.len());
        self.get_mut(..n).unwrap_or_default()
    }
}

#[inline(always)]
fn div(a: i64, b: i64) -> Result<i64, TrapKind> {
    if b == 0 {
        Err(TrapKind::DivisionByZero)
    } else {
        a.checked_div(b).ok_or(TrapKind::IntegerOverflow)
    }
}

#[inline(always)]
fn rem(a: i64, b: i64) -> Result<i64, TrapKind> {
    if b == 0 {
        Err(TrapKind::DivisionByZero)
    } else {
        Ok(a.wrapping_rem(b))
    }
}

/// Interprets the frame of `func` at stack base 0 (its locals already set and `enter` already
/// asked) and every call it makes, until it returns. `stack` holds at least `WINDOW` slots.
#[allow(
    clippy::too_many_lines,
    reason = "the interpreter loop: one match over every operation, kept in one function for dispatch speed"
)]
fn exec<E: Engine, const COUNT: bool>(
    program: &Program,
    engine: &mut E,
    limits: &Limits,
    mut stack: Vec<i64>,
    entry: FuncId,
    entry_depth: u32,
) -> Result<i64, Stop> {
    let funcs = program.functions();
    let observes = engine.observes();
    let mut frames: Vec<Frame> = Vec::new();
    let mut icount: u64 = 0;
    let mut func = entry;
    let mut pc = 0usize;
    let mut base = 0usize;
    let mut depth = entry_depth;

    // `steps_left` is used in place in the engine's counters (no copy to write back); the
    // instruction count is kept here and added to them before every call into the engine.
    macro_rules! sync_out {
        () => {{
            if COUNT {
                let c = engine.counters();
                c.interpreted = c.interpreted.wrapping_add(icount);
                icount = 0;
            }
        }};
    }
    macro_rules! finish {
        ($r:expr) => {{
            if COUNT {
                let c = engine.counters();
                c.interpreted = c.interpreted.wrapping_add(icount);
            }
            return $r;
        }};
    }

    'frame: loop {
        let Some(f) = funcs.get(func as usize) else {
            finish!(Ok(0));
        };
        let low = &f.lowered;
        let ops = low.ops.as_slice();

        macro_rules! trap {
            ($kind:expr) => {{
                let (offset, uncount) =
                    low.traps.get(pc.wrapping_sub(1)).copied().unwrap_or((0, 0));
                if COUNT {
                    icount = icount.wrapping_sub(u64::from(uncount));
                }
                finish!(Err(Stop::Trap(Trap {
                    kind: $kind,
                    func,
                    offset,
                })));
            }};
        }
        // Returns `$v` from the current frame.
        macro_rules! ret {
            ($v:expr) => {{
                let v = $v;
                match frames.pop() {
                    None => finish!(Ok(v)),
                    Some(caller) => {
                        if let Some(slot) = stack.get_mut(caller.ret) {
                            *slot = v;
                        }
                        if COUNT {
                            icount = icount.wrapping_add(u64::from(caller.after));
                        }
                        func = caller.func;
                        pc = caller.pc;
                        base = caller.base;
                        depth = depth.wrapping_sub(1);
                        continue 'frame;
                    }
                }
            }};
        }
        macro_rules! step {
            () => {{
                let c = engine.counters();
                if c.steps_left == 0 {
                    trap!(TrapKind::StepLimit);
                }
                c.steps_left -= 1;
            }};
        }

        // Tells the engine about the loop header `$at` (when it can act on it): on-stack
        // replacement may finish the frame.
        macro_rules! loop_header {
            ($regs:ident, $at:expr) => {{
                if observes {
                    sync_out!();
                    let locals = $regs.locals(f.locals() as usize);
                    match engine.loop_header(program, func, $at, locals, depth) {
                        Ok(None) => {}
                        Ok(Some(v)) => ret!(v),
                        Err(stop) => finish!(Err(stop)),
                    }
                }
            }};
        }

        // A fused back edge (`Op::Loop*`) to the compare-and-branch at `$t`: the step, the
        // loop header at `$t - 1`, then the branch at `$t` with `$holds` as its compare.
        macro_rules! loop_test {
            ($regs:ident, $t:expr, $holds:expr) => {{
                step!();
                let t = $t as usize;
                let count = |at: usize| u64::from(low.counts.get(at).copied().unwrap_or(0));
                if COUNT {
                    icount = icount.wrapping_add(count(t.wrapping_sub(1)));
                }
                if observes && let Some(&Op::LoopHeader { at }) = ops.get(t.wrapping_sub(1)) {
                    loop_header!($regs, at);
                }
                // Charged after the loop header: compiled code entered there runs the test.
                if COUNT {
                    icount = icount.wrapping_add(count(t));
                }
                pc = if $holds {
                    t + 1
                } else {
                    ops.get(t)
                        .and_then(Op::target)
                        .map_or(t, |exit| exit as usize)
                };
            }};
        }

        // Writes the value of `$result` to `$dst`, or traps with its error.
        macro_rules! write_or_trap {
            ($regs:ident, $dst:expr, $result:expr) => {
                match $result {
                    Ok(v) => $regs.wr($dst, v),
                    Err(kind) => trap!(kind),
                }
            };
        }
        // Branches to `$t` unless `$holds`.
        macro_rules! branch_unless {
            ($holds:expr, $t:expr) => {{
                if !($holds) {
                    pc = $t as usize;
                    continue;
                }
            }};
        }

        // The dispatch loop over the frame's slots `$regs` (a `Slots`), until the frame calls,
        // returns or stops. Expanded once per kind of frame window.
        macro_rules! dispatch {
            ($regs:ident) => {
                loop {
                    let Some(op) = ops.get(pc) else {
                        // Unreachable for a verified program (no path falls off the end).
                        ret!(0);
                    };
                    if COUNT {
                        icount = icount
                            .wrapping_add(u64::from(low.counts.get(pc).copied().unwrap_or(0)));
                    }
                    pc += 1;
                    match *op {
                        Op::Nop => {}
                        Op::Imm { dst, k } => $regs.wr(dst, k),
                        Op::Mov { dst, src } => $regs.wr(dst, $regs.rd(src)),
                        Op::Neg { dst, src } => $regs.wr(dst, $regs.rd(src).wrapping_neg()),
                        Op::AddRR { dst, a, b } => {
                            $regs.wr(dst, $regs.rd(a).wrapping_add($regs.rd(b)))
                        }
                        Op::AddRI { dst, a, k } => $regs.wr(dst, $regs.rd(a).wrapping_add(k)),
                        Op::AddRRI { dst, a, b, k } => {
                            $regs.wr(dst, $regs.rd(a).wrapping_add($regs.rd(b)).wrapping_add(k))
                        }
                        Op::SubRR { dst, a, b } => {
                            $regs.wr(dst, $regs.rd(a).wrapping_sub($regs.rd(b)))
                        }
                        Op::SubRI { dst, a, k } => $regs.wr(dst, $regs.rd(a).wrapping_sub(k)),
                        Op::MulRR { dst, a, b } => {
                            $regs.wr(dst, $regs.rd(a).wrapping_mul($regs.rd(b)))
                        }
                        Op::MulRI { dst, a, k } => $regs.wr(dst, $regs.rd(a).wrapping_mul(k)),
                        Op::DivRR { dst, a, b } => {
                            write_or_trap!($regs, dst, div($regs.rd(a), $regs.rd(b)))
                        }
                        Op::DivRI { dst, a, k } => write_or_trap!($regs, dst, div($regs.rd(a), k)),
                        Op::ModRR { dst, a, b } => {
                            write_or_trap!($regs, dst, rem($regs.rd(a), $regs.rd(b)))
                        }
                        Op::ModRI { dst, a, k } => write_or_trap!($regs, dst, rem($regs.rd(a), k)),
                        Op::DivMagic {
                            dst,
                            a,
                            magic,
                            shift,
                            adjust,
                        } => $regs.wr(dst, magic_div($regs.rd(a), magic, shift, adjust)),
                        Op::ModMagic {
                            dst,
                            a,
                            magic,
                            shift,
                            adjust,
                            k,
                        } => {
                            let n = $regs.rd(a);
                            let q = magic_div(n, magic, shift, adjust);
                            $regs.wr(dst, n.wrapping_sub(q.wrapping_mul(i64::from(k))));
                        }
                        Op::LtRR { dst, a, b } => {
                            $regs.wr(dst, i64::from($regs.rd(a) < $regs.rd(b)))
                        }
                        Op::LtRI { dst, a, k } => $regs.wr(dst, i64::from($regs.rd(a) < k)),
                        Op::LeRR { dst, a, b } => {
                            $regs.wr(dst, i64::from($regs.rd(a) <= $regs.rd(b)))
                        }
                        Op::LeRI { dst, a, k } => $regs.wr(dst, i64::from($regs.rd(a) <= k)),
                        Op::GtRR { dst, a, b } => {
                            $regs.wr(dst, i64::from($regs.rd(a) > $regs.rd(b)))
                        }
                        Op::GtRI { dst, a, k } => $regs.wr(dst, i64::from($regs.rd(a) > k)),
                        Op::GeRR { dst, a, b } => {
                            $regs.wr(dst, i64::from($regs.rd(a) >= $regs.rd(b)))
                        }
                        Op::GeRI { dst, a, k } => $regs.wr(dst, i64::from($regs.rd(a) >= k)),
                        Op::EqRR { dst, a, b } => {
                            $regs.wr(dst, i64::from($regs.rd(a) == $regs.rd(b)))
                        }
                        Op::EqRI { dst, a, k } => $regs.wr(dst, i64::from($regs.rd(a) == k)),
                        Op::NeRR { dst, a, b } => {
                            $regs.wr(dst, i64::from($regs.rd(a) != $regs.rd(b)))
                        }
                        Op::NeRI { dst, a, k } => $regs.wr(dst, i64::from($regs.rd(a) != k)),
                        // The `continue`s on taken branches keep them branches: a conditional
                        // move of `pc` would put the compare on the critical path of the next
                        // dispatch.
                        Op::JnLtRR { a, b, t } => branch_unless!($regs.rd(a) < $regs.rd(b), t),
                        Op::JnLtRI { a, k, t } => branch_unless!($regs.rd(a) < k, t),
                        Op::JnLeRR { a, b, t } => branch_unless!($regs.rd(a) <= $regs.rd(b), t),
                        Op::JnLeRI { a, k, t } => branch_unless!($regs.rd(a) <= k, t),
                        Op::JnGtRR { a, b, t } => branch_unless!($regs.rd(a) > $regs.rd(b), t),
                        Op::JnGtRI { a, k, t } => branch_unless!($regs.rd(a) > k, t),
                        Op::JnGeRR { a, b, t } => branch_unless!($regs.rd(a) >= $regs.rd(b), t),
                        Op::JnGeRI { a, k, t } => branch_unless!($regs.rd(a) >= k, t),
                        Op::JnEqRR { a, b, t } => branch_unless!($regs.rd(a) == $regs.rd(b), t),
                        Op::JnEqRI { a, k, t } => branch_unless!($regs.rd(a) == k, t),
                        Op::JnNeRR { a, b, t } => branch_unless!($regs.rd(a) != $regs.rd(b), t),
                        Op::JnNeRI { a, k, t } => branch_unless!($regs.rd(a) != k, t),
                        Op::Jump { t } => pc = t as usize,
                        Op::JumpBack { t } => {
                            step!();
                            pc = t as usize;
                        }
                        Op::Jz { c, t } => {
                            if $regs.rd(c) == 0 {
                                pc = t as usize;
                                continue;
                            }
                        }
                        Op::JzBack { c, t } => {
                            if $regs.rd(c) == 0 {
                                step!();
                                pc = t as usize;
                            }
                        }
                        Op::LoopBack { t, at } => {
                            step!();
                            pc = t as usize;
                            if COUNT {
                                let header =
                                    low.counts.get(pc.wrapping_sub(1)).copied().unwrap_or(0);
                                icount = icount.wrapping_add(u64::from(header));
                            }
                            loop_header!($regs, at);
                        }
                        Op::LoopLtRR { a, b, t } => {
                            loop_test!($regs, t, $regs.rd(a) < $regs.rd(b))
                        }
                        Op::LoopLtRI { a, k, t } => loop_test!($regs, t, $regs.rd(a) < k),
                        Op::LoopLeRR { a, b, t } => {
                            loop_test!($regs, t, $regs.rd(a) <= $regs.rd(b))
                        }
                        Op::LoopLeRI { a, k, t } => loop_test!($regs, t, $regs.rd(a) <= k),
                        Op::LoopGtRR { a, b, t } => {
                            loop_test!($regs, t, $regs.rd(a) > $regs.rd(b))
                        }
                        Op::LoopGtRI { a, k, t } => loop_test!($regs, t, $regs.rd(a) > k),
                        Op::LoopGeRR { a, b, t } => {
                            loop_test!($regs, t, $regs.rd(a) >= $regs.rd(b))
                        }
                        Op::LoopGeRI { a, k, t } => loop_test!($regs, t, $regs.rd(a) >= k),
                        Op::LoopEqRR { a, b, t } => {
                            loop_test!($regs, t, $regs.rd(a) == $regs.rd(b))
                        }
                        Op::LoopEqRI { a, k, t } => loop_test!($regs, t, $regs.rd(a) == k),
                        Op::LoopNeRR { a, b, t } => {
                            loop_test!($regs, t, $regs.rd(a) != $regs.rd(b))
                        }
                        Op::LoopNeRI { a, k, t } => loop_test!($regs, t, $regs.rd(a) != k),
                        Op::LoopHeader { at } => loop_header!($regs, at),
                        Op::Call {
                            dst,
                            func: callee,
                            base: at,
                        } => {
                            step!();
                            if depth >= limits.max_depth {
                                trap!(TrapKind::CallDepth);
                            }
                            let Some(cf) = funcs.get(callee as usize) else {
                                trap!(TrapKind::CallDepth);
                            };
                            let new_base = base.saturating_add(at as usize);
                            let frame = (cf.lowered.frame as usize).max(WINDOW);
                            let new_end = new_base.saturating_add(frame);
                            if stack.len() < new_end {
                                // Out of memory for the value stack: reported as the call depth
                                // trap.
                                if stack.try_reserve(new_end - stack.len()).is_err() {
                                    trap!(TrapKind::CallDepth);
                                }
                                stack.resize(new_end, 0);
                            }
                            // A fused `store_local` of the result begins when the call
                            // returns: counted then (its count is the trap record's `uncount`).
                            let after = if COUNT {
                                let after = low.traps.get(pc.wrapping_sub(1)).map_or(0, |t| t.1);
                                icount = icount.wrapping_sub(u64::from(after));
                                after
                            } else {
                                0
                            };
                            let (args, locals) = (cf.args() as usize, cf.locals() as usize);
                            let locals_end = new_base.saturating_add(locals);
                            if locals > args
                                && let Some(rest) =
                                    stack.get_mut(new_base.saturating_add(args)..locals_end)
                            {
                                rest.fill(0);
                            }
                            let r = match stack.get_mut(new_base..locals_end) {
                                Some(locals) if observes => {
                                    sync_out!();
                                    engine.enter(program, callee, locals, depth + 1)
                                }
                                _ => Ok(None),
                            };
                            let ret = base.saturating_add(dst as usize);
                            match r {
                                Ok(None) => {
                                    frames.push(Frame {
                                        func,
                                        pc,
                                        base,
                                        ret,
                                        after,
                                    });
                                    func = callee;
                                    pc = 0;
                                    base = new_base;
                                    depth += 1;
                                }
                                Ok(Some(v)) => {
                                    if let Some(slot) = stack.get_mut(ret) {
                                        *slot = v;
                                    }
                                    if COUNT {
                                        icount = icount.wrapping_add(u64::from(after));
                                    }
                                }
                                Err(stop) => finish!(Err(stop)),
                            }
                            continue 'frame;
                        }
                        Op::Ret { src } => ret!($regs.rd(src)),
                        Op::RetImm { k } => ret!(k),
                        Op::Print { src } => {
                            let v = $regs.rd(src);
                            sync_out!();
                            engine.print(v);
                        }
                        Op::Halt => finish!(Err(Stop::Halt)),
                    }
                }
            };
        }

        if low.frame as usize <= WINDOW {
            let Some(regs) = stack
                .get_mut(base..base.saturating_add(WINDOW))
                .and_then(|s| <&mut [i64; WINDOW]>::try_from(s).ok())
            else {
                finish!(Ok(0));
            };
            dispatch!(regs);
        } else {
            let Some(regs) = stack.get_mut(base..base.saturating_add(low.frame as usize)) else {
                finish!(Ok(0));
            };
            dispatch!(regs);
        }
    }
}

#[cfg(test)]
mod tests;
