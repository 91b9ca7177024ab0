//! Tiering: the [`Engine`] the interpreter runs under when the JIT is on.
//!
//! Counters at function entry and at every `loop_header`; when one reaches the threshold the
//! function is compiled whole, its code published in [`jitmem`] memory and kept in the JIT cache
//! (one entry per function, in the function table compiled callers call through). A call into
//! a compiled function, or a hot `loop_header` of one (on-stack replacement: the interpreter's
//! locals move into the compiled frame, the operand stack is empty there by verification), runs
//! natively from then on. Compiled code calls functions that are not compiled yet through the
//! bridge, which runs them in the interpreter (where they may tier up in turn).
//!
//! A compiled call of another function is a `call rel32` / `bl` to a thunk in the caller's code
//! that goes on through the function table. Once both caller and callee are compiled, the call
//! is linked: patched to go straight to the callee's code (`State::link`), with jitmem's
//! `patch_live`, because the caller may be suspended inside that very call (compiled caller ->
//! thunk -> bridge -> interpreter -> the callee tiers up). Code is never freed during a run, so
//! a linked call never outlives its target.
//!
//! When executable memory runs out (jitmem's arena is exhausted, the process is at its limit of
//! memory mappings, the address space within reach of the helpers is full, or the OS refuses
//! memory), compilation stops for the rest of the run: the
//! engine says so once ([`JitEngine::notice`]), counts the functions it no longer compiles
//! ([`JitStats::skipped`]), and the program keeps running in the interpreter (code already
//! compiled keeps running natively).
//!
//! # Why sharing the engine with compiled code is sound
//!
//! Compiled code calls back into Rust (the `print` and bridge helpers of `jit::runtime`, which
//! reach the engine only through its `RuntimeHost` boundary, implemented here by `State`), and
//! the bridge runs the interpreter, which may tier up, compile and enter compiled code again:
//! the engine is re-entered while an outer call into compiled code is suspended. So:
//!
//! - Everything the helpers touch (output, counters, the context, the JIT cache, statistics)
//!   is one `State`, allocated once with [`Box::into_raw`] in [`JitEngine::new`] and freed
//!   in [`JitEngine`]'s `Drop`. That raw pointer is the only way to it: [`JitEngine`] and the
//!   `EngineRef` handles hold copies of it, and so does the context (its host, stored once in
//!   `new` by `Ctx::connect`, which the helpers pass to the `RuntimeHost` functions as a raw
//!   pointer, and those make an `EngineRef` of it), never a reference.
//! - Rust code takes a `&mut State` (or `&State`) only briefly, between calls into compiled
//!   code: every such reference is dead before `Entry::call` runs compiled code, which may
//!   re-enter through a helper and take its own. So no two live references to the state ever
//!   overlap, and no reference is live while compiled code reads or writes the context
//!   through its raw pointer (derived from the same allocation pointer, never from a
//!   reference).
//! - The function table compiled code calls through is its own raw allocation (`FnTable`),
//!   written only through its raw pointer, so publishing a function while compiled code runs
//!   does not invalidate the pointer compiled code holds.
//! - The references [`JitEngine`]'s accessors hand out borrow the `JitEngine` itself; compiled
//!   code runs only inside its `&mut self` methods (the [`Engine`] ones), so the borrow checker
//!   keeps such a reference from outliving into a run.

use std::io::{self, Write};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use jitmem::{CodeBlock, JitMemory};

use crate::jit::runtime::{Ctx, Entry, Runtime, RuntimeHost, STACK_MARGIN, decode_stop, helpers};
use crate::jit::{
    CodegenOptions, Helpers, Isa, JitError, Target, call_reach, compile_for, native_runtime,
    publish_compiled,
};
use crate::program::{Counters, Engine, FuncId, Limits, Program, Stop, Trap, TrapKind};

/// Where `print` writes (any writer).
pub trait Output: Write {}
impl<W: Write> Output for W {}

/// When functions are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitMode {
    /// Never: interpreter only.
    Off,
    /// When a function's entry counter or one of its loop-header counters reaches `threshold`.
    Tiered {
        /// Calls or loop iterations before compilation (at least 1).
        threshold: u32,
    },
    /// Every function before the run starts.
    Eager,
}

/// How the JIT runs.
#[derive(Clone, Debug)]
pub struct JitConfig {
    /// When to compile.
    pub mode: JitMode,
    /// The executable memory (strategy and layout).
    pub memory: jitmem::Config,
    /// Count executed instructions for statistics (slower).
    pub count: bool,
    /// Bytes of native stack that are guaranteed below the first entry into compiled code.
    pub native_stack: usize,
    /// Where compiled functions are named and their frames described (perf map, jitdump,
    /// GDB JIT, unwinder); `None`: nowhere.
    #[cfg(feature = "debuginfo")]
    pub debug: Option<std::sync::Arc<jitmem::debuginfo::DebugInfo>>,
}

