//! Compiled code calls the runtime's helpers directly (`call rel32`, `bl`) when jitmem can place
//! it within reach of them (Linux, Windows), and through a register otherwise; the run is the same.

use jitvm::tier::{HelperCalls, JitMode};
use jitvm::vm::{self, Ended, RunOptions};

const PRINTS: &str = "func main args=0 locals=0\n    load_imm 7\n    print\n    load_imm 2\n    call twice\n    print\n    load_imm 0\n    return\nend\nfunc twice args=1 locals=1\n    load_local_0\n    load_local_0\n    add_ii\n    return\nend\n";

fn run(memory: jitmem::Config) -> vm::RunReport {
    let program = jitvm::verify::verify(&jitvm::text::parse(PRINTS).unwrap()).unwrap();
    let options = RunOptions {
        jit: JitMode::Eager,
        memory,
        ..RunOptions::default()
    };
    let mut out = Vec::new();
    let report = vm::run(&program, &options, &mut out);
    assert_eq!(report.ended, Ok(Ended::Returned(0)));
    assert_eq!(String::from_utf8(out).unwrap(), "7\n4\n");
    assert_eq!(report.notice, None);
    assert_eq!(report.jit.compiled_functions, 2);
    report
}

/// Linux and Windows place the code near the helpers; elsewhere (Apple) the reason is given.
#[test]
fn helpers_are_called_directly_where_the_code_can_be_placed_near_them() {
    let report = run(jitmem::Config::new());
    let placed = cfg!(any(target_os = "linux", windows));
    match &report.jit.helper_calls {
        HelperCalls::Direct { max_distance } => {
            assert!(placed, "only Linux and Windows place code near an address");
            assert!(*max_distance > 64 << 20, "{max_distance}");
        }
        HelperCalls::Register(why) => {
            assert!(!placed, "Linux and Windows must place the code: {why}");
            assert!(why.contains("Config::near"), "{why}");
        }
        HelperCalls::NoCode => panic!("code was compiled"),
    }
}

/// An arena larger than a direct call's window cannot be placed near the helpers: the code
/// calls them through a register instead, and says why.
#[test]
fn code_that_cannot_be_placed_near_calls_through_a_register() {
    let size = if cfg!(target_arch = "aarch64") {
        512 << 20
    } else {
        5 << 30
    };
    let report = run(jitmem::Config::new().layout(jitmem::Layout::Arena { size }));
    match &report.jit.helper_calls {
        HelperCalls::Register(why) => assert!(!why.is_empty()),
        other => panic!("an arena of {size} bytes cannot be placed near: {other:?}"),
    }
    assert!(
        report
            .jit
            .helper_calls
            .to_string()
            .contains("through a register")
    );
}
