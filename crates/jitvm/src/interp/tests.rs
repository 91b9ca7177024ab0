//! Interpreter tests: edge values per opcode in every operand form the lowering produces, and a
//! plain stack-machine reference interpreter over [`Insn`] that the fast one must match exactly
//! (results, traps, output, instruction counts, steps) on the sample programs and on random
//! programs.

use proptest::prelude::*;

use super::*;
use crate::program::Insn;

const EDGES: [i64; 5] = [0, 1, -1, i64::MIN, i64::MAX];

fn program(src: &str) -> Program {
    let module = crate::text::parse(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    crate::verify::verify(&module).unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn call_f(p: &Program, args: &[i64]) -> Result<i64, Stop> {
    let f = p.functions().iter().position(|f| f.name() == "f").unwrap() as FuncId;
    let mut e = PlainEngine::new(Vec::new());
    call(p, &mut e, &Limits::default(), f, args, 1, false)
}

/// Expected result of a binary opcode, or the trap kind.
fn expect(op: &str, a: i64, b: i64) -> Result<i64, TrapKind> {
    Ok(match op {
        "add_ii" => a.wrapping_add(b),
        "sub_ii" => a.wrapping_sub(b),
        "mul_ii" => a.wrapping_mul(b),
        "div_ii" => {
            if b == 0 {
                return Err(TrapKind::DivisionByZero);
            }
            if a == i64::MIN && b == -1 {
                return Err(TrapKind::IntegerOverflow);
            }
            a / b
        }
        "mod_ii" => {
            if b == 0 {
                return Err(TrapKind::DivisionByZero);
            }
            if b == -1 { 0 } else { a % b }
        }
        "lt_ii" => (a < b) as i64,
        "le_ii" => (a <= b) as i64,
        "gt_ii" => (a > b) as i64,
        "ge_ii" => (a >= b) as i64,
        "eq_ii" => (a == b) as i64,
        "ne_ii" => (a != b) as i64,
        _ => unreachable!(),
    })
}

const BINOPS: [&str; 11] = [
    "add_ii", "sub_ii", "mul_ii", "div_ii", "mod_ii", "lt_ii", "le_ii", "gt_ii", "ge_ii", "eq_ii",
    "ne_ii",
];

#[test]
fn binary_ops_on_edge_values_in_every_form() {
    for op in BINOPS {
        let is_cmp = op.ends_with("_ii")
            && !["add_ii", "sub_ii", "mul_ii", "div_ii", "mod_ii"].contains(&op);
        for a in EDGES {
            for b in EDGES {
                let want = expect(op, a, b);
                // (body, args, byte offset of the operation)
                let mut forms = vec![
                    (
                        format!("load_local 0\n load_local 1\n {op}\n return"),
                        vec![a, b],
                        6,
                    ),
                    (
                        format!("load_local 0\n load_imm {b}\n {op}\n return"),
                        vec![a, 0],
                        12,
                    ),
                    (
                        format!("load_imm {a}\n load_local 1\n {op}\n return"),
                        vec![0, b],
                        12,
                    ),
                    (
                        format!("load_imm {a}\n load_imm {b}\n {op}\n return"),
                        vec![0, 0],
                        18,
                    ),
                    (
                        format!(
                            "load_local_0\n load_local_1\n {op}\n store_local 0\n load_local 0\n return"
                        ),
                        vec![a, b],
                        2,
                    ),
                    (
                        format!(
                            "load_local_0\n dup\n pop\n load_local_1\n {op}\n dup\n store_local 1\n return"
                        ),
                        vec![a, b],
                        4,
                    ),
                ];
                if is_cmp {
                    for (x, y, off) in [
                        ("load_local 0", "load_local 1", 6),
                        ("load_local 0", &*format!("load_imm {b}"), 12),
                        (&*format!("load_imm {a}"), "load_local 1", 12),
                        (&*format!("load_imm {a}"), &*format!("load_imm {b}"), 18),
                    ] {
                        forms.push((
                            format!("{x}\n {y}\n {op}\n jump_if_false no\n load_imm 1\n return\nno:\n load_imm 0\n return"),
                            vec![if x.starts_with("load_imm") { 0 } else { a }, if y.starts_with("load_imm") { 0 } else { b }],
                            off,
                        ));
                    }
                }
                for (body, args, offset) in forms {
                    let src = format!(
                        "func main args=0 locals=0\n return_nil\nend\nfunc f args=2 locals=2\n {body}\nend\n"
                    );
                    let p = program(&src);
                    let got = call_f(&p, &args);
                    let want = want.map_err(|kind| {
                        Stop::Trap(Trap {
                            kind,
                            func: 1,
                            offset,
                        })
                    });
                    assert_eq!(got, want, "{op} {a} {b}\n{src}");
                }
            }
        }
    }
}

#[test]
fn neg_on_edge_values() {
    for a in EDGES {
        for body in [
            "load_local 0\n neg_i\n return",
            "load_local 0\n neg_i\n store_local 1\n load_local 1\n return",
        ] {
            let p = program(&format!(
                "func main args=0 locals=0\n return_nil\nend\nfunc f args=1 locals=2\n {body}\nend\n"
            ));
            assert_eq!(call_f(&p, &[a]), Ok(a.wrapping_neg()));
        }
        let p = program(&format!(
            "func main args=0 locals=0\n return_nil\nend\nfunc f args=0 locals=0\n load_imm {a}\n neg_i\n return\nend\n"
        ));
        assert_eq!(call_f(&p, &[]), Ok(a.wrapping_neg()));
    }
}

#[test]
fn aliasing_store_keeps_old_values() {
    // x=1, y=2: push x, push y, x <- y + 10 (while the old x is still on the stack), ...
    let p = program(
        "func main args=0 locals=0\n return_nil\nend\n\
         func f args=2 locals=2\n load_local 0\n load_local 1\n load_imm 10\n add_ii\n store_local 0\n \
         load_local 0\n sub_ii\n return\nend\n",
    );
    assert_eq!(call_f(&p, &[1, 2]), Ok(1 - 12));
    let p = program(
        "func main args=0 locals=0\n return_nil\nend\n\
         func f args=2 locals=2\n load_local 0\n dup\n load_local 1\n store_local 0\n add_ii\n \
         load_local 0\n mul_ii\n return\nend\n",
    );
    assert_eq!(call_f(&p, &[3, 5]), Ok((3 + 3) * 5));
}

#[test]
fn halt_and_print_and_counts() {
    let p = program(
        "func main args=0 locals=1\n load_imm 5\n print\n load_imm 7\n call g\n print\n halt\nend\n\
         func g args=1 locals=2\n load_local 0\n load_local 1\n add_ii\n return\nend\n",
    );
    let mut e = PlainEngine::new(Vec::new());
    assert_eq!(run(&p, &mut e, &Limits::default(), true), Err(Stop::Halt));
    assert_eq!(String::from_utf8(e.output().clone()).unwrap(), "5\n7\n");
    assert_eq!(e.stats().interpreted, 10);
    assert_eq!(e.stats().steps_left, u64::MAX - 1);
}

#[test]
fn depth_and_step_limits() {
    let src = "func main args=0 locals=0\n call r\n return\nend\nfunc r args=0 locals=0\n call r\n return\nend\n";
    let p = program(src);
    let mut e = PlainEngine::new(Vec::new());
    let limits = Limits {
        max_depth: 100,
        ..Limits::default()
    };
    let r = run(&p, &mut e, &limits, true);
    assert_eq!(
        r,
        Err(Stop::Trap(Trap {
            kind: TrapKind::CallDepth,
            func: 1,
            offset: 0
        }))
    );
    assert_eq!(e.stats().interpreted, 100);
    assert_eq!(e.stats().steps_left, u64::MAX - 100);
    let limits = Limits {
        max_depth: 100,
        max_steps: 10,
    };
    let r = run(&p, &mut e, &limits, false);
    assert!(matches!(
        r,
        Err(Stop::Trap(Trap {
            kind: TrapKind::StepLimit,
            ..
        }))
    ));
    let limits = Limits {
        max_depth: 0,
        max_steps: 10,
    };
    assert!(matches!(
        run(&p, &mut e, &limits, false),
        Err(Stop::Trap(Trap {
            kind: TrapKind::CallDepth,
            ..
        }))
    ));
    // A jump to itself is backward: it takes steps.
    let p = program("func main args=0 locals=0\nl:\n jump l\nend\n");
    let r = run(
        &p,
        &mut e,
        &Limits {
            max_depth: 10,
            max_steps: 1000,
        },
        true,
    );
    assert_eq!(
        r,
        Err(Stop::Trap(Trap {
            kind: TrapKind::StepLimit,
            func: 0,
            offset: 0
        }))
    );
}

// ---------------------------------------------------------------------------------------------
// Reference interpreter
// ---------------------------------------------------------------------------------------------

/// What a run did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    result: Result<i64, Stop>,
    output: Vec<i64>,
    count: u64,
    steps_left: u64,
}

struct Reference<'a> {
    p: &'a Program,
    limits: Limits,
    steps: u64,
    count: u64,
    output: Vec<i64>,
}

