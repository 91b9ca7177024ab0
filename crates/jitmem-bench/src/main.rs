//! `jitmem-bench`: runs the same workloads on jitmem and on its peers (the Rust crates
//! jit-allocator, region, memmap2 and dynasmrt; the C++ asmjit `JitAllocator`; and two floors,
//! the least an allocator can do) side by side and prints a markdown table.
//!
//! Every (peer, workload) pair runs in a child process (this executable, re-run with the hidden
//! arguments `child PEER WORKLOAD`), so a peer that crashes, hangs or hands out overlapping
//! blocks becomes a table cell ("crashed: SIGSEGV", "timeout", "overlap detected") and the run
//! goes on.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use jitmem_bench::workloads::{self, Outcome, Scale, WORKLOADS};
use jitmem_bench::{machine, peers};

/// Compares executable-memory allocators: jitmem, its Rust peers, C++ asmjit and two floors,
/// one child process per (peer, workload). Prints a markdown table on stdout, progress on stderr.
#[derive(Parser, Debug)]
#[command(name = "jitmem-bench", version)]
struct Args {
    /// Shrink iteration counts about 10x, for a smoke run.
    #[arg(long, global = true)]
    quick: bool,
    /// Peers to run, comma-separated (default: all). One of: jitmem-mirror,
    /// jitmem-mirror-arena, jitmem-toggle, jitmem-toggle-peralloc, jitmem-perthread,
    /// jit-allocator, asmjit-rwx, asmjit-dual, region, memmap2, dynasmrt, floor, mprotect-floor.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Workloads to run, comma-separated (default: all). One of: alloc_free, alloc_free_frag,
    /// patch, churn, overhead, threads, race.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Seconds after which a child process is killed and its cell reads "timeout" (default: 60,
    /// or 20 with --quick).
    #[arg(long)]
    timeout: Option<u64>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Subcommands: only the hidden one that a child process runs.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs one workload on one peer and prints its cell (the parent runs this).
    #[command(hide = true)]
    Child {
        /// The peer.
        peer: String,
        /// The workload.
        workload: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let scale = Scale { quick: args.quick };
    if let Some(Cmd::Child { peer, workload }) = &args.command {
        return child(peer, workload, scale);
    }
    parent(&args, scale)
}

/// The child: run one workload, print `CELL\t...` and `NOTE\t...` lines.
fn child(peer: &str, workload: &str, scale: Scale) -> ExitCode {
    // A crash is an expected answer (race on Toggle peers): no core dump for it.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; lowering our own core limit is always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    // A panic on any thread ends the child at once (SIGABRT, its message on stderr) rather than
    // leaving the other threads waiting at a barrier until the timeout.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        std::process::abort();
    }));
    let outcome = workloads::run(workload, peer, scale);
    println!("CELL\t{}", one_line(&outcome.cell));
    for note in &outcome.notes {
        println!("NOTE\t{}", one_line(note));
    }
    ExitCode::SUCCESS
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\t', '|'], " ")
}

