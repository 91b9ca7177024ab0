//! The verified program: the only form the interpreter and the JIT accept.
//!
//! A [`Program`] is built by the verifier alone (its fields are private to the crate), so holding
//! one proves that every jump lands on an instruction of its function, every local index is in
//! range, every call has the callee's argument count, the operand stack never underflows nor
//! exceeds [`MAX_STACK`], and it has the same depth wherever paths merge.

use std::fmt;

/// Index of a function in its [`Program`].
pub type FuncId = u32;

/// The largest operand-stack depth a function may reach.
pub const MAX_STACK: u32 = 1024;

/// The largest number of locals (arguments included) a function may declare.
pub const MAX_LOCALS: u32 = 65_535;

/// One decoded instruction. Jump targets are instruction indices in the same function;
/// `load_local_0` and `load_local_1` decode to `LoadLocal(0)` and `LoadLocal(1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// Push the constant.
    LoadImm(i64),
    /// Push local N.
    LoadLocal(u32),
    /// Pop into local N.
    StoreLocal(u32),
    /// Pop b, pop a, push a + b (wrapping).
    Add,
    /// a - b (wrapping).
    Sub,
    /// a * b (wrapping).
    Mul,
    /// a / b truncated toward zero; traps on b == 0 and on `i64::MIN / -1`.
    Div,
    /// a % b (sign of a); traps on b == 0; `i64::MIN % -1` is 0.
    Mod,
    /// Pop a, push -a (wrapping).
    Neg,
    /// Push 1 if a < b else 0.
    Lt,
    /// a <= b.
    Le,
    /// a > b.
    Gt,
    /// a >= b.
    Ge,
    /// a == b.
    Eq,
    /// a != b.
    Ne,
    /// Continue at instruction index.
    Jump(u32),
    /// Pop; continue at instruction index if the value is zero.
    JumpIfFalse(u32),
    /// A loop header: counted for tiering, an on-stack-replacement entry (operand stack empty).
    LoopHeader,
    /// Pop the callee's arguments (the last one on top), push its result.
    Call(FuncId),
    /// Pop the result and return it.
    Return,
    /// Return 0.
    ReturnNil,
    /// Drop the top value.
    Pop,
    /// Duplicate the top value.
    Dup,
    /// Pop and print the value and a newline.
    Print,
    /// End the program (exit status 0).
    Halt,
}

/// One verified function.
#[derive(Clone, Debug)]
pub struct Function {
    pub(crate) name: String,
    pub(crate) args: u32,
    pub(crate) locals: u32,
    pub(crate) code: Vec<Insn>,
    /// Byte offset in the binary bytecode of each instruction (trap messages, listings).
    pub(crate) offsets: Vec<u32>,
    /// Operand-stack depth before each instruction; `None` for unreachable instructions.
    pub(crate) depth: Vec<Option<u32>>,
    /// Whether an instruction is the target of a jump.
    pub(crate) is_target: Vec<bool>,
    pub(crate) max_stack: u32,
    /// The interpreter's register form of `code` (built by the verifier).
    pub(crate) lowered: crate::ir::Lowered,
}

impl Function {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of arguments (they arrive in locals `0..args`).
    pub fn args(&self) -> u32 {
        self.args
    }
    /// Number of locals, arguments included; the others start at 0.
    pub fn locals(&self) -> u32 {
        self.locals
    }
    /// The decoded instructions.
    pub fn code(&self) -> &[Insn] {
        &self.code
    }
    /// Byte offset of instruction `index` in the binary bytecode.
    pub fn offset_of(&self, index: usize) -> u32 {
        self.offsets.get(index).copied().unwrap_or(u32::MAX)
    }
    /// Operand-stack depth before instruction `index` (`None`: unreachable).
    pub fn depth_at(&self, index: usize) -> Option<u32> {
        self.depth.get(index).copied().flatten()
    }
    /// Whether instruction `index` is a jump target.
    pub fn is_jump_target(&self, index: usize) -> bool {
        self.is_target.get(index).copied().unwrap_or(false)
    }
    /// The deepest the operand stack gets.
    pub fn max_stack(&self) -> u32 {
        self.max_stack
    }
}

/// A verified program: functions and the index of `main`.
#[derive(Clone, Debug)]
pub struct Program {
    pub(crate) funcs: Vec<Function>,
    pub(crate) main: FuncId,
}