impl Reference<'_> {
    fn trap(&self, kind: TrapKind, func: FuncId, pc: usize) -> Stop {
        let offset = self.p.functions()[func as usize].offset_of(pc);
        Stop::Trap(Trap { kind, func, offset })
    }

    fn call(&mut self, func: FuncId, args: Vec<i64>, depth: u32) -> Result<i64, Stop> {
        let f = &self.p.functions()[func as usize];
        let mut locals = args;
        locals.resize(f.locals() as usize, 0);
        let mut stack: Vec<i64> = Vec::new();
        let mut pc = 0usize;
        loop {
            let insn = f.code()[pc];
            self.count += 1;
            let at = pc;
            pc += 1;
            let bin = |op: fn(i64, i64) -> Result<i64, TrapKind>, stack: &mut Vec<i64>| {
                let b = stack.pop().unwrap();
                let a = stack.pop().unwrap();
                op(a, b).map(|v| stack.push(v))
            };
            let r: Result<(), TrapKind> = match insn {
                Insn::LoadImm(k) => {
                    stack.push(k);
                    Ok(())
                }
                Insn::LoadLocal(x) => {
                    stack.push(locals[x as usize]);
                    Ok(())
                }
                Insn::StoreLocal(x) => {
                    locals[x as usize] = stack.pop().unwrap();
                    Ok(())
                }
                Insn::Add => bin(|a, b| Ok(a.wrapping_add(b)), &mut stack),
                Insn::Sub => bin(|a, b| Ok(a.wrapping_sub(b)), &mut stack),
                Insn::Mul => bin(|a, b| Ok(a.wrapping_mul(b)), &mut stack),
                Insn::Div => bin(|a, b| expect("div_ii", a, b), &mut stack),
                Insn::Mod => bin(|a, b| expect("mod_ii", a, b), &mut stack),
                Insn::Lt => bin(|a, b| Ok((a < b) as i64), &mut stack),
                Insn::Le => bin(|a, b| Ok((a <= b) as i64), &mut stack),
                Insn::Gt => bin(|a, b| Ok((a > b) as i64), &mut stack),
                Insn::Ge => bin(|a, b| Ok((a >= b) as i64), &mut stack),
                Insn::Eq => bin(|a, b| Ok((a == b) as i64), &mut stack),
                Insn::Ne => bin(|a, b| Ok((a != b) as i64), &mut stack),
                Insn::Neg => {
                    let a = stack.pop().unwrap();
                    stack.push(a.wrapping_neg());
                    Ok(())
                }
                Insn::Jump(t) | Insn::JumpIfFalse(t) => {
                    let taken = insn == Insn::Jump(t) || stack.pop().unwrap() == 0;
                    if taken {
                        if (t as usize) <= at {
                            if self.steps == 0 {
                                return Err(self.trap(TrapKind::StepLimit, func, at));
                            }
                            self.steps -= 1;
                        }
                        pc = t as usize;
                    }
                    Ok(())
                }
                Insn::LoopHeader => Ok(()),
                Insn::Call(g) => {
                    if self.steps == 0 {
                        return Err(self.trap(TrapKind::StepLimit, func, at));
                    }
                    self.steps -= 1;
                    if depth >= self.limits.max_depth {
                        return Err(self.trap(TrapKind::CallDepth, func, at));
                    }
                    let n = self.p.functions()[g as usize].args() as usize;
                    let args = stack.split_off(stack.len() - n);
                    let v = self.call(g, args, depth + 1)?;
                    stack.push(v);
                    Ok(())
                }
                Insn::Return => return Ok(stack.pop().unwrap()),
                Insn::ReturnNil => return Ok(0),
                Insn::Pop => {
                    stack.pop().unwrap();
                    Ok(())
                }
                Insn::Dup => {
                    let v = *stack.last().unwrap();
                    stack.push(v);
                    Ok(())
                }
                Insn::Print => {
                    self.output.push(stack.pop().unwrap());
                    Ok(())
                }
                Insn::Halt => return Err(Stop::Halt),
            };
            if let Err(kind) = r {
                return Err(self.trap(kind, func, at));
            }
        }
    }
}

