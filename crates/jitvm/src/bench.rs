//! The benchmark workloads of `jitvm bench` and the criterion bench, with the same programs in
//! Lua for the side-by-side comparison with Lua 5.4 and LuaJIT.

use std::time::{Duration, Instant};

use crate::tier::JitMode;
use crate::vm::{self, Ended, RunOptions};
use crate::{Limits, Program};

/// One benchmark program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `s = s + i * 3 + 1` for `n` iterations.
    Loop,
    /// `s = s + i / 7` for `n` iterations.
    LoopDiv,
    /// Recursive `fib(n)`.
    Fib,
    /// `s = add(s, i)` for `n` iterations: `n` calls of a small function.
    Calls,
    /// `ackermann(3, n)`, recursive (deep: about `2^(n+3)` frames at the deepest).
    Ackermann,
    /// The sum of the Collatz step counts of every start below `n` (a loop calling a function
    /// with a loop, `%` and `/` by constants).
    Collatz,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 6] = [
        Workload::Loop,
        Workload::LoopDiv,
        Workload::Fib,
        Workload::Calls,
        Workload::Ackermann,
        Workload::Collatz,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Loop => "loop s = s + i * 3 + 1",
            Workload::LoopDiv => "loop s = s + i / 7",
            Workload::Fib => "fib (recursive)",
            Workload::Calls => "calls s = add(s, i)",
            Workload::Ackermann => "ackermann(3, n)",
            Workload::Collatz => "collatz steps, starts < n",
        }
    }

    /// The size `jitvm bench` uses (10^8 iterations, fib(32), 10^7 calls, ackermann(3, 10),
    /// collatz below 10^6).
    pub fn full_size(self) -> i64 {
        match self {
            Workload::Loop | Workload::LoopDiv => 100_000_000,
            Workload::Fib => 32,
            Workload::Calls => 10_000_000,
            Workload::Ackermann => 10,
            Workload::Collatz => 1_000_000,
        }
    }

    /// The size of `jitvm bench --quick`.
    pub fn quick_size(self) -> i64 {
        match self {
            Workload::Fib => 25,
            Workload::Ackermann => 6,
            w => w.full_size() / 100,
        }
    }

    /// The program in `.jvm` text.
    pub fn source(self, n: i64) -> String {
        match self {
            Workload::Loop | Workload::LoopDiv => {
                let body = if self == Workload::Loop {
                    "    load_local 0\n    load_local 1\n    load_imm 3\n    mul_ii\n    add_ii\n    load_imm 1\n    add_ii\n"
                } else {
                    "    load_local 0\n    load_local 1\n    load_imm 7\n    div_ii\n    add_ii\n"
                };
                format!(
                    "func main args=0 locals=2\nloop:\n    loop_header\n    load_local 1\n    load_imm {n}\n    lt_ii\n    jump_if_false done\n{body}    store_local 0\n    load_local 1\n    load_imm 1\n    add_ii\n    store_local 1\n    jump loop\ndone:\n    load_local 0\n    print\n    return_nil\nend\n"
                )
            }
            Workload::Fib => format!(
                "func main args=0 locals=0\n    load_imm {n}\n    call fib\n    print\n    return_nil\nend\n\nfunc fib args=1 locals=1\n    load_local_0\n    load_imm 2\n    lt_ii\n    jump_if_false recurse\n    load_local_0\n    return\nrecurse:\n    load_local_0\n    load_imm 1\n    sub_ii\n    call fib\n    load_local_0\n    load_imm 2\n    sub_ii\n    call fib\n    add_ii\n    return\nend\n"
            ),
            Workload::Calls => format!(
                "func main args=0 locals=2\nloop:\n    loop_header\n    load_local 1\n    load_imm {n}\n    lt_ii\n    jump_if_false done\n    load_local 0\n    load_local 1\n    call add\n    store_local 0\n    load_local 1\n    load_imm 1\n    add_ii\n    store_local 1\n    jump loop\ndone:\n    load_local 0\n    print\n    return_nil\nend\n\nfunc add args=2 locals=2\n    load_local_0\n    load_local_1\n    add_ii\n    return\nend\n"
            ),
            Workload::Ackermann => format!(
                "func main args=0 locals=0\n    load_imm 3\n    load_imm {n}\n    call ack\n    print\n    return_nil\nend\n\nfunc ack args=2 locals=2\n    load_local_0\n    jump_if_false m_zero\n    load_local_1\n    jump_if_false n_zero\n    load_local_0\n    load_imm 1\n    sub_ii\n    load_local_0\n    load_local_1\n    load_imm 1\n    sub_ii\n    call ack\n    call ack\n    return\nn_zero:\n    load_local_0\n    load_imm 1\n    sub_ii\n    load_imm 1\n    call ack\n    return\nm_zero:\n    load_local_1\n    load_imm 1\n    add_ii\n    return\nend\n"
            ),
            Workload::Collatz => format!(
                "func main args=0 locals=2\n    load_imm 1\n    store_local 1\nloop:\n    loop_header\n    load_local 1\n    load_imm {n}\n    lt_ii\n    jump_if_false done\n    load_local 0\n    load_local 1\n    call steps\n    add_ii\n    store_local 0\n    load_local 1\n    load_imm 1\n    add_ii\n    store_local 1\n    jump loop\ndone:\n    load_local 0\n    print\n    return_nil\nend\n\nfunc steps args=1 locals=2\nloop:\n    loop_header\n    load_local_0\n    load_imm 1\n    ne_ii\n    jump_if_false done\n    load_local_1\n    load_imm 1\n    add_ii\n    store_local 1\n    load_local_0\n    load_imm 2\n    mod_ii\n    jump_if_false even\n    load_local_0\n    load_imm 3\n    mul_ii\n    load_imm 1\n    add_ii\n    store_local 0\n    jump loop\neven:\n    load_local_0\n    load_imm 2\n    div_ii\n    store_local 0\n    jump loop\ndone:\n    load_local_1\n    return\nend\n"
            ),
        }
    }

    /// The same program in Lua (5.4 when `lua54`, else the Lua 5.1 dialect of LuaJIT, which
    /// has no integer division operator). The script times its own work with `os.clock()`
    /// (the interpreter's start-up is not counted) and writes the seconds on stderr.
    pub fn lua(self, n: i64, lua54: bool) -> String {
        let idiv = |a: &str, b: &str| {
            if lua54 {
                format!("{a} // {b}")
            } else {
                format!("math.floor({a} / {b})")
            }
        };
        let work = match self {
            Workload::Loop => {
                format!(
                    "local s = 0\nfor i = 0, {} do s = s + i * 3 + 1 end\nprint(s)\n",
                    n - 1
                )
            }
            Workload::LoopDiv => format!(
                "local s = 0\nfor i = 0, {} do s = s + {} end\nprint(s)\n",
                n - 1,
                idiv("i", "7")
            ),
            Workload::Fib => format!(
                "local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end\nprint(fib({n}))\n"
            ),
            Workload::Calls => format!(
                "local function add(a, b) return a + b end\nlocal s = 0\nfor i = 0, {} do s = add(s, i) end\nprint(s)\n",
                n - 1
            ),
            Workload::Ackermann => format!(
                "local function ack(m, n)\n  if m == 0 then return n + 1 end\n  if n == 0 then return ack(m - 1, 1) end\n  return ack(m - 1, ack(m, n - 1))\nend\nprint(ack(3, {n}))\n"
            ),
            Workload::Collatz => format!(
                "local function steps(n)\n  local c = 0\n  while n ~= 1 do\n    c = c + 1\n    if n % 2 ~= 0 then n = n * 3 + 1 else n = {} end\n  end\n  return c\nend\nlocal s = 0\nfor i = 1, {} do s = s + steps(i) end\nprint(s)\n",
                idiv("n", "2"),
                n - 1
            ),
        };
        format!(
            "local t0 = os.clock()\n{work}io.stderr:write(string.format(\"%.9f\\n\", os.clock() - t0))\n"
        )
    }

    /// The program, parsed and verified.
    pub fn program(self, n: i64) -> Result<Program, crate::Error> {
        let module = crate::text::parse(&self.source(n))?;
        crate::verify::verify(&module)
    }
}

