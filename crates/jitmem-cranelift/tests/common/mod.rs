//! A small language compiled with cranelift-frontend into a cranelift-jit module: the client the
//! provider's tests run.
//!
//! ```text
//! program := (fn NAME (PARAM...) EXPR...)...
//! expr    := INT | NAME | (let NAME expr) | (set NAME expr) | (if expr expr expr)
//!          | (while expr expr...) | (do expr...) | (OP expr expr) | (NAME expr...)
//! OP      := + - * / % < <= > >= == !=
//! ```
//! Every value is an i64; comparisons give 0 or 1; `while` gives 0; a function returns its last
//! expression. Functions call each other (and themselves) by name.

#![allow(dead_code, missing_docs)]

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{AbiParam, InstBuilder, Value, types::I64};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITMemoryProvider, JITModule};
use cranelift_module::{FuncId, Linkage, Module};

#[derive(Clone, Debug)]
pub enum Sexp {
    Atom(String),
    List(Vec<Sexp>),
}

pub fn parse(src: &str) -> Vec<Sexp> {
    let spaced = src.replace('(', " ( ").replace(')', " ) ");
    let mut tokens = spaced.split_whitespace().peekable();
    let mut out = Vec::new();
    while tokens.peek().is_some() {
        out.push(parse_one(&mut tokens));
    }
    out
}

fn parse_one<'a>(tokens: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>) -> Sexp {
    match tokens.next().expect("unexpected end of program") {
        "(" => {
            let mut items = Vec::new();
            while tokens.peek() != Some(&")") {
                items.push(parse_one(tokens));
            }
            tokens.next();
            Sexp::List(items)
        }
        ")" => panic!("unexpected )"),
        atom => Sexp::Atom(atom.to_owned()),
    }
}

pub struct FnDef {
    pub name: String,
    pub params: Vec<String>,
    pub body: Vec<Sexp>,
}

pub fn functions(src: &str) -> Vec<FnDef> {
    parse(src)
        .into_iter()
        .map(|def| {
            let Sexp::List(items) = def else {
                panic!("top level must be (fn ...)")
            };
            let (Sexp::Atom(kw), Sexp::Atom(name), Sexp::List(params)) =
                (&items[0], &items[1], &items[2])
            else {
                panic!("bad fn header")
            };
            assert_eq!(kw, "fn");
            let params = params
                .iter()
                .map(|p| match p {
                    Sexp::Atom(a) => a.clone(),
                    Sexp::List(_) => panic!("bad parameter"),
                })
                .collect();
            FnDef {
                name: name.clone(),
                params,
                body: items[3..].to_vec(),
            }
        })
        .collect()
}

/// The test programs: recursion, loops, calls between functions, mutual recursion.
pub const PROGRAM_A: &str = "
(fn fib (n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2)))))
(fn sum_to (n) (let acc 0) (let i 0) (while (<= i n) (set acc (+ acc i)) (set i (+ i 1))) acc)
(fn gcd (a b) (while (!= b 0) (let t (% a b)) (set a b) (set b t)) a)
(fn collatz (n)
  (let steps 0)
  (while (!= n 1)
    (if (== (% n 2) 0) (set n (/ n 2)) (set n (+ (* 3 n) 1)))
    (set steps (+ steps 1)))
  steps)
(fn is_even (n) (if (== n 0) 1 (is_odd (- n 1))))
(fn is_odd (n) (if (== n 0) 0 (is_even (- n 1))))
";

/// Defined in a second round (after PROGRAM_A was finalized), calling into it.
pub const PROGRAM_B: &str = "
(fn main (n)
  (+ (* 1000000 (fib (% n 20)))
     (+ (sum_to n) (+ (* 1000 (gcd (* n 12) 18)) (+ (* 10 (collatz (+ n 1))) (is_even n))))))
(fn fact (n) (let r 1) (while (> n 1) (set r (* r n)) (set n (- n 1))) r)
";

/// A config for exactly `strategy` and `layout` (environment ignored; Rwx opted into).
pub fn config(strategy: jitmem::Strategy, layout: jitmem::Layout) -> jitmem::Config {
    let config = jitmem::Config::new()
        .strategy(strategy)
        .layout(layout)
        .ignore_environment();
    if strategy != jitmem::Strategy::Rwx {
        return config;
    }
    // SAFETY: the tests and benchmarks run only their own trusted code.
    unsafe { config.allow_rwx_without_wx() }
}

/// The host ISA, non-PIC (cranelift-jit's requirement).
pub fn isa() -> cranelift_codegen::isa::OwnedTargetIsa {
    let mut flags = settings::builder();
    flags.set("use_colocated_libcalls", "false").unwrap();
    flags.set("is_pic", "false").unwrap();
    flags.set("opt_level", "speed").unwrap();
    let isa_builder = cranelift_native::builder().unwrap();
    isa_builder.finish(settings::Flags::new(flags)).unwrap()
}

/// A JIT module whose memory comes from `provider` (None: cranelift's default provider,
/// `SystemMemoryProvider`).
pub fn module(provider: Option<Box<dyn JITMemoryProvider + Send>>) -> JITModule {
    module_with_isa(provider, isa())
}

