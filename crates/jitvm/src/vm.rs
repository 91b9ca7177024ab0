//! Running a program: the one place that puts the interpreter, the tiering engine and a
//! native stack together.
//!
//! A run needs a native stack sized from the program (frames of compiled code for every allowed
//! call level, see [`stack_need`]), so that compiled code reaches the call depth limit, as the
//! interpreter does, before it could run out of native stack. It runs on the calling thread when
//! that thread has this much stack left below it ([`jitmem::introspect::thread_stack`]; e.g.
//! `jitvm run` on the main thread, whose stack may grow to `RLIMIT_STACK`, which the CLI raises
//! to what the program needs), so that a debugger's backtrace from compiled code reaches `main`;
//! otherwise on a thread of its own with that stack. A program whose frames at the depth limit
//! would need more than [`MAX_STACK`] is refused before it starts, in every tier alike
//! ([`native_stack`]).

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
    /// Native stack the run needs, in bytes (on the calling thread when it has that much left,
    /// else on a thread of its own with that stack); `None` sizes it from the program and the
    /// depth limit (up to [`MAX_STACK`] of address space, refusing programs that need more).
    pub native_stack: Option<usize>,
    /// Where compiled functions are named and their frames described (see
    /// [`JitConfig::debug`]).
    #[cfg(feature = "debuginfo")]
    pub debug: Option<std::sync::Arc<jitmem::debuginfo::DebugInfo>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jit: JitMode::Tiered { threshold: 1000 },
            limits: Limits::default(),
            stats: false,
            memory: jitmem::Config::new(),
            native_stack: None,
            #[cfg(feature = "debuginfo")]
            debug: None,
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
    /// How it ended; `Err` if the program was refused ([`native_stack`]) or the VM itself
    /// failed (it could not start its thread).
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

/// Bytes of native stack one call level of `f` may take in compiled code: the frame (slots for
/// locals and the operand stack, outgoing stack arguments, saved registers, return address,
/// alignment) on either ISA, plus the Rust frames of a trip through the bridge.
fn frame_bytes(f: &crate::Function) -> u64 {
    let words = u64::from(f.locals()) + 2 * u64::from(f.max_stack()) + 16;
    words * 8 + BRIDGE_BYTES
}

/// Native stack the Rust frames of one trip from compiled code through the bridge into the
/// interpreter and back into compiled code may take (measured on x86-64 in a debug build:
/// about 0.45 KiB from compiled code into the bridge and 0.45 KiB from there to the next entry
/// into compiled code; the rest leaves room for the interpreter's frame when the callee is
/// interpreted).
const BRIDGE_BYTES: u64 = 4096;

/// Native stack compiled code may need for `program` under `limits`: at most `max_depth`
/// frames are active at once, a function that is not recursive (in no cycle of the call
/// graph) appears at most once among them, so the bound is the smaller of `max_depth` widest
/// frames and every non-recursive frame plus `max_depth` widest recursive frames (over the
/// functions `main` can reach).
pub fn stack_need(program: &Program, limits: &Limits) -> u64 {
    let funcs = program.functions();
    let callees = |f: &crate::Function| -> Vec<usize> {
        let mut out: Vec<usize> = f
            .code()
            .iter()
            .filter_map(|insn| match insn {
                crate::Insn::Call(c) => Some(*c as usize),
                _ => None,
            })
            .filter(|&c| c < funcs.len())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    };
    let graph: Vec<Vec<usize>> = funcs.iter().map(callees).collect();
    let recursive = recursive_functions(&graph);
    let mut reachable = vec![false; funcs.len()];
    let mut todo = vec![program.main() as usize];
    while let Some(f) = todo.pop() {
        match reachable.get_mut(f) {
            Some(seen) if !*seen => *seen = true,
            _ => continue,
        }
        if let Some(next) = graph.get(f) {
            todo.extend(next.iter().copied());
        }
    }
    let (mut widest, mut widest_recursive, mut straight) = (0u64, 0u64, 0u64);
    for (i, f) in funcs.iter().enumerate() {
        if !reachable.get(i).copied().unwrap_or(false) {
            continue;
        }
        let bytes = frame_bytes(f);
        widest = widest.max(bytes);
        if recursive.get(i).copied().unwrap_or(true) {
            widest_recursive = widest_recursive.max(bytes);
        } else {
            straight = straight.saturating_add(bytes);
        }
    }
    let depth = u64::from(limits.max_depth);
    let by_depth = depth.saturating_mul(widest);
    let by_recursion = straight.saturating_add(depth.saturating_mul(widest_recursive));
    by_depth.min(by_recursion)
}

/// Which functions lie on a cycle of the call graph (Tarjan's strongly connected components,
/// iteratively: a program may have many functions and deep call chains).
fn recursive_functions(graph: &[Vec<usize>]) -> Vec<bool> {
    let n = graph.len();
    const NONE: usize = usize::MAX;
    let mut index = vec![NONE; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut recursive = vec![false; n];
    let mut next = 0usize;
    for root in 0..n {
        if index[root] != NONE {
            continue;
        }
        // (node, position in its callee list)
        let mut work = vec![(root, 0usize)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut pos)) = work.last_mut() {
            if let Some(&w) = graph[v].get(*pos) {
                *pos += 1;
                if w == v {
                    recursive[v] = true;
                }
                if index[w] == NONE {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut members = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    members.push(w);
                    if w == v {
                        break;
                    }
                }
                if members.len() > 1 {
                    for w in members {
                        recursive[w] = true;
                    }
                }
            }
        }
    }
    recursive
}

