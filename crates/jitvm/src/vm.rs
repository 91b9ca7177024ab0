//! Running a program: the one place that puts the interpreter, the tiering engine and a
//! native stack together.
//!
//! A run happens on a thread of its own whose stack is sized from the program (frames of
//! compiled code for every allowed call level), so that compiled code reaches the call depth
//! limit, as the interpreter does, long before it could run out of native stack.

use std::io::{self, Write};

use crate::interp;
use crate::program::{Counters, Limits, Program, Stop, Trap};
use crate::tier::{JitConfig, JitEngine, JitMode, JitStats};

/// How to run a program.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// When to compile (and whether at all).
    pub jit: JitMode,
    /// Call depth and step limits.
    pub limits: Limits,
    /// Count executed instructions (interpreted and compiled) for statistics.
    pub stats: bool,
    /// Executable memory for compiled code.
    pub memory: jitmem::Config,
    /// Native stack of the run's thread, in bytes; `None` sizes it from the program and the
    /// depth limit (up to 1 GiB of address space).
    pub native_stack: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jit: JitMode::Tiered { threshold: 1000 },
            limits: Limits::default(),
            stats: false,
            memory: jitmem::Config::new(),
            native_stack: None,
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// `main` returned this value.
    Returned(i64),
    /// `halt`.
    Halted,
    /// A trap.
    Trapped(Trap),
}

/// Everything a run produced besides its output.
#[derive(Debug)]
pub struct RunReport {
    /// How it ended; `Err` if the VM itself failed (it could not start its thread).
    pub ended: Result<Ended, String>,
    /// Instruction and step counters.
    pub counters: Counters,
    /// What the JIT did.
    pub jit: JitStats,
    /// Why the JIT did not run, if it was asked to and did not.
    pub notice: Option<String>,
    /// The first error writing the output.
    pub write_error: Option<io::Error>,
}

/// Native stack for compiled frames at every call level, plus room for the bridge's frames.
fn stack_bytes(program: &Program, limits: &Limits) -> usize {
    let widest = program
        .functions()
        .iter()
        .map(|f| {
            let words = u64::from(f.locals()) + u64::from(f.max_stack()) + u64::from(f.args());
            words * 8 + 128
        })
        .max()
        .unwrap_or(128);
    let per_level = widest + 2048;
    let bytes = u64::from(limits.max_depth).saturating_mul(per_level) + (4 << 20);
    usize::try_from(bytes.min(MAX_STACK)).unwrap_or(usize::MAX)
}

/// The largest stack a run asks for (address space only; pages are touched as used).
const MAX_STACK: u64 = 1 << 30;

/// Runs `program` from `main`, writing what it prints to `out`.
pub fn run<W: Write + Send>(program: &Program, options: &RunOptions, out: W) -> RunReport {
    let stack = options
        .native_stack
        .unwrap_or_else(|| stack_bytes(program, &options.limits))
        .max(2 << 20);
    let config = JitConfig {
        mode: options.jit,
        memory: options.memory.clone(),
        count: options.stats,
        native_stack: stack.saturating_sub(1 << 20),
    };
    let spawned = std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("jitvm".into())
            .stack_size(stack)
            .spawn_scoped(scope, || run_here(program, options, &config, out))
            .map_err(|e| format!("cannot start the VM thread: {e}"))?;
        handle
            .join()
            .map_err(|_| "the VM thread panicked".to_string())
    });
    spawned.unwrap_or_else(|why| RunReport {
        ended: Err(why),
        counters: Counters::default(),
        jit: JitStats::default(),
        notice: None,
        write_error: None,
    })
}

fn run_here<W: Write>(
    program: &Program,
    options: &RunOptions,
    config: &JitConfig,
    out: W,
) -> RunReport {
    let mut engine = JitEngine::new(program, options.limits, config, out);
    let result = interp::run(program, &mut engine, &options.limits, options.stats);
    let flushed = engine.output().flush();
    let mut write_error = engine.take_write_error();
    if write_error.is_none() {
        write_error = flushed.err();
    }
    RunReport {
        ended: Ok(match result {
            Ok(v) => Ended::Returned(v),
            Err(Stop::Halt) => Ended::Halted,
            Err(Stop::Trap(t)) => Ended::Trapped(t),
        }),
        counters: engine.counters_now(),
        jit: engine.stats().clone(),
        notice: engine.notice().map(str::to_owned),
        write_error,
    }
}