impl Default for JitConfig {
    fn default() -> Self {
        JitConfig {
            mode: JitMode::Tiered { threshold: 1000 },
            memory: jitmem::Config::new(),
            count: false,
            native_stack: 512 * 1024,
            #[cfg(feature = "debuginfo")]
            debug: None,
        }
    }
}

/// What the JIT did during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Functions compiled.
    pub compiled_functions: u32,
    /// Bytecode instructions compiled.
    pub compiled_instructions: u64,
    /// Machine code produced, in bytes.
    pub code_bytes: u64,
    /// Time spent compiling, including allocation and publication.
    pub compile_time: Duration,
    /// Entries into compiled code at a loop header (on-stack replacement).
    pub osr_entries: u64,
    /// Functions that could not be compiled, with the reason (they stay interpreted).
    pub failures: Vec<String>,
    /// Functions left interpreted because executable memory ran out earlier in the run (see
    /// the module documentation); the first such failure is in [`JitEngine::notice`].
    pub skipped: u32,
    /// How compiled code calls the runtime's helpers.
    pub helper_calls: HelperCalls,
    /// Calls between compiled functions linked to go straight to the callee's code (patched
    /// when the later of caller and callee was compiled).
    pub linked_calls: u32,
    /// Calls between compiled functions left going through the function table: the callee's
    /// code is out of the call's reach, or the patch was refused (the first reason is in
    /// [`JitStats::failures`]).
    pub unlinked_calls: u32,
}

/// How compiled code calls the runtime's helpers (`print`, the bridge to the interpreter).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HelperCalls {
    /// No code is compiled (the JIT is off or unavailable).
    #[default]
    NoCode,
    /// Directly (x86-64 `call rel32`, AArch64 `bl`): the executable memory was placed within
    /// reach of the helpers (`jitmem::Config::near`).
    Direct {
        /// The largest distance allowed between any code byte and the helpers' midpoint.
        max_distance: usize,
    },
    /// Through a register (the address loaded from the context): the memory could not be
    /// placed within reach of the helpers, for the reason given.
    Register(String),
}

impl std::fmt::Display for HelperCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelperCalls::NoCode => f.write_str("none (no compiled code)"),
            HelperCalls::Direct { max_distance } => write!(
                f,
                "direct (call rel32 / bl): code placed within {} MiB of the helpers",
                max_distance >> 20
            ),
            HelperCalls::Register(why) => {
                write!(
                    f,
                    "through a register: code not placed near the helpers ({why})"
                )
            }
        }
    }
}

/// The function table compiled callers call through (one address per function): its own raw
/// allocation, so that compiled code's pointer to it (in the context) stays valid while Rust
/// code publishes new entries. Written only through [`FnTable::set`].
struct FnTable {
    /// The `Box<[usize]>` of `new`, freed in `drop`.
    ptr: *mut usize,
    len: usize,
}

impl FnTable {
    /// A table of `len` entries, all `fill`.
    fn new(len: usize, fill: usize) -> FnTable {
        let boxed: Box<[usize]> = vec![fill; len].into_boxed_slice();
        let ptr = Box::into_raw(boxed).cast::<usize>();
        FnTable { ptr, len }
    }

    /// Sets entry `index`; `false` if it is out of range.
    fn set(&mut self, index: usize, value: usize) -> bool {
        if index >= self.len {
            return false;
        }
        // SAFETY: `index` is in bounds of the allocation made in `new`, which lives until
        // `drop`; the write goes through the allocation's own pointer, so it invalidates no
        // other pointer to the table (compiled code reads it through a copy of that pointer,
        // and never while this runs: Rust code runs only while compiled code is suspended).
        unsafe { self.ptr.add(index).write(value) };
        true
    }

    /// The table's address, for the context.
    fn as_ptr(&self) -> *const usize {
        self.ptr
    }
}

impl Drop for FnTable {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr, self.len);
        // SAFETY: `slice` is exactly the `Box<[usize]>` leaked in `new`, freed only here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

struct Jit {
    /// See [`JitConfig::debug`].
    #[cfg(feature = "debuginfo")]
    debug: Option<std::sync::Arc<jitmem::debuginfo::DebugInfo>>,
    memory: JitMemory,
    runtime: Runtime,
    isa: Isa,
    table: FnTable,
    options: CodegenOptions,
}

struct NativeCode {
    /// What debuggers and profilers were told about the code: withdrawn before the block is
    /// freed (fields drop in order).
    #[cfg(feature = "debuginfo")]
    _debug: Option<jitmem::debuginfo::Registration>,
    /// Keeps the code alive while the table points into it.
    _block: CodeBlock,
    /// Array entry at the start.
    start: usize,
    /// The entry compiled callers call (arguments per the ABI).
    native: usize,
    /// On-stack-replacement entries: (`loop_header` index, address).
    osr: Vec<(u32, usize)>,
}

#[derive(Default)]
struct FuncState {
    calls: u32,
    loops: Vec<u32>,
    compiled: Option<NativeCode>,
    failed: bool,
    /// Linkable calls of this function in compiled callers, waiting for it to be compiled:
    /// (caller, offset of the call in the caller's code).
    waiting: Vec<(FuncId, usize)>,
}

