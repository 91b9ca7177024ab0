//! The one interface between the ISA-neutral code generator and an instruction set.
//!
//! The code generator ([`super::codegen`]) keeps the operand stack as a lazy value stack and
//! decides *what* to compute; a [`MacroAssembler`] decides *how* on its ISA. Each ISA implements
//! it once (`x64.rs`, `a64.rs`), together with the runtime stubs (trampoline, unwind, bridge to
//! the interpreter) in the same calling convention.
//!
//! Conventions every implementation keeps:
//! - `SCRATCH` registers are handed out by the code generator only; no method clobbers one it was
//!   not given, except `call` and `print` (the code generator spills them first).
//! - `LOCAL_REGS` are callee-saved and hold locals; the code generator reads them freely and
//!   writes them only through `load`/`arith` with the register as the destination.
//! - Each ISA keeps private temporaries, the context pointer and the remaining call depth in
//!   registers the code generator never sees.
//! - Immediates of any size are accepted; an ISA materialises those it cannot encode.

use jitasm::Label;

use super::JitError;
use crate::FuncId;

/// `Result` of the JIT.
pub(crate) type Result<T, E = JitError> = core::result::Result<T, E>;

/// A value an instruction reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operand<R> {
    /// A register (a scratch register, or a local's home register).
    Reg(R),
    /// A constant.
    Imm(i64),
    /// A frame slot (a local kept in memory or an operand-stack slot).
    Slot(u32),
}

/// Wrapping arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
}

/// Truncating division and remainder, with the VM's traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DivOp {
    Div,
    Mod,
}

/// Signed comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    /// The comparison that is true exactly when `self` is false.
    pub(crate) fn negate(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Ge,
            CmpOp::Le => CmpOp::Gt,
            CmpOp::Gt => CmpOp::Le,
            CmpOp::Ge => CmpOp::Lt,
            CmpOp::Eq => CmpOp::Ne,
            CmpOp::Ne => CmpOp::Eq,
        }
    }

    /// The comparison with its operands swapped (`a < b` is `b > a`).
    pub(crate) fn swap(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Eq | CmpOp::Ne => self,
        }
    }

    /// The comparison evaluated on constants.
    pub(crate) fn eval(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// Where a local lives for the whole function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Home<R> {
    /// A callee-saved register.
    Reg(R),
    /// A frame slot.
    Slot(u32),
}

/// How the native frame changes at a code offset, recorded by the backends as they build and
/// tear down frames, turned into call-frame information (CFI) for debuggers and unwinders.
/// Registers are DWARF register numbers; `at` is the offset of the first instruction the step
/// holds for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameStep {
    /// A function or an entry begins: the caller's call state (CFA and saved registers as at a
    /// call, as the ISA's CIE says).
    Entry { at: usize },
    /// The CFA is `reg + offset`.
    Cfa { at: usize, reg: u16, offset: i32 },
    /// The CFA is its register plus `offset`.
    CfaOffset { at: usize, offset: i32 },
    /// `reg` is saved at `CFA + offset`.
    Saved { at: usize, reg: u16, offset: i32 },
    /// `reg` holds its caller's value again.
    Restored { at: usize, reg: u16 },
    /// An epilogue begins: remember the body's state.
    Remember { at: usize },
    /// After an epilogue's return: the body's state again.
    Restore { at: usize },
}

/// The frame of one compiled function, decided before any code is emitted.
#[derive(Clone, Debug)]
pub(crate) struct Frame<R> {
    /// Number of arguments.
    pub args: u32,
    /// Home of each local (arguments first).
    pub homes: Vec<Home<R>>,
    /// Frame slots: locals kept in memory, then one per operand-stack depth.
    pub slots: u32,
    /// Stack-passed outgoing argument words the function needs for its widest call.
    pub outgoing: u32,
    /// The callee-saved registers the function uses (the register homes).
    pub saved: Vec<R>,
}

