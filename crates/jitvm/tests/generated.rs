//! Differential testing on generated programs: random structured programs (loops, branches
//! that merge with values on the stack, calls and recursion, every arithmetic and compare
//! opcode on edge values, traps, halt) must print the same, end the same way and trap at the
//! same place in the interpreter, the eager JIT and the tiered JIT (thresholds 1 and 3).
//!
//! Every program terminates: the step limit bounds loops and recursion, the depth limit bounds
//! recursion depth. `JITVM_GENERATED_CASES` sets the number of programs (default 10,000).

mod common;

use std::fmt::Write as _;

use jitvm::Limits;
use jitvm::tier::JitMode;
use jitvm::vm::{self, RunOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A small deterministic generator (xorshift*), seeded by proptest.
struct Gen {
    state: u64,
}

impl Gen {
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const EDGES: [i64; 9] = [0, 1, -1, 2, 7, i64::MIN, i64::MAX, -7, 1 << 40];

struct FuncSpec {
    name: String,
    args: u32,
    locals: u32,
}

struct Builder<'a> {
    g: &'a mut Gen,
    funcs: &'a [FuncSpec],
    me: usize,
    out: String,
    labels: u32,
}

impl Builder<'_> {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "    {text}");
    }

    fn label(&mut self) -> String {
        self.labels += 1;
        format!("L{}", self.labels)
    }

    fn locals(&self) -> u32 {
        self.funcs[self.me].locals
    }

    /// Pushes exactly one value.
    fn expr(&mut self, depth: u32) {
        let leaf = depth == 0 || self.g.chance(30);
        if leaf {
            if self.locals() > 0 && self.g.chance(55) {
                let n = self.g.below(u64::from(self.locals()));
                match n {
                    0 if self.g.chance(50) => self.line("load_local_0"),
                    1 if self.g.chance(50) => self.line("load_local_1"),
                    _ => self.line(&format!("load_local {n}")),
                }
            } else if self.g.chance(50) {
                let v = EDGES[self.g.below(EDGES.len() as u64) as usize];
                self.line(&format!("load_imm {v}"));
            } else {
                let v = self.g.below(40) as i64 - 20;
                self.line(&format!("load_imm {v}"));
            }
            return;
        }
        match self.g.below(10) {
            0..=4 => {
                self.expr(depth - 1);
                self.expr(depth - 1);
                let ops = [
                    "add_ii", "sub_ii", "mul_ii", "div_ii", "mod_ii", "lt_ii", "le_ii", "gt_ii",
                    "ge_ii", "eq_ii", "ne_ii",
                ];
                let op = ops[self.g.below(ops.len() as u64) as usize];
                self.line(op);
            }
            5 => {
                self.expr(depth - 1);
                self.line("neg_i");
            }
            6 => {
                self.expr(depth - 1);
                self.line("dup");
                let op = ["mul_ii", "add_ii", "sub_ii", "eq_ii"][self.g.below(4) as usize];
                self.line(op);
            }
            7 => {
                // A conditional expression: the branches merge with one more value on the stack.
                let (other, end) = (self.label(), self.label());
                self.expr(depth - 1);
                self.line(&format!("jump_if_false {other}"));
                self.expr(depth - 1);
                self.line(&format!("jump {end}"));
                let _ = writeln!(self.out, "{other}:");
                self.expr(depth - 1);
                let _ = writeln!(self.out, "{end}:");
            }
            _ => {
                let callee = self.g.below(self.funcs.len() as u64) as usize;
                if callee == 0 {
                    // main takes no arguments and is not called again
                    self.line("load_imm 3");
                    return;
                }
                for _ in 0..self.funcs[callee].args {
                    self.expr(depth - 1);
                }
                let name = self.funcs[callee].name.clone();
                self.line(&format!("call {name}"));
            }
        }
    }

    /// Leaves the stack as it found it (or ends the function).
    fn stmt(&mut self, depth: u32) {
        let locals = self.locals();
        match self.g.below(12) {
            0..=2 if locals > 0 => {
                self.expr(2);
                let n = self.g.below(u64::from(locals));
                self.line(&format!("store_local {n}"));
            }
            3 | 4 => {
                self.expr(3);
                self.line("print");
            }
            5 if depth > 0 => {
                let (other, end) = (self.label(), self.label());
                self.expr(2);
                self.line(&format!("jump_if_false {other}"));
                self.block(depth - 1);
                self.line(&format!("jump {end}"));
                let _ = writeln!(self.out, "{other}:");
                self.block(depth - 1);
                let _ = writeln!(self.out, "{end}:");
            }
            6 if depth > 0 => {
                // while loop with a loop header (empty operand stack there)
                let (top, end) = (self.label(), self.label());
                let _ = writeln!(self.out, "{top}:");
                self.line("loop_header");
                self.expr(2);
                self.line(&format!("jump_if_false {end}"));
                self.block(depth - 1);
                self.line(&format!("jump {top}"));
                let _ = writeln!(self.out, "{end}:");
            }
            7 if depth > 0 => {
                // do-while: a backward jump_if_false, no loop header
                let top = self.label();
                let _ = writeln!(self.out, "{top}:");
                self.block(depth - 1);
                self.expr(2);
                self.line(&format!("jump_if_false {top}"));
            }
            8 => {
                self.expr(2);
                self.line("pop");
            }
            9 if self.g.chance(4) => self.line("halt"),
            10 if self.g.chance(8) => {
                self.expr(2);
                self.line("return");
            }
            _ => {
                self.expr(1);
                self.line("print");
            }
        }
    }

    fn block(&mut self, depth: u32) {
        for _ in 0..1 + self.g.below(3) {
            self.stmt(depth);
        }
    }
}

