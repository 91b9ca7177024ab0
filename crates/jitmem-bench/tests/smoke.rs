//! Runs the benchmark binary on one peer and two workloads (quick) and checks the table.

use std::process::Command;

#[test]
fn quick_run_prints_a_table_with_numbers() {
    let output = Command::new(env!("CARGO_BIN_EXE_jitmem-bench"))
        .args([
            "--quick",
            "--peers",
            "jitmem-mirror",
            "--workloads",
            "alloc_free,patch",
        ])
        .output()
        .expect("run jitmem-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
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
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| jitmem-mirror |"))
        .unwrap_or_else(|| panic!("no jitmem-mirror row in:\n{stdout}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // ["", "jitmem-mirror", kind, alloc_free, patch, ""]
    assert_eq!(cells.len(), 6, "{row}");
    for cell in &cells[3..5] {
        let number = cell
            .strip_suffix(" ns")
            .unwrap_or_else(|| panic!("cell {cell:?} in {row}"));
        let value: f64 = number
            .replace(',', "")
            .parse()
            .unwrap_or_else(|_| panic!("cell {cell:?} is not a number of ns"));
        assert!(value > 0.0, "{row}");
    }
}