/// The parent: run every (peer, workload) in a child and print the report.
fn parent(args: &Args, scale: Scale) -> ExitCode {
    let peer_names: Vec<&str> = if args.peers.is_empty() {
        peers::PEERS.iter().map(|p| p.name).collect()
    } else {
        args.peers.iter().map(String::as_str).collect()
    };
    let workload_names: Vec<&str> = if args.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        args.workloads.iter().map(String::as_str).collect()
    };
    for name in &peer_names {
        if peers::info(name).is_none() {
            let known: Vec<_> = peers::PEERS.iter().map(|p| p.name).collect();
            eprintln!("unknown peer {name:?}; known: {}", known.join(", "));
            return ExitCode::from(2);
        }
    }
    for name in &workload_names {
        if !WORKLOADS.contains(name) {
            eprintln!("unknown workload {name:?}; known: {}", WORKLOADS.join(", "));
            return ExitCode::from(2);
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this executable to re-run it: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs(args.timeout.unwrap_or(if scale.quick { 20 } else { 60 }));

    let started = Instant::now();
    let total = peer_names.len() * workload_names.len();
    let mut rows: Vec<Vec<Outcome>> = Vec::new();
    for peer in &peer_names {
        let mut row = Vec::new();
        for workload in &workload_names {
            let t = Instant::now();
            let mut outcome = run_child(&exe, peer, workload, scale, timeout);
            let toggles = peers::info(peer).is_some_and(|i| i.toggles);
            let crashed = outcome.cell.starts_with("crashed");
            if *workload == "race" && toggles && crashed {
                outcome.notes.push(
                    "expected for Toggle peers: while a write is open the page is not \
                     executable, and the calling thread faults"
                        .into(),
                );
            }
            if *workload == "threads" && toggles && crashed {
                outcome.notes.push(format!(
                    "{peer}: expected for Toggle with shared pages (Pooled, Arena): a write scope \
                     makes its whole page non-executable, so the other thread faults when it \
                     calls a function that shares that page (jitmem README: use Mirror, \
                     PerThread or PerAllocation when threads write and run at once)"
                ));
            }
            eprintln!(
                "[{:>2}/{total}] {peer} {workload}: {} ({:.1} s)",
                rows.len() * workload_names.len() + row.len() + 1,
                outcome.cell,
                t.elapsed().as_secs_f64()
            );
            row.push(outcome);
        }
        rows.push(row);
    }

    print!(
        "{}",
        report(
            &peer_names,
            &workload_names,
            &rows,
            scale,
            timeout,
            started.elapsed()
        )
    );
    ExitCode::SUCCESS
}

/// Runs one child, killing it after `timeout`; turns what happened into an [`Outcome`].
fn run_child(
    exe: &std::path::Path,
    peer: &str,
    workload: &str,
    scale: Scale,
    timeout: Duration,
) -> Outcome {
    let mut command = Command::new(exe);
    command.args(["child", peer, workload]);
    if scale.quick {
        command.arg("--quick");
    }
    let mut child = match command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                cell: "error".into(),
                notes: vec![format!("{peer}, {workload}: cannot start the child: {e}")],
            };
        }
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => {
                // Our own child, by its handle (SIGKILL to its pid).
                let _ = child.kill();
                timed_out = true;
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();

    let mut outcome = Outcome::default();
    let mut cell = None;
    for line in stdout.lines() {
        if let Some(c) = line.strip_prefix("CELL\t") {
            cell = Some(c.to_string());
        } else if let Some(n) = line.strip_prefix("NOTE\t") {
            outcome.notes.push(n.to_string());
        }
    }
    let tail = stderr_tail(&stderr);
    outcome.cell = if timed_out {
        outcome.notes.push(format!(
            "{peer}, {workload}: killed after {} s",
            timeout.as_secs()
        ));
        "timeout".into()
    } else if let Some(signal) = status.and_then(|s| s.signal()) {
        if let Some(tail) = tail {
            outcome.notes.push(format!("{peer}, {workload}: {tail}"));
        }
        format!("crashed: {}", signal_name(signal))
    } else if let Some(cell) = cell {
        cell
    } else {
        let code = status
            .and_then(|s| s.code())
            .map_or("?".to_string(), |c| c.to_string());
        outcome.notes.push(format!(
            "{peer}, {workload}: exit {code}: {}",
            tail.unwrap_or_else(|| "no output".into())
        ));
        format!("failed (exit {code})")
    };
    outcome
}

/// The informative end of a child's stderr (a panic message, say), on one line.
fn stderr_tail(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains("panicked at"))
        .unwrap_or(lines.len().saturating_sub(2));
    let tail = lines[start..].join(" ");
    (!tail.is_empty()).then(|| tail.chars().take(300).collect())
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.into()
}

/// The whole report: command line, machine, the table, its notes.
fn report(
    peer_names: &[&str],
    workload_names: &[&str],
    rows: &[Vec<Outcome>],
    scale: Scale,
    timeout: Duration,
    elapsed: Duration,
) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "## jitmem-bench\n");
    let _ = writeln!(s, "- command: `{}`", machine::command_line());
    let _ = writeln!(
        s,
        "- machine: {}, {}, {}, page {} KiB, vm.max_map_count {}, protection keys {}",
        machine::cpu_model(),
        machine::cores(),
        machine::kernel(),
        jitmem::page_size() / 1024,
        machine::max_map_count().map_or("?".into(), |n| n.to_string()),
        if machine::pkeys() { "yes" } else { "no" },
    );
    let auto = match jitmem::probe::auto_choice() {
        Ok(choice) => format!("{} / {}", choice.strategy, choice.layout),
        Err(why) => format!("nothing ({why})"),
    };
    let _ = writeln!(
        s,
        "- build: {}; jitmem {} (Auto here: {auto}); jit-allocator {}, region {}, memmap2 {}, dynasmrt {}; {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        env!("CARGO_PKG_VERSION"),
        peers::version("jit-allocator").unwrap_or("?"),
        peers::version("region").unwrap_or("?"),
        peers::version("memmap2").unwrap_or("?"),
        peers::version("dynasmrt").unwrap_or("?"),
        peers::version("asmjit-dual").map_or("C++ asmjit: left out".into(), |v| format!(
            "C++ asmjit {v} (libasmjit-dev)"
        )),
    );
    let _ = writeln!(
        s,
        "- scale: {}; one child process per cell, killed after {} s; whole run {:.0} s\n",
        if scale.quick {
            "--quick (iteration counts / 10)"
        } else {
            "full"
        },
        timeout.as_secs(),
        elapsed.as_secs_f64()
    );

    // Notes are numbered in order of first appearance; identical notes share a number.
    let mut notes: Vec<String> = Vec::new();
    let mut mark = |note: &str| -> usize {
        match notes.iter().position(|n| n == note) {
            Some(i) => i + 1,
            None => {
                notes.push(note.to_string());
                notes.len()
            }
        }
    };
    let _ = writeln!(s, "| peer | W^X, layout | {} |", workload_names.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(workload_names.len()));
    for (peer, row) in peer_names.iter().zip(rows) {
        let kind = peers::info(peer).map_or("", |i| i.kind);
        let cells: Vec<String> = row
            .iter()
            .map(|o| {
                let marks: Vec<String> = o.notes.iter().map(|n| format!("[{}]", mark(n))).collect();
                if marks.is_empty() {
                    o.cell.clone()
                } else {
                    format!("{} {}", o.cell, marks.join(""))
                }
            })
            .collect();
        let _ = writeln!(s, "| {peer} | {kind} | {} |", cells.join(" | "));
    }
    let _ = writeln!(s);
    if !notes.is_empty() {
        for (i, note) in notes.iter().enumerate() {
            let _ = writeln!(s, "[{}] {note}  ", i + 1);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "{}", legend());
    s
}

