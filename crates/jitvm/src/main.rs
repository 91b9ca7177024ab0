//! `jitvm`: run, check, list and assemble `.jvm` programs (text or binary bytecode).
//!
//! Exit status: 0 on success (or `halt`), 1 on a load or verification error, 2 on a trap; with
//! `run --exit-code`, main's return value (low 8 bits).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jitvm::jit::Isa;
use jitvm::tier::JitMode;
use jitvm::vm::{self, Ended};
use jitvm::{Limits, Module, Program, interp};

/// A bytecode VM with a verifier, a fast interpreter and a baseline JIT.
#[derive(Parser)]
#[command(name = "jitvm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program: prints what it prints; exit 0, or 2 on a trap (message on stderr).
    Run(RunOptions),
    /// Parse and verify a program; prints errors only (exit 1 on error).
    Check {
        /// The program (.jvm text or binary bytecode).
        file: PathBuf,
    },
    /// List the bytecode per function with byte offsets and stack depths.
    Disasm {
        /// The program (.jvm text or binary bytecode).
        file: PathBuf,
        /// Also list the machine code the JIT makes for each function.
        #[arg(long)]
        native: bool,
        /// Instruction set of the machine code: x64 or a64 (default: this machine's).
        #[arg(long, value_parser = parse_isa)]
        isa: Option<Isa>,
    },
    /// Benchmark the interpreter and the JIT (and Lua 5.4 / LuaJIT when installed).
    Bench {
        /// Sizes 100 times smaller, for a quick look.
        #[arg(long)]
        quick: bool,
        /// Do not run lua5.4 and luajit beside.
        #[arg(long)]
        no_lua: bool,
    },
    /// Assemble a program to binary bytecode.
    Asm {
        /// The program (.jvm text or binary bytecode).
        file: PathBuf,
        /// Where to write the binary.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Options of `jitvm run`.
#[derive(Args, Debug, Clone)]
struct RunOptions {
    /// The program (.jvm text or binary bytecode).
    file: PathBuf,
    /// Interpret only (no JIT).
    #[arg(long, conflicts_with_all = ["jit_eager", "jit_threshold"])]
    no_jit: bool,
    /// Compile every function before running.
    #[arg(long, conflicts_with = "jit_threshold")]
    jit_eager: bool,
    /// Calls or loop iterations before a function is compiled.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    jit_threshold: u32,
    /// Executable-memory strategy: auto, toggle, mirror, per-thread (default: jitmem's).
    #[arg(long)]
    strategy: Option<String>,
    /// Executable-memory layout: per-allocation, pooled (default: jitmem's).
    #[arg(long)]
    layout: Option<String>,
    /// Most call frames active at once (main is 1); a deeper call traps.
    #[arg(long, default_value_t = Limits::default().max_depth)]
    max_depth: u32,
    /// Steps (executed calls plus taken backward jumps) before a trap; no limit by default.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Print execution statistics on stderr.
    #[arg(long)]
    stats: bool,
    /// Exit with main's return value (low 8 bits) as the status.
    #[arg(long)]
    exit_code: bool,
    /// Name compiled functions after their bytecode functions in /tmp/perf-<pid>.map, where
    /// `perf report` and `perf script` look. Without --strategy this uses the toggle strategy:
    /// perf reads perf maps only for anonymous memory, and the mirror strategy's executable
    /// view is a memfd file (--jitdump has no such limit).
    #[arg(long)]
    perf_map: bool,
    /// Record compiled code in $JITDUMPDIR/jit-<pid>.dump (the current directory when
    /// JITDUMPDIR is not set) for `perf inject --jit`; record with `perf record -k 1` (see
    /// jitmem::debuginfo::JitDump).
    #[arg(long)]
    jitdump: bool,
    /// Register compiled code, named and with its frames described, with gdb's JIT interface
    /// and with the process's unwinder.
    #[arg(long)]
    gdb_jit: bool,
}

impl RunOptions {
    fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_depth,
            max_steps: self.max_steps.unwrap_or(u64::MAX),
        }
    }
}

