//! jitvm's debug information seen from outside: perf names compiled code after the bytecode
//! functions (through the perf map, and through jitdump after `perf inject --jit`), gdb walks
//! a backtrace from a runtime helper through the compiled frames, and freed code leaves gdb's
//! list; a panic in a helper keeps its backtrace through compiled frames.
//!
//! The perf and gdb tests run the `jitvm` binary under `perf`/`gdb` (Linux x86-64; CI's "debug
//! info" step of .ci/run installs both). Where a tool is missing they skip with a message,
//! unless `JITMEM_REQUIRE_PERF=1` / `JITMEM_REQUIRE_GDB=1` (set by that step) makes the skip a
//! failure. Under an emulator (`JITMEM_TEST_RUNNER`) they skip: perf and gdb would see qemu.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
#[cfg(not(windows))]
use std::sync::Mutex;

use jitmem::debuginfo::DebugInfo;
use jitvm::tier::JitMode;
use jitvm::vm::{self, RunOptions};

/// Recursive Fibonacci: `main` prints fib(n). With `print_leaves`, `fib` prints each leaf.
fn fib_source(n: u32, print_leaves: bool) -> String {
    let leaf_print = if print_leaves {
        "    load_local_0\n    print\n"
    } else {
        ""
    };
    format!(
        "func main args=0 locals=0
    load_imm {n}
    call fib
    print
    return_nil
end

func fib args=1 locals=1
    load_local_0
    load_imm 2
    lt_ii
    jump_if_false recurse
{leaf_print}    load_local_0
    return
recurse:
    load_local_0
    load_imm 1
    sub_ii
    call fib
    load_local_0
    load_imm 2
    sub_ii
    call fib
    add_ii
    return
end
"
    )
}

/// A fresh directory for one test's files (removed by the test when it passes).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jitvm-debuginfo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `tool` can be used here; `false` (after saying why) when the test should skip.
/// Panics instead when `flag=1` asks for the tool.
fn have(tool: &str, flag: &str) -> bool {
    let required = std::env::var(flag).is_ok_and(|v| v == "1");
    if std::env::var("JITMEM_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        assert!(!required, "{flag}=1 but the tests run under an emulator");
        eprintln!("skipped: {tool} cannot look into a process run by an emulator");
        return false;
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        assert!(!required, "{flag}=1 on a target these tests do not cover");
        eprintln!("skipped: the {tool} test runs on Linux x86-64 (CI's debug info step)");
        return false;
    }
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!required, "{flag}=1 but `{tool}` is not installed");
        eprintln!(
            "skipped: `{tool}` is not installed (CI's debug info step installs it; set {flag}=1 to fail instead)"
        );
    }
    found
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `perf` with its caches (`~/.debug`) kept in `dir`.
fn perf(dir: &Path) -> Command {
    let mut command = Command::new("perf");
    command.env("HOME", dir).current_dir(dir);
    command
}

/// `perf record -e cpu-clock [extra] -N -q -o perf.data -- jitvm run --jit-eager <sink> fib.jvm`
/// in `dir`, with the jitdump directory `dir` (the sink flag chooses perf map or jitdump).
fn perf_record(dir: &Path, extra: &[&str], sink: &str) {
    run(perf(dir)
        .args(["record", "-e", "cpu-clock"])
        .args(extra)
        .args(["-N", "-q", "-o", "perf.data", "--"])
        .arg(env!("CARGO_BIN_EXE_jitvm"))
        .args(["run", "--jit-eager", sink, "fib.jvm"])
        .env("JITDUMPDIR", dir));
}

/// Checks that `perf report` and `perf script` on `data` attribute most samples to `fib`.
fn assert_most_samples_in_fib(dir: &Path, data: &str) {
    let report = run(perf(dir).args(["report", "-i", data, "--stdio", "--sort", "sym"]));
    let report = String::from_utf8_lossy(&report.stdout);
    let fib_share: f64 = report
        .lines()
        .find(|l| l.trim_end().ends_with("[.] fib"))
        .and_then(|l| l.trim().split('%').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `fib` in perf report:\n{report}"));
    assert!(
        fib_share > 50.0,
        "fib has {fib_share}% of the samples:\n{report}"
    );
    let script = run(perf(dir).args(["script", "-i", data, "-F", "ip,sym"]));
    let script = String::from_utf8_lossy(&script.stdout);
    let total = script.lines().count();
    let in_fib = script
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("fib"))
        .count();
    assert!(
        total > 0 && in_fib * 2 > total,
        "perf script: {in_fib} of {total} samples in fib"
    );
}

