//! The C and C++ suites (`ctest/`): CMake builds jitmem through `cargo`, then ctest runs the C
//! bad-input test and seed 000's C++ program in its three modes. Without `cmake` the test says
//! so and passes, unless `JITMEM_REQUIRE_CMAKE` is set (CI sets it).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::run;

#[test]
fn c_and_cpp_suites_pass_under_ctest() {
    if !common::have("cmake", "the C and C++ suites were") {
        return;
    }
    let source = env!("CARGO_MANIFEST_DIR");
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cmake");
    run(Command::new("cmake")
        .args(["-S", source, "-B"])
        .arg(&build)
        .arg("-DCMAKE_BUILD_TYPE=Release"));
    run(Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .args(["-j", "2"]));
    let text = run(Command::new("ctest")
        .arg("--test-dir")
        .arg(&build)
        .args(["--output-on-failure", "-V"]));
    assert!(
        text.contains("100% tests passed, 0 tests failed out of 6"),
        "{text}"
    );
    assert!(text.contains("checks passed, 0 failed"), "{text}");
    assert!(text.contains("declarations: all passed"), "{text}");
    assert!(text.contains("document header: all passed"), "{text}");
    assert_eq!(text.matches("ErrorText passed").count(), 3, "{text}");
    assert_eq!(
        text.matches("LivePatch passed (another thread running the code)")
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("LivePatch passed (no other thread: Legacy)"),
        "{text}"
    );
    for mode in ["Legacy", "LuckNoTXM", "LuckTXM"] {
        assert!(text.contains(&format!("{mode}: all passed")), "{text}");
    }
}
