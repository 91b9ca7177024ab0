//! The run-time side of compiled code: the context it reads through its context register, the
//! stop codes it unwinds with, the runtime stubs in executable memory and the helpers it calls.
//!
//! # The runtime boundary
//!
//! Compiled code reaches the engine running it only through the helpers here, and the helpers
//! reach it only through [`RuntimeHost`]: the engine connects itself to its context once
//! ([`Ctx::connect`], which stores the host pointer and the helpers made for that host's type
//! together), and a helper turns the context back into that host in one place (`host_of`).
//! Everything about the native side of a call (the native-stack check before the bridge, where
//! the ABI put the arguments, stop codes) stays here; everything about the engine (output,
//! running the interpreter, tiering) stays behind the trait.
//!
//! # Safety
//! This is the JIT's code-entry point: the only module that runs generated code. It relies on
//! the code generator's contract: compiled code and the stubs use the context only at the
//! offsets below, keep the native stack balanced, return to the trampoline (normally or through
//! the unwind stub) and never unwind through Rust frames; the helpers they call catch every
//! panic and report it as a stop code instead.

use std::ffi::c_void;
use std::mem::offset_of;

use jitmem::{CodeBlock, JitMemory};

use super::masm::{HelperCall, Helpers, MacroAssembler, RuntimeStubs, Target};
use super::{JitError, native_reg_args};
use crate::{Counters, FuncId, Program, Stop, Trap, TrapKind};

/// Native stack kept free below the limit compiled code checks in its prologues, for the
/// helpers and the bridge's Rust frames; the bridge itself refuses to start an interpreted
/// call with less than half of it left.
pub(crate) const STACK_MARGIN: usize = 128 * 1024;

/// The stop code of `halt`.
pub(crate) const HALT_CODE: u64 = u64::MAX;
/// The stop code of a broken invariant in a helper (a caught panic).
pub(crate) const INTERNAL_CODE: u64 = u64::MAX - 1;

const TRAP_KINDS: [TrapKind; 6] = [
    TrapKind::DivisionByZero,
    TrapKind::IntegerOverflow,
    TrapKind::CallDepth,
    TrapKind::StepLimit,
    TrapKind::NativeStack,
    TrapKind::Internal,
];

/// The stop code of a trap: kind, function and byte offset in one word (never 0).
pub(crate) fn trap_code(kind: TrapKind, func: FuncId, offset: u32) -> u64 {
    let kind = TRAP_KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u64 + 1;
    (kind << 56) | (u64::from(func & 0x00ff_ffff) << 32) | u64::from(offset)
}

/// The [`Stop`] a stop code stands for; `None` for [`INTERNAL_CODE`] and unknown codes.
pub(crate) fn decode_stop(code: u64) -> Option<Stop> {
    if code == HALT_CODE {
        return Some(Stop::Halt);
    }
    let kind = usize::try_from(code >> 56).ok()?.checked_sub(1)?;
    Some(Stop::Trap(Trap {
        kind: *TRAP_KINDS.get(kind)?,
        func: ((code >> 32) & 0x00ff_ffff) as FuncId,
        offset: code as u32,
    }))
}

/// The stop code of a [`Stop`] (to pass a stop from the interpreter back through compiled code).
pub(crate) fn encode_stop(stop: Stop) -> u64 {
    match stop {
        Stop::Halt => HALT_CODE,
        Stop::Trap(t) => trap_code(t.kind, t.func, t.offset),
    }
}

/// What compiled code reads and writes through its context register.
#[repr(C)]
pub(crate) struct Ctx {
    /// 0 while running; a stop code once the run must unwind.
    pub stop: u64,
    /// Stack pointer of the innermost trampoline (the unwind target).
    pub entry_sp: u64,
    /// Frames that may still be pushed before the call depth limit.
    pub depth_left: u64,
    /// Lowest stack address compiled code may use.
    pub stack_limit: u64,
    /// Counters shared with the interpreter.
    pub counters: Counters,
    /// Function table: the address compiled callers call for each function.
    pub table: *const usize,
    /// `print` helper.
    pub print_fn: usize,
    /// The helper behind the bridge stub.
    pub bridge_fn: usize,
    /// The unwind stub.
    pub unwind: usize,
    /// The [`RuntimeHost`] of the helpers in `print_fn` and `bridge_fn` (see
    /// [`Ctx::connect`]), type-erased.
    pub host: *mut c_void,
    /// The program being run (for the helpers).
    pub program: *const Program,
}