/// The host ISA with BTI landing pads (`use_bti`; AArch64 only).
pub fn isa_with_bti() -> cranelift_codegen::isa::OwnedTargetIsa {
    let mut flags = settings::builder();
    flags.set("use_colocated_libcalls", "false").unwrap();
    flags.set("is_pic", "false").unwrap();
    flags.set("opt_level", "speed").unwrap();
    let mut isa_builder = cranelift_native::builder().unwrap();
    isa_builder.enable("use_bti").unwrap();
    isa_builder.finish(settings::Flags::new(flags)).unwrap()
}

/// A JIT module for `isa` whose memory comes from `provider`.
pub fn module_with_isa(
    provider: Option<Box<dyn JITMemoryProvider + Send>>,
    isa: cranelift_codegen::isa::OwnedTargetIsa,
) -> JITModule {
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    if let Some(p) = provider {
        builder.memory_provider(p);
    }
    JITModule::new(builder)
}

/// Compiles `src` into `module` (declaring every function first, so they call each other),
/// then finalizes. Functions already declared in `module` (an earlier round) can be called.
pub fn compile(module: &mut JITModule, src: &str, ids: &mut HashMap<String, FuncId>) {
    compile_into(module, src, ids).unwrap();
}

/// Compiles `src` into a fresh `module` and finalizes it, returning finalize's answer.
#[expect(
    clippy::result_large_err,
    reason = "cranelift-module's own error type, as JITModule returns it"
)]
pub fn try_compile(module: &mut JITModule, src: &str) -> cranelift_module::ModuleResult<()> {
    compile_into(module, src, &mut HashMap::new())
}

#[expect(
    clippy::result_large_err,
    reason = "cranelift-module's own error type, as JITModule returns it"
)]
fn compile_into(
    module: &mut JITModule,
    src: &str,
    ids: &mut HashMap<String, FuncId>,
) -> cranelift_module::ModuleResult<()> {
    let defs = functions(src);
    for def in &defs {
        let mut sig = module.make_signature();
        for _ in &def.params {
            sig.params.push(AbiParam::new(I64));
        }
        sig.returns.push(AbiParam::new(I64));
        let id = module
            .declare_function(&def.name, Linkage::Export, &sig)
            .unwrap();
        ids.insert(def.name.clone(), id);
    }
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    for def in &defs {
        let id = ids[&def.name];
        ctx.func.signature = module
            .declarations()
            .get_function_decl(id)
            .signature
            .clone();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            b.seal_block(entry);
            let mut vars = HashMap::new();
            for (i, p) in def.params.iter().enumerate() {
                let v = b.declare_var(I64);
                let arg = b.block_params(entry)[i];
                b.def_var(v, arg);
                vars.insert(p.clone(), v);
            }
            let mut g = Gen {
                b,
                vars,
                module,
                ids,
            };
            let mut last = g.b.ins().iconst(I64, 0);
            for e in &def.body {
                last = g.expr(e);
            }
            g.b.ins().return_(&[last]);
            let frontend = g.module.isa().frontend_config();
            g.b.finalize(frontend);
        }
        module.define_function(id, &mut ctx).unwrap();
        module.clear_context(&mut ctx);
    }
    module.finalize_definitions()
}

struct Gen<'a, 'b> {
    b: FunctionBuilder<'b>,
    vars: HashMap<String, Variable>,
    module: &'a mut JITModule,
    ids: &'a HashMap<String, FuncId>,
}

