//! Helpers shared by the integration tests: running a test alone in a child process (for
//! faults, mapping counts and fork), and the strategies this machine supports.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::Read;
#[cfg(unix)]
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use jitmem::{Config, Error, JitMemory, Layout, Strategy};

const CHILD_ENV: &str = "JITMEM_TEST_CHILD";

/// True in the child process started by [`run_child`] for `test`. On Windows the child also
/// stops any unhandled exception from starting a debugger (see [`die_on_unhandled_exceptions`]).
pub fn is_child(test: &str) -> bool {
    let child = std::env::var(CHILD_ENV).is_ok_and(|v| v == test);
    #[cfg(windows)]
    if child {
        die_on_unhandled_exceptions();
    }
    child
}

/// Makes an unhandled exception (the access violation or breakpoint a test provokes) end the
/// process at once with the exception code as its exit code, which is what [`child_signal`]
/// reads. Without it, Wine starts `winedbg` on the crash (which may itself crash and change the
/// exit code) and Windows may start Windows Error Reporting.
#[cfg(windows)]
fn die_on_unhandled_exceptions() {
    use windows_sys::Win32::System::Diagnostics::Debug::{
        EXCEPTION_EXECUTE_HANDLER, EXCEPTION_POINTERS, SetUnhandledExceptionFilter,
    };
    unsafe extern "system" fn filter(_: *const EXCEPTION_POINTERS) -> i32 {
        EXCEPTION_EXECUTE_HANDLER
    }
    // SAFETY: installs a filter function that lives for the whole program.
    unsafe { SetUnhandledExceptionFilter(Some(filter)) };
}

/// Runs the test named `test` (this binary's test function of that name) alone in a child
/// process, with extra environment variables. `JITMEM_TEST_RUNNER` (e.g. `qemu-aarch64 -L /`)
/// is put in front of the command when the tests run under an emulator.
///
/// The child is killed after [`child_timeout`]: a test whose child hangs (a lock never
/// released, a scope that never restores execute rights) fails with a message saying so
/// instead of hanging the suite. Under an emulator (`JITMEM_TEST_RUNNER`) a child that hangs is
/// run once more before its result counts (qemu-user can deadlock on a guest fault).
pub fn run_child(test: &str, env: &[(&str, &str)]) -> Output {
    let (out, timed_out) = run_child_once(test, env);
    if timed_out && std::env::var("JITMEM_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        // qemu-user itself sometimes deadlocks delivering a guest's fault (seen once in four
        // CI runs: a mirror write fault that hung 600 s, while 20 reruns of the same child
        // faulted at once). A hang under the emulator gets one more run; a second hang, or any
        // other result, is the child's.
        eprintln!("[test harness] child `{test}` timed out under the emulator: running it again");
        return run_child_once(test, env).0;
    }
    out
}