fn reference(p: &Program, limits: Limits) -> Outcome {
    let mut r = Reference {
        p,
        limits,
        steps: limits.max_steps,
        count: 0,
        output: Vec::new(),
    };
    let result = r.call(p.main(), Vec::new(), 1);
    Outcome {
        result,
        output: r.output,
        count: r.count,
        steps_left: r.steps,
    }
}

/// Records prints as values.
struct Recorder {
    output: Vec<i64>,
    counters: Counters,
}

impl Engine for Recorder {
    fn enter(
        &mut self,
        _: &Program,
        _: FuncId,
        _: &mut [i64],
        _: u32,
    ) -> Result<Option<i64>, Stop> {
        Ok(None)
    }
    fn loop_header(
        &mut self,
        _: &Program,
        _: FuncId,
        _: u32,
        _: &mut [i64],
        _: u32,
    ) -> Result<Option<i64>, Stop> {
        Ok(None)
    }
    fn print(&mut self, value: i64) {
        self.output.push(value);
    }
    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

fn fast(p: &Program, limits: Limits, count: bool) -> Outcome {
    let mut e = Recorder {
        output: Vec::new(),
        counters: Counters::default(),
    };
    let result = run(p, &mut e, &limits, count);
    Outcome {
        result,
        output: e.output,
        count: e.counters.interpreted,
        steps_left: e.counters.steps_left,
    }
}

fn check_against_reference(p: &Program, limits: Limits, what: &str) {
    let want = reference(p, limits);
    let got = fast(p, limits, true);
    assert_eq!(got, want, "{what}");
    let got = fast(p, limits, false);
    assert_eq!(
        (got.result, got.output, got.steps_left),
        (want.result, want.output, want.steps_left),
        "{what} (not counting)"
    );
}

#[test]
fn sample_programs_match_reference() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("programs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jvm") {
            let src = std::fs::read_to_string(&path).unwrap();
            let p = program(&src);
            // Skip the long-running benchmarks: limit their steps.
            for limits in [
                Limits {
                    max_depth: 200,
                    max_steps: 20_000,
                },
                Limits {
                    max_depth: 10_000,
                    max_steps: 3,
                },
            ] {
                check_against_reference(&p, limits, &path.display().to_string());
            }
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} programs found");
}