/// A large straight-line-and-loops function for measuring compile speed: `blocks` copies of a
/// 40-instruction block of arithmetic, compares, branches and a loop.
pub fn compile_workload(blocks: u32) -> String {
    let mut body = String::new();
    for b in 0..blocks {
        body.push_str(&format!(
            "top{b}:\n    loop_header\n    load_local 1\n    load_imm 3\n    lt_ii\n    jump_if_false out{b}\n    load_local 0\n    load_local 1\n    load_imm 3\n    mul_ii\n    add_ii\n    load_imm 1\n    add_ii\n    store_local 0\n    load_local 1\n    load_imm 1\n    add_ii\n    store_local 1\n    jump top{b}\nout{b}:\n    load_local 0\n    load_imm 7\n    div_ii\n    load_local 2\n    sub_ii\n    dup\n    mul_ii\n    load_local 0\n    load_imm 5\n    mod_ii\n    gt_ii\n    jump_if_false skip{b}\n    load_local 2\n    load_imm 1\n    add_ii\n    store_local 2\nskip{b}:\n    load_imm 0\n    store_local 1\n"
        ));
    }
    format!("func main args=0 locals=3\n{body}    load_local 2\n    return\nend\n")
}

/// The result of timing one run.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Wall time of the whole run (for the JIT: compilation included).
    pub time: Duration,
    /// Bytecode instructions executed.
    pub instructions: u64,
    /// How it ended.
    pub ended: Ended,
    /// What it printed.
    pub output: Vec<u8>,
}

