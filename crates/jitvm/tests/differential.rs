//! Differential testing: every program gives the same prints, result and trap in the
//! interpreter, in the JIT with every function compiled up front, and in tiered mode (threshold
//! 1: compiled on first call; threshold 3: loops enter compiled code by on-stack replacement).

mod common;

use jitvm::interp::{self, PlainEngine};
use jitvm::tier::JitMode;
use jitvm::vm::{self, Ended, RunOptions};
use jitvm::{Limits, Program};

fn programs() -> Vec<(String, Program)> {
    let mut out = Vec::new();
    for path in common::program_paths() {
        let source = std::fs::read_to_string(&path).unwrap();
        let module = jitvm::text::parse(&source).unwrap();
        let program = jitvm::verify::verify(&module).unwrap();
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            program,
        ));
    }
    out
}

fn jit(program: &Program, limits: &Limits, mode: JitMode) -> (Vec<u8>, Ended) {
    jit_with(program, limits, mode, true)
}

/// [`jit`], with or without statistics (counting instructions turns inlining off).
fn jit_with(program: &Program, limits: &Limits, mode: JitMode, stats: bool) -> (Vec<u8>, Ended) {
    let options = RunOptions {
        jit: mode,
        limits: *limits,
        stats,
        ..RunOptions::default()
    };
    let mut out = Vec::new();
    let report = vm::run(program, &options, &mut out);
    assert_eq!(report.notice, None, "the JIT must run on this machine");
    assert!(report.jit.failures.is_empty(), "{:?}", report.jit.failures);
    if stats && mode == JitMode::Eager {
        assert_eq!(
            report.jit.compiled_functions as usize,
            program.functions().len(),
            "eager mode compiles every function"
        );
        assert_eq!(report.counters.interpreted, 0);
    }
    (out, report.ended.unwrap())
}

const MODES: [JitMode; 3] = [
    JitMode::Eager,
    JitMode::Tiered { threshold: 1 },
    JitMode::Tiered { threshold: 3 },
];

#[test]
fn example_programs_agree() {
    for (name, program) in programs() {
        for limits in [
            Limits {
                max_depth: 10_000,
                max_steps: 5_000_000,
            },
            Limits {
                max_depth: 50,
                max_steps: 1000,
            },
        ] {
            let expected = common::interpret(&program, &limits);
            for mode in MODES {
                let got = jit(&program, &limits, mode);
                assert_eq!(
                    (String::from_utf8_lossy(&got.0), got.1),
                    (String::from_utf8_lossy(&expected.0), expected.1),
                    "{name} in {mode:?} with {limits:?}"
                );
            }
        }
    }
}

fn program(name: &str) -> Program {
    programs()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .unwrap()
}

#[test]
fn compiled_code_really_runs_and_counts_every_instruction() {
    let program = program("count_loop.jvm");
    let limits = Limits::default();
    let mut engine = PlainEngine::new(Vec::new());
    interp::run(&program, &mut engine, &limits, true).unwrap();
    let total = engine.stats().interpreted;
    assert!(total > 1_000_000);

    let run = |mode| {
        let options = RunOptions {
            jit: mode,
            limits,
            stats: true,
            ..RunOptions::default()
        };
        vm::run(&program, &options, Vec::new())
    };
    let eager = run(JitMode::Eager);
    assert_eq!(eager.counters.interpreted, 0);
    assert_eq!(eager.counters.compiled, total);
    assert_eq!(eager.jit.osr_entries, 0);

    let tiered = run(JitMode::Tiered { threshold: 100 });
    assert_eq!(
        tiered.jit.osr_entries, 1,
        "the loop in main is entered by OSR"
    );
    assert!(tiered.counters.interpreted > 100);
    assert!(tiered.counters.compiled > 1_000_000);
    assert_eq!(
        tiered.counters.interpreted + tiered.counters.compiled,
        total
    );
}