impl Program {
    /// All functions; a [`FuncId`] indexes this slice.
    pub fn functions(&self) -> &[Function] {
        &self.funcs
    }
    /// The function called `main` (no arguments), where a run starts.
    pub fn main(&self) -> FuncId {
        self.main
    }
    /// The function with this id, if any.
    pub fn function(&self, id: FuncId) -> Option<&Function> {
        self.funcs.get(id as usize)
    }
}

/// Why a program stopped abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// `div_ii` or `mod_ii` by zero.
    DivisionByZero,
    /// `i64::MIN / -1`.
    IntegerOverflow,
    /// A call would exceed the call depth limit.
    CallDepth,
    /// The step limit (calls plus taken backward jumps) ran out.
    StepLimit,
    /// Compiled code ran out of native stack before reaching the call depth limit (only the
    /// JIT raises it; the VM sizes its stack so that this needs an extreme depth limit).
    NativeStack,
    /// The JIT's own machinery failed (a broken invariant, reported instead of crashing; never
    /// expected).
    Internal,
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrapKind::DivisionByZero => "division by zero",
            TrapKind::IntegerOverflow => "integer overflow",
            TrapKind::CallDepth => "call depth limit exceeded",
            TrapKind::StepLimit => "step limit exceeded",
            TrapKind::NativeStack => "native stack exhausted",
            TrapKind::Internal => "internal JIT error",
        })
    }
}

/// A trap: its kind and where it happened (function, byte offset of the instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    /// What went wrong.
    pub kind: TrapKind,
    /// The function that executed the trapping instruction.
    pub func: FuncId,
    /// Byte offset of that instruction in the function's bytecode.
    pub offset: u32,
}

/// How a run can end other than by `main` returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A trap (exit status 2).
    Trap(Trap),
    /// `halt` (exit status 0).
    Halt,
}

/// Limits of one run, the same for the interpreter and compiled code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most frames active at once (main alone is 1); a call beyond traps with
    /// [`TrapKind::CallDepth`]. Default 10,000.
    pub max_depth: u32,
    /// Steps (executed calls plus taken backward jumps) before a [`TrapKind::StepLimit`] trap;
    /// `u64::MAX` (the default) means no limit.
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 10_000,
            max_steps: u64::MAX,
        }
    }
}

/// Run-time counters shared by the interpreter and compiled code; the engine owns them.
///
/// `repr(C)`: compiled code updates the fields in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counters {
    /// Steps left before a [`TrapKind::StepLimit`] trap (see [`Limits::max_steps`]).
    pub steps_left: u64,
    /// Instructions executed by the interpreter (counted only when statistics are asked for).
    pub interpreted: u64,
    /// Instructions executed by compiled code (counted only when statistics are asked for).
    pub compiled: u64,
}

/// What the interpreter asks of the execution engine around it: tiering decisions, native
/// execution, output. The interpreter is generic over it, so an engine without a JIT costs
/// nothing.
pub trait Engine {
    /// An interpreted `call` (or the start of `main`) is about to run `func` with `locals`
    /// (its arguments, then zeros) as a new frame; `depth` counts the frames active with the new
    /// one (main alone is 1). Return `Ok(Some(result))` if the engine ran the whole call itself,
    /// `Ok(None)` to let the interpreter run it.
    fn enter(
        &mut self,
        program: &Program,
        func: FuncId,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop>;

    /// The interpreter reached the `loop_header` at instruction index `at` of `func` (operand
    /// stack empty). Return `Ok(Some(result))` if the engine finished the frame itself
    /// (on-stack replacement): the frame then returns `result`.
    fn loop_header(
        &mut self,
        program: &Program,
        func: FuncId,
        at: u32,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop>;

    /// Whether [`enter`](Self::enter) and [`loop_header`](Self::loop_header) can ever do
    /// anything but return `Ok(None)` in this run. `false` (an engine without a JIT, or a run
    /// with the JIT off) lets the interpreter skip those calls on its hot paths. Asked once per
    /// interpreted call tree, so the answer must not change during a run.
    fn observes(&self) -> bool {
        true
    }

    /// `print`: write the value and a newline.
    fn print(&mut self, value: i64);

    /// The counters of this run. The interpreter may keep copies in locals while it runs, but
    /// writes them back before every other call into the engine and reloads them after.
    fn counters(&mut self) -> &mut Counters;
}