/// Everything compiled code's helpers touch, in one allocation (see the module documentation).
struct State<W: Output> {
    out: W,
    write_error: Option<io::Error>,
    limits: Limits,
    threshold: u32,
    ctx: Ctx,
    jit: Option<Jit>,
    funcs: Vec<FuncState>,
    stats: JitStats,
    notice: Option<String>,
    /// Executable memory ran out: compile nothing more in this run.
    exhausted: bool,
    native_stack: usize,
    nesting: u32,
}

/// The engine with a JIT: tiering counters, the JIT cache and output.
pub struct JitEngine<W: Output> {
    /// The engine state, from `Box::into_raw`; freed in `Drop`.
    state: *mut State<W>,
    _owns: PhantomData<State<W>>,
}

impl<W: Output> Drop for JitEngine<W> {
    fn drop(&mut self) {
        // SAFETY: `state` came from `Box::into_raw` in `new` and is freed only here; no
        // compiled code runs (it runs only inside `&mut self` methods), so no other pointer
        // to the state is in use.
        drop(unsafe { Box::from_raw(self.state) });
    }
}

impl<W: Output> JitEngine<W> {
    /// An engine for `program`; with [`JitMode::Eager`] every function is compiled here.
    /// When the JIT cannot run (off, no backend, no executable memory) the engine interprets
    /// and [`JitEngine::notice`] says why.
    pub fn new(program: &Program, limits: Limits, config: &JitConfig, out: W) -> JitEngine<W> {
        let counters = Counters {
            steps_left: limits.max_steps,
            ..Counters::default()
        };
        let mut state = Box::new(State {
            out,
            write_error: None,
            limits,
            threshold: match config.mode {
                JitMode::Tiered { threshold } => threshold.max(1),
                JitMode::Off | JitMode::Eager => u32::MAX,
            },
            ctx: Ctx::new(counters),
            jit: None,
            funcs: (0..program.functions().len())
                .map(|_| FuncState::default())
                .collect(),
            stats: JitStats::default(),
            notice: None,
            exhausted: false,
            native_stack: config.native_stack,
            nesting: 0,
        });
        if config.mode != JitMode::Off {
            match start(program, limits, config, helpers::<State<W>>()) {
                Ok((jit, calls)) => {
                    state.ctx.attach(&jit.runtime, jit.table.as_ptr());
                    state.jit = Some(jit);
                    state.stats.helper_calls = calls;
                }
                Err(why) => state.notice = Some(format!("JIT unavailable, interpreting: {why}")),
            }
        }
        let raw = Box::into_raw(state);
        // SAFETY: `raw` is the live allocation just made and nothing else refers to it; the
        // brief `&mut` to the context is derived from it and dead after this statement. The
        // context keeps a copy of `raw` (not of a reference) as its host: the helpers pass
        // that copy to `State`'s `RuntimeHost` functions.
        unsafe { (*raw).ctx.connect(raw) };
        let mut engine = JitEngine {
            state: raw,
            _owns: PhantomData,
        };
        if config.mode == JitMode::Eager {
            // Once executable memory has run out, `compile` only counts the rest as skipped.
            for f in 0..program.functions().len() {
                engine.compile(program, f as FuncId);
            }
        }
        engine
    }

    /// The state, shared, for as long as `self` is borrowed.
    fn state(&self) -> &State<W> {
        // SAFETY: the state lives as long as `self`; compiled code (and so any helper taking
        // `&mut` to the state) runs only inside `&mut self` methods, which cannot run while
        // this borrow of `self` lives.
        unsafe { &*self.state }
    }

    /// The state, exclusively, for as long as `self` is borrowed (never across a call into
    /// compiled code).
    fn state_mut(&mut self) -> &mut State<W> {
        // SAFETY: as in `state`; `&mut self` makes this the only reference.
        unsafe { &mut *self.state }
    }

    /// A handle on the same state, for the [`Engine`] methods.
    fn handle(&mut self) -> EngineRef<W> {
        EngineRef { state: self.state }
    }

    /// Why the JIT is not running or stopped compiling, if it did (say it once, on stderr).
    pub fn notice(&self) -> Option<&str> {
        self.state().notice.as_deref()
    }

    /// What the JIT did.
    pub fn stats(&self) -> &JitStats {
        &self.state().stats
    }

    /// The run's counters.
    pub fn counters_now(&self) -> Counters {
        self.state().ctx.counters
    }

    /// The strategy and layout of the executable memory, when the JIT runs.
    pub fn memory(&self) -> Option<&JitMemory> {
        self.state().jit.as_ref().map(|j| &j.memory)
    }

    /// The first write error of `print`, if any.
    pub fn take_write_error(&mut self) -> Option<io::Error> {
        self.state_mut().write_error.take()
    }