/// Orders register moves `dst = src` (all destinations distinct) so that no move overwrites a
/// register a later one still reads; a cycle is broken through `tmp`, which no move may use.
/// Returns the moves to emit, in order.
pub(crate) fn parallel_moves<R: Copy + Eq>(
    moves: &[(R, Operand<R>)],
    tmp: R,
) -> Vec<(R, Operand<R>)> {
    let mut pending: Vec<(R, Operand<R>)> = moves
        .iter()
        .copied()
        .filter(|(dst, src)| *src != Operand::Reg(*dst))
        .collect();
    let mut out = Vec::with_capacity(pending.len() + 1);
    while !pending.is_empty() {
        let free = (0..pending.len()).find(|&i| {
            let dst = pending[i].0;
            pending
                .iter()
                .enumerate()
                .all(|(j, (_, src))| j == i || *src != Operand::Reg(dst))
        });
        match free {
            Some(i) => out.push(pending.remove(i)),
            None => {
                // Every destination is still read: park the first one's old value in `tmp`.
                let dst = pending[0].0;
                out.push((tmp, Operand::Reg(dst)));
                for (_, src) in pending.iter_mut() {
                    if *src == Operand::Reg(dst) {
                        *src = Operand::Reg(tmp);
                    }
                }
            }
        }
    }
    out
}

/// The runtime helpers compiled code calls, at their addresses in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Helpers {
    /// The `print` helper.
    pub print: usize,
    /// The bridge stub's helper.
    pub bridge: usize,
}

/// What code is emitted for, beyond its instruction set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Target {
    /// Call the helpers directly (x86-64 `call rel32`, AArch64 `bl`): the code will be placed
    /// within reach of them. `None`: load their address from the context and call through a
    /// register.
    pub helpers: Option<Helpers>,
    /// Start every indirect-branch target (function entries, array entries, the runtime
    /// stubs) with a BTI landing pad: the code runs in pages guarded by `PROT_BTI` (AArch64).
    pub bti: bool,
}

/// A direct call to a helper at byte `at` of the code, whose displacement is patched in when
/// the code's address is known ([`MacroAssembler::patch_call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HelperCall {
    /// Offset of the call instruction.
    pub at: usize,
    /// The helper's address.
    pub target: usize,
}

/// Where a compiled call goes (see [`MacroAssembler::call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallTarget {
    /// Through the function table (`call [table + 8 * callee]` / `blr`).
    Table,
    /// Straight to a label of this code (a recursive call: this function's native entry).
    Entry(Label),
    /// A linkable call: one `call rel32` / `bl` to the callee's thunk at this label (which
    /// goes on through the function table, see [`MacroAssembler::call_thunk`]), patched to
    /// go straight to the callee's code once it is compiled ([`MacroAssembler::link_call`]).
    Linked(Label),
}

/// Offsets of the runtime stubs in the runtime block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuntimeStubs {
    /// `fn(ctx, target, locals) -> i64`: enters compiled code at an array entry.
    pub trampoline: usize,
    /// Jumped to with a stop code: unwinds to the innermost trampoline.
    pub unwind: usize,
    /// Called like a compiled function, with the callee's id in the ISA's id register:
    /// runs the callee in the interpreter.
    pub bridge: usize,
}

/// One instruction set's half of the template JIT.
/// Signed division by the constant `d` as a multiplication (Granlund and Montgomery,
/// "Division by invariant integers using multiplication", 1994; the algorithm of Hacker's
/// Delight, 2nd ed., 10-4, for 64 bits): `(magic, shift)` such that, for every `n`,
/// `q = (mulhi(magic, n) [+ n if d > 0 and magic < 0] [- n if d < 0 and magic > 0]) >> shift`
/// (arithmetic), plus one when that is negative, is `n / d` truncated toward zero, as
/// `i64::checked_div` (the remainder is then `n - q * d`). `None` for `d` in `-1..=1` and
/// `i64::MIN`, which the backends handle otherwise.
pub(crate) fn signed_magic(d: i64) -> Option<(i64, u8)> {
    if (-1..=1).contains(&d) || d == i64::MIN {
        return None;
    }
    const TWO63: u64 = 1 << 63;
    let ad = d.unsigned_abs();
    let t = TWO63 + ((d as u64) >> 63);
    let anc = t - 1 - t % ad; // |nc|
    let mut p = 63u32;
    let (mut q1, mut r1) = (TWO63 / anc, TWO63 - (TWO63 / anc) * anc);
    let (mut q2, mut r2) = (TWO63 / ad, TWO63 - (TWO63 / ad) * ad);
    loop {
        p += 1;
        q1 = q1.wrapping_mul(2);
        r1 = r1.wrapping_mul(2);
        if r1 >= anc {
            q1 = q1.wrapping_add(1);
            r1 = r1.wrapping_sub(anc);
        }
        q2 = q2.wrapping_mul(2);
        r2 = r2.wrapping_mul(2);
        if r2 >= ad {
            q2 = q2.wrapping_add(1);
            r2 = r2.wrapping_sub(ad);
        }
        let delta = ad - r2;
        if !(q1 < delta || (q1 == delta && r1 == 0)) {
            break;
        }
    }
    let magic = q2.wrapping_add(1) as i64;
    let magic = if d < 0 { magic.wrapping_neg() } else { magic };
    u8::try_from(p - 64).ok().map(|shift| (magic, shift))
}

