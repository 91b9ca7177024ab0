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
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 3] = [Workload::Loop, Workload::LoopDiv, Workload::Fib];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Loop => "loop s = s + i * 3 + 1",
            Workload::LoopDiv => "loop s = s + i / 7",
            Workload::Fib => "fib (recursive)",
        }
    }

    /// The size `jitvm bench` uses (the issue's: 10^8 iterations, fib(32)).
    pub fn full_size(self) -> i64 {
        match self {
            Workload::Loop | Workload::LoopDiv => 100_000_000,
            Workload::Fib => 32,
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
        }
    }

    /// The same program in Lua (5.4 when `lua54`, else the Lua 5.1 dialect of LuaJIT, which
    /// has no integer division operator).
    pub fn lua(self, n: i64, lua54: bool) -> String {
        match self {
            Workload::Loop => format!(
                "local s = 0\nfor i = 0, {} do s = s + i * 3 + 1 end\nprint(s)\n",
                n - 1
            ),
            Workload::LoopDiv => format!(
                "local s = 0\nfor i = 0, {} do s = s + {} end\nprint(s)\n",
                n - 1,
                if lua54 { "i // 7" } else { "math.floor(i / 7)" }
            ),
            Workload::Fib => format!(
                "local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end\nprint(fib({n}))\n"
            ),
        }
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
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Wall time of the whole run (for the JIT: compilation included).
    pub time: Duration,
    /// Bytecode instructions executed.
    pub instructions: u64,
    /// How it ended.
    pub ended: Ended,
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
    let start = Instant::now();
    let report = vm::run(program, &options, std::io::sink());
    let time = start.elapsed();
    if let Some(why) = report.notice {
        return Err(why);
    }
    Ok(Timing {
        time,
        instructions,
        ended: report.ended?,
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

/// Times a Lua interpreter on `script`; `None` if it is not installed.
fn time_lua(command: &[&str], script: &str) -> Option<Result<Duration, String>> {
    let (program, args) = command.split_first()?;
    let start = Instant::now();
    let output = std::process::Command::new(program)
        .args(args)
        .arg("-e")
        .arg(script)
        .output();
    let time = start.elapsed();
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("{program}: {e}"))),
        Ok(o) if !o.status.success() => Some(Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ))),
        Ok(_) => Some(Ok(time)),
    }
}

/// The report of `jitvm bench`: every workload in the interpreter and the JIT (and in Lua 5.4,
/// LuaJIT's interpreter and LuaJIT's JIT when `lua` and they are installed), run one after the
/// other in this process, then compile speed.
pub fn report(quick: bool, lua: bool) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | jitvm interpreter | jitvm JIT | JIT speed-up over interpreter | lua5.4 | luajit -joff | luajit | JIT speed-up over lua5.4 | over luajit -joff | over luajit | interpreter time / lua5.4 time |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for workload in Workload::ALL {
        let n = match (quick, workload) {
            (false, w) => w.full_size(),
            (true, Workload::Fib) => 25,
            (true, w) => w.full_size() / 100,
        };
        let program = workload.program(n).map_err(|e| e.to_string())?;
        let instructions = count_instructions(&program)?;
        let interp = time_run(&program, JitMode::Off, instructions)?;
        let jit = time_run(&program, JitMode::Eager, instructions)?;
        if interp.ended != jit.ended {
            return Err(format!("{}: interpreter and JIT disagree", workload.name()));
        }
        let secs = |d: Duration| d.as_secs_f64();
        let mut cells = vec![
            format!("{} (n = {n})", workload.name()),
            format!(
                "{:.3} s, {:.0} M insn/s",
                secs(interp.time),
                interp.rate() / 1e6
            ),
            format!("{:.3} s, {:.0} M insn/s", secs(jit.time), jit.rate() / 1e6),
            format!("{:.1}x", secs(interp.time) / secs(jit.time)),
        ];
        let mut lua_times = Vec::new();
        for command in [&["lua5.4"][..], &["luajit", "-joff"], &["luajit"]] {
            let t = if lua {
                time_lua(command, &workload.lua(n, command[0] == "lua5.4")).transpose()?
            } else {
                None
            };
            cells.push(t.map_or("-".into(), |d| format!("{:.3} s", secs(d))));
            lua_times.push(t);
        }
        for t in &lua_times {
            cells.push(t.map_or("-".into(), |d| format!("{:.2}x", secs(d) / secs(jit.time))));
        }
        cells.push(lua_times[0].map_or("-".into(), |d| {
            format!("{:.2}x", secs(interp.time) / secs(d))
        }));
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
