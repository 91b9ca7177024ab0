//! Tiering: the [`Engine`] the interpreter runs under when the JIT is on.
//!
//! Counters at function entry and at every `loop_header`; when one reaches the threshold the
//! function is compiled whole, its code published in [`jitmem`] memory and kept in the JIT cache
//! (one entry per function, in the function table compiled callers call through). A call into
//! a compiled function, or a hot `loop_header` of one (on-stack replacement: the interpreter's
//! locals move into the compiled frame, the operand stack is empty there by verification), runs
//! natively from then on. Compiled code calls functions that are not compiled yet through the
//! bridge, which runs them in the interpreter (where they may tier up in turn).

use std::ffi::c_void;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use jitmem::{CodeBlock, JitMemory};

use crate::jit::runtime::{Ctx, Runtime, bridge_helper, decode_stop, print_helper, publish};
use crate::jit::{CodegenOptions, Isa, JitError, compile_for, native_reg_args, native_runtime};
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
}

impl Default for JitConfig {
    fn default() -> Self {
        JitConfig {
            mode: JitMode::Tiered { threshold: 1000 },
            memory: jitmem::Config::new(),
            count: false,
            native_stack: 512 * 1024,
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
}

/// Margin of native stack kept free for helpers and the bridge's Rust frames.
const STACK_MARGIN: usize = 128 * 1024;

struct Jit {
    memory: JitMemory,
    runtime: Runtime,
    isa: Isa,
    table: Box<[usize]>,
    options: CodegenOptions,
}

struct NativeCode {
    /// Keeps the code alive while the table points into it.
    _block: CodeBlock,
    /// Array entry at the start.
    start: usize,
    /// On-stack-replacement entries: (`loop_header` index, address).
    osr: Vec<(u32, usize)>,
}

#[derive(Default)]
struct FuncState {
    calls: u32,
    loops: Vec<u32>,
    compiled: Option<NativeCode>,
    failed: bool,
}

/// The engine with a JIT: tiering counters, the JIT cache and output.
pub struct JitEngine<W: Output> {
    out: W,
    write_error: Option<io::Error>,
    limits: Limits,
    threshold: u32,
    ctx: Box<Ctx>,
    jit: Option<Jit>,
    funcs: Vec<FuncState>,
    stats: JitStats,
    notice: Option<String>,
    native_stack: usize,
    nesting: u32,
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
        let mut engine = JitEngine {
            out,
            write_error: None,
            limits,
            threshold: match config.mode {
                JitMode::Tiered { threshold } => threshold.max(1),
                JitMode::Off | JitMode::Eager => u32::MAX,
            },
            ctx: Box::new(Ctx::new(counters)),
            jit: None,
            funcs: (0..program.functions().len())
                .map(|_| FuncState::default())
                .collect(),
            stats: JitStats::default(),
            notice: None,
            native_stack: config.native_stack,
            nesting: 0,
        };
        if config.mode == JitMode::Off {
            return engine;
        }
        match Self::start(program, limits, config) {
            Ok(jit) => {
                engine.ctx.table = jit.table.as_ptr();
                engine.ctx.print_fn = print_helper::<W> as *const () as usize;
                engine.ctx.bridge_fn = bridge_helper::<W> as *const () as usize;
                engine.ctx.unwind = jit.runtime.unwind();
                engine.jit = Some(jit);
            }
            Err(why) => engine.notice = Some(format!("JIT unavailable, interpreting: {why}")),
        }
        if config.mode == JitMode::Eager {
            for f in 0..program.functions().len() {
                engine.compile(program, f as FuncId);
            }
        }
        engine
    }

    fn start(program: &Program, limits: Limits, config: &JitConfig) -> Result<Jit, String> {
        let isa = Isa::native().ok_or_else(|| JitError::UnsupportedIsa.to_string())?;
        if !jitmem::probe::jit_available() {
            let why = jitmem::probe::auto_choice()
                .err()
                .unwrap_or_else(|| "the probe found no way to run generated code".into());
            return Err(why);
        }
        let memory = JitMemory::new(config.memory.clone()).map_err(|e| e.to_string())?;
        let runtime = native_runtime(&memory).map_err(|e| e.to_string())?;
        let table = vec![runtime.bridge(); program.functions().len()].into_boxed_slice();
        Ok(Jit {
            memory,
            runtime,
            isa,
            table,
            options: CodegenOptions {
                steps: limits.max_steps != u64::MAX,
                count: config.count,
            },
        })
    }

    /// Why the JIT is not running, if it is not (say it once, on stderr).
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// What the JIT did.
    pub fn stats(&self) -> &JitStats {
        &self.stats
    }

    /// The run's counters.
    pub fn counters_now(&self) -> Counters {
        self.ctx.counters
    }

    /// The strategy and layout of the executable memory, when the JIT runs.
    pub fn memory(&self) -> Option<&JitMemory> {
        self.jit.as_ref().map(|j| &j.memory)
    }

    /// The first write error of `print`, if any.
    pub fn take_write_error(&mut self) -> Option<io::Error> {
        self.write_error.take()
    }

    /// The output writer.
    pub fn output(&mut self) -> &mut W {
        &mut self.out
    }

    /// Compiles `func` into the JIT cache; `false` if the JIT is off or compilation failed
    /// (the function then stays interpreted, and the reason is in the statistics).
    pub fn compile(&mut self, program: &Program, func: FuncId) -> bool {
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
        let start = Instant::now();
        let result = compile_for(jit.isa, program, func, jit.options).and_then(|code| {
            let block = publish(&jit.memory, &code.code)?;
            let base = block.as_ptr() as usize;
            let osr = code
                .osr_entries
                .iter()
                .map(|&(index, offset)| (index, base + offset))
                .collect();
            let start = base + code.start_entry;
            Ok((block, base + code.native_entry, start, osr, code.code.len()))
        });
        self.stats.compile_time += start.elapsed();
        match result {
            Ok((block, native, start, osr, bytes)) => {
                if let Some(slot) = jit.table.get_mut(func as usize) {
                    *slot = native;
                }
                state.compiled = Some(NativeCode {
                    _block: block,
                    start,
                    osr,
                });
                self.stats.compiled_functions += 1;
                self.stats.code_bytes += bytes as u64;
                self.stats.compiled_instructions +=
                    program.function(func).map_or(0, |f| f.code().len() as u64);
                true
            }
            Err(e) => {
                state.failed = true;
                let name = program.function(func).map_or("?", |f| f.name());
                self.stats.failures.push(format!("{name}: {e}"));
                false
            }
        }
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

    /// Runs compiled code from an array entry with the frame's locals.
    fn run_native(
        &mut self,
        program: &Program,
        entry: usize,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<i64, Stop> {
        let Some(jit) = self.jit.as_ref() else {
            return Err(internal_trap());
        };
        let runtime: *const Runtime = &jit.runtime;
        if self.nesting == 0 {
            let marker = 0u8;
            let here = std::ptr::from_ref(&marker) as usize;
            let limit = here.saturating_sub(self.native_stack) + STACK_MARGIN;
            self.ctx.stack_limit = limit.min(here) as u64;
        }
        self.ctx.depth_left = u64::from(self.limits.max_depth.saturating_sub(depth));
        self.ctx.program = program;
        self.ctx.stop = 0;
        let ctx: *mut Ctx = &mut *self.ctx;
        self.ctx.engine = std::ptr::from_mut(self).cast::<c_void>();
        self.nesting += 1;
        // SAFETY: `ctx` is this engine's context, set up in `new` (table, helpers for this `W`,
        // unwind stub) and above (engine, program, depth, stack limit); `entry` is an array
        // entry of a function compiled by this engine's JIT, whose block lives in
        // `self.funcs` until the engine is dropped; `locals` holds that function's locals
        // (the interpreter's frame). Until `enter` returns, this frame does not touch `self`;
        // the helpers reach the engine only through `ctx.engine`.
        let result = unsafe { (*runtime).enter(ctx, entry, locals.as_ptr()) };
        self.nesting -= 1;
        let stop = std::mem::take(&mut self.ctx.stop);
        if stop != 0 {
            return Err(decode_stop(stop).unwrap_or_else(internal_trap));
        }
        Ok(result)
    }

    /// The bridge: compiled code calls `callee`, which is not compiled; run it here.
    ///
    /// # Safety
    /// `regs` must point to the ABI's register arguments as the bridge stub saved them, and
    /// `stack` to the caller's stack-argument area, together holding `callee`'s arguments.
    pub(crate) unsafe fn bridge(
        &mut self,
        program: &Program,
        callee: FuncId,
        regs: *const i64,
        stack: *const i64,
    ) -> Result<i64, Stop> {
        let marker = 0u8;
        let here = std::ptr::from_ref(&marker) as u64;
        if here < self.ctx.stack_limit.saturating_add(STACK_MARGIN as u64 / 2) {
            return Err(Stop::Trap(Trap {
                kind: TrapKind::NativeStack,
                func: callee,
                offset: 0,
            }));
        }
        let nargs = program.function(callee).map_or(0, |f| f.args() as usize);
        let in_regs = native_reg_args();
        let args: Vec<i64> = (0..nargs)
            .map(|i| {
                if i < in_regs {
                    // SAFETY: the caller guarantees `in_regs` saved register arguments.
                    unsafe { *regs.add(i) }
                } else {
                    // SAFETY: the caller guarantees the remaining arguments on the stack.
                    unsafe { *stack.add(i - in_regs) }
                }
            })
            .collect();
        let depth = self
            .limits
            .max_depth
            .saturating_sub(u32::try_from(self.ctx.depth_left).unwrap_or(u32::MAX));
        let limits = self.limits;
        let count = self.jit.as_ref().is_some_and(|j| j.options.count);
        crate::interp::call(program, self, &limits, callee, &args, depth, count)
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

impl<W: Output> JitEngine<W> {
    /// Counts a call (`at == None`) or an iteration of the `loop_header` `at` of `func`,
    /// compiles `func` when the count reaches the threshold, and runs the frame natively from
    /// the matching entry once it is compiled.
    fn tier_up(
        &mut self,
        program: &Program,
        func: FuncId,
        at: Option<u32>,
        locals: &mut [i64],
        depth: u32,
    ) -> Result<Option<i64>, Stop> {
        if self.jit.is_none() {
            return Ok(None);
        }
        let Some(state) = self.funcs.get_mut(func as usize) else {
            return Ok(None);
        };
        if state.compiled.is_none() {
            if state.failed {
                return Ok(None);
            }
            let count = match at {
                None => &mut state.calls,
                Some(at) => {
                    if state.loops.is_empty() {
                        let len = program.function(func).map_or(0, |f| f.code().len());
                        state.loops = vec![0; len];
                    }
                    let Some(count) = state.loops.get_mut(at as usize) else {
                        return Ok(None);
                    };
                    count
                }
            };
            *count = count.saturating_add(1);
            if *count < self.threshold || !self.compile(program, func) {
                return Ok(None);
            }
        }
        let Some(entry) = self.entry(func, at) else {
            return Ok(None);
        };
        if at.is_some() {
            self.stats.osr_entries += 1;
        }
        self.run_native(program, entry, locals, depth).map(Some)
    }
}

impl<W: Output> Engine for JitEngine<W> {
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
        if self.write_error.is_none() {
            if let Err(e) = writeln!(self.out, "{value}") {
                self.write_error = Some(e);
            }
        }
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.ctx.counters
    }
}