/// Byte offsets of the context fields, as the ISAs address them.
pub(crate) mod ctx_offsets {
    use super::{Counters, Ctx, offset_of};
    /// [`Ctx::stop`].
    pub const STOP: i32 = offset_of!(Ctx, stop) as i32;
    /// [`Ctx::entry_sp`].
    pub const ENTRY_SP: i32 = offset_of!(Ctx, entry_sp) as i32;
    /// [`Ctx::depth_left`].
    pub const DEPTH_LEFT: i32 = offset_of!(Ctx, depth_left) as i32;
    /// [`Ctx::stack_limit`].
    pub const STACK_LIMIT: i32 = offset_of!(Ctx, stack_limit) as i32;
    /// [`Counters::steps_left`].
    pub const STEPS: i32 = (offset_of!(Ctx, counters) + offset_of!(Counters, steps_left)) as i32;
    /// [`Counters::compiled`].
    pub const COMPILED: i32 = (offset_of!(Ctx, counters) + offset_of!(Counters, compiled)) as i32;
    /// [`Ctx::table`].
    pub const TABLE: i32 = offset_of!(Ctx, table) as i32;
    /// [`Ctx::print_fn`].
    pub const PRINT_FN: i32 = offset_of!(Ctx, print_fn) as i32;
    /// [`Ctx::bridge_fn`].
    pub const BRIDGE_FN: i32 = offset_of!(Ctx, bridge_fn) as i32;
    /// [`Ctx::unwind`].
    pub const UNWIND: i32 = offset_of!(Ctx, unwind) as i32;
}

impl Ctx {
    pub(crate) fn new(counters: Counters) -> Ctx {
        Ctx {
            stop: 0,
            entry_sp: 0,
            depth_left: 0,
            stack_limit: 0,
            counters,
            table: std::ptr::null(),
            print_fn: 0,
            bridge_fn: 0,
            unwind: 0,
            host: std::ptr::null_mut(),
            program: std::ptr::null(),
        }
    }

    /// Points the context at the runtime's stubs and at the function table compiled callers
    /// call through.
    pub(crate) fn attach(&mut self, runtime: &Runtime, table: *const usize) {
        self.table = table;
        self.unwind = runtime.unwind();
    }

    /// Connects `host` to the context: compiled code run with this context calls `host`'s
    /// [`RuntimeHost`] functions through the helpers, which are made for `H` here, with the
    /// pointer stored here, so the helpers and the pointer always agree on its type.
    ///
    /// `host` is only stored, never dereferenced here; it must stay valid (and be reached only
    /// through raw pointers or brief references, see [`RuntimeHost`]) for as long as compiled
    /// code runs with this context.
    pub(crate) fn connect<H: RuntimeHost>(&mut self, host: *mut H) {
        self.host = host.cast();
        let helpers = helpers::<H>();
        self.print_fn = helpers.print;
        self.bridge_fn = helpers.bridge;
    }
}

/// The addresses of the helpers made for `H`: what [`Ctx::connect`] stores, and what code
/// calls directly when it is placed within their reach.
pub(crate) fn helpers<H: RuntimeHost>() -> Helpers {
    Helpers {
        print: print_helper::<H> as *const () as usize,
        bridge: bridge_helper::<H> as *const () as usize,
    }
}

