//! Robustness as a user meets it: running out of executable memory, deep recursion with wide
//! frames, header errors, hostile tokens and oversized inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `jitvm` binary; under an emulator (`JITMEM_TEST_RUNNER`) it runs through it.
fn jitvm() -> Command {
    let runner = std::env::var("JITMEM_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_jitvm"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_jitvm")),
    }
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jitvm-robust-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `jitvm check FILE`: (exit status, stderr).
fn check(file: &Path) -> (Option<i32>, String) {
    let out = jitvm().arg("check").arg(file).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
    )
}

#[test]
fn header_errors_carry_the_line() {
    let dir = scratch("headers");
    let cases = [
        (
            "args_above_locals",
            "func main args=0 locals=0\n    return_nil\nend\n\nfunc f args=2 locals=1\n    return_nil\nend\n",
            "5: f: 1 locals is fewer than its 2 arguments",
        ),
        (
            "empty",
            "func main args=0 locals=0\n    return_nil\nend\nfunc f args=0 locals=0\nend\n",
            "4: f: empty function",
        ),
        (
            "too_many_locals",
            "; a comment\nfunc main args=0 locals=70000\n    return_nil\nend\n",
            "2: main: 70000 locals is above the limit of 65535",
        ),
    ];
    for (name, source, message) in cases {
        let file = dir.join(format!("{name}.jvm"));
        std::fs::write(&file, source).unwrap();
        let (code, stderr) = check(&file);
        assert_eq!(code, Some(1), "{name}");
        assert_eq!(stderr, format!("{}:{message}", file.display()), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_megabyte_token_is_not_echoed() {
    let dir = scratch("token");
    let huge = "A".repeat(1 << 20);
    let cases = [
        format!("func main args=0 locals=0\n    {huge}\nend\n"),
        format!("func main args=0 locals=0\n    load_imm {huge}\n    return\nend\n"),
        format!("func main args=0 locals=0\n    call {huge}\n    return\nend\n"),
        format!(
            "func {huge} args=0 locals=0\n    return_nil\nend\nfunc {huge} args=0 locals=0\n    return_nil\nend\n"
        ),
        format!("func main args=0 locals=0 {huge}=1\n    return_nil\nend\n"),
    ];
    for (i, source) in cases.iter().enumerate() {
        let file = dir.join(format!("huge{i}.jvm"));
        std::fs::write(&file, source).unwrap();
        let (code, stderr) = check(&file);
        assert_eq!(code, Some(1), "case {i}");
        assert!(
            stderr.len() < 400,
            "case {i}: {} bytes of message: {}...",
            stderr.len(),
            &stderr[..200]
        );
        assert!(stderr.contains("AAAA..."), "case {i}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn control_bytes_are_escaped() {
    let dir = scratch("control");
    let cases = [
        "func main args=0 locals=0\n    frob\x1b[31mnicate\x07\nend\n",
        "func main args=0 locals=0\n    load_imm 12\x1b[2J\n    return\nend\n",
        "func main args=0 locals=0 \x01=2\n    return_nil\nend\n",
        "\x1b]0;title\x07\n",
    ];
    for (i, source) in cases.iter().enumerate() {
        let file = dir.join(format!("ctl{i}.jvm"));
        std::fs::write(&file, source).unwrap();
        let (code, stderr) = check(&file);
        assert_eq!(code, Some(1), "case {i}");
        assert!(
            !stderr.chars().any(char::is_control),
            "case {i}: raw control bytes in {stderr:?}"
        );
        assert!(stderr.contains("\\u{"), "case {i}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_oversized_input_is_refused() {
    let dir = scratch("size");
    let file = dir.join("big.jvm");
    // A sparse file: the size without writing 64 MiB.
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(jitvm::MAX_INPUT as u64 + 1).unwrap();
    drop(f);
    let (code, stderr) = check(&file);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("above the limit of {} bytes", jitvm::MAX_INPUT)),
        "{stderr}"
    );
    let exactly = std::fs::File::create(&file).unwrap();
    exactly.set_len(16).unwrap();
    drop(exactly);
    let (_, stderr) = check(&file);
    assert!(!stderr.contains("above the limit"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();

    let bytes = vec![b' '; jitvm::MAX_INPUT + 1];
    assert_eq!(
        jitvm::load_module(&bytes).unwrap_err(),
        jitvm::Error::InputTooLarge {
            len: jitvm::MAX_INPUT + 1,
            limit: jitvm::MAX_INPUT
        }
    );
}
