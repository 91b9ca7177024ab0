//! Runs the benchmark binary on a few peers and two workloads (quick) and checks the table.

use std::process::Command;

/// Runs `jitmem-bench --quick` on `peers` and the workloads alloc_free and patch; its stdout.
fn quick_run(peers: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_jitmem-bench"))
        .args([
            "--quick",
            "--peers",
            peers,
            "--workloads",
            "alloc_free,patch",
        ])
        .output()
        .expect("run jitmem-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("| peer | W^X, layout | alloc_free | patch |"),
        "{stdout}"
    );
    stdout
}

/// The alloc_free and patch cells of `peer`'s row.
fn cells<'a>(stdout: &'a str, peer: &str) -> Vec<&'a str> {
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {peer} |")))
        .unwrap_or_else(|| panic!("no {peer} row in:\n{stdout}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // ["", peer, kind, alloc_free, patch, ""]
    assert_eq!(cells.len(), 6, "{row}");
    cells[3..5].to_vec()
}

/// Checks that `cell` is a positive number of nanoseconds.
fn assert_ns(cell: &str, stdout: &str) {
    let number = cell
        .strip_suffix(" ns")
        .unwrap_or_else(|| panic!("cell {cell:?} in {stdout}"));
    let value: f64 = number
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("cell {cell:?} is not a number of ns"));
    assert!(value > 0.0, "{stdout}");
}

#[test]
fn quick_run_prints_a_table_with_numbers() {
    let stdout = quick_run("jitmem-mirror");
    for cell in cells(&stdout, "jitmem-mirror") {
        assert_ns(cell, &stdout);
    }
}

#[test]
fn floors_and_asmjit_have_rows() {
    let stdout = quick_run("floor,mprotect-floor,asmjit-rwx,asmjit-dual");
    for peer in ["floor", "mprotect-floor"] {
        for cell in cells(&stdout, peer) {
            assert_ns(cell, &stdout);
        }
    }
    // Numbers when the build found libasmjit-dev, "unavailable" with its reason otherwise.
    for peer in ["asmjit-rwx", "asmjit-dual"] {
        for cell in cells(&stdout, peer) {
            if cell.starts_with("unavailable") {
                assert!(
                    stdout.contains(&format!("{peer}: unavailable: ")),
                    "{stdout}"
                );
            } else {
                assert_ns(cell, &stdout);
            }
        }
    }
}