impl Timing {
    /// Bytecode instructions per second.
    pub fn rate(&self) -> f64 {
        self.instructions as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

/// Runs `program` in `mode` and times it; the instruction count comes from a separate counted
/// run (counting slows the run it counts).
pub fn time_run(program: &Program, mode: JitMode, instructions: u64) -> Result<Timing, String> {
    let options = RunOptions {
        jit: mode,
        limits: Limits::default(),
        ..RunOptions::default()
    };
    let mut output = Vec::new();
    let start = Instant::now();
    let report = vm::run(program, &options, &mut output);
    let time = start.elapsed();
    if let Some(why) = report.notice {
        return Err(why);
    }
    Ok(Timing {
        time,
        instructions,
        ended: report.ended?,
        output,
    })
}

/// Bytecode instructions a run of `program` executes (counted by the interpreter).
pub fn count_instructions(program: &Program) -> Result<u64, String> {
    let options = RunOptions {
        jit: JitMode::Eager,
        limits: Limits::default(),
        stats: true,
        ..RunOptions::default()
    };
    let report = vm::run(program, &options, std::io::sink());
    report.ended?;
    Ok(report.counters.interpreted + report.counters.compiled)
}

/// Runs a Lua interpreter on `script` (one of [`Workload::lua`]'s): the time the script
/// measured itself, and what it printed; `None` if the interpreter is not installed.
fn time_lua(command: &[&str], script: &str) -> Option<Result<(Duration, String), String>> {
    let (program, args) = command.split_first()?;
    let output = std::process::Command::new(program)
        .args(args)
        .arg("-e")
        .arg(script)
        .output();
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("{program}: {e}"))),
        Ok(o) if !o.status.success() => Some(Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ))),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let secs = stderr
                .lines()
                .last()
                .and_then(|l| l.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0);
            Some(match secs {
                Some(secs) => Ok((
                    Duration::from_secs_f64(secs),
                    String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                )),
                None => Err(format!("{program} did not report its time: {stderr}")),
            })
        }
    }
}