/// The engine side of the runtime boundary: what compiled code's helpers call.
///
/// The functions take the host as the raw pointer given to [`Ctx::connect`], never as a
/// reference: the bridge runs the interpreter, which may enter compiled code again, which may
/// call a helper again with the same host, so an implementation takes a reference to its state
/// only briefly, and never across a call into compiled code (see `tier`, the implementation,
/// for why that is sound).
pub(crate) trait RuntimeHost {
    /// `print` from compiled code: write the value and a newline.
    ///
    /// # Safety
    /// `host` is the pointer connected to the context of the compiled code calling, whose run
    /// (inside the host's engine) has not returned.
    unsafe fn print(host: *mut Self, value: i64);

    /// The bridge: compiled code calls `callee`, which is not compiled, with `args`; run it
    /// (as a new frame below the compiled frames, which leave [`Ctx::depth_left`] frames to the
    /// depth limit) and return its result or why the run stops.
    ///
    /// # Safety
    /// As for [`RuntimeHost::print`]; `program` is the program compiled code runs.
    unsafe fn call_interpreted(
        host: *mut Self,
        program: &Program,
        callee: FuncId,
        args: &[i64],
    ) -> Result<i64, Stop>;
}

/// The host connected to `ctx` (the one place the helpers turn the context into it).
///
/// # Safety
/// `ctx` must be a live context connected to a host of type `H` ([`Ctx::connect`]).
unsafe fn host_of<H: RuntimeHost>(ctx: *mut Ctx) -> *mut H {
    // SAFETY: the caller guarantees a live context; reading a field through the raw pointer
    // takes no reference.
    unsafe { (*ctx).host }.cast::<H>()
}

/// The trampoline's signature: `(ctx, array entry, locals) -> result`.
#[cfg(target_arch = "x86_64")]
type Trampoline = unsafe extern "sysv64" fn(*mut Ctx, usize, *const i64) -> i64;
/// The trampoline's signature: `(ctx, array entry, locals) -> result`.
#[cfg(not(target_arch = "x86_64"))]
type Trampoline = unsafe extern "C" fn(*mut Ctx, usize, *const i64) -> i64;

/// The runtime stubs of one VM, in executable memory.
pub(crate) struct Runtime {
    /// What debuggers and the unwinder were told about the stubs (withdrawn before the block
    /// is freed: fields drop in order).
    #[cfg(feature = "debuginfo")]
    debug: Option<jitmem::debuginfo::Registration>,
    /// Keeps the stubs alive while `trampoline` and the addresses below point into them.
    block: CodeBlock,
    trampoline: Trampoline,
    stubs: RuntimeStubs,
    /// The stubs' code and frame steps, to register them ([`Runtime::register`]).
    #[cfg(feature = "debuginfo")]
    code: Vec<u8>,
    #[cfg(feature = "debuginfo")]
    frame_steps: Vec<super::masm::FrameStep>,
}

impl Runtime {
    /// Assembles the stubs for `M` and `target` and publishes them in `memory`.
    pub(crate) fn new<M: MacroAssembler>(
        memory: &JitMemory,
        target: Target,
    ) -> Result<Runtime, JitError> {
        let mut masm = M::new(target);
        let stubs = masm.runtime_stubs()?;
        #[cfg(feature = "debuginfo")]
        let frame_steps = masm.take_frame_steps();
        let (code, calls) = masm.finish()?;
        let block = publish(memory, &code, &calls, M::patch_call)?;
        // SAFETY: `M::runtime_stubs` assembled the trampoline at this offset with exactly this
        // signature, and the block is published; `Runtime` keeps the block alive as long as
        // the pointer.
        let trampoline: Trampoline = unsafe { block.entry(stubs.trampoline)? };
        Ok(Runtime {
            #[cfg(feature = "debuginfo")]
            debug: None,
            block,
            trampoline,
            stubs,
            #[cfg(feature = "debuginfo")]
            code,
            #[cfg(feature = "debuginfo")]
            frame_steps,
        })
    }