    /// The output writer.
    pub fn output(&mut self) -> &mut W {
        &mut self.state_mut().out
    }

    /// Compiles `func` into the JIT cache; `false` if the JIT is off or compilation failed
    /// (the function then stays interpreted, and the reason is in the statistics).
    pub fn compile(&mut self, program: &Program, func: FuncId) -> bool {
        self.state_mut().compile(program, func)
    }
}

fn start(
    program: &Program,
    limits: Limits,
    config: &JitConfig,
    helpers: Helpers,
) -> Result<(Jit, HelperCalls), String> {
    let isa = Isa::native().ok_or_else(|| JitError::UnsupportedIsa.to_string())?;
    if !jitmem::probe::jit_available() {
        let why = jitmem::probe::auto_choice()
            .err()
            .unwrap_or_else(|| "the probe found no way to run generated code".into());
        return Err(why);
    }
    let (memory, calls) = placed_memory(&config.memory, helpers, isa)?;
    let target = Target {
        helpers: matches!(calls, HelperCalls::Direct { .. }).then_some(helpers),
        bti: memory.bti(),
    };
    #[cfg_attr(
        not(feature = "debuginfo"),
        expect(unused_mut, reason = "registered below")
    )]
    let mut runtime = native_runtime(&memory, target).map_err(|e| e.to_string())?;
    #[cfg(feature = "debuginfo")]
    if let Some(debug) = &config.debug {
        runtime
            .register(debug, isa)
            .map_err(|e| format!("registering the runtime stubs: {e}"))?;
    }
    let table = FnTable::new(program.functions().len(), runtime.bridge());
    let jit = Jit {
        #[cfg(feature = "debuginfo")]
        debug: config.debug.clone(),
        memory,
        runtime,
        isa,
        table,
        options: CodegenOptions {
            steps: limits.max_steps != u64::MAX,
            count: config.count,
            target,
            link_calls: true,
        },
    };
    Ok((jit, calls))
}

/// Executable memory placed within reach of `helpers` when it can be had there (compiled code
/// then calls them directly), else anywhere (it calls them through a register), and which.
///
/// Every code byte is kept within `max_distance` of the helpers' midpoint, where
/// `max_distance` leaves the call's reach minus half the helpers' spread and a 1 MiB margin:
/// every call from the code to either helper then reaches.
fn placed_memory(
    config: &jitmem::Config,
    helpers: Helpers,
    isa: Isa,
) -> Result<(JitMemory, HelperCalls), String> {
    let low = helpers.print.min(helpers.bridge);
    let spread = helpers.print.max(helpers.bridge) - low;
    let centre = low + spread / 2;
    let max_distance = call_reach(isa)
        .checked_sub(spread.div_ceil(2) + (1 << 20))
        .ok_or("the helpers lie farther apart than a direct call reaches")
        .map_err(str::to_owned);
    let near = max_distance.and_then(|max_distance| {
        let memory =
            JitMemory::new(config.clone().near(centre, max_distance)).map_err(|e| e.to_string())?;
        // One placement per function would search the address space for each (and, under
        // qemu-user at the mapping limit, takes minutes): PerAllocation is not placed.
        if memory.layout() == jitmem::Layout::PerAllocation {
            return Err("the per-allocation layout is not placed near the helpers".to_owned());
        }
        Ok((memory, max_distance))
    });
    match near {
        Ok((memory, max_distance)) => Ok((memory, HelperCalls::Direct { max_distance })),
        Err(why) => {
            let memory = JitMemory::new(config.clone()).map_err(|e| e.to_string())?;
            Ok((memory, HelperCalls::Register(why)))
        }
    }
}

/// Names the block of `func` after the bytecode function and registers the CFI of its
/// frames with `debug`.
#[cfg(feature = "debuginfo")]
fn register(
    debug: &jitmem::debuginfo::DebugInfo,
    isa: Isa,
    program: &Program,
    func: FuncId,
    block: &CodeBlock,
    code: &crate::jit::CompiledCode,
) -> Result<jitmem::debuginfo::Registration, JitError> {
    let name = program.function(func).map_or("?", |f| f.name());
    let symbol = jitmem::debuginfo::Symbol::new(0, code.code.len(), name)?;
    let cfi = crate::jit::cfi::frame_table(isa, &code.frame_steps, code.code.len())?;
    Ok(debug.register(block, &code.code, &[symbol], Some(&cfi))?)
}

/// Whether a compile error means executable memory ran out (so later ones would fail too).
fn out_of_memory(error: &JitError) -> bool {
    match error {
        JitError::Memory(
            jitmem::Error::Exhausted { .. }
            | jitmem::Error::MappingLimit { .. }
            | jitmem::Error::NoRoomNear { .. },
        ) => true,
        JitError::Memory(jitmem::Error::Os { source, .. }) => {
            source.kind() == io::ErrorKind::OutOfMemory || source.raw_os_error() == Some(ENOMEM)
        }
        _ => false,
    }
}

/// `ENOMEM` (12 on Linux, macOS and the BSDs).
const ENOMEM: i32 = 12;