// ---------------------------------------------------------------------------------------------
// Random structured programs
// ---------------------------------------------------------------------------------------------

const LOCALS: u32 = 4;

/// Generates a balanced expression (pushes exactly one value).
fn gen_expr(g: &mut Gen, depth: u32, out: &mut Vec<String>) {
    let choice = if depth > 3 {
        g.next() % 3
    } else {
        g.next() % 9
    };
    match choice {
        0 => out.push(format!("load_local {}", g.next() % LOCALS)),
        1 => out.push(format!("load_imm {}", g.imm())),
        2 => out.push(
            if g.next() % 2 == 0 {
                "load_local_0"
            } else {
                "load_local_1"
            }
            .into(),
        ),
        3 | 4 => {
            gen_expr(g, depth + 1, out);
            gen_expr(g, depth + 1, out);
            out.push(g.binop().into());
        }
        5 => {
            gen_expr(g, depth + 1, out);
            out.push("neg_i".into());
        }
        6 => {
            gen_expr(g, depth + 1, out);
            out.push("dup".into());
            out.push(g.binop().into());
        }
        7 => {
            // a value, then a store into a local while it is pending
            gen_expr(g, depth + 1, out);
            gen_expr(g, depth + 1, out);
            out.push(format!("store_local {}", g.next() % LOCALS));
        }
        _ => {
            gen_expr(g, depth + 1, out);
            gen_expr(g, depth + 1, out);
            out.push("pop".into());
        }
    }
}