    /// Names the stubs (`jitvm_trampoline`, `jitvm_unwind`, `jitvm_bridge`) and registers
    /// their CFI with `debug`, so that backtraces through compiled code reach the Rust frames
    /// that entered it.
    #[cfg(feature = "debuginfo")]
    pub(crate) fn register(
        &mut self,
        debug: &jitmem::debuginfo::DebugInfo,
        isa: super::Isa,
    ) -> Result<(), JitError> {
        use jitmem::debuginfo::Symbol;
        let mut starts = [
            (self.stubs.trampoline, "jitvm_trampoline"),
            (self.stubs.unwind, "jitvm_unwind"),
            (self.stubs.bridge, "jitvm_bridge"),
        ];
        starts.sort_unstable();
        let mut symbols = Vec::with_capacity(starts.len());
        for (i, &(start, name)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(self.code.len(), |next| next.0);
            symbols.push(Symbol::new(start, end.saturating_sub(start), name)?);
        }
        let cfi = super::cfi::frame_table(isa, &self.frame_steps, self.code.len())?;
        self.debug = Some(debug.register(&self.block, &self.code, &symbols, Some(&cfi))?);
        Ok(())
    }

    /// Address of the unwind stub.
    pub(crate) fn unwind(&self) -> usize {
        self.block.as_ptr() as usize + self.stubs.unwind
    }

    /// Address of the bridge stub (the function table's entry for uninterpreted functions).
    pub(crate) fn bridge(&self) -> usize {
        self.block.as_ptr() as usize + self.stubs.bridge
    }

    /// The trampoline, to enter compiled code without holding a reference to this runtime
    /// (the helpers compiled code calls may take `&mut` to the engine state that owns it).
    pub(crate) fn entry(&self) -> Entry {
        Entry(self.trampoline)
    }
}

/// The trampoline of a [`Runtime`], copied out of it: `(ctx, array entry, locals) -> result`.
#[derive(Clone, Copy)]
pub(crate) struct Entry(Trampoline);

impl Entry {
    /// Runs compiled code from an array entry.
    ///
    /// # Safety
    /// The [`Runtime`] this came from must still be alive (its block holds the trampoline).
    /// `ctx` must point to a live context whose table, helpers, host and program are set up
    /// for the code at `entry`, which must be an array entry of a function compiled for this
    /// runtime and still allocated; `locals` must hold that function's locals. No reference to
    /// the context or to the engine state the helpers reach through it may be live across
    /// this call: the helpers take their own, briefly.
    pub(crate) unsafe fn call(self, ctx: *mut Ctx, entry: usize, locals: *const i64) -> i64 {
        // SAFETY: the caller guarantees the trampoline is live, the context, the entry and the
        // locals.
        unsafe { (self.0)(ctx, entry, locals) }
    }
}

/// The ISA's [`MacroAssembler::patch_call`].
pub(crate) type PatchCall = fn(&mut [u8], HelperCall, usize) -> Result<(), JitError>;

/// Copies `code` into a fresh block of `memory`, patches its direct helper `calls` for the
/// block's address with `patch`, and publishes it.
pub(crate) fn publish(
    memory: &JitMemory,
    code: &[u8],
    calls: &[HelperCall],
    patch: PatchCall,
) -> Result<CodeBlock, JitError> {
    let mut block = memory.allocate(code.len().max(1))?;
    let base = block.as_ptr() as usize;
    let mut scope = block.write()?;
    let dst = scope
        .get_mut(..code.len())
        .ok_or(JitError::Internal("code block shorter than asked"))?;
    dst.copy_from_slice(code);
    for &call in calls {
        patch(dst, call, base)?;
    }
    scope.publish()?;
    Ok(block)
}