/// What the backends compute with [`signed_magic`], in Rust: the reference the tests check
/// against `checked_div`.
#[cfg(test)]
pub(crate) fn magic_quotient(n: i64, d: i64) -> Option<i64> {
    let (magic, shift) = signed_magic(d)?;
    let mut q = ((i128::from(magic) * i128::from(n)) >> 64) as i64;
    if d > 0 && magic < 0 {
        q = q.wrapping_add(n);
    }
    if d < 0 && magic > 0 {
        q = q.wrapping_sub(n);
    }
    q >>= shift;
    Some(q.wrapping_add(((q as u64) >> 63) as i64))
}

pub(crate) trait MacroAssembler: Sized {
    /// A machine register.
    type Reg: Copy + Eq + core::fmt::Debug + 'static;
    /// Registers the value stack may use (caller-saved).
    const SCRATCH: &'static [Self::Reg];
    /// Callee-saved registers for locals, in order of preference.
    const LOCAL_REGS: &'static [Self::Reg];
    /// Arguments passed in registers; the others go on the stack.
    const REG_ARGS: u32;

    /// An empty assembler emitting code for `target`.
    fn new(target: Target) -> Self;
    /// A fresh label.
    fn new_label(&mut self) -> Label;
    /// Binds a label here.
    fn bind(&mut self, label: Label) -> Result<()>;
    /// Offset of a bound label.
    fn label_offset(&self, label: Label) -> Option<usize>;
    /// The frame steps recorded so far (taken: a second call returns the later ones).
    fn take_frame_steps(&mut self) -> Vec<FrameStep>;
    /// The code, with every fixup patched, and its direct helper calls (to patch once the code
    /// has an address).
    fn finish(self) -> Result<(Vec<u8>, Vec<HelperCall>)>;
    /// Patches the direct helper call `call` of `code`, which will run at address `base`
    /// ([`link_call`](Self::link_call)'s patch); fails if the helper is out of the call's reach.
    fn patch_call(code: &mut [u8], call: HelperCall, base: usize) -> Result<()> {
        let at = base
            .checked_add(call.at)
            .ok_or(JitError::Internal("code address overflows"))?;
        let (offset, bytes) = Self::link_call(at, call.target).ok_or(JitError::Internal(
            "helper beyond the reach of a direct call",
        ))?;
        let start = call.at + offset;
        code.get_mut(start..start + bytes.len())
            .ok_or(JitError::Internal("helper call outside the code"))?
            .copy_from_slice(&bytes);
        Ok(())
    }

    /// Entry from compiled code (arguments per the ABI): checks the native stack (jumping to
    /// `stack_trap`), builds the frame, moves the arguments home and zeroes the other locals.
    fn native_entry(&mut self, frame: &Frame<Self::Reg>, stack_trap: Label) -> Result<()>;
    /// Entry from the runtime with a pointer to every local in the first argument register:
    /// builds the frame, loads the locals and jumps to `target`.
    fn array_entry(
        &mut self,
        frame: &Frame<Self::Reg>,
        stack_trap: Label,
        target: Label,
    ) -> Result<()>;
    /// Tears the frame down and returns `value`.
    fn ret(&mut self, frame: &Frame<Self::Reg>, value: Operand<Self::Reg>) -> Result<()>;