fn gen_stmts(g: &mut Gen, depth: u32, out: &mut Vec<String>, labels: &mut u32) {
    let n = 1 + g.next() % 5;
    for _ in 0..n {
        match g.next() % 8 {
            0 | 1 => {
                gen_expr(g, 0, out);
                out.push(format!("store_local {}", g.next() % LOCALS));
            }
            2 => {
                gen_expr(g, 0, out);
                out.push("print".into());
            }
            3 => {
                gen_expr(g, 0, out);
                gen_expr(g, 0, out);
                out.push("call h".into());
                if g.next() % 2 == 0 {
                    out.push("pop".into());
                } else {
                    out.push(format!("store_local {}", g.next() % LOCALS));
                }
            }
            4 if depth < 2 => {
                *labels += 1;
                let l = *labels;
                gen_expr(g, 0, out);
                out.push(format!("jump_if_false else{l}"));
                gen_stmts(g, depth + 1, out, labels);
                out.push(format!("jump end{l}"));
                out.push(format!("else{l}:"));
                gen_stmts(g, depth + 1, out, labels);
                out.push(format!("end{l}:"));
            }
            5 if depth < 2 => {
                // a counted loop on a fresh counter kept on... local 3, bounded by the step limit
                *labels += 1;
                let l = *labels;
                out.push(format!("top{l}:"));
                out.push("loop_header".into());
                gen_expr(g, 0, out);
                out.push(format!("jump_if_false exit{l}"));
                gen_stmts(g, depth + 1, out, labels);
                if g.next() % 2 == 0 {
                    gen_expr(g, 0, out);
                    out.push(format!("jump_if_false top{l}"));
                } else {
                    out.push(format!("jump top{l}"));
                }
                out.push(format!("exit{l}:"));
            }
            6 => {
                gen_expr(g, 0, out);
                gen_expr(g, 0, out);
                out.push(BINOPS[(g.next() % 5 + 5) as usize].into());
                out.push(format!("jump_if_false skip{}", *labels + 1));
                *labels += 1;
                out.push(format!("load_imm {}", g.imm()));
                out.push("print".into());
                out.push(format!("skip{}:", *labels));
            }
            _ => {
                gen_expr(g, 0, out);
                out.push("pop".into());
            }
        }
    }
}

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    /// A binary opcode; division and remainder (which trap on zero) less often.
    fn binop(&mut self) -> &'static str {
        let op = BINOPS[(self.next() % 11) as usize];
        if matches!(op, "div_ii" | "mod_ii") && self.next() % 3 != 0 {
            "add_ii"
        } else {
            op
        }
    }

    fn imm(&mut self) -> i64 {
        match self.next() % 6 {
            0 => EDGES[(self.next() % 5) as usize],
            _ => i64::from(self.next() % 7) - 3,
        }
    }
}

fn random_program(seed: u64) -> String {
    let mut g = Gen(seed | 1);
    let mut labels = 0;
    let mut main = Vec::new();
    for local in 0..LOCALS {
        main.push(format!("load_imm {}", i64::from(g.next() % 9) + 1));
        main.push(format!("store_local {local}"));
    }
    gen_stmts(&mut g, 0, &mut main, &mut labels);
    let mut h = Vec::new();
    gen_stmts(&mut g, 1, &mut h, &mut labels);
    let ret = if g.next() % 2 == 0 {
        "load_local 2\n return"
    } else {
        "return_nil"
    };
    // Either function may have a frame too large for the interpreter's unchecked window (over
    // 256 slots), so that calls and returns cross between the two kinds of frame.
    let mut locals = || if g.next() % 4 == 0 { 300 } else { LOCALS };
    let (main_locals, h_locals) = (locals(), locals());
    format!(
        "func main args=0 locals={main_locals}\n{}\n load_local 1\n return\nend\n\
         func h args=2 locals={h_locals}\n{}\n {ret}\nend\n",
        main.join("\n"),
        h.join("\n")
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(800))]
    #[test]
    fn random_programs_match_reference(seed in any::<u64>(), steps in 0u64..300) {
        let src = random_program(seed);
        let p = program(&src);
        check_against_reference(&p, Limits { max_depth: 50, max_steps: steps }, &src);
        check_against_reference(&p, Limits { max_depth: 3, max_steps: 100_000 }, &src);
    }
}

/// The benchmark loop lowers to four operations per iteration (regression guard for the
/// fusions: compare-and-branch, `a + b + k`, store retargeting, the back edge with the loop's
/// test).
#[test]
fn count_loop_lowering() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/programs/count_loop.jvm"
    ))
    .unwrap();
    let p = program(&src);
    let f = &p.functions()[0];
    assert_eq!(
        f.lowered.ops,
        vec![
            Op::LoopHeader { at: 0 },
            Op::JnLtRI {
                a: 1,
                k: 100_000,
                t: 6
            },
            Op::MulRI { dst: 3, a: 1, k: 3 },
            Op::AddRRI {
                dst: 0,
                a: 0,
                b: 3,
                k: 1
            },
            Op::AddRI { dst: 1, a: 1, k: 1 },
            Op::LoopLtRI {
                a: 1,
                k: 100_000,
                t: 1
            },
            Op::Print { src: 0 },
            Op::RetImm { k: 0 },
        ]
    );
    assert_eq!(f.lowered.counts, vec![1, 4, 4, 4, 4, 1, 2, 1]);
}