#[test]
fn compiled_code_traps_instead_of_overflowing_the_native_stack() {
    // 1,000 locals: 8 KB frames; 8 MiB of stack holds about a thousand of them, far below the
    // depth limit, so the prologue's stack check must stop the recursion.
    let source = "func main args=0 locals=0\n    load_imm 0\n    call down\n    return\nend\n\nfunc down args=1 locals=1000\n    load_local_0\n    load_imm 1\n    add_ii\n    call down\n    return\nend\n";
    let program = jitvm::verify::verify(&jitvm::text::parse(source).unwrap()).unwrap();
    for mode in MODES {
        let options = RunOptions {
            jit: mode,
            limits: Limits {
                max_depth: 1_000_000,
                max_steps: u64::MAX,
            },
            native_stack: Some(8 << 20),
            ..RunOptions::default()
        };
        let report = vm::run(&program, &options, Vec::new());
        match report.ended.unwrap() {
            Ended::Trapped(t) => assert_eq!(t.kind, jitvm::TrapKind::NativeStack, "{mode:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}

#[test]
fn every_template_on_edge_values_in_every_operand_form() {
    const EDGES: [i64; 7] = [0, 1, -1, i64::MIN, i64::MAX, 7, -7];
    const OPS: [&str; 12] = [
        "add_ii", "sub_ii", "mul_ii", "div_ii", "mod_ii", "lt_ii", "le_ii", "gt_ii", "ge_ii",
        "eq_ii", "ne_ii", "neg_i",
    ];
    let limits = Limits::default();
    for op in OPS {
        for a in EDGES {
            for b in EDGES {
                // Operand forms: local op local (registers), local op constant (immediates),
                // constant op local (swapped), computed op computed (scratch registers),
                // constant op constant (folded), and the result fused into a branch.
                let forms = [
                    "load_local 0\n load_local 1\n",
                    "load_local 0\n load_imm B\n",
                    "load_imm A\n load_local 1\n",
                    "load_local 0\n load_imm 0\n add_ii\n load_local 1\n load_imm 0\n add_ii\n",
                    "load_imm A\n load_imm B\n",
                ];
                for (i, form) in forms.iter().enumerate() {
                    let operands = form
                        .replace('A', &a.to_string())
                        .replace('B', &b.to_string());
                    let apply = if op == "neg_i" { "pop\n neg_i" } else { op };
                    let body = format!(
                        "func main args=0 locals=2\n load_imm {a}\n store_local 0\n load_imm {b}\n store_local 1\n {operands} {apply}\n dup\n print\n jump_if_false zero\n load_imm 1\n print\nzero:\n load_local 0\n print\n return_nil\nend\n"
                    );
                    let program =
                        jitvm::verify::verify(&jitvm::text::parse(&body).unwrap()).unwrap();
                    let expected = common::interpret(&program, &limits);
                    let got = jit(&program, &limits, JitMode::Eager);
                    assert_eq!(got, expected, "{op} with {a}, {b} in form {i}:\n{body}");
                }
            }
        }
    }
}

#[test]
fn every_strategy_and_layout_runs_the_jit() {
    use jitmem::{Config, Layout, Strategy};
    let limits = Limits {
        max_depth: 10_000,
        max_steps: 5_000_000,
    };
    for strategy in [Strategy::Toggle, Strategy::Mirror] {
        for layout in [Layout::PerAllocation, Layout::Pooled] {
            for (name, program) in programs() {
                let expected = common::interpret(&program, &limits);
                for mode in [JitMode::Eager, JitMode::Tiered { threshold: 1 }] {
                    let options = RunOptions {
                        jit: mode,
                        limits,
                        memory: Config::new()
                            .strategy(strategy)
                            .layout(layout)
                            .ignore_environment(),
                        ..RunOptions::default()
                    };
                    let mut out = Vec::new();
                    let report = vm::run(&program, &options, &mut out);
                    assert_eq!(report.notice, None, "{strategy:?}");
                    assert!(report.jit.compiled_functions > 0);
                    assert_eq!(
                        (out, report.ended.unwrap()),
                        expected.clone(),
                        "{name}: {strategy:?} {layout:?} {mode:?}"
                    );
                }
            }
        }
    }
}

/// Division and remainder by constants (compiled as a multiplication by the reciprocal) give
/// the interpreter's results for divisors of both signs near every power of two and dividends
/// at the edges, in every mode.
#[test]
fn division_by_constants_agrees_with_the_interpreter() {
    // -1 is left out: MIN / -1 traps, which would end the run (edge_arith.jvm covers it).
    let mut divisors: Vec<i64> = (1..=20)
        .flat_map(|d| [d, -d])
        .filter(|&d| d != -1)
        .collect();
    for k in [3, 7, 16, 31, 32, 33, 62] {
        for off in [-1i64, 0, 1] {
            let d = (1i64 << k) + off;
            divisors.extend([d, -d]);
        }
    }
    divisors.extend([i64::MAX, i64::MIN, i64::MIN + 1, 1_000_000_007, -641]);
    // `f(n)` prints n / d and n % d for every divisor d (n is unknown when f is compiled).
    let mut f = String::from("func f args=1 locals=1\n");
    for d in &divisors {
        for op in ["div_ii", "mod_ii"] {
            f.push_str(&format!(
                "    load_local_0\n    load_imm {d}\n    {op}\n    print\n"
            ));
        }
    }
    f.push_str("    return_nil\nend\n");
    let mut main = String::from("func main args=0 locals=0\n");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut dividends: Vec<i64> = vec![0, 1, -1, 6, -6, 7, -7, 8, i64::MAX, i64::MIN, i64::MIN + 1];
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        dividends.extend([x as i64, (x as i64) >> (x % 62)]);
    }
    for n in &dividends {
        main.push_str(&format!("    load_imm {n}\n    call f\n    pop\n"));
    }
    main.push_str("    return_nil\nend\n");
    let source = format!("{main}\n{f}");
    let module = jitvm::text::parse(&source).unwrap();
    let program = jitvm::verify::verify(&module).unwrap();
    let limits = Limits::default();
    let expected = common::interpret(&program, &limits);
    assert_eq!(expected.1, Ended::Returned(0), "no trap expected");
    // The interpreter divides by constants with a multiplication too: check it against Rust's
    // own division first.
    let mut reference = String::new();
    for n in &dividends {
        for d in &divisors {
            let q = n.checked_div(*d).unwrap();
            let r = n.checked_rem(*d).unwrap();
            reference.push_str(&format!("{q}\n{r}\n"));
        }
    }
    assert_eq!(String::from_utf8_lossy(&expected.0), reference);
    for mode in MODES {
        let got = jit(&program, &limits, mode);
        assert_eq!(
            (String::from_utf8_lossy(&got.0), got.1),
            (String::from_utf8_lossy(&expected.0), expected.1),
            "{mode:?}"
        );
    }
}

/// Calls of small leaf functions, which the JIT compiles inline: random expression callees
/// (arguments, constants, arithmetic including traps, compares, dup and pop) called with
/// arguments of every operand form (constants, locals, computed values, values spilled under a
/// deep operand stack), under the default limits, a depth limit that only main fits, and a
/// small step budget: the JIT gives the interpreter's prints, result and trap (kind, function,
/// offset) in every mode.
#[test]
fn inlined_leaf_calls_agree_with_the_interpreter() {
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }
    const CONSTS: [i64; 9] = [0, 1, -1, 2, 3, 7, -7, i64::MAX, i64::MIN];
    const BINOPS: [&str; 11] = [
        "add_ii", "sub_ii", "mul_ii", "div_ii", "mod_ii", "lt_ii", "le_ii", "gt_ii", "ge_ii",
        "eq_ii", "ne_ii",
    ];
    // An expression of at most `depth` levels over `args` arguments, pushing one value.
    fn expr(rng: &mut Rng, args: u32, depth: u32, out: &mut String) {
        match if depth == 0 { rng.next(2) } else { rng.next(6) } {
            0 => out.push_str(&format!("    load_local {}\n", rng.next(u64::from(args)))),
            1 => out.push_str(&format!("    load_imm {}\n", CONSTS[rng.next(9) as usize])),
            2 => {
                expr(rng, args, depth - 1, out);
                out.push_str("    neg_i\n");
            }
            3 => {
                expr(rng, args, depth - 1, out);
                out.push_str("    dup\n    pop\n");
            }
            _ => {
                expr(rng, args, depth - 1, out);
                expr(rng, args, depth - 1, out);
                out.push_str(&format!("    {}\n", BINOPS[rng.next(11) as usize]));
            }
        }
    }
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut inlined_somewhere = false;
    for case in 0..300 {
        let leaves = 1 + rng.next(3) as u32;
        let mut source = String::from(
            "func main args=0 locals=2\n    load_imm 5\n    store_local 0\n    load_imm -3\n    store_local 1\n",
        );
        let mut funcs = String::new();
        let mut arity = Vec::new();
        for leaf in 0..leaves {
            let args = 1 + rng.next(3) as u32;
            arity.push(args);
            funcs.push_str(&format!("\nfunc leaf{leaf} args={args} locals={args}\n"));
            let depth = 1 + rng.next(2) as u32;
            expr(&mut rng, args, depth, &mut funcs);
            funcs.push_str("    return\nend\n");
        }
        for _ in 0..(2 + rng.next(4)) {
            let leaf = rng.next(u64::from(leaves)) as usize;
            // A few pending values under the call, so that registers run out and spill.
            let pending = rng.next(5);
            for p in 0..pending {
                source.push_str(&format!("    load_local 0\n    load_imm {p}\n    add_ii\n"));
            }
            for _ in 0..arity[leaf] {
                match rng.next(3) {
                    0 => {
                        source.push_str(&format!("    load_imm {}\n", CONSTS[rng.next(9) as usize]))
                    }
                    1 => source.push_str(&format!("    load_local {}\n", rng.next(2))),
                    _ => source.push_str("    load_local 0\n    load_local 1\n    mul_ii\n"),
                }
            }
            source.push_str(&format!("    call leaf{leaf}\n    print\n"));
            for _ in 0..pending {
                source.push_str("    print\n");
            }
        }
        source.push_str("    load_local 0\n    return\nend\n");
        source.push_str(&funcs);
        let module = jitvm::text::parse(&source).unwrap();
        let program = jitvm::verify::verify(&module).unwrap();
        for limits in [
            Limits::default(),
            Limits {
                max_depth: 1,
                max_steps: u64::MAX,
            },
            Limits {
                max_depth: 100,
                max_steps: 2,
            },
        ] {
            let expected = common::interpret(&program, &limits);
            for mode in MODES {
                // Without --stats: counting instructions turns inlining off.
                let (out, ended) = jit_with(&program, &limits, mode, false);
                assert_eq!(
                    (String::from_utf8_lossy(&out), ended),
                    (String::from_utf8_lossy(&expected.0), expected.1),
                    "case {case} in {mode:?} with {limits:?}:\n{source}"
                );
            }
        }
        inlined_somewhere |= jitvm::jit::inlined_calls(&program) > 0;
    }
    assert!(inlined_somewhere, "no call was compiled inline");
}