/// Lets the main thread's stack grow to what the run needs, so that `vm::run` runs the program
/// on the main thread and a debugger's backtrace from compiled code reaches `main` (without
/// this, runs whose frames need more than the default 8 MiB get a thread of their own). Linux
/// checks `RLIMIT_STACK` each time the main stack grows, so raising the soft limit (up to the
/// hard one) is enough, within the gap the kernel left below the stack at exec (at least
/// 128 MiB); `vm::run` reads how far the stack can really grow (`pthread_getattr_np` stops at
/// the mapping below) and uses a thread where that is not far enough. Elsewhere the main
/// thread's stack is fixed when the process starts: nothing to do.
fn let_the_main_stack_grow(need: usize) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let want = (need as u64).saturating_add(8 << 20);
        let now = getrlimit(Resource::Stack);
        // `None` is unlimited.
        if now.current.is_none_or(|current| current >= want) {
            return;
        }
        let current = now.maximum.map_or(want, |max| max.min(want));
        // A refusal leaves the limit as it was: the run then gets a thread of its own.
        let _ = setrlimit(
            Resource::Stack,
            Rlimit {
                current: Some(current),
                maximum: now.maximum,
            },
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = need;
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(opts) => match load(&opts.file) {
            Ok((_, program)) => match vm::native_stack(&program, &opts.limits()) {
                Ok(need) => {
                    let_the_main_stack_grow(need);
                    run_program(&program, &opts)
                }
                Err(why) => {
                    eprintln!("{}: {why}", opts.file.display());
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Command::Check { file } => match load(&file) {
            Ok(_) => ExitCode::SUCCESS,
            Err(code) => code,
        },
        Command::Disasm { file, native, isa } => match load(&file) {
            Ok((module, program)) => disasm(&file, &module, &program, native, isa),
            Err(code) => code,
        },
        Command::Bench { quick, no_lua } => match jitvm::bench::report(quick, !no_lua) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("jitvm bench: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Asm { file, output } => match load(&file) {
            Ok((module, _)) => match std::fs::write(&output, jitvm::binary::encode(&module)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: {e}", output.display());
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
    }
}

/// Reads, parses (text or binary) and verifies a program, printing any error as
/// `file:line: message` (text) or `file: message`.
fn load(path: &Path) -> Result<(Module, Program), ExitCode> {
    let file = path.display();
    let bytes = jitvm::read_input(path).map_err(|e| {
        eprintln!("{file}: {e}");
        ExitCode::FAILURE
    })?;
    let (module, lines) = jitvm::load_module(&bytes).map_err(|e| {
        if e.is_parse_error() {
            eprintln!("{file}:{e}");
        } else {
            eprintln!("{file}: {e}");
        }
        ExitCode::FAILURE
    })?;
    let program = jitvm::verify::verify(&module).map_err(|e| {
        match lines.as_ref().and_then(|l| l.line_of_error(&e)) {
            Some(line) => eprintln!("{file}:{line}: {e}"),
            None => eprintln!("{file}: {e}"),
        }
        ExitCode::FAILURE
    })?;
    Ok((module, program))
}

/// Runs a verified program with the options of `jitvm run` and reports the outcome. Every run
/// goes through here (the place to choose the execution engine).
fn run_program(program: &Program, opts: &RunOptions) -> ExitCode {
    let mut memory = jitmem::Config::new();
    if let Some(name) = &opts.strategy {
        match jitmem::Strategy::from_name(name) {
            Some(s) if s != jitmem::Strategy::Rwx => memory = memory.strategy(s),
            _ => {
                eprintln!("jitvm: unknown strategy {name:?} (auto, toggle, mirror, per-thread)");
                return ExitCode::FAILURE;
            }
        }
    }
    if opts.perf_map && opts.strategy.is_none() {
        memory = memory.strategy(jitmem::Strategy::Toggle);
    }
    if let Some(name) = &opts.layout {
        match jitmem::Layout::from_name(name) {
            Some(l) => memory = memory.layout(l),
            None => {
                eprintln!("jitvm: unknown layout {name:?} (per-allocation, pooled)");
                return ExitCode::FAILURE;
            }
        }
    }
    let debug = match debug_info(opts) {
        Ok(debug) => debug,
        Err(e) => {
            eprintln!("jitvm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = vm::RunOptions {
        jit: if opts.no_jit {
            JitMode::Off
        } else if opts.jit_eager {
            JitMode::Eager
        } else {
            JitMode::Tiered {
                threshold: opts.jit_threshold,
            }
        },
        limits: opts.limits(),
        stats: opts.stats,
        memory,
        native_stack: None,
        debug,
    };
    let out = BufWriter::new(std::io::stdout());
    let report = vm::run(program, &options, out);
    if let Some(notice) = &report.notice {
        eprintln!("jitvm: {notice}");
    }
    if opts.stats {
        let c = &report.counters;
        let j = &report.jit;
        eprintln!("interpreted instructions: {}", c.interpreted);
        eprintln!("compiled instructions:    {}", c.compiled);
        eprintln!(
            "compiled functions:       {} ({} bytecode instructions, {} bytes of machine code)",
            j.compiled_functions, j.compiled_instructions, j.code_bytes
        );
        let per = j.compile_time.as_nanos() as f64 / (j.compiled_instructions.max(1) as f64);
        eprintln!(
            "compile time:             {:?} ({per:.0} ns per instruction)",
            j.compile_time
        );
        eprintln!("OSR entries:              {}", j.osr_entries);
        eprintln!("helper calls:             {}", j.helper_calls);
        eprintln!(
            "linked calls:             {} (straight to the callee's code; {} left through the function table)",
            j.linked_calls, j.unlinked_calls
        );
        if j.skipped > 0 {
            eprintln!(
                "skipped:                  {} functions (no executable memory left)",
                j.skipped
            );
        }
        for failure in &j.failures {
            eprintln!("not compiled:             {failure}");
        }
    }
    report_end(program, report.ended, report.write_error, opts)
}

/// The debug-info sinks `--perf-map`, `--jitdump` and `--gdb-jit` ask for (`None`: none).
fn debug_info(
    opts: &RunOptions,
) -> jitmem::Result<Option<std::sync::Arc<jitmem::debuginfo::DebugInfo>>> {
    let mut debug = jitmem::debuginfo::DebugInfo::new();
    if opts.perf_map {
        debug = debug.with_perf_map()?;
    }
    if opts.jitdump {
        #[cfg(target_os = "linux")]
        {
            let dir =
                std::env::var_os("JITDUMPDIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
            debug = debug.with_jitdump(&dir)?;
        }
        #[cfg(not(target_os = "linux"))]
        return Err(jitmem::Error::DebugInfo(
            "--jitdump: jitdump is perf's format, Linux only".into(),
        ));
    }
    if opts.gdb_jit {
        debug = debug.with_gdb_jit().with_unwind_registration();
    }
    Ok(debug.is_enabled().then(|| std::sync::Arc::new(debug)))
}

/// Turns a run's outcome into the exit status (and the trap message on stderr).
fn report_end(
    program: &Program,
    ended: Result<Ended, String>,
    write_error: Option<std::io::Error>,
    opts: &RunOptions,
) -> ExitCode {
    if let Some(e) = write_error {
        eprintln!("jitvm: writing output: {e}");
        return ExitCode::FAILURE;
    }
    match ended {
        Ok(Ended::Returned(value)) if opts.exit_code => ExitCode::from((value & 0xff) as u8),
        Ok(Ended::Returned(_) | Ended::Halted) => ExitCode::SUCCESS,
        Ok(Ended::Trapped(trap)) => {
            eprintln!("{}", interp::trap_message(program, &trap));
            ExitCode::from(2)
        }
        Err(why) => {
            eprintln!("jitvm: {why}");
            ExitCode::from(70)
        }
    }
}

fn parse_isa(name: &str) -> Result<Isa, String> {
    match name {
        "x64" | "x86-64" | "x86_64" => Ok(Isa::X64),
        "a64" | "aarch64" | "arm64" => Ok(Isa::A64),
        _ => Err(format!("unknown instruction set {name:?} (x64, a64)")),
    }
}

/// `jitvm disasm`: the bytecode listing, and with `--native` each function's machine code.
fn disasm(
    file: &Path,
    module: &Module,
    program: &Program,
    native: bool,
    isa: Option<Isa>,
) -> ExitCode {
    match jitvm::disasm::listing(module, program) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    }
    if !native {
        return ExitCode::SUCCESS;
    }
    let Some(isa) = isa.or_else(Isa::native) else {
        eprintln!("jitvm: no JIT backend for this machine; choose one with --isa");
        return ExitCode::FAILURE;
    };
    for (id, function) in program.functions().iter().enumerate() {
        println!("\nnative {} code of {}:", isa.name(), function.name());
        match jitvm::jit::disasm::native_listing(isa, program, id as u32, false) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("jitvm: compiling {}: {e}", jitvm::quote(function.name()));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