/// Whether a Lua result is jitvm's: exactly below 10^14; beyond, within 1e-6, because LuaJIT
/// prints numbers with 14 significant digits and its numbers are doubles, whose sums above
/// 2^53 round (the loop's 1.5e16 comes out 7.5e-10 off).
fn same_number(jitvm: &[u8], lua: &str) -> bool {
    let ours = String::from_utf8_lossy(jitvm);
    match (ours.trim().parse::<i64>(), lua.parse::<f64>()) {
        (Ok(a), Ok(b)) if a.unsigned_abs() < 100_000_000_000_000 => (a as f64 - b).abs() < 0.5,
        (Ok(a), Ok(b)) => {
            let a = a as f64;
            (a - b).abs() <= a.abs() * 1e-6
        }
        _ => false,
    }
}

/// Rounds per workload in `jitvm bench` (each tool's best round is reported); 1 with `--quick`.
pub const ROUNDS: usize = 5;

/// The report of `jitvm bench`: every workload in jitvm's interpreter and JIT (tiered, as
/// `jitvm run` does), and in Lua 5.4, LuaJIT's interpreter and LuaJIT's JIT when `lua` and they
/// are installed. Each round runs every tool once (round-robin, so that a noisy moment hits all
/// of them); the table gives each tool's fastest of [`ROUNDS`] rounds and the ratios of those
/// (jitvm's time / the other's: above 1 is slower). The Lua scripts time only their own work
/// and must print jitvm's result. Then compile speed.
pub fn report(quick: bool, lua: bool) -> Result<String, String> {
    use std::fmt::Write as _;
    let rounds = if quick { 1 } else { ROUNDS };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | jitvm interpreter | jitvm JIT (tiered) | lua5.4 | luajit -joff | luajit | JIT / luajit | JIT / lua5.4 | interpreter / lua5.4 | interpreter / luajit -joff |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let luas: [&[&str]; 3] = [&["lua5.4"], &["luajit", "-joff"], &["luajit"]];
    for workload in Workload::ALL {
        let n = if quick {
            workload.quick_size()
        } else {
            workload.full_size()
        };
        let program = workload.program(n).map_err(|e| e.to_string())?;
        let instructions = count_instructions(&program)?;
        let mut best: [Option<Duration>; 5] = [None; 5];
        let mut keep = |i: usize, d: Duration| {
            best[i] = Some(best[i].map_or(d, |b: Duration| b.min(d)));
        };
        let mut rate = [0.0f64; 2];
        for _ in 0..rounds {
            let interp = time_run(&program, JitMode::Off, instructions)?;
            let jit = time_run(&program, JitMode::Tiered { threshold: 1000 }, instructions)?;
            if (&interp.ended, &interp.output) != (&jit.ended, &jit.output) {
                return Err(format!("{}: interpreter and JIT disagree", workload.name()));
            }
            rate = [rate[0].max(interp.rate()), rate[1].max(jit.rate())];
            keep(0, interp.time);
            keep(1, jit.time);
            for (i, command) in luas.iter().enumerate() {
                if !lua {
                    continue;
                }
                let script = workload.lua(n, command[0] == "lua5.4");
                if let Some(run) = time_lua(command, &script) {
                    let (time, printed) = run?;
                    if !same_number(&jit.output, &printed) {
                        return Err(format!(
                            "{}: {} printed {printed:?}, jitvm {:?}",
                            workload.name(),
                            command.join(" "),
                            String::from_utf8_lossy(&jit.output).trim()
                        ));
                    }
                    keep(2 + i, time);
                }
            }
        }
        let secs = |d: Duration| d.as_secs_f64();
        let cell = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.3} s", secs(d)));
        let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", secs(a) / secs(b).max(1e-9)),
            _ => "-".into(),
        };
        let cells = [
            format!("{} (n = {n})", workload.name()),
            format!("{}, {:.0} M insn/s", cell(best[0]), rate[0] / 1e6),
            format!("{}, {:.0} M insn/s", cell(best[1]), rate[1] / 1e6),
            cell(best[2]),
            cell(best[3]),
            cell(best[4]),
            ratio(best[1], best[4]),
            ratio(best[1], best[2]),
            ratio(best[0], best[2]),
            ratio(best[0], best[3]),
        ];
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let source = compile_workload(if quick { 20 } else { 200 });
    let module = crate::text::parse(&source).map_err(|e| e.to_string())?;
    let program = crate::verify::verify(&module).map_err(|e| e.to_string())?;
    let memory = jitmem::JitMemory::new(jitmem::Config::new()).map_err(|e| e.to_string())?;
    let count = program.functions().first().map_or(0, |f| f.code().len());
    let rounds = 20;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes = crate::jit::compile_cost(&program, 0, &memory).map_err(|e| e.to_string())?;
    }
    let per = start.elapsed().as_nanos() as f64 / (rounds * count.max(1)) as f64;
    let _ = writeln!(
        out,
        "\ncompile speed: {per:.1} ns per bytecode instruction ({count} instructions -> {bytes} bytes, including allocation and publish, {} strategy)",
        memory.strategy().name()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every workload runs at its quick size, interpreted and compiled, to the same output; and
    /// where Lua 5.4 and LuaJIT are installed (CI installs them and sets `JITVM_REQUIRE_LUA=1`,
    /// which turns a missing one into a failure), each Lua script prints jitvm's result and
    /// reports its time. Not under qemu-user (`JITMEM_UNDER_QEMU=1`): the Lua interpreters are
    /// native programs whatever jitvm's target, so emulation adds nothing to their check, and
    /// spawning them from an emulated process that is running other tests' threads has hung
    /// qemu-user between `fork` and `exec` (seen once in CI's AArch64 step).
    #[test]
    fn workloads_agree_with_each_other_and_with_lua() {
        let require = std::env::var("JITVM_REQUIRE_LUA").is_ok_and(|v| v == "1");
        let emulated = std::env::var("JITMEM_UNDER_QEMU").is_ok_and(|v| v == "1");
        assert!(
            !(require && emulated),
            "the Lua check runs natively (JITVM_REQUIRE_LUA=1 is for the native run)"
        );
        for workload in Workload::ALL {
            let n = workload.quick_size();
            let program = workload.program(n).unwrap();
            let count = count_instructions(&program).unwrap();
            let interp = time_run(&program, JitMode::Off, count).unwrap();
            let jit = time_run(&program, JitMode::Eager, count).unwrap();
            assert_eq!(interp.output, jit.output, "{}", workload.name());
            assert!(!jit.output.is_empty());
            for command in [&["lua5.4"][..], &["luajit"]] {
                if emulated {
                    continue;
                }
                let script = workload.lua(n, command[0] == "lua5.4");
                match time_lua(command, &script) {
                    None => {
                        assert!(
                            !require,
                            "JITVM_REQUIRE_LUA=1 but {} is missing",
                            command[0]
                        );
                        eprintln!("skipped: {} is not installed", command[0]);
                    }
                    Some(run) => {
                        let (_, printed) = run.unwrap();
                        assert!(
                            same_number(&jit.output, &printed),
                            "{} {}: {printed} vs {:?}",
                            command[0],
                            workload.name(),
                            String::from_utf8_lossy(&jit.output)
                        );
                    }
                }
            }
        }
        assert!(!same_number(b"12\n", "13"), "a different result is noticed");
        assert!(same_number(b"14999999950000000\n", "1.4999999938745e+16"));
        assert!(!same_number(b"14999999950000000\n", "1.5e+17"));
    }
}