fn generate(seed: u64) -> String {
    let mut g = Gen { state: seed | 1 };
    let count = 1 + g.below(4) as usize;
    let funcs: Vec<FuncSpec> = (0..count)
        .map(|i| {
            let args = if i == 0 { 0 } else { g.below(4) as u32 };
            FuncSpec {
                name: if i == 0 {
                    "main".into()
                } else {
                    format!("f{i}")
                },
                args,
                locals: args + g.below(4) as u32,
            }
        })
        .collect();
    let mut text = String::new();
    for me in 0..funcs.len() {
        let mut b = Builder {
            g: &mut g,
            funcs: &funcs,
            me,
            out: String::new(),
            labels: 0,
        };
        b.block(2);
        if b.g.chance(50) {
            b.expr(2);
            b.line("return");
        } else {
            b.line("return_nil");
        }
        let f = &funcs[me];
        let _ = writeln!(text, "func {} args={} locals={}", f.name, f.args, f.locals);
        text.push_str(&b.out);
        text.push_str("end\n\n");
    }
    text
}

fn check(seed: u64) -> Result<(), TestCaseError> {
    let source = generate(seed);
    let module = jitvm::text::parse(&source)
        .map_err(|e| TestCaseError::fail(format!("generator made bad text: {e}\n{source}")))?;
    let program = jitvm::verify::verify(&module).map_err(|e| {
        TestCaseError::fail(format!("generator made unverifiable code: {e}\n{source}"))
    })?;
    let limits = Limits {
        max_depth: 40,
        max_steps: 300,
    };
    let expected = common::interpret(&program, &limits);
    for mode in [
        JitMode::Eager,
        JitMode::Tiered { threshold: 1 },
        JitMode::Tiered { threshold: 3 },
    ] {
        let options = RunOptions {
            jit: mode,
            limits,
            ..RunOptions::default()
        };
        let mut out = Vec::new();
        let report = vm::run(&program, &options, &mut out);
        prop_assert!(report.jit.failures.is_empty(), "{:?}", report.jit.failures);
        let got = report.ended.map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            (String::from_utf8_lossy(&out), got),
            (String::from_utf8_lossy(&expected.0), expected.1),
            "seed {} in {:?}:\n{}",
            seed,
            mode,
            source
        );
    }
    Ok(())
}

#[test]
fn generated_programs_agree_in_every_mode() {
    let cases = std::env::var("JITVM_GENERATED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&any::<u64>(), check);
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_generator_covers_what_it_should() {
    let mut all = String::new();
    for seed in 0..300 {
        all.push_str(&generate(seed));
    }
    for needle in [
        "loop_header",
        "jump_if_false",
        "call f",
        "div_ii",
        "mod_ii",
        "halt",
        "dup",
        "neg_i",
        "store_local",
        "return\n",
        "return_nil",
        "load_local_0",
        "pop",
    ] {
        assert!(
            all.contains(needle),
            "generated programs never contain {needle:?}"
        );
    }
}