impl Gen<'_, '_> {
    fn expr(&mut self, e: &Sexp) -> Value {
        match e {
            Sexp::Atom(a) => match a.parse::<i64>() {
                Ok(n) => self.b.ins().iconst(I64, n),
                Err(_) => {
                    let v = *self
                        .vars
                        .get(a)
                        .unwrap_or_else(|| panic!("unknown variable {a}"));
                    self.b.use_var(v)
                }
            },
            Sexp::List(items) => {
                let Sexp::Atom(head) = &items[0] else {
                    panic!("bad form")
                };
                let args = &items[1..];
                match head.as_str() {
                    "let" | "set" => {
                        let Sexp::Atom(name) = &args[0] else {
                            panic!("bad let")
                        };
                        let val = self.expr(&args[1]);
                        let var = match self.vars.get(name) {
                            Some(v) => *v,
                            None => {
                                let v = self.b.declare_var(I64);
                                self.vars.insert(name.clone(), v);
                                v
                            }
                        };
                        self.b.def_var(var, val);
                        val
                    }
                    "do" => {
                        let mut last = self.b.ins().iconst(I64, 0);
                        for a in args {
                            last = self.expr(a);
                        }
                        last
                    }
                    "if" => {
                        let c = self.expr(&args[0]);
                        let then_b = self.b.create_block();
                        let else_b = self.b.create_block();
                        let join = self.b.create_block();
                        self.b.append_block_param(join, I64);
                        self.b.ins().brif(c, then_b, &[], else_b, &[]);
                        self.b.switch_to_block(then_b);
                        self.b.seal_block(then_b);
                        let t = self.expr(&args[1]);
                        self.b.ins().jump(join, &[t.into()]);
                        self.b.switch_to_block(else_b);
                        self.b.seal_block(else_b);
                        let f = self.expr(&args[2]);
                        self.b.ins().jump(join, &[f.into()]);
                        self.b.switch_to_block(join);
                        self.b.seal_block(join);
                        self.b.block_params(join)[0]
                    }
                    "while" => {
                        let header = self.b.create_block();
                        let body = self.b.create_block();
                        let exit = self.b.create_block();
                        self.b.ins().jump(header, &[]);
                        self.b.switch_to_block(header);
                        let c = self.expr(&args[0]);
                        self.b.ins().brif(c, body, &[], exit, &[]);
                        self.b.switch_to_block(body);
                        self.b.seal_block(body);
                        for a in &args[1..] {
                            self.expr(a);
                        }
                        self.b.ins().jump(header, &[]);
                        self.b.seal_block(header);
                        self.b.switch_to_block(exit);
                        self.b.seal_block(exit);
                        self.b.ins().iconst(I64, 0)
                    }
                    op @ ("+" | "-" | "*" | "/" | "%" | "<" | "<=" | ">" | ">=" | "==" | "!=") => {
                        let x = self.expr(&args[0]);
                        let y = self.expr(&args[1]);
                        let cc = match op {
                            "+" => return self.b.ins().iadd(x, y),
                            "-" => return self.b.ins().isub(x, y),
                            "*" => return self.b.ins().imul(x, y),
                            "/" => return self.b.ins().sdiv(x, y),
                            "%" => return self.b.ins().srem(x, y),
                            "<" => IntCC::SignedLessThan,
                            "<=" => IntCC::SignedLessThanOrEqual,
                            ">" => IntCC::SignedGreaterThan,
                            ">=" => IntCC::SignedGreaterThanOrEqual,
                            "==" => IntCC::Equal,
                            _ => IntCC::NotEqual,
                        };
                        let c = self.b.ins().icmp(cc, x, y);
                        self.b.ins().uextend(I64, c)
                    }
                    callee => {
                        let id = *self
                            .ids
                            .get(callee)
                            .unwrap_or_else(|| panic!("unknown function {callee}"));
                        let fref = self.module.declare_func_in_func(id, self.b.func);
                        let vals: Vec<Value> = args.iter().map(|a| self.expr(a)).collect();
                        let call = self.b.ins().call(fref, &vals);
                        self.b.inst_results(call)[0]
                    }
                }
            }
        }
    }
}

/// Runs every function of both programs on a few inputs: the observable behaviour of a module.
pub fn results(module: &JITModule, ids: &HashMap<String, FuncId>) -> Vec<i64> {
    let f1 = |name: &str| -> extern "C" fn(i64) -> i64 {
        let ptr = module.get_finalized_function(ids[name]);
        // SAFETY: `name` was compiled with signature (i64) -> i64, system ABI, and finalized.
        unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(ptr) }
    };
    let gcd = {
        let ptr = module.get_finalized_function(ids["gcd"]);
        // SAFETY: gcd was compiled with signature (i64, i64) -> i64, system ABI, and finalized.
        unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64, i64) -> i64>(ptr) }
    };
    let mut out = Vec::new();
    for n in [0, 1, 2, 7, 19, 25] {
        out.push(f1("fib")(n));
    }
    for n in [0, 1, 10, 1000] {
        out.push(f1("sum_to")(n));
        out.push(f1("collatz")(n + 1));
        out.push(f1("is_even")(n));
        out.push(f1("is_odd")(n));
    }
    out.push(gcd(1071, 462));
    out.push(gcd(17, 5));
    for n in 0..40 {
        out.push(f1("main")(n));
    }
    out.push(f1("fact")(20));
    out
}

/// Compiles both programs (in two finalize rounds) into a module on `provider` and runs them.
pub fn run_programs(provider: Option<Box<dyn JITMemoryProvider + Send>>) -> Vec<i64> {
    run_programs_with_isa(provider, isa())
}

/// [`run_programs`] for `isa`.
pub fn run_programs_with_isa(
    provider: Option<Box<dyn JITMemoryProvider + Send>>,
    isa: cranelift_codegen::isa::OwnedTargetIsa,
) -> Vec<i64> {
    let mut m = module_with_isa(provider, isa);
    let mut ids = HashMap::new();
    compile(&mut m, PROGRAM_A, &mut ids);
    // Round 1's code runs before round 2 is compiled.
    let fib = m.get_finalized_function(ids["fib"]);
    // SAFETY: fib is (i64) -> i64, finalized.
    let fib = unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(fib) };
    assert_eq!(fib(20), 6765);
    compile(&mut m, PROGRAM_B, &mut ids);
    let out = results(&m, &ids);
    // SAFETY: nothing of the module runs any more and its pointers are dropped.
    unsafe { m.free_memory() };
    out
}