impl<W: Output> State<W> {
    /// See [`JitEngine::compile`].
    fn compile(&mut self, program: &Program, func: FuncId) -> bool {
        let Some(jit) = self.jit.as_mut() else {
            return false;
        };
        let Some(state) = self.funcs.get_mut(func as usize) else {
            return false;
        };
        if state.compiled.is_some() {
            return true;
        }
        if state.failed {
            return false;
        }
        if self.exhausted {
            state.failed = true;
            self.stats.skipped += 1;
            return false;
        }
        let start = Instant::now();
        let result = compile_for(jit.isa, program, func, jit.options).and_then(|code| {
            let block = publish_compiled(jit.isa, &jit.memory, &code)?;
            #[cfg(feature = "debuginfo")]
            let debug = match &jit.debug {
                Some(debug) => Some(register(debug, jit.isa, program, func, &block, &code)?),
                None => None,
            };
            let base = block.as_ptr() as usize;
            let osr = code
                .osr_entries
                .iter()
                .map(|&(index, offset)| (index, base + offset))
                .collect();
            let start = base + code.start_entry;
            let native = NativeCode {
                #[cfg(feature = "debuginfo")]
                _debug: debug,
                _block: block,
                start,
                native: base + code.native_entry,
                osr,
            };
            Ok((native, code.call_sites, code.code.len()))
        });
        match result {
            Ok((code, sites, bytes)) => {
                let native = code.native;
                jit.table.set(func as usize, native);
                state.compiled = Some(code);
                self.link(program, func, sites);
                self.stats.compile_time += start.elapsed();
                self.stats.compiled_functions += 1;
                self.stats.code_bytes += bytes as u64;
                self.stats.compiled_instructions +=
                    program.function(func).map_or(0, |f| f.code().len() as u64);
                true
            }
            Err(e) if out_of_memory(&e) => {
                self.stats.compile_time += start.elapsed();
                state.failed = true;
                self.exhausted = true;
                self.stats.skipped += 1;
                if self.notice.is_none() {
                    self.notice = Some(format!(
                        "executable memory ran out after {} compiled functions; the rest of the \
                         run is interpreted ({e})",
                        self.stats.compiled_functions
                    ));
                }
                false
            }
            Err(e) => {
                self.stats.compile_time += start.elapsed();
                state.failed = true;
                let name = program.function(func).map_or("?", |f| f.name());
                self.stats
                    .failures
                    .push(format!("{}: {e}", crate::error::quote(name)));
                false
            }
        }
    }

    /// Links calls between compiled functions once `func` is compiled: its own linkable calls
    /// (`sites`) of functions already compiled, and the calls of `func` that compiled callers
    /// made through its thunk until now. The others wait for their callee.
    fn link(&mut self, program: &Program, func: FuncId, sites: Vec<(usize, FuncId)>) {
        let native = |funcs: &[FuncState], f: FuncId| {
            funcs
                .get(f as usize)
                .and_then(|s| s.compiled.as_ref())
                .map(|c| c.native)
        };
        let mut now = Vec::new();
        for (at, callee) in sites {
            match native(&self.funcs, callee) {
                Some(target) => now.push((func, at, target)),
                None => {
                    if let Some(state) = self.funcs.get_mut(callee as usize) {
                        state.waiting.push((func, at));
                    }
                }
            }
        }
        if let Some(target) = native(&self.funcs, func)
            && let Some(state) = self.funcs.get_mut(func as usize)
        {
            now.extend(
                std::mem::take(&mut state.waiting)
                    .into_iter()
                    .map(|(caller, at)| (caller, at, target)),
            );
        }
        for (caller, at, target) in now {
            match self.link_call(caller, at, target) {
                Ok(true) => self.stats.linked_calls += 1,
                Ok(false) => self.stats.unlinked_calls += 1,
                Err(e) => {
                    self.stats.unlinked_calls += 1;
                    if self.stats.unlinked_calls == 1 {
                        let name = program.function(caller).map_or("?", |f| f.name());
                        self.stats.failures.push(format!(
                            "{}: a call left going through the function table: {e}",
                            crate::error::quote(name)
                        ));
                    }
                }
            }
        }
    }

    /// Patches the linkable call at offset `at` of `caller`'s code to go to `target`; `false`
    /// when `target` is out of the call's reach. The patch is one aligned 4-byte store
    /// (`patch_live`: the caller may be suspended in the middle of this very call, further up
    /// the stack); where the block does not patch live (Toggle: its pages are not executable
    /// while written), an ordinary patch (this VM runs its compiled code on this thread only,
    /// which is here).
    fn link_call(&mut self, caller: FuncId, at: usize, target: usize) -> Result<bool, JitError> {
        let Some(jit) = self.jit.as_ref() else {
            return Ok(false);
        };
        let isa = jit.isa;
        let Some(code) = self
            .funcs
            .get_mut(caller as usize)
            .and_then(|s| s.compiled.as_mut())
        else {
            return Ok(false);
        };
        let block = &mut code._block;
        let address = block.as_ptr() as usize + at;
        let Some((offset, bytes)) = crate::jit::link_call(isa, address, target) else {
            return Ok(false);
        };
        if block.patches_live() {
            block.patch_live(at + offset, &bytes)?;
        } else {
            block.patch(at + offset, &bytes)?;
        }
        Ok(true)
    }