/// Declares a helper that compiled code calls, in the convention compiled code uses.
macro_rules! jit_helper {
    ($(#[$meta:meta])* fn $name:ident<$h:ident>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        #[cfg(target_arch = "x86_64")]
        extern "sysv64" fn $name<$h: RuntimeHost>($($arg: $ty),*) -> $ret $body
        $(#[$meta])*
        #[cfg(not(target_arch = "x86_64"))]
        extern "C" fn $name<$h: RuntimeHost>($($arg: $ty),*) -> $ret $body
    };
}

jit_helper! {
    /// `print` from compiled code.
    fn print_helper<H>(ctx: *mut Ctx, value: i64) -> u64 {
        let run = std::panic::catch_unwind(|| {
            // SAFETY: compiled code passes the context it runs with, connected to a host of
            // type `H` (this helper is in it only through `Ctx::connect::<H>`), whose engine is
            // inside one of its methods until compiled code returns.
            unsafe { H::print(host_of::<H>(ctx), value) };
        });
        if run.is_err() {
            // SAFETY: as above, the context is live; no reference to it is held here.
            unsafe { (*ctx).stop = INTERNAL_CODE };
        }
        0
    }
}

jit_helper! {
    /// The bridge stub's helper: runs `callee` through the host. `regs` holds the register
    /// arguments, `stack` the stack-passed ones.
    fn bridge_helper<H>(ctx: *mut Ctx, callee: u64, regs: *const i64, stack: *const i64) -> i64 {
        let run = std::panic::catch_unwind(|| {
            let callee = callee as FuncId;
            // SAFETY: as in `print_helper`, the context is live; its fields are read through
            // the raw pointer. The program was set in it by the engine before it entered
            // compiled code, from a `&Program` that outlives the run; it is only read.
            let (host, program, stack_limit) =
                unsafe { (host_of::<H>(ctx), &*(*ctx).program, (*ctx).stack_limit) };
            let marker = 0u8;
            let here = std::ptr::from_ref(&marker) as u64;
            let result = if here < stack_limit.saturating_add(STACK_MARGIN as u64 / 2) {
                Err(Stop::Trap(Trap {
                    kind: TrapKind::NativeStack,
                    func: callee,
                    offset: 0,
                }))
            } else {
                // SAFETY: the bridge stub stored the register arguments at `regs` and passes
                // the caller's stack-argument area at `stack`, which holds the rest of
                // `callee`'s arguments (the verifier checked the count, the code generator
                // pushed them).
                let args = unsafe { bridge_args(program, callee, regs, stack) };
                // SAFETY: as in `print_helper`.
                unsafe { H::call_interpreted(host, program, callee, &args) }
            };
            match result {
                Ok(v) => v,
                Err(stop) => {
                    // SAFETY: as above; the host holds no reference into its state any more.
                    unsafe { (*ctx).stop = encode_stop(stop) };
                    0
                }
            }
        });
        run.unwrap_or_else(|_| {
            // SAFETY: as above.
            unsafe { (*ctx).stop = INTERNAL_CODE };
            0
        })
    }
}

/// `callee`'s arguments as the bridge stub passes them: the first in the saved argument
/// registers, the rest in the caller's stack-argument area.
///
/// # Safety
/// `regs` must point to the ABI's register arguments as the bridge stub saved them, and
/// `stack` to the caller's stack-argument area, together holding `callee`'s arguments.
unsafe fn bridge_args(
    program: &Program,
    callee: FuncId,
    regs: *const i64,
    stack: *const i64,
) -> Vec<i64> {
    let nargs = program.function(callee).map_or(0, |f| f.args() as usize);
    let in_regs = native_reg_args();
    (0..nargs)
        .map(|i| {
            if i < in_regs {
                // SAFETY: the caller guarantees `in_regs` saved register arguments.
                unsafe { *regs.add(i) }
            } else {
                // SAFETY: the caller guarantees the remaining arguments on the stack.
                unsafe { *stack.add(i - in_regs) }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_codes_round_trip() {
        for kind in TRAP_KINDS {
            for (func, offset) in [(0, 0), (1, 17), (0x00ff_ffff, u32::MAX)] {
                let stop = Stop::Trap(Trap { kind, func, offset });
                let code = encode_stop(stop);
                assert_ne!(code, 0, "0 means running");
                assert_eq!(decode_stop(code), Some(stop));
            }
        }
        assert_eq!(decode_stop(HALT_CODE), Some(Stop::Halt));
        assert_eq!(decode_stop(INTERNAL_CODE), None);
    }
}
