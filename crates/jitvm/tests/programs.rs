//! Runs every program in `programs/` and checks its output.
//!
//! Convention: `NAME.jvm` with `NAME.out` (the exact stdout) and header comments in the
//! `.jvm`: `; expect-exit: N` (default 0), `; expect-stderr: LINE` (default: nothing) and
//! `; args: ...` (extra `jitvm run` options: `--max-steps N`, `--max-depth N`, `--exit-code`).
//! Each program runs in-process through the library and through the built binary.

mod common;

use std::path::{Path, PathBuf};

use jitvm::{Limits, PlainEngine, Stop, interp};

struct Case {
    path: PathBuf,
    source: String,
    stdout: String,
    exit: i32,
    stderr: String,
    args: Vec<String>,
}

fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("programs")
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for path in common::program_paths() {
        let source = std::fs::read_to_string(&path).unwrap();
        let stdout = std::fs::read_to_string(path.with_extension("out"))
            .unwrap_or_else(|_| panic!("{} has no .out file", path.display()));
        let header = |key: &str| {
            source
                .lines()
                .find_map(|l| l.strip_prefix(&format!("; {key}:")))
                .map(|v| v.trim().to_owned())
        };
        cases.push(Case {
            exit: header("expect-exit").map_or(0, |v| v.parse().unwrap()),
            stderr: header("expect-stderr").unwrap_or_default(),
            args: header("args")
                .map(|a| a.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            path,
            source,
            stdout,
        });
    }
    assert!(cases.len() >= 12, "only {} programs", cases.len());
    cases
}

/// Runs a case in-process: (stdout, exit status, stderr line).
fn run_in_process(case: &Case) -> (String, i32, String) {
    let module = jitvm::text::parse(&case.source).unwrap();
    let program = jitvm::verify::verify(&module).unwrap();
    let mut limits = Limits::default();
    let mut exit_code = false;
    let mut args = case.args.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--max-steps" => limits.max_steps = args.next().unwrap().parse().unwrap(),
            "--max-depth" => limits.max_depth = args.next().unwrap().parse().unwrap(),
            "--exit-code" => exit_code = true,
            other => panic!("unknown option {other}"),
        }
    }
    let mut engine = PlainEngine::new(Vec::new());
    let result = interp::run(&program, &mut engine, &limits, true);
    let (exit, stderr) = match result {
        Ok(v) if exit_code => (i32::from((v & 0xff) as u8), String::new()),
        Ok(_) | Err(Stop::Halt) => (0, String::new()),
        Err(Stop::Trap(t)) => (2, interp::trap_message(&program, &t)),
    };
    assert!(engine.stats().interpreted > 0);
    (
        String::from_utf8(engine.into_output()).unwrap(),
        exit,
        stderr,
    )
}

#[test]
fn programs_in_process() {
    for case in cases() {
        let (stdout, exit, stderr) = run_in_process(&case);
        let name = case.path.display();
        assert_eq!(stdout, case.stdout, "{name}: stdout");
        assert_eq!(exit, case.exit, "{name}: exit status");
        assert_eq!(stderr, case.stderr, "{name}: stderr");
    }
}

#[test]
fn programs_through_the_binary() {
    for case in cases() {
        let out = common::jitvm()
            .arg("run")
            .arg(&case.path)
            .args(&case.args)
            .output()
            .unwrap();
        let name = case.path.display();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            case.stdout,
            "{name}: stdout"
        );
        assert_eq!(out.status.code(), Some(case.exit), "{name}: exit status");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end(), case.stderr, "{name}: stderr");
    }
}

#[test]
fn binary_file_runs_like_text() {
    let dir = std::env::temp_dir().join(format!("jitvm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["gcd", "trap_div_zero"] {
        let text = programs_dir().join(format!("{name}.jvm"));
        let bin = dir.join(format!("{name}.jvmb"));
        let st = common::jitvm()
            .arg("asm")
            .arg(&text)
            .arg("-o")
            .arg(&bin)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(jitvm::binary::is_binary(&std::fs::read(&bin).unwrap()));
        let a = common::jitvm().arg("run").arg(&text).output().unwrap();
        let b = common::jitvm()
            .arg("run")
            .arg("--no-jit")
            .arg(&bin)
            .output()
            .unwrap();
        assert_eq!(a.stdout, b.stdout);
        assert_eq!(a.stderr, b.stderr);
        assert_eq!(a.status.code(), b.status.code());
        let check = common::jitvm().arg("check").arg(&bin).output().unwrap();
        assert!(check.status.success());
        assert!(check.stdout.is_empty() && check.stderr.is_empty());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_errors_stats_and_disasm() {
    let dir = std::env::temp_dir().join(format!("jitvm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A parse error: file:line: message, exit 1.
    let bad = dir.join("bad.jvm");
    std::fs::write(&bad, "func main args=0 locals=0\n    frobnicate\nend\n").unwrap();
    for cmd in ["check", "run", "disasm"] {
        let out = common::jitvm().arg(cmd).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim_end(),
            format!("{}:2: unknown opcode `frobnicate`", bad.display())
        );
        assert!(out.stdout.is_empty());
    }

    // A verifier error, mapped back to its line.
    let under = dir.join("under.jvm");
    std::fs::write(
        &under,
        "func main args=0 locals=0\n    load_imm 1\n    add_ii\n    return\nend\n",
    )
    .unwrap();
    let out = common::jitvm().arg("check").arg(&under).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "{}:3: main at 9: stack underflow (needs 2, has 1)",
            under.display()
        )
    );

    // --stats
    let out = common::jitvm()
        .args(["run", "--stats"])
        .arg(programs_dir().join("fib.jvm"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "6765\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("interpreted instructions: "), "{err}");

    // disasm: offsets and depths
    let out = common::jitvm()
        .arg("disasm")
        .arg(programs_dir().join("fib.jvm"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("func fib args=1 locals=1 max_stack=3"),
        "{listing}"
    );
    assert!(listing.contains("     1  [1]  load_imm 2"), "{listing}");
    assert!(
        listing.contains("L18:\n    18  [0]  load_local_0"),
        "{listing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