/// One run of `run_child`: the child's output, and whether it was killed for running too long.
fn run_child_once(test: &str, env: &[(&str, &str)]) -> (Output, bool) {
    let exe = std::env::current_exe().unwrap();
    let runner = std::env::var("JITMEM_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(words).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let limit = child_timeout();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let mut err = stderr.join().unwrap();
            err.extend_from_slice(
                format!("\n[test harness] child `{test}` TIMED OUT after {limit:?}: killed\n")
                    .as_bytes(),
            );
            let out = Output {
                status,
                stdout: stdout.join().unwrap(),
                stderr: err,
            };
            return (out, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (out, false)
}

/// How long a child process may run: `JITMEM_CHILD_TIMEOUT` seconds, else 120 s (600 s under
/// an emulator, `JITMEM_TEST_RUNNER` or `JITMEM_SLOW` set).
pub fn child_timeout() -> Duration {
    if let Some(secs) = std::env::var("JITMEM_CHILD_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    if slow() || std::env::var("JITMEM_TEST_RUNNER").is_ok_and(|v| !v.is_empty()) {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(120)
    }
}

/// True under full-system emulation (`JITMEM_SLOW=1`, the PKU VM): loops shrink.
pub fn slow() -> bool {
    std::env::var("JITMEM_SLOW").is_ok_and(|v| v == "1")
}

/// `n`, or a tenth of it (at least 1) when [`slow`].
pub fn scaled(n: usize) -> usize {
    if slow() { (n / 10).max(1) } else { n }
}

/// In the child started by [`per_pair`] for `test`: the memory of its pair (named in
/// `JITMEM_TEST_PAIR`) and the pair's name. None in the parent.
fn child_pair(test: &str) -> Option<(JitMemory, String)> {
    if !is_child(test) {
        return None;
    }
    let pair = std::env::var("JITMEM_TEST_PAIR").unwrap();
    let (s, l) = pair.split_once('/').unwrap();
    let strategy = Strategy::from_name(s).unwrap();
    let layout = LAYOUTS.into_iter().find(|l2| l2.name() == l).unwrap();
    Some((memory(strategy, layout).unwrap(), pair))
}

/// In the parent: runs `test` in a child process for every strategy x layout this machine
/// supports and `wanted` accepts, and checks each child's output with `check`. Returns the
/// pairs that ran.
fn per_pair(
    test: &str,
    wanted: impl Fn(Strategy, Layout) -> bool,
    check: impl Fn(&str, &Output),
) -> Vec<String> {
    let mut ran = Vec::new();
    for strategy in Strategy::CONCRETE {
        for layout in LAYOUTS {
            if !wanted(strategy, layout) || memory(strategy, layout).is_none() {
                continue;
            }
            let pair = format!("{}/{}", strategy.name(), layout.name());
            check(&pair, &run_child(test, &[("JITMEM_TEST_PAIR", &pair)]));
            ran.push(pair);
        }
    }
    ran
}

/// Runs `body` in a child process for every strategy x layout this machine supports (each pair
/// in its own child), and asserts each child exits cleanly. In the child, runs `body` for its
/// pair and returns `None`; in the parent, returns the pairs that ran.
pub fn in_child_per_pair(test: &str, body: impl Fn(JitMemory)) -> Option<Vec<String>> {
    if let Some((memory, pair)) = child_pair(test) {
        body(memory);
        println!("child ok {pair}");
        return None;
    }
    Some(per_pair(
        test,
        |_, _| true,
        |pair, out| {
            let (signal, text) = child_signal(out);
            assert!(
                out.status.success() && text.contains(&format!("child ok {pair}")),
                "{test} {pair}: signal {signal:?}\n{text}"
            );
        },
    ))
}

/// Runs `body` in a child process for every strategy x layout this machine supports except
/// those `expected` maps to `None`, and asserts each child died of the fault `expected` names
/// (the body must fault; if it returns, the child prints "no fault" and the test fails).
pub fn fault_per_pair(
    test: &str,
    expected: impl Fn(Strategy, Layout) -> Option<i32>,
    body: impl Fn(JitMemory),
) {
    if let Some((memory, pair)) = child_pair(test) {
        body(memory);
        println!("no fault in {pair}");
        return;
    }
    let ran = per_pair(
        test,
        |s, l| expected(s, l).is_some(),
        |pair, out| {
            let (s, l) = pair.split_once('/').unwrap();
            let strategy = Strategy::from_name(s).unwrap();
            let layout = LAYOUTS.into_iter().find(|l2| l2.name() == l).unwrap();
            let (signal, text) = child_signal(out);
            assert_eq!(signal, expected(strategy, layout), "{test} {pair}: {text}");
        },
    );
    assert!(ran.len() >= 6, "{test}: only {} pairs ran", ran.len());
}

/// The fault that killed the child ([`ACCESS_FAULT`], [`TRAP_FAULT`]...), with its output for
/// the failure message.
pub fn child_signal(out: &Output) -> (Option<i32>, String) {
    let text = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (fault(&out.status), text)
}

/// Unix: the signal that killed the process.
#[cfg(unix)]
fn fault(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// Windows (run under Wine in CI, not on Windows): an unhandled exception ends the process with
/// the exception code as its exit code. Exception codes have the top bit set (an error or a
/// warning NTSTATUS); the exit codes of a process that returns or panics do not.
#[cfg(windows)]
fn fault(status: &ExitStatus) -> Option<i32> {
    status.code().filter(|code| *code < 0)
}

/// What a write without write access dies of: `SIGSEGV` (`SIGBUS` on Darwin, whose
/// `ux_exception.c` turns protection faults into `SIGBUS`).
#[cfg(all(unix, not(target_vendor = "apple")))]
pub const ACCESS_FAULT: i32 = libc::SIGSEGV;
/// What a write without write access dies of on Darwin: `SIGBUS`.
#[cfg(target_vendor = "apple")]
pub const ACCESS_FAULT: i32 = libc::SIGBUS;
/// What a write without write access dies of: `STATUS_ACCESS_VIOLATION`.
#[cfg(windows)]
pub const ACCESS_FAULT: i32 = 0xC000_0005_u32 as i32;
/// What running a trap instruction (`int3`, `brk #0xF000`) dies of: `SIGTRAP`.
#[cfg(unix)]
pub const TRAP_FAULT: i32 = libc::SIGTRAP;
/// What running a trap instruction (`int3`) dies of: `STATUS_BREAKPOINT`.
#[cfg(windows)]
pub const TRAP_FAULT: i32 = 0x8000_0003_u32 as i32;

/// The layouts every test runs (a small arena keeps tests quick).
pub const LAYOUTS: [Layout; 3] = [
    Layout::PerAllocation,
    Layout::Pooled,
    Layout::Arena { size: 16 << 20 },
];

/// Memory for `strategy` and `layout`, or None when this machine cannot do `strategy` — in
/// which case the error must be `Unsupported` and the probe must agree. With
/// `JITMEM_REQUIRE_PKU=1` (the emulated PKU machine in CI) a refused `PerThread` fails the test.
pub fn memory(strategy: Strategy, layout: Layout) -> Option<JitMemory> {
    let config = Config::new()
        .strategy(strategy)
        .layout(layout)
        .ignore_environment();
    let config = if strategy == Strategy::Rwx {
        // SAFETY: tests only run their own trusted code.
        unsafe { config.allow_rwx_without_wx() }
    } else {
        config
    };
    match JitMemory::new(config) {
        Ok(m) => {
            if strategy == Strategy::PerThread && jitmem::selftest::pku_required() {
                // Counted by ci/pku/run.sh: proof that the emulated-PKU VM made PerThread memory.
                eprintln!("jitmem-test: made perthread/{layout}");
            }
            Some(m)
        }
        Err(Error::Unsupported {
            strategy: s,
            reason,
            ..
        }) => {
            assert_eq!(s, strategy);
            assert!(
                strategy != Strategy::PerThread || !jitmem::selftest::pku_required(),
                "JITMEM_REQUIRE_PKU=1 but PerThread/{layout} was refused: {reason}"
            );
            let probe = jitmem::probe::Probe::run();
            assert!(
                !probe.allows(strategy),
                "{strategy} refused ({reason}) but the probe says it is available:\n{probe}"
            );
            eprintln!("note: {strategy} is not available on this machine: {reason}");
            None
        }
        Err(e) => panic!("{strategy}/{layout}: {e}"),
    }
}

/// Every concrete strategy with every layout, as available here.
pub fn all_memories() -> Vec<JitMemory> {
    let mut out = Vec::new();
    for strategy in Strategy::CONCRETE {
        for layout in LAYOUTS {
            out.extend(memory(strategy, layout));
        }
    }
    out
}

/// Writes and publishes a function returning `value` into a new block.
pub fn function(memory: &JitMemory, value: u32) -> jitmem::CodeBlock {
    let mut block = memory.allocate(16).unwrap();
    let mut scope = block.write().unwrap();
    scope[..16].copy_from_slice(&jitmem::isa::return_constant(value));
    scope.publish().unwrap();
    block
}

/// Calls a block written by [`function`].
pub fn call(block: &jitmem::CodeBlock) -> u32 {
    // SAFETY: blocks given to this helper hold a return_constant function.
    let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
    f()
}

/// Patches the constant of a block written by [`function`].
pub fn patch(block: &mut jitmem::CodeBlock, value: u32, live: bool) {
    let at = jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
    let mut scope = block.write_range(at..at + 4).unwrap();
    scope.copy_from_slice(&value.to_le_bytes());
    if live {
        scope.publish_live().unwrap();
    } else {
        scope.publish().unwrap();
    }
}
