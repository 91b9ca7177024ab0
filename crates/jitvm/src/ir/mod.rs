//! The interpreter's register form: the operations ([`Op`]) a verified function is lowered to
//! ([`lower`]), and a lowered function ([`Lowered`]). The executor is `interp`; the lowering
//! runs once per function, in the verifier.
//!
//! A frame is a window of `locals + max_stack` slots ([`Reg`]): locals first, then the operand
//! stack. `RR` forms read two slots, `RI` a slot and a constant; `Jn*` branch to `t` unless the
//! compare holds; every `t` is an operation index (a source instruction index until the
//! lowering fixes it up).
//!
//! The operations are one table (`ops!`): it defines the enum and the accessors the lowering
//! edits operations through ([`Op::dst`], [`Op::set_dst`], [`Op::target`], [`Op::set_target`]),
//! so a new operation is one line in the table and takes its part in those by its section.

mod lower;

pub(crate) use lower::lower;

/// A frame slot: locals first, then the operand stack.
pub(crate) type Reg = u32;

/// Defines [`Op`] and its accessors from sections of variants, in order. A section is headed
/// by the field its variants share for one of the accessors, or by `_` for none:
///
/// - `dst`: operations computing a value into slot `dst` ([`Op::dst`], [`Op::set_dst`]; the
///   lowering retargets them to store straight into a local);
/// - `t`: jumps and branches to operation `t` ([`Op::target`], [`Op::set_target`]).
///
/// Each accessor is one `match` with one arm per section (`field_mut`).
macro_rules! ops {
    // The pattern of a section's arm: binds the accessor's field to `$bind` when the section
    // is the accessor's.
    (@pattern dst dst $bind:ident; $($name:ident)*) => { $(Op::$name { dst: $bind, .. })|* };
    (@pattern t t $bind:ident; $($name:ident)*) => { $(Op::$name { t: $bind, .. })|* };
    (@pattern $want:ident $role:tt $bind:ident; $($name:ident)*) => { $(Op::$name { .. })|* };
    // The value of a section's arm.
    (@value dst dst $bind:ident) => { Some($bind) };
    (@value t t $bind:ident) => { Some($bind) };
    (@value $want:ident $role:tt $bind:ident) => { None };
    ($(
        $role:tt {
            $( $(#[$meta:meta])* $name:ident $({ $($field:ident: $ty:ty),* $(,)? })? ),* $(,)?
        }
    )*) => {
        /// One operation of the register form (see the module documentation).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Op {
            $($( $(#[$meta])* $name $({ $($field: $ty),* })?, )*)*
        }

        impl Op {
            /// The `dst` of an operation of a `dst` section.
            fn dst_mut(&mut self) -> Option<&mut Reg> {
                match self {
                    $( ops!(@pattern dst $role field; $($name)*) => ops!(@value dst $role field), )*
                }
            }

            /// The `t` of an operation of a `t` section.
            fn target_mut(&mut self) -> Option<&mut u32> {
                match self {
                    $( ops!(@pattern t $role field; $($name)*) => ops!(@value t $role field), )*
                }
            }
        }
    };
}

ops! {
    _ {
        /// Nothing (carries the count of instructions that emitted nothing).
        Nop,
        Imm { dst: Reg, k: i64 },
        Mov { dst: Reg, src: Reg },
    }
    dst {
        Neg { dst: Reg, src: Reg },
        AddRR { dst: Reg, a: Reg, b: Reg },
        AddRI { dst: Reg, a: Reg, k: i64 },
        /// `a + b + k` (fused `add_ii` then `add_ii`/`sub_ii` of a constant).
        AddRRI { dst: Reg, a: Reg, b: Reg, k: i64 },
        SubRR { dst: Reg, a: Reg, b: Reg },
        SubRI { dst: Reg, a: Reg, k: i64 },
        MulRR { dst: Reg, a: Reg, b: Reg },
        MulRI { dst: Reg, a: Reg, k: i64 },
        DivRR { dst: Reg, a: Reg, b: Reg },
        DivRI { dst: Reg, a: Reg, k: i64 },
        ModRR { dst: Reg, a: Reg, b: Reg },
        ModRI { dst: Reg, a: Reg, k: i64 },
        /// `a / k` for a constant `k` with a magic number (`jit::masm::signed_magic`):
        /// `hi(magic * a) + adjust * a`, shifted right by `shift`, plus its sign bit.
        DivMagic { dst: Reg, a: Reg, magic: i64, shift: u8, adjust: i8 },
        /// `a % k` the same way: `a - (a / k) * k`, for `k` that fits 32 bits.
        ModMagic { dst: Reg, a: Reg, magic: i64, shift: u8, adjust: i8, k: i32 },
        LtRR { dst: Reg, a: Reg, b: Reg },
        LtRI { dst: Reg, a: Reg, k: i64 },
        LeRR { dst: Reg, a: Reg, b: Reg },
        LeRI { dst: Reg, a: Reg, k: i64 },
        GtRR { dst: Reg, a: Reg, b: Reg },
        GtRI { dst: Reg, a: Reg, k: i64 },
        GeRR { dst: Reg, a: Reg, b: Reg },
        GeRI { dst: Reg, a: Reg, k: i64 },
        EqRR { dst: Reg, a: Reg, b: Reg },
        EqRI { dst: Reg, a: Reg, k: i64 },
        NeRR { dst: Reg, a: Reg, b: Reg },
        NeRI { dst: Reg, a: Reg, k: i64 },
        /// Call `func`; its frame (and first argument) starts at slot `base`, its result goes
        /// to slot `dst` (`base`, or the local a following `store_local` names).
        Call { dst: Reg, func: crate::FuncId, base: Reg },
    }
    t {
        JnLtRR { a: Reg, b: Reg, t: u32 },
        JnLtRI { a: Reg, k: i64, t: u32 },
        JnLeRR { a: Reg, b: Reg, t: u32 },
        JnLeRI { a: Reg, k: i64, t: u32 },
        JnGtRR { a: Reg, b: Reg, t: u32 },
        JnGtRI { a: Reg, k: i64, t: u32 },
        JnGeRR { a: Reg, b: Reg, t: u32 },
        JnGeRI { a: Reg, k: i64, t: u32 },
        JnEqRR { a: Reg, b: Reg, t: u32 },
        JnEqRI { a: Reg, k: i64, t: u32 },
        JnNeRR { a: Reg, b: Reg, t: u32 },
        JnNeRI { a: Reg, k: i64, t: u32 },
        /// Forward jump.
        Jump { t: u32 },
        /// Backward jump (one step).
        JumpBack { t: u32 },
        /// Backward jump to the `loop_header` at source instruction index `at`, whose operation
        /// is at `t - 1`: one step, then the loop header's work, then on at `t`.
        LoopBack { t: u32, at: u32 },
        /// Forward branch if slot `c` is zero.
        Jz { c: Reg, t: u32 },
        /// Backward branch if slot `c` is zero (one step when taken).
        JzBack { c: Reg, t: u32 },
    }
    _ {
        /// The fused back edge of a loop tested at its top: a [`Op::LoopBack`] to `t` whose
        /// loop header is followed by the compare-and-branch at `t`. One step, the loop
        /// header's work (its `at` is in the [`Op::LoopHeader`] at `t - 1`), then the branch
        /// at `t`: on at `t + 1` if the compare holds, else to the branch's target. Made by
        /// the lowering's last pass (after the jump targets are fixed).
        LoopLtRR { a: Reg, b: Reg, t: u32 },
        LoopLtRI { a: Reg, k: i64, t: u32 },
        LoopLeRR { a: Reg, b: Reg, t: u32 },
        LoopLeRI { a: Reg, k: i64, t: u32 },
        LoopGtRR { a: Reg, b: Reg, t: u32 },
        LoopGtRI { a: Reg, k: i64, t: u32 },
        LoopGeRR { a: Reg, b: Reg, t: u32 },
        LoopGeRI { a: Reg, k: i64, t: u32 },
        LoopEqRR { a: Reg, b: Reg, t: u32 },
        LoopEqRI { a: Reg, k: i64, t: u32 },
        LoopNeRR { a: Reg, b: Reg, t: u32 },
        LoopNeRI { a: Reg, k: i64, t: u32 },
    }
    _ {
        /// `loop_header` at source instruction index `at`.
        LoopHeader { at: u32 },
        Ret { src: Reg },
        RetImm { k: i64 },
        Print { src: Reg },
        Halt,
    }
}

impl Op {
    /// The fused back edge (`Loop*`) for a [`Op::LoopBack`] to `t` when the operation at `t`
    /// is this compare-and-branch.
    pub(crate) fn fused_loop_back(&self, t: u32) -> Option<Op> {
        Some(match *self {
            Op::JnLtRR { a, b, .. } => Op::LoopLtRR { a, b, t },
            Op::JnLtRI { a, k, .. } => Op::LoopLtRI { a, k, t },
            Op::JnLeRR { a, b, .. } => Op::LoopLeRR { a, b, t },
            Op::JnLeRI { a, k, .. } => Op::LoopLeRI { a, k, t },
            Op::JnGtRR { a, b, .. } => Op::LoopGtRR { a, b, t },
            Op::JnGtRI { a, k, .. } => Op::LoopGtRI { a, k, t },
            Op::JnGeRR { a, b, .. } => Op::LoopGeRR { a, b, t },
            Op::JnGeRI { a, k, .. } => Op::LoopGeRI { a, k, t },
            Op::JnEqRR { a, b, .. } => Op::LoopEqRR { a, b, t },
            Op::JnEqRI { a, k, .. } => Op::LoopEqRI { a, k, t },
            Op::JnNeRR { a, b, .. } => Op::LoopNeRR { a, b, t },
            Op::JnNeRI { a, k, .. } => Op::LoopNeRI { a, k, t },
            _ => return None,
        })
    }

    /// The slot an arithmetic or compare operation writes.
    pub(crate) fn dst(&self) -> Option<Reg> {
        let mut op = *self;
        op.dst_mut().map(|dst| *dst)
    }

    /// Redirects the written slot (see [`Op::dst`]).
    pub(crate) fn set_dst(&mut self, to: Reg) {
        if let Some(dst) = self.dst_mut() {
            *dst = to;
        }
    }

    /// The jump target of a jump or branch.
    pub(crate) fn target(&self) -> Option<u32> {
        let mut op = *self;
        op.target_mut().map(|t| *t)
    }

    /// Redirects the jump target (see [`Op::target`]).
    pub(crate) fn set_target(&mut self, to: u32) {
        if let Some(t) = self.target_mut() {
            *t = to;
        }
    }
}

/// A function in the interpreter's register form (built by the verifier).
#[derive(Clone, Debug, Default)]
pub(crate) struct Lowered {
    pub(crate) ops: Vec<Op>,
    /// Source instructions each operation accounts for.
    pub(crate) counts: Vec<u32>,
    /// Per operation: byte offset of the instruction a trap is reported at, and how many of
    /// `counts` to take back when it traps (instructions fused in after the trapping one).
    pub(crate) traps: Vec<(u32, u32)>,
    /// Slots of a frame: locals + max_stack.
    pub(crate) frame: u32,
}

/// The quotient [`Op::DivMagic`] and [`Op::ModMagic`] compute: `n / k` truncated, for the
/// `(magic, shift, adjust)` the lowering derived from `k`.
#[inline(always)]
pub(crate) fn magic_div(n: i64, magic: i64, shift: u8, adjust: i8) -> i64 {
    let hi = ((i128::from(magic) * i128::from(n)) >> 64) as i64;
    let q = hi.wrapping_add(n.wrapping_mul(i64::from(adjust))) >> shift;
    q.wrapping_add(((q as u64) >> 63) as i64)
}

/// `(magic, shift, adjust)` for dividing by `k`, or `None` where `k` keeps its division
/// (`-1..=1`, `i64::MIN`: the traps and the identity).
pub(crate) fn magic_for(k: i64) -> Option<(i64, u8, i8)> {
    let (magic, shift) = crate::jit::signed_magic(k)?;
    let adjust = if k > 0 && magic < 0 {
        1
    } else if k < 0 && magic > 0 {
        -1
    } else {
        0
    };
    Some((magic, shift, adjust))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operations stay three words: the interpreter's dispatch reads one per step.
    #[test]
    fn ops_stay_small() {
        assert!(
            std::mem::size_of::<Op>() <= 24,
            "{}",
            std::mem::size_of::<Op>()
        );
    }

    /// The interpreter's magic division is `checked_div`'s quotient.
    #[test]
    fn magic_division_is_checked_div() {
        let dividends = [
            0,
            1,
            -1,
            7,
            -7,
            100,
            -100,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
            123_456_789,
        ];
        for k in (2..200)
            .chain([1 << 20, (1 << 40) + 1, i64::MAX])
            .flat_map(|k| [k, -k])
        {
            let (magic, shift, adjust) = magic_for(k).unwrap();
            for n in dividends {
                assert_eq!(
                    Some(magic_div(n, magic, shift, adjust)),
                    n.checked_div(k),
                    "{n}/{k}"
                );
            }
        }
        for k in [-1, 0, 1, i64::MIN] {
            assert_eq!(magic_for(k), None);
        }
    }

    #[test]
    fn accessors_follow_the_sections() {
        // Moves and constants are not results the lowering may retarget; calls do not jump.
        for op in [
            Op::Nop,
            Op::Imm { dst: 1, k: 2 },
            Op::Mov { dst: 1, src: 2 },
        ] {
            assert_eq!((op.dst(), op.target()), (None, None), "{op:?}");
        }
        let mut add = Op::AddRRI {
            dst: 3,
            a: 1,
            b: 2,
            k: 4,
        };
        assert_eq!((add.dst(), add.target()), (Some(3), None));
        add.set_dst(7);
        add.set_target(9);
        assert_eq!(
            add,
            Op::AddRRI {
                dst: 7,
                a: 1,
                b: 2,
                k: 4
            }
        );
        let mut back = Op::LoopBack { t: 5, at: 4 };
        assert_eq!((back.dst(), back.target()), (None, Some(5)));
        back.set_target(8);
        back.set_dst(1);
        assert_eq!(back, Op::LoopBack { t: 8, at: 4 });
        let jn = Op::JnNeRI { a: 1, k: 0, t: 6 };
        assert_eq!((jn.dst(), jn.target()), (None, Some(6)));
        let mut call = Op::Call {
            dst: 2,
            func: 1,
            base: 2,
        };
        assert_eq!((call.dst(), call.target()), (Some(2), None));
        call.set_dst(0);
        assert_eq!(
            call,
            Op::Call {
                dst: 0,
                func: 1,
                base: 2
            }
        );
        for op in [Op::Ret { src: 1 }, Op::Halt] {
            assert_eq!((op.dst(), op.target()), (None, None), "{op:?}");
        }
    }
}
