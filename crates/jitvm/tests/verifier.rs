//! The verifier rejects each kind of malformed bytecode with its own error variant (modules
//! built by hand as binaries), the parser reports errors with line numbers, and every sample
//! program survives text -> binary -> text.

use std::path::Path;

use jitvm::binary;
use jitvm::bytecode::{Module, Opcode, Operand, RawFunction, encode_insn};
use jitvm::program::{MAX_LOCALS, MAX_STACK};
use jitvm::{Error, Limits, PlainEngine, interp, text, verify::verify};
use proptest::prelude::*;

use Opcode as O;
use Operand as A;

/// Encodes instructions.
fn code(insns: &[(Opcode, Operand)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(op, operand) in insns {
        encode_insn(&mut out, op, operand);
    }
    out
}

fn func(name: &str, args: u32, locals: u32, code: Vec<u8>) -> RawFunction {
    RawFunction {
        name: name.into(),
        args,
        locals,
        code,
    }
}

/// `main` with this code (no args, two locals), plus `two` taking two arguments.
fn main_with(code: Vec<u8>) -> Module {
    Module {
        funcs: vec![
            func("main", 0, 2, code),
            func("two", 2, 2, self::code(&[(O::ReturnNil, A::None)])),
        ],
    }
}

/// Verifies the module after a trip through the binary format (as a hand-built binary).
fn check(module: &Module) -> Result<jitvm::Program, Error> {
    let bytes = binary::encode(module);
    let decoded = binary::decode(&bytes).unwrap();
    assert_eq!(&decoded, module);
    verify(&decoded)
}

fn reject(module: &Module) -> Error {
    let err = check(module).expect_err("the module must be rejected");
    if let Some((func, offset)) = err.location() {
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{func} at {offset}: ")), "{msg}");
    }
    err
}

const RET: (Opcode, Operand) = (O::ReturnNil, A::None);

#[test]
fn unknown_opcode() {
    let mut c = code(&[(O::LoadImm, A::Imm(1)), (O::Pop, A::None)]);
    c.push(0xee);
    assert_eq!(
        reject(&main_with(c)),
        Error::UnknownOpcode {
            func: "main".into(),
            offset: 10,
            byte: 0xee
        }
    );
    // Even in unreachable code.
    let mut c = code(&[RET]);
    c.push(0x00);
    assert!(matches!(
        reject(&main_with(c)),
        Error::UnknownOpcode {
            offset: 1,
            byte: 0,
            ..
        }
    ));
}

#[test]
fn truncated_operand() {
    for op in [
        O::LoadImm,
        O::LoadLocal,
        O::StoreLocal,
        O::Jump,
        O::JumpIfFalse,
        O::Call,
    ] {
        let mut c = code(&[RET]);
        c.push(op.byte());
        c.push(0);
        assert_eq!(
            reject(&main_with(c)),
            Error::TruncatedOperand {
                func: "main".into(),
                offset: 1,
                opcode: op.name()
            }
        );
    }
}

#[test]
fn jump_out_of_function() {
    for target in [6, 100, u32::MAX] {
        let c = code(&[(O::Jump, A::Target(target)), RET]);
        assert_eq!(
            reject(&main_with(c)),
            Error::JumpOutOfFunction {
                func: "main".into(),
                offset: 0,
                target
            }
        );
    }
}

#[test]
fn jump_into_instruction() {
    let c = code(&[(O::LoadImm, A::Imm(0)), (O::JumpIfFalse, A::Target(3)), RET]);
    assert_eq!(
        reject(&main_with(c)),
        Error::JumpIntoInstruction {
            func: "main".into(),
            offset: 9,
            target: 3
        }
    );
}

#[test]
fn stack_underflow() {
    for (insns, offset, needs, depth) in [
        (vec![(O::Add, A::None), RET], 0, 2, 0),
        (
            vec![(O::LoadImm, A::Imm(1)), (O::Mul, A::None), RET],
            9,
            2,
            1,
        ),
        (vec![(O::Pop, A::None), RET], 0, 1, 0),
        (vec![(O::Dup, A::None), RET], 0, 1, 0),
        (vec![(O::Print, A::None), RET], 0, 1, 0),
        (vec![(O::Return, A::None)], 0, 1, 0),
        (vec![(O::StoreLocal, A::Local(0)), RET], 0, 1, 0),
        (vec![(O::JumpIfFalse, A::Target(5)), RET], 0, 1, 0),
        (vec![(O::Neg, A::None), RET], 0, 1, 0),
    ] {
        assert_eq!(
            reject(&main_with(code(&insns))),
            Error::StackUnderflow {
                func: "main".into(),
                offset,
                needs,
                depth
            }
        );
    }
}

#[test]
fn stack_mismatch_where_paths_merge() {
    let c = code(&[
        (O::LoadImm, A::Imm(1)),         // 0
        (O::JumpIfFalse, A::Target(23)), // 9
        (O::LoadImm, A::Imm(5)),         // 14
        RET,                             // 23: depth 0 by the jump, 1 by falling through
    ]);
    let err = reject(&main_with(c));
    assert!(
        matches!(&err, Error::StackMismatch { offset: 23, expected, found, .. } if expected + found == 1),
        "{err:?}"
    );
    // A loop that grows the stack on every turn.
    let c = code(&[(O::LoadImm, A::Imm(1)), (O::Jump, A::Target(0))]);
    assert!(matches!(
        reject(&main_with(c)),
        Error::StackMismatch {
            offset: 0,
            expected: 0,
            found: 1,
            ..
        }
    ));
}

#[test]
fn stack_overflow() {
    let mut insns = vec![(O::LoadImm, A::Imm(7)); MAX_STACK as usize];
    insns.push(RET);
    assert!(
        check(&main_with(code(&insns))).is_ok(),
        "MAX_STACK itself is fine"
    );
    let mut insns = vec![(O::LoadImm, A::Imm(7)); MAX_STACK as usize + 1];
    insns.push(RET);
    assert_eq!(
        reject(&main_with(code(&insns))),
        Error::StackOverflow {
            func: "main".into(),
            offset: 9 * MAX_STACK,
            limit: MAX_STACK
        }
    );
}

#[test]
fn local_out_of_range() {
    // main has 2 locals; `one` has 1.
    for (insns, index) in [
        (vec![(O::LoadLocal, A::Local(2)), (O::Return, A::None)], 2),
        (
            vec![
                (O::LoadImm, A::Imm(0)),
                (O::StoreLocal, A::Local(65535)),
                RET,
            ],
            65535,
        ),
    ] {
        let err = reject(&main_with(code(&insns)));
        assert!(
            matches!(&err, Error::LocalOutOfRange { func, index: i, locals: 2, .. } if func == "main" && *i == index),
            "{err:?}"
        );
    }
    for (op, index) in [(O::LoadLocal0, 0), (O::LoadLocal1, 1)] {
        let mut m = main_with(code(&[RET]));
        m.funcs.push(func(
            "one",
            0,
            index,
            code(&[(op, A::None), (O::Return, A::None)]),
        ));
        assert_eq!(
            reject(&m),
            Error::LocalOutOfRange {
                func: "one".into(),
                offset: 0,
                index,
                locals: index
            }
        );
    }
}

#[test]
fn unknown_callee() {
    let c = code(&[(O::Call, A::Func(2)), (O::Return, A::None)]);
    assert_eq!(
        reject(&main_with(c)),
        Error::UnknownCallee {
            func: "main".into(),
            offset: 0,
            callee: 2
        }
    );
}

#[test]
fn call_with_wrong_argument_count() {
    let c = code(&[
        (O::LoadImm, A::Imm(1)),
        (O::Call, A::Func(1)),
        (O::Return, A::None),
    ]);
    assert_eq!(
        reject(&main_with(c)),
        Error::CallArgCount {
            func: "main".into(),
            offset: 9,
            callee: "two".into(),
            args: 2,
            depth: 1
        }
    );
    // Exactly the declared count pops them all: one value left for `return`, none for `add`.
    let ok = code(&[
        (O::LoadImm, A::Imm(1)),
        (O::LoadImm, A::Imm(2)),
        (O::Call, A::Func(1)),
        (O::Return, A::None),
    ]);
    assert!(check(&main_with(ok)).is_ok());
    let c = code(&[
        (O::LoadImm, A::Imm(1)),
        (O::LoadImm, A::Imm(2)),
        (O::Call, A::Func(1)),
        (O::Add, A::None),
        (O::Return, A::None),
    ]);
    assert!(matches!(
        reject(&main_with(c)),
        Error::StackUnderflow { offset: 23, .. }
    ));
}

#[test]
fn loop_header_with_values_on_the_stack() {
    let c = code(&[
        (O::LoadImm, A::Imm(1)),
        (O::LoopHeader, A::None),
        (O::Return, A::None),
    ]);
    assert_eq!(
        reject(&main_with(c)),
        Error::LoopHeaderStack {
            func: "main".into(),
            offset: 9,
            depth: 1
        }
    );
}

#[test]
fn falls_off_the_end() {
    let c = code(&[(O::LoadImm, A::Imm(1)), (O::Pop, A::None)]);
    assert_eq!(
        reject(&main_with(c)),
        Error::FallsOffEnd {
            func: "main".into(),
            offset: 9
        }
    );
    // Through the not-taken side of a branch.
    let c = code(&[
        (O::LoadImm, A::Imm(0)),
        (O::JumpIfFalse, A::Target(15)),
        RET,
        (O::LoopHeader, A::None),
    ]);
    assert_eq!(
        reject(&main_with(c)),
        Error::FallsOffEnd {
            func: "main".into(),
            offset: 15
        }
    );
    // Unreachable trailing code after a return is fine, as is a call at the end of a path
    // that returns.
    let c = code(&[RET, (O::LoadImm, A::Imm(1))]);
    assert!(check(&main_with(c)).is_ok());
}

#[test]
fn header_checks() {
    let mut m = main_with(code(&[RET]));
    m.funcs.push(func("f", 2, 1, code(&[RET])));
    assert_eq!(
        reject(&m),
        Error::LocalsBelowArgs {
            func: "f".into(),
            args: 2,
            locals: 1
        }
    );
    let mut m = main_with(code(&[RET]));
    m.funcs.push(func("f", 0, MAX_LOCALS + 1, code(&[RET])));
    assert_eq!(
        reject(&m),
        Error::TooManyLocals {
            func: "f".into(),
            locals: MAX_LOCALS + 1,
            limit: MAX_LOCALS
        }
    );
    let mut m = main_with(code(&[RET]));
    m.funcs.push(func("f", 0, MAX_LOCALS, code(&[RET])));
    assert!(check(&m).is_ok(), "MAX_LOCALS itself is fine");
    let mut m = main_with(code(&[RET]));
    m.funcs.push(func("f", 0, 0, vec![]));
    assert_eq!(reject(&m), Error::EmptyFunction { func: "f".into() });
    let mut m = main_with(code(&[RET]));
    m.funcs.push(func("two", 0, 0, code(&[RET])));
    assert_eq!(reject(&m), Error::DuplicateName { func: "two".into() });
}

#[test]
fn main_checks() {
    let mut m = main_with(code(&[RET]));
    m.funcs[0].name = "start".into();
    assert_eq!(reject(&m), Error::MissingMain);
    let mut m = main_with(code(&[RET]));
    m.funcs[0].args = 1;
    assert_eq!(reject(&m), Error::MainHasArgs { args: 1 });
    assert_eq!(reject(&Module::default()), Error::MissingMain);
}

#[test]
fn verified_program_facts() {
    let m = text::parse(
        "func main args=0 locals=1\n load_imm 1\n jump_if_false l\n load_imm 2\n pop\n\
         l:\n return_nil\n load_imm 3\n return\nend\n",
    )
    .unwrap();
    let p = verify(&m).unwrap();
    let f = &p.functions()[0];
    assert_eq!(f.max_stack(), 1);
    assert_eq!(f.code().len(), 7);
    assert_eq!((f.offset_of(4), f.offset_of(5)), (24, 25));
    assert_eq!(f.depth_at(4), Some(0));
    assert!(f.is_jump_target(4));
    assert!(!f.is_jump_target(3));
    assert_eq!(f.depth_at(5), None, "unreachable");
    assert_eq!(f.code()[1], jitvm::Insn::JumpIfFalse(4));
}

// ---- parser errors ----

fn parse_err(src: &str) -> Error {
    text::parse(src).expect_err(src)
}

#[test]
fn parser_errors_have_line_numbers() {
    let cases: Vec<(&str, &str)> = vec![
        (
            "func main args=0 locals=0\n\n  frob\nend\n",
            "3: unknown opcode `frob`",
        ),
        (
            "func main args=0 locals=0\n load_imm x1\nend\n",
            "2: bad operand for `load_imm`: `x1` is not a 64-bit integer",
        ),
        (
            "func main args=0 locals=0\n load_imm 9223372036854775808\nend\n",
            "2: bad operand for `load_imm`: `9223372036854775808` is not a 64-bit integer",
        ),
        (
            "func main args=0 locals=0\n load_imm\nend\n",
            "2: bad operand for `load_imm`: missing operand",
        ),
        (
            "func main args=0 locals=0\n add_ii 3\nend\n",
            "2: bad operand for `add_ii`: takes no operand, got `3`",
        ),
        (
            "func main args=0 locals=0\n load_local 65536\nend\n",
            "2: bad operand for `load_local`: `65536` is not a local index (0 to 65535)",
        ),
        (
            "func main args=0 locals=0\n load_local 1 2\nend\n",
            "2: bad operand for `load_local`: unexpected `2`",
        ),
        (
            "func main args=0 locals=0\n jump nowhere\nend\n",
            "2: unknown label `nowhere`",
        ),
        (
            "func main args=0 locals=0\n\n call nobody\nend\n",
            "3: unknown function `nobody`",
        ),
        (
            "func main args=0 locals=0\n return_nil\nend\nfunc main args=0 locals=0\n return_nil\nend\n",
            "4: duplicate function `main`",
        ),
        (
            "func main args=0 locals=0\na:\n return_nil\na: return_nil\nend\n",
            "4: duplicate label `a`",
        ),
        (
            "func main args=0 locals=0\n return_nil\n",
            "1: function `main` has no `end`",
        ),
        (
            "func main args=0 locals=0\n return_nil\nfunc f args=0 locals=0\nend\n",
            "1: function `main` has no `end`",
        ),
        (
            "func f args=0 locals=0\n return_nil\nend\n; the end\n",
            "4: no function `main`",
        ),
        (
            "; main\nfunc main args=1 locals=1\n return_nil\nend\n",
            "2: `main` must take no arguments (it declares 1)",
        ),
        ("  load_imm 1\n", "1: `load_imm` outside a function"),
        ("end\n", "1: `end` outside a function"),
        (
            "func main args=0\nend\n",
            "1: expected `func NAME args=N locals=M`",
        ),
        (
            "func main args=0 locals=0 frames=2\nend\n",
            "1: unknown attribute `frames`: expected `func NAME args=N locals=M`",
        ),
        (
            "func 9main args=0 locals=0\nend\n",
            "1: invalid function name `9main`",
        ),
        (
            "func main args=0 locals=0\n return_nil\nend extra\n",
            "3: unexpected `extra` after `end`",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(parse_err(src).to_string(), want, "{src}");
    }
    assert!(matches!(parse_err("frob\n"), Error::Syntax { line: 1, .. }));
    let err = text::parse_bytes(b"func main args=0 locals=0\n\xff\nend\n").unwrap_err();
    assert_eq!(err.to_string(), "2: invalid UTF-8");
}

#[test]
fn parser_accepts_the_format() {
    let m = text::parse(
        "; comment\n\nfunc   main   locals=2 args=0   ; reordered\nstart: load_imm -0x10 ; hex\n \
         load_imm +3\n call later\n jump_if_false start\n return_nil\nend\n\
         func later args=2 locals=2\n load_local_1\n return\nend",
    )
    .unwrap();
    assert_eq!(m.funcs.len(), 2);
    let p = verify(&m).unwrap();
    let mut e = PlainEngine::new(Vec::new());
    assert_eq!(interp::run(&p, &mut e, &Limits::default(), false), Ok(0));
}

#[test]
fn verifier_errors_map_to_lines() {
    let src = "func main args=0 locals=1\n load_imm 1\n\n load_local 3\n return\nend\n";
    let (m, lines) = text::parse_with_lines(src).unwrap();
    let err = verify(&m).unwrap_err();
    assert!(matches!(err, Error::LocalOutOfRange { offset: 9, .. }));
    assert_eq!(lines.line_of_error(&err), Some(4));
}

// ---- round trip ----

fn programs() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jvm"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn text_binary_text_round_trip() {
    let all = programs();
    assert!(all.len() >= 12);
    for (name, src) in all {
        let a = text::parse(&src).unwrap();
        let bytes = binary::encode(&a);
        let b = binary::decode(&bytes).unwrap();
        assert_eq!(a, b, "{name}: binary round trip");
        let printed = text::print(&b).unwrap();
        let c = text::parse(&printed).unwrap_or_else(|e| panic!("{name}: {e}\n{printed}"));
        assert_eq!(a, c, "{name}: text round trip\n{printed}");
        assert_eq!(
            text::print(&c).unwrap(),
            printed,
            "{name}: printing is stable"
        );
        assert_eq!(binary::encode(&c), bytes);
        verify(&c).unwrap();
    }
}

#[test]
fn printer_rejects_undecodable_code() {
    let m = main_with(vec![0xee]);
    assert!(matches!(text::print(&m), Err(Error::UnknownOpcode { .. })));
    let m = main_with(code(&[(O::Jump, A::Target(2)), RET]));
    assert!(matches!(
        text::print(&m),
        Err(Error::JumpIntoInstruction { .. })
    ));
}

// ---- robustness: corrupted binaries never panic ----

fn sample_modules() -> &'static [Module] {
    static SAMPLES: std::sync::OnceLock<Vec<Module>> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(|| {
        programs()
            .into_iter()
            .map(|(_, src)| text::parse(&src).unwrap())
            .collect()
    })
}

fn try_everything(bytes: &[u8]) {
    let Ok(module) = binary::decode(bytes) else {
        return;
    };
    let _ = text::print(&module);
    if let Ok(program) = verify(&module) {
        let _ = jitvm::disasm::listing(&module, &program);
        let mut e = PlainEngine::new(std::io::sink());
        let limits = Limits {
            max_depth: 64,
            max_steps: 2_000,
        };
        let _ = interp::run(&program, &mut e, &limits, true);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn corrupted_binaries_never_panic(
        which in 0usize..100,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let samples = sample_modules();
        let mut bytes = binary::encode(&samples[which % samples.len()]);
        for (at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        try_everything(&bytes);
    }

    #[test]
    fn corrupted_code_never_panics(
        which in 0usize..100,
        edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        let samples = sample_modules();
        let mut module = samples[which % samples.len()].clone();
        for (f, at, byte) in edits {
            let n = module.funcs.len();
            let code = &mut module.funcs[f % n].code;
            let i = at % code.len();
            code[i] = byte;
        }
        try_everything(&binary::encode(&module));
    }

    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = binary::MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&body);
        try_everything(&bytes);
        let _ = text::parse_bytes(&body);
    }
}