    /// The array entry at the start of `func` (`at == None`) or after its `loop_header` `at`.
    fn entry(&self, func: FuncId, at: Option<u32>) -> Option<usize> {
        let code = self.funcs.get(func as usize)?.compiled.as_ref()?;
        match at {
            None => Some(code.start),
            Some(at) => code
                .osr
                .iter()
                .find(|(index, _)| *index == at)
                .map(|(_, addr)| *addr),
        }
    }

    /// Counts a call (`at == None`) or an iteration of the `loop_header` `at` of `func`,
    /// compiles `func` when the count reaches the threshold, and returns the entry to run the
    /// frame natively from once it is compiled.
    fn tier_up(&mut self, program: &Program, func: FuncId, at: Option<u32>) -> Option<usize> {
        self.jit.as_ref()?;
        let state = self.funcs.get_mut(func as usize)?;
        if state.compiled.is_none() {
            if state.failed {
                return None;
            }
            let count = match at {
                None => &mut state.calls,
                Some(at) => {
                    if state.loops.is_empty() {
                        let len = program.function(func).map_or(0, |f| f.code().len());
                        state.loops = vec![0; len];
                    }
                    state.loops.get_mut(at as usize)?
                }
            };
            *count = count.saturating_add(1);
            if *count < self.threshold || !self.compile(program, func) {
                return None;
            }
        }
        let entry = self.entry(func, at)?;
        if at.is_some() {
            self.stats.osr_entries += 1;
        }
        Some(entry)
    }

    /// Sets the context up for a call into compiled code from interpreted frame at `depth`;
    /// returns the trampoline.
    fn prepare_native(&mut self, program: &Program, depth: u32) -> Option<Entry> {
        let entry = self.jit.as_ref()?.runtime.entry();
        if self.nesting == 0 {
            let marker = 0u8;
            let here = std::ptr::from_ref(&marker) as usize;
            let limit = here.saturating_sub(self.native_stack) + STACK_MARGIN;
            self.ctx.stack_limit = limit.min(here) as u64;
        }
        self.ctx.depth_left = u64::from(self.limits.max_depth.saturating_sub(depth));
        self.ctx.program = program;
        self.ctx.stop = 0;
        self.nesting += 1;
        Some(entry)
    }

    /// Undoes [`State::prepare_native`] after compiled code returned `result`.
    fn finish_native(&mut self, result: i64) -> Result<i64, Stop> {
        self.nesting = self.nesting.saturating_sub(1);
        let stop = std::mem::take(&mut self.ctx.stop);
        if stop != 0 {
            return Err(decode_stop(stop).unwrap_or_else(internal_trap));
        }
        Ok(result)
    }
}

/// A handle on a [`JitEngine`]'s state: what the [`Engine`] methods run on, and what the
/// `RuntimeHost` functions make of the host pointer compiled code's helpers pass them. A copy
/// of the state pointer, owning nothing (see the module documentation).
struct EngineRef<W: Output> {
    state: *mut State<W>,
}

impl<W: Output> EngineRef<W> {
    /// The state, exclusively, while this borrow of the handle lives (never across a call into
    /// compiled code).
    fn state(&mut self) -> &mut State<W> {
        // SAFETY: the state is alive (see `RuntimeHost for State`, or `JitEngine::handle`);
        // every reference to it is taken briefly and dropped before compiled code runs, and
        // compiled code, which is suspended while Rust code runs, is the only other user;
        // so this is the only live reference.
        unsafe { &mut *self.state }
    }