/// The largest native stack a run reserves (address space only; pages are touched as used):
/// enough for the widest frames the verifier allows at the default depth limit.
pub const MAX_STACK: u64 = if usize::BITS >= 64 { 8 << 30 } else { 1 << 30 };

/// Native stack besides compiled frames: the run's own Rust frames, the margins the engine
/// keeps, and the guard below the first entry into compiled code.
const STACK_BASE: u64 = 4 << 20;

/// The native stack a run of `program` under `limits` reserves, or why the program cannot
/// run: its frames at the depth limit need more than [`MAX_STACK`]. The answer does not depend
/// on the JIT mode, so every tier refuses the same programs with the same message.
pub fn native_stack(program: &Program, limits: &Limits) -> Result<usize, String> {
    let need = stack_need(program, limits);
    let total = need.saturating_add(STACK_BASE);
    if total > MAX_STACK {
        return Err(format!(
            "the program needs {} MiB of native stack for {} nested calls, above the limit of \
             {} MiB; lower the depth limit (--max-depth)",
            total.div_ceil(1 << 20),
            limits.max_depth,
            MAX_STACK >> 20
        ));
    }
    Ok(usize::try_from(total).unwrap_or(usize::MAX))
}

/// Runs `program` from `main`, writing what it prints to `out`.
pub fn run<W: Write + Send>(program: &Program, options: &RunOptions, out: W) -> RunReport {
    let stack = match options.native_stack {
        Some(bytes) => bytes,
        None => match native_stack(program, &options.limits) {
            // The interpreter keeps its frames on the heap: without the JIT the thread needs
            // no more than its base (but refuses the same programs).
            Ok(_) if options.jit == JitMode::Off => STACK_BASE as usize,
            Ok(bytes) => bytes,
            Err(why) => {
                return RunReport {
                    ended: Err(why),
                    counters: Counters::default(),
                    jit: JitStats::default(),
                    notice: None,
                    write_error: None,
                };
            }
        },
    }
    .max(2 << 20);
    let config = JitConfig {
        mode: options.jit,
        memory: options.memory.clone(),
        count: options.stats,
        native_stack: stack.saturating_sub(1 << 20),
        #[cfg(feature = "debuginfo")]
        debug: options.debug.clone(),
    };
    if room_on_this_thread() >= stack.saturating_add(HERE_SLACK) {
        let here = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_here(program, options, &config, out)
        }));
        return here.unwrap_or_else(|_| RunReport {
            ended: Err("the VM panicked".to_string()),
            counters: Counters::default(),
            jit: JitStats::default(),
            notice: None,
            write_error: None,
        });
    }
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

/// Stack kept free below what a run on the calling thread needs: the frames between here and the
/// run's entry into compiled code, and the gap Linux keeps between a growing main stack and the
/// mapping below it (`stack_guard_gap`, 1 MiB), which `pthread_getattr_np` counts as stack.
const HERE_SLACK: usize = 2 << 20;

/// Bytes of stack left below the caller's frame on the calling thread, 0 where that cannot be
/// read.
fn room_on_this_thread() -> usize {
    let Ok(stack) = jitmem::introspect::thread_stack() else {
        return 0;
    };
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    if stack.contains(&here) {
        here - stack.start
    } else {
        0
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn program(source: &str) -> Program {
        crate::verify::verify(&crate::text::parse(source).unwrap()).unwrap()
    }

    #[test]
    fn cycles_of_the_call_graph() {
        // 0 -> 1 -> 2 -> 1 (a cycle), 2 -> 3, 3 -> 3 (self), 4 alone.
        let graph = vec![vec![1], vec![2], vec![1, 3], vec![3], vec![]];
        assert_eq!(
            recursive_functions(&graph),
            vec![false, true, true, true, false]
        );
    }

    #[test]
    fn recursive_frames_count_per_level_the_others_once() {
        let limits = Limits {
            max_depth: 1000,
            max_steps: u64::MAX,
        };
        // main -> wide (not recursive, 10,000 locals) -> down (recursive, 1 local).
        let p = program(
            "func main args=0 locals=0\n load_imm 5\n call wide\n return\nend\n\
             func wide args=1 locals=10000\n load_local_0\n call down\n return\nend\n\
             func down args=1 locals=1\n load_local_0\n jump_if_false z\n load_local_0\n load_imm 1\n sub_ii\n call down\n return\nz:\n load_imm 0\n return\nend\n\
             func unused args=0 locals=60000\n return_nil\nend\n",
        );
        let f = |i: usize| frame_bytes(&p.functions()[i]);
        assert_eq!(
            stack_need(&p, &limits),
            f(0) + f(1) + 1000 * f(2),
            "`unused` is not reachable, `wide` counts once"
        );
        // Depth 1: one frame, the widest.
        let one = Limits {
            max_depth: 1,
            ..limits
        };
        assert_eq!(stack_need(&p, &one), f(1));
        assert!(native_stack(&p, &limits).is_ok());
        let deep = Limits {
            max_depth: u32::MAX,
            ..limits
        };
        let why = native_stack(&p, &deep).unwrap_err();
        assert!(why.contains("above the limit"), "{why}");
    }
}