/// The pid of the process perf recorded in `data` (to remove its perf map).
fn recorded_pid(dir: &Path, data: &str) -> Option<u32> {
    let script = run(perf(dir).args(["script", "-i", data, "-F", "pid"]));
    String::from_utf8_lossy(&script.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

#[test]
fn perf_map_names_samples_after_the_bytecode_function() {
    if !have("perf", "JITMEM_REQUIRE_PERF") {
        return;
    }
    let dir = scratch("perfmap");
    std::fs::write(dir.join("fib.jvm"), fib_source(32, false)).unwrap();
    perf_record(&dir, &[], "--perf-map");
    let pid = recorded_pid(&dir, "perf.data");
    assert_most_samples_in_fib(&dir, "perf.data");
    if let Some(pid) = pid {
        let map = std::fs::read_to_string(format!("/tmp/perf-{pid}.map")).unwrap();
        assert!(map.lines().any(|l| l.ends_with(" fib")), "{map}");
        std::fs::remove_file(format!("/tmp/perf-{pid}.map")).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jitdump_names_samples_after_perf_inject() {
    if !have("perf", "JITMEM_REQUIRE_PERF") {
        return;
    }
    let dir = scratch("jitdump");
    std::fs::write(dir.join("fib.jvm"), fib_source(32, false)).unwrap();
    // -k 1: CLOCK_MONOTONIC sample times, the clock of the dump's records.
    perf_record(&dir, &["-k", "1"], "--jitdump");
    let dumps: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("jit-") && n.ends_with(".dump"))
        .collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    run(perf(&dir).args(["inject", "--jit", "-i", "perf.data", "-o", "perf.jit.data"]));
    assert_most_samples_in_fib(&dir, "perf.jit.data");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With `--call-graph dwarf`, perf unwinds through compiled frames only with the CFI jitdump's
/// `JIT_CODE_UNWINDING_INFO` records put into the objects `perf inject --jit` makes: most
/// samples taken in `fib` then walk through all its recursive callers to the compiled bytecode
/// `main` (without the records, the walk stops at the first compiled frame; it ends at `main`
/// because `main`'s frame is larger than the 8 KiB of stack perf copies per sample).
#[test]
fn jitdump_unwinding_info_lets_perf_walk_compiled_frames() {
    if !have("perf", "JITMEM_REQUIRE_PERF") {
        return;
    }
    let dir = scratch("jitdump-unwind");
    std::fs::write(dir.join("fib.jvm"), fib_source(34, false)).unwrap();
    perf_record(&dir, &["-k", "1", "--call-graph", "dwarf"], "--jitdump");
    run(perf(&dir).args(["inject", "--jit", "-i", "perf.data", "-o", "perf.jit.data"]));
    let script = run(perf(&dir).args(["script", "-i", "perf.jit.data"]));
    let script = String::from_utf8_lossy(&script.stdout);
    // One sample per paragraph: a header line, then one line per frame, innermost first.
    let mut in_fib = 0;
    let mut walked = 0;
    for sample in script.split("\n\n") {
        let frames: Vec<&str> = sample.lines().skip(1).map(str::trim).collect();
        if !frames.first().is_some_and(|f| f.contains(" fib+")) {
            continue;
        }
        in_fib += 1;
        // Innermost fib, its callers (fib), then main: each frame found by the CFI of the one
        // below it.
        let callers = &frames[1..];
        let fibs = callers.iter().take_while(|f| f.contains(" fib+")).count();
        if callers.get(fibs).is_some_and(|f| f.contains(" main+")) {
            walked += 1;
        }
    }
    assert!(
        in_fib >= 20 && walked * 2 > in_fib,
        "{walked} of {in_fib} samples in fib walked to main:\n{}",
        &script[..script.len().min(4000)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sets a breakpoint on every instance of the `print` helper (a generic Rust function).
const GDB_BREAK_ON_PRINT_HELPER: &str = r#"
import gdb, re
out = gdb.execute("info functions print_helper", to_string=True)
for m in re.finditer(r"fn (jitvm::jit::runtime::print_helper<.*>)\(", out):
    gdb.Breakpoint("'" + m.group(1) + "'")
"#;

#[test]
fn gdb_backtrace_from_a_helper_names_compiled_functions_and_freed_code_leaves() {
    if !have("gdb", "JITMEM_REQUIRE_GDB") {
        return;
    }
    let dir = scratch("gdb");
    std::fs::write(dir.join("fib.jvm"), fib_source(4, true)).unwrap();
    std::fs::write(dir.join("break.py"), GDB_BREAK_ON_PRINT_HELPER).unwrap();
    let output = run(Command::new("gdb")
        .current_dir(&dir)
        .args(["-batch", "-nx", "-x", "break.py", "-ex", "run", "-ex", "bt"])
        .args(["-ex", "up"])
        .args(["-ex", "set $compiled = $pc", "-ex", "info symbol $compiled"])
        // The run ends: the engine and its code are freed before the process exits.
        .args(["-ex", "delete", "-ex", "break _exit", "-ex", "continue"])
        .args(["-ex", "echo after-free:\\n", "-ex", "maint info jit"])
        .args(["-ex", "info symbol $compiled", "-ex", "kill"])
        .arg("--args")
        .arg(env!("CARGO_BIN_EXE_jitvm"))
        .args(["run", "--jit-eager", "--gdb-jit", "fib.jvm"]));
    let text = String::from_utf8_lossy(&output.stdout);
    // The backtrace: frames #0, #1, ... (the frame line `up` prints after it is not part of it).
    let frames: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .enumerate()
        .take_while(|(i, l)| l[1..].split_whitespace().next() == Some(&i.to_string()))
        .map(|(_, l)| l)
        .collect();
    let at = |name: &str| frames.iter().position(|f| f.contains(name));
    let helper = at("print_helper").unwrap_or_else(|| panic!("no helper frame:\n{text}"));
    // fib(4) prints its first leaf at fib(1): fib(4) > fib(3) > fib(2) > fib(1).
    let fibs: Vec<usize> = (0..frames.len())
        .filter(|&i| frames[i].contains(" in fib ()"))
        .collect();
    assert_eq!(fibs.len(), 4, "{text}");
    assert_eq!(fibs[0], helper + 1, "{text}");
    let main = at(" in main ()").unwrap_or_else(|| panic!("no bytecode main frame:\n{text}"));
    assert_eq!(main, fibs[3] + 1, "{text}");
    let trampoline = at("jitvm_trampoline").unwrap_or_else(|| panic!("no trampoline:\n{text}"));
    assert_eq!(trampoline, main + 1, "{text}");
    // The walk goes on through the Rust frames that entered compiled code to the process's
    // `main`: `jitvm run` runs the program on its main thread (its stack is large enough).
    let below = &frames[trampoline + 1..];
    assert!(
        below.iter().any(|f| f.contains("jitvm::tier::EngineRef")),
        "{text}"
    );
    // gdb ends a backtrace at the program's main function (`backtrace past-main` is off):
    // for a Rust program that is `jitvm::main`.
    assert!(
        below.last().is_some_and(|f| f.contains("jitvm::main ")),
        "the backtrace does not end at jitvm's main:\n{text}"
    );
    let (before, after) = text
        .split_once("after-free:")
        .unwrap_or_else(|| panic!("the run did not end:\n{text}"));
    assert!(
        before.contains("fib + "),
        "gdb did not know the compiled fib:\n{text}"
    );
    assert!(
        after.contains("No symbol matches"),
        "freed code still named:\n{text}"
    );
    assert!(
        !after.contains("in-memory"),
        "gdb still lists JIT objects:\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes nothing: panics, inside the `print` helper that compiled code called.
#[cfg(not(windows))]
struct PanickingWriter;

#[cfg(not(windows))]
impl std::io::Write for PanickingWriter {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        panic!("PanickingWriter: print from compiled code");
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs fib(4) (printing at its leaves) eagerly compiled, into a writer that panics; returns
/// how the run ended and the backtrace the panic hook captured on the VM thread.
#[cfg(not(windows))]
fn panic_in_helper(debug: Option<Arc<DebugInfo>>) -> (String, String) {
    static CAPTURED: Mutex<Option<String>> = Mutex::new(None);
    static HOOK: std::sync::Once = std::sync::Once::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("jitvm") {
                let trace = std::backtrace::Backtrace::force_capture().to_string();
                *CAPTURED.lock().unwrap_or_else(|p| p.into_inner()) = Some(trace);
            } else {
                default(info);
            }
        }));
    });
    *CAPTURED.lock().unwrap() = None;
    let source = fib_source(4, true);
    let (module, _) = jitvm::load_module(source.as_bytes()).unwrap();
    let program = jitvm::verify::verify(&module).unwrap();
    let options = RunOptions {
        jit: JitMode::Eager,
        debug,
        ..RunOptions::default()
    };
    let report = vm::run(&program, &options, PanickingWriter);
    assert_eq!(report.notice, None, "the JIT must run");
    assert_eq!(
        report.jit.failures,
        Vec::<String>::new(),
        "every function compiles"
    );
    let trace = CAPTURED
        .lock()
        .unwrap()
        .take()
        .expect("the writer panicked");
    (format!("{:?}", report.ended), trace)
}

/// The helper catches the panic (the run ends with an internal error, the process goes on),
/// and with the code's CFI registered the backtrace taken in the panic walks through the
/// compiled frames to the Rust frames below them; without it, the walk stops at the first
/// compiled frame. (Not on Windows: see the next test.)
#[cfg(not(windows))]
#[test]
fn panic_in_a_helper_is_caught_with_its_backtrace_through_compiled_frames() {
    let debug = Arc::new(DebugInfo::new().with_unwind_registration());
    let (ended, trace) = panic_in_helper(Some(debug));
    assert!(!ended.contains("Returned"), "{ended}");
    let helper = trace
        .find("print_helper")
        .unwrap_or_else(|| panic!("{trace}"));
    let root = trace
        .rfind("__rust_begin_short_backtrace")
        .unwrap_or_else(|| panic!("the walk stopped early:\n{trace}"));
    assert!(helper < root, "{trace}");

    let (_, unregistered) = panic_in_helper(None);
    assert!(unregistered.contains("print_helper"), "{unregistered}");
    assert!(
        !unregistered.contains("__rust_begin_short_backtrace"),
        "without CFI the unwinder cannot pass compiled frames, yet:\n{unregistered}"
    );
}

/// Windows' unwinder reads `RUNTIME_FUNCTION` tables, not DWARF CFI: jitmem refuses to register
/// CFI with it, so jitvm's JIT does not start (registering its runtime stubs fails first), says
/// why once, and the program is interpreted (the run is the same), instead of running code the
/// unwinder cannot walk. Describing jitvm's frames with `UNWIND_INFO`
/// (`jitmem::debuginfo::WindowsFunction`) is not done.
#[cfg(windows)]
#[test]
fn unwind_registration_is_refused_on_windows_and_the_code_stays_interpreted() {
    let source = fib_source(10, false);
    let (module, _) = jitvm::load_module(source.as_bytes()).unwrap();
    let program = jitvm::verify::verify(&module).unwrap();
    let options = RunOptions {
        jit: JitMode::Eager,
        debug: Some(Arc::new(DebugInfo::new().with_unwind_registration())),
        ..RunOptions::default()
    };
    let mut out = Vec::new();
    let report = vm::run(&program, &options, &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), "55\n");
    assert_eq!(report.jit.compiled_functions, 0);
    let notice = report.notice.unwrap_or_default();
    assert!(
        notice.contains("registering the runtime stubs"),
        "{notice:?}"
    );
}