    /// Runs compiled code from an array entry with the frame's locals.
    fn run_native(
        &mut self,
        program: &Program,
        entry: usize,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<i64, Stop> {
        let Some(trampoline) = self.state().prepare_native(program, depth) else {
            return Err(internal_trap());
        };
        // No reference to the state is live from here until compiled code returns.
        // SAFETY: `self.state` is the live allocation (see `state`); `&raw mut` takes no
        // reference, so the pointer derives from the allocation's own.
        let ctx: *mut Ctx = unsafe { &raw mut (*self.state).ctx };
        // SAFETY: `ctx` is this engine's context, set up in `JitEngine::new` (table, helpers
        // for this `W`, unwind stub, engine) and in `prepare_native` (program, depth, stack
        // limit); the runtime that made `trampoline` and the block holding `entry` (an array
        // entry of a function this engine compiled) live in the state, which outlives this
        // call and frees code only when dropped; `locals` holds that function's locals (the
        // interpreter's frame). No reference into the state is live across the call.
        let result = unsafe { trampoline.call(ctx, entry, locals.as_ptr()) };
        self.state().finish_native(result)
    }

    /// Tiers up and, once `func` is compiled, runs the frame natively.
    fn tier_up(
        &mut self,
        program: &Program,
        func: FuncId,
        at: Option<u32>,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop> {
        match self.state().tier_up(program, func, at) {
            Some(entry) => self.run_native(program, entry, locals, depth).map(Some),
            None => Ok(None),
        }
    }
}

/// Compiled code's way into the engine (see the module documentation): each call makes an
/// [`EngineRef`] from the host pointer, a copy of the state pointer the context holds. The
/// caller guarantees the state is alive (the engine that connected it is running compiled
/// code), which is what `EngineRef` needs.
impl<W: Output> RuntimeHost for State<W> {
    unsafe fn print(host: *mut Self, value: i64) {
        EngineRef { state: host }.print(value);
    }

    unsafe fn call_interpreted(
        host: *mut Self,
        program: &Program,
        callee: FuncId,
        args: &[i64],
    ) -> Result<i64, Stop> {
        let mut engine = EngineRef { state: host };
        let (limits, count, depth_left) = {
            let state = engine.state();
            let count = state.jit.as_ref().is_some_and(|j| j.options.count);
            (state.limits, count, state.ctx.depth_left)
        };
        let depth = limits
            .max_depth
            .saturating_sub(u32::try_from(depth_left).unwrap_or(u32::MAX));
        crate::interp::call(program, &mut engine, &limits, callee, args, depth, count)
    }
}

/// The stop reported when the JIT's own machinery fails (never expected).
fn internal_trap() -> Stop {
    Stop::Trap(Trap {
        kind: TrapKind::Internal,
        func: 0,
        offset: 0,
    })
}

impl<W: Output> Engine for EngineRef<W> {
    fn enter(
        &mut self,
        program: &Program,
        func: FuncId,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop> {
        self.tier_up(program, func, None, locals, depth)
    }

    fn loop_header(
        &mut self,
        program: &Program,
        func: FuncId,
        at: u32,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop> {
        self.tier_up(program, func, Some(at), locals, depth)
    }

    fn print(&mut self, value: i64) {
        let state = self.state();
        if state.write_error.is_none() {
            if let Err(e) = writeln!(state.out, "{value}") {
                state.write_error = Some(e);
            }
        }
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.state().ctx.counters
    }
}

impl<W: Output> Engine for JitEngine<W> {
    /// Only with a JIT (not with `JitMode::Off`, nor when the JIT could not start): `jit` is
    /// set when the engine is made and never changes.
    fn observes(&self) -> bool {
        self.state().jit.is_some()
    }

    fn enter(
        &mut self,
        program: &Program,
        func: FuncId,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop> {
        self.handle().enter(program, func, locals, depth)
    }

    fn loop_header(
        &mut self,
        program: &Program,
        func: FuncId,
        at: u32,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop> {
        self.handle().loop_header(program, func, at, locals, depth)
    }

    fn print(&mut self, value: i64) {
        self.handle().print(value);
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.state_mut().ctx.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `main` calls `work` (not inlinable: it has a loop) 300 times and prints the sum.
    const CALLS: &str = "func main args=0 locals=2\nloop:\n    loop_header\n    load_local 1\n    load_imm 300\n    lt_ii\n    jump_if_false done\n    load_local 0\n    load_local 1\n    call work\n    add_ii\n    store_local 0\n    load_local 1\n    load_imm 1\n    add_ii\n    store_local 1\n    jump loop\ndone:\n    load_local 0\n    print\n    return_nil\nend\n\nfunc work args=1 locals=2\nloop:\n    loop_header\n    load_local 1\n    load_imm 3\n    lt_ii\n    jump_if_false done\n    load_local 0\n    load_imm 2\n    add_ii\n    store_local 0\n    load_local 1\n    load_imm 1\n    add_ii\n    store_local 1\n    jump loop\ndone:\n    load_local_0\n    return\nend\n";

    /// The sum `CALLS` prints: sum of (i + 6) for i < 300.
    const SUM: i64 = 299 * 300 / 2 + 6 * 300;

    fn program() -> Program {
        crate::verify::verify(&crate::text::parse(CALLS).unwrap()).unwrap()
    }

    fn engine(program: &Program, strategy: jitmem::Strategy, threshold: u32) -> JitEngine<Vec<u8>> {
        let config = JitConfig {
            mode: JitMode::Tiered { threshold },
            memory: jitmem::Config::new().strategy(strategy),
            ..JitConfig::default()
        };
        let engine = JitEngine::new(program, Limits::default(), &config, Vec::new());
        assert!(engine.notice().is_none(), "{:?}", engine.notice());
        engine
    }

    /// Where the call instruction at offset `at` of `caller`'s code goes (decoded from the
    /// bytes, read through a write scope that changes nothing).
    fn call_target(engine: &mut JitEngine<Vec<u8>>, caller: FuncId, at: usize) -> usize {
        let code = engine.state_mut().funcs[caller as usize]
            .compiled
            .as_mut()
            .unwrap();
        let block = &mut code._block;
        let address = block.as_ptr() as usize + at;
        let scope = block.write_range(at..at + 5).unwrap();
        let bytes = scope.to_vec();
        drop(scope);
        crate::jit::call_destination(Isa::native().unwrap(), &bytes, address)
    }

    /// The linkable call sites of `func` (compiled again: code generation is deterministic).
    fn sites(engine: &JitEngine<Vec<u8>>, program: &Program, func: FuncId) -> Vec<(usize, FuncId)> {
        let jit = engine.state().jit.as_ref().unwrap();
        compile_for(jit.isa, program, func, jit.options)
            .unwrap()
            .call_sites
    }

    fn native(engine: &JitEngine<Vec<u8>>, func: FuncId) -> usize {
        engine.state().funcs[func as usize]
            .compiled
            .as_ref()
            .unwrap()
            .native
    }

    fn thunk_or_native(engine: &mut JitEngine<Vec<u8>>, program: &Program) -> usize {
        let [(at, callee)] = sites(engine, program, 0)[..] else {
            panic!("one call site in main");
        };
        assert_eq!(callee, 1);
        call_target(engine, 0, at)
    }

    /// Toggle (an ordinary patch), Mirror (`patch_live`) and PerThread (`patch_live`: two
    /// `WRPKRU`) where the CPU has protection keys: the PKU VM (`ci/pku`) runs these tests with
    /// `JITMEM_REQUIRE_PKU=1`, which makes a missing PerThread a failure.
    fn strategies() -> Vec<jitmem::Strategy> {
        let mut all = vec![jitmem::Strategy::Toggle, jitmem::Strategy::Mirror];
        let per_thread = jitmem::Config::new().strategy(jitmem::Strategy::PerThread);
        match JitMemory::new(per_thread) {
            Ok(_) => all.push(jitmem::Strategy::PerThread),
            Err(e) => {
                let require = std::env::var("JITMEM_REQUIRE_PKU").is_ok_and(|v| v == "1");
                assert!(
                    !require,
                    "JITMEM_REQUIRE_PKU=1 but PerThread is refused: {e}"
                );
                eprintln!("PerThread not run: {e}");
            }
        }
        all
    }

    /// A call compiled before its callee goes to the thunk, and straight to the callee's code
    /// once the callee is compiled; compiled in the other order, it is linked at once.
    #[test]
    fn calls_are_linked_to_their_callee_in_either_order_of_compilation() {
        let Some(_) = Isa::native() else { return };
        let program = program();
        for strategy in strategies() {
            // Caller first.
            let mut e = engine(&program, strategy, u32::MAX);
            assert!(e.compile(&program, 0));
            let before = thunk_or_native(&mut e, &program);
            let main = e.state().funcs[0].compiled.as_ref().unwrap();
            let main_code = main._block.addr_range();
            assert!(
                main_code.contains(&before),
                "{strategy:?}: the thunk is in main's code"
            );
            assert_eq!(e.stats().linked_calls, 0);
            assert!(e.compile(&program, 1));
            assert_eq!(
                thunk_or_native(&mut e, &program),
                native(&e, 1),
                "{strategy:?}"
            );
            assert_eq!((e.stats().linked_calls, e.stats().unlinked_calls), (1, 0));
            let r = crate::interp::run(&program, &mut e, &Limits::default(), false);
            assert_eq!(r, Ok(0));
            assert_eq!(e.output(), &format!("{SUM}\n").into_bytes());

            // Callee first.
            let mut e = engine(&program, strategy, u32::MAX);
            assert!(e.compile(&program, 1));
            assert!(e.compile(&program, 0));
            assert_eq!(
                thunk_or_native(&mut e, &program),
                native(&e, 1),
                "{strategy:?}"
            );
            assert_eq!((e.stats().linked_calls, e.stats().unlinked_calls), (1, 0));
        }
    }

    /// The callee tiers up while its compiled caller is suspended in a call of it (through the
    /// thunk and the bridge): the call is patched under the caller's feet, which returns
    /// through it unharmed and calls the callee's code directly from then on.
    #[test]
    fn a_call_is_linked_while_its_caller_is_suspended_in_it() {
        let Some(_) = Isa::native() else { return };
        let program = program();
        for strategy in strategies() {
            let mut e = engine(&program, strategy, 50);
            assert!(e.compile(&program, 0));
            let r = crate::interp::run(&program, &mut e, &Limits::default(), true);
            assert_eq!(r, Ok(0), "{strategy:?}");
            assert_eq!(e.output(), &format!("{SUM}\n").into_bytes());
            assert_eq!((e.stats().linked_calls, e.stats().unlinked_calls), (1, 0));
            assert_eq!(thunk_or_native(&mut e, &program), native(&e, 1));
            assert_eq!(
                e.stats().compiled_functions,
                2,
                "work tiered up during the run"
            );
        }
    }
}