/// What the columns mean, printed under the table.
fn legend() -> String {
    let toggles: Vec<&str> = peers::PEERS
        .iter()
        .filter(|p| p.toggles)
        .map(|p| p.name)
        .collect();
    format!("\
Columns (every function written is also run and its return value checked; every block handed \
out is checked against the live blocks, and an overlap ends the cell as \"overlap detected\"):
- alloc_free: 128-byte alloc+free pairs, ns per pair (median of 7 batches of 100,000).
- alloc_free_frag: the same after allocating 64 MiB worth of 128-byte blocks and freeing every \
other one (50% fragmented).
- patch: replace a 4-byte aligned constant inside a live function, call and check; ns per patch \
(median of 7 batches). jitmem uses its live patch (patch_live on x86-64, patch_live_data for \
AArch64's literal: one atomic store, no system call, safe for threads running the code; Toggle \
falls back to a write scope); the other peers write and publish as usual.
- churn: 20,000 blocks of 16..2048 bytes (xorshift sizes): allocate, write the whole block, \
publish, call; with 1,000 live, each new block frees a random live one (called first); ns per \
block, median of 5 rounds. Includes the interval-set check (a BTreeMap insert and remove).
- overhead: 10,000 live 100-byte functions: change in Pss (/proc/self/smaps_rollup), per \
function, and in lines of /proc/self/maps.
- threads: churn on 2 threads at once, 20,000 blocks each: blocks/s of both together, and the \
ratio to one thread alone (2 cores); 7 rounds, each one thread alone then two at once, \
medians of the rate and of the per-round ratio. Each thread checks its own blocks \
as churn does; the two threads' blocks are checked against each other at the end of each run, \
and every block is called (checked) before it is freed.
- race: one thread calls a function in a loop while another patches its constant 100,000 times \
(jitmem: the live patch, plus publish_live() every 64 patches; the other peers have no \
cross-thread publish): ok (calls made while patching, in how long the patching took). For Toggle peers ({}) a crash is the \
expected answer.
- Left out: cranelift-jit's JITMemoryProvider (SystemMemoryProvider, ArenaMemoryProvider) has \
no per-function free and cannot make finalized code writable again, so only overhead of the \
seven workloads could be expressed with it (see src/peers.rs).
- asmjit-rwx, asmjit-dual: the C++ asmjit JitAllocator (libasmjit-dev) through a small C shim \
(cpp/asmjit_peer.cpp), with RWX blocks or kUseDualMapping; writes go through the RW pointer (the RX one under RWX) \
inside VirtMem::ProtectJitReadWriteScope, which flushes the instruction cache.
- floor, mprotect-floor: lower bounds, not allocators to use. floor is a bump pointer and a LIFO \
free list per exact 16-byte size class over one dual-mapped region, with no lock (one per \
thread), no trap fill and no checks: the least alloc_free, churn, overhead and patch can cost. \
mprotect-floor maps each function on its own and wraps each write in a raw mprotect RW/RX pair \
of the pages written: the least Toggle's patch can cost.
- --quick divides every count by 10.",
        toggles.join(", ")
    )
}