    /// `dst = src`.
    fn load(&mut self, dst: Self::Reg, src: Operand<Self::Reg>) -> Result<()>;
    /// `slot = src`.
    fn store(&mut self, slot: u32, src: Operand<Self::Reg>) -> Result<()>;
    /// `dst = lhs op rhs`; `dst` is `lhs` or a register that no operand uses.
    fn arith(
        &mut self,
        op: ArithOp,
        dst: Self::Reg,
        lhs: Self::Reg,
        rhs: Operand<Self::Reg>,
    ) -> Result<()>;
    /// `dst = -src` (wrapping).
    fn neg(&mut self, dst: Self::Reg, src: Self::Reg) -> Result<()>;
    /// `dst = lhs / rhs` or `lhs % rhs`, jumping to `by_zero` or `overflow` on the VM's traps.
    fn divmod(
        &mut self,
        op: DivOp,
        dst: Self::Reg,
        lhs: Self::Reg,
        rhs: Operand<Self::Reg>,
        by_zero: Label,
        overflow: Label,
    ) -> Result<()>;
    /// `dst = (lhs op rhs) as i64`.
    fn set_cmp(
        &mut self,
        op: CmpOp,
        dst: Self::Reg,
        lhs: Self::Reg,
        rhs: Operand<Self::Reg>,
    ) -> Result<()>;
    /// Jumps to `target` when `lhs op rhs`.
    fn branch_cmp(
        &mut self,
        op: CmpOp,
        lhs: Self::Reg,
        rhs: Operand<Self::Reg>,
        target: Label,
    ) -> Result<()>;
    /// Jumps to `target` when `value` is zero (`if_zero`) or non-zero (`!if_zero`).
    fn branch_zero(&mut self, value: Self::Reg, if_zero: bool, target: Label) -> Result<()>;
    /// Jumps to `target`.
    fn jump(&mut self, target: Label) -> Result<()>;
    /// Calls `callee` with `args` (only the arguments may be in scratch registers; every other
    /// value is spilled), checking the call depth first (jumping to `depth_trap`); the result
    /// lands in `dst`. Where the call goes: `target`. For [`CallTarget::Linked`], returns the
    /// offset of the call instruction, placed so that [`link_call`](Self::link_call)'s patch
    /// is one naturally aligned 4-byte store.
    fn call(
        &mut self,
        frame: &Frame<Self::Reg>,
        callee: FuncId,
        args: &[Operand<Self::Reg>],
        depth_trap: Label,
        dst: Self::Reg,
        target: CallTarget,
    ) -> Result<Option<usize>>;
    /// The thunk of linkable calls of `callee` ([`CallTarget::Linked`]), here: reached by the
    /// call with the call's registers and return address, it goes on through the function
    /// table as a [`CallTarget::Table`] call would (no landing pad needed: only direct calls
    /// reach it).
    fn call_thunk(&mut self, callee: FuncId) -> Result<()>;
    /// The patch that makes the linkable call instruction at address `at` go to `target`:
    /// `(offset from at, the 4 bytes to store there)`, or `None` when `target` is out of the
    /// call's reach.
    fn link_call(at: usize, target: usize) -> Option<(usize, [u8; 4])>;
    /// The call depth check of a call whose callee is compiled inline: jumps to `depth_trap`
    /// exactly when [`call`](Self::call) would (no depth left), and leaves the depth as it was.
    fn depth_check(&mut self, depth_trap: Label) -> Result<()>;
    /// Prints `value` through the runtime (scratch registers are free).
    fn print(&mut self, value: Operand<Self::Reg>) -> Result<()>;
    /// Takes one step from the step budget, jumping to `trap` when none is left.
    fn step(&mut self, trap: Label) -> Result<()>;
    /// Adds `n` to the compiled-instruction counter.
    fn count(&mut self, n: u32) -> Result<()>;
    /// Unwinds to the runtime with a stop code (traps, `halt`).
    fn exit(&mut self, code: u64) -> Result<()>;

    /// Emits the runtime stubs (once per VM) and says where they are.
    fn runtime_stubs(&mut self) -> Result<RuntimeStubs>;
}

#[cfg(test)]
mod magic_tests {
    use super::{magic_quotient, signed_magic};

    /// Divisors near every power of two and small ones, of both signs, against dividends at
    /// the edges and in between: the multiplication gives `checked_div`'s quotient.
    #[test]
    fn magic_division_agrees_with_checked_div() {
        let mut divisors: Vec<i64> = (2..=300).flat_map(|d| [d, -d]).collect();
        for k in 2..63 {
            for off in [-1i64, 0, 1] {
                let d = (1i64 << k) + off;
                divisors.extend([d, -d]);
            }
        }
        divisors.extend([i64::MAX, i64::MIN + 1, 7, -7, 1_000_000_007, 641, 6_700_417]);
        let mut dividends: Vec<i64> = vec![0, 1, -1, 2, -2, i64::MAX, i64::MIN, i64::MIN + 1];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            dividends.push(x as i64);
            dividends.push((x as i64) >> (x % 60));
        }
        for &d in &divisors {
            for &n in &dividends {
                for n in [n, n.wrapping_add(d), n.wrapping_sub(d), n.wrapping_add(1)] {
                    assert_eq!(magic_quotient(n, d), n.checked_div(d), "{n} / {d}");
                }
            }
        }
        for d in [-1, 0, 1, i64::MIN] {
            assert_eq!(signed_magic(d), None);
        }
    }
}
