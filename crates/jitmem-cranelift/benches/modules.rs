//! cranelift-jit modules on jitmem's provider next to cranelift's own providers: the life of many
//! small modules (one module per iteration: define, finalize, call, free).
//!
//! Two groups:
//! - `module_compile`: each iteration compiles a small function with cranelift (codegen
//!   dominates, as in real use), finalizes, calls and frees the module.
//! - `module_bytes`: each iteration defines the same function from precompiled bytes
//!   (`define_function_bytes`, no codegen), finalizes, calls and frees: the memory provider's
//!   own cost (allocate, copy, protection changes, icache/membarrier, free).
//!
//! Run: `cargo bench -p jitmem-cranelift --bench modules`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{AbiParam, InstBuilder, types::I64};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, control::ControlPlane};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{
    ArenaMemoryProvider, JITBuilder, JITMemoryProvider, JITModule, SystemMemoryProvider,
};
use cranelift_module::{FuncId, Linkage, Module};
use criterion::{Criterion, criterion_group, criterion_main};
use jitmem::{JitMemory, Layout, Strategy};
use jitmem_cranelift::JitmemProvider;

fn isa() -> cranelift_codegen::isa::OwnedTargetIsa {
    let mut flags = settings::builder();
    flags.set("is_pic", "false").unwrap();
    flags.set("opt_level", "speed").unwrap();
    cranelift_native::builder()
        .unwrap()
        .finish(settings::Flags::new(flags))
        .unwrap()
}

/// `sum_to(n)`: a loop, no relocations.
fn build_sum_to(module: &mut JITModule) -> (FuncId, Context) {
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(I64));
    sig.returns.push(AbiParam::new(I64));
    let id = module
        .declare_function("sum_to", Linkage::Export, &sig)
        .unwrap();
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let entry = b.create_block();
    let header = b.create_block();
    let body = b.create_block();
    let exit = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.append_block_param(header, I64); // i
    b.append_block_param(header, I64); // acc
    b.append_block_param(exit, I64);
    b.switch_to_block(entry);
    let n = b.block_params(entry)[0];
    let zero = b.ins().iconst(I64, 0);
    b.ins().jump(header, &[zero.into(), zero.into()]);
    b.switch_to_block(header);
    let (i, acc) = (b.block_params(header)[0], b.block_params(header)[1]);
    let more = b.ins().icmp(IntCC::SignedLessThanOrEqual, i, n);
    b.ins().brif(more, body, &[], exit, &[acc.into()]);
    b.switch_to_block(body);
    let acc2 = b.ins().iadd(acc, i);
    let i2 = b.ins().iadd_imm_s(i, 1);
    b.ins().jump(header, &[i2.into(), acc2.into()]);
    b.switch_to_block(exit);
    let r = b.block_params(exit)[0];
    b.ins().return_(&[r]);
    b.seal_all_blocks();
    b.finalize(module.isa().frontend_config());
    (id, ctx)
}

fn new_module(provider: Box<dyn JITMemoryProvider + Send>) -> JITModule {
    thread_local! {
        static ISA: cranelift_codegen::isa::OwnedTargetIsa = isa();
    }
    let isa = ISA.with(|isa| isa.clone());
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    builder.memory_provider(provider);
    JITModule::new(builder)
}

fn call_and_free(module: JITModule, id: FuncId) {
    let ptr = module.get_finalized_function(id);
    // SAFETY: sum_to is (i64) -> i64, finalized.
    let f = unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(ptr) };
    assert_eq!(f(black_box(100)), 5050);
    // SAFETY: the function is not called again.
    unsafe { module.free_memory() };
}

type MakeProvider = Box<dyn Fn() -> Box<dyn JITMemoryProvider + Send>>;

fn providers() -> Vec<(String, MakeProvider)> {
    let mut out: Vec<(String, MakeProvider)> = vec![
        (
            "cranelift SystemMemoryProvider".into(),
            Box::new(|| Box::new(SystemMemoryProvider::new())),
        ),
        (
            "cranelift ArenaMemoryProvider (1 MiB each)".into(),
            Box::new(|| Box::new(ArenaMemoryProvider::new_with_size(1 << 20).unwrap())),
        ),
    ];
    let configs = [
        (Strategy::Toggle, Layout::Pooled),
        (Strategy::Toggle, Layout::Arena { size: 64 << 20 }),
        (Strategy::PerThread, Layout::Pooled),
        (Strategy::Rwx, Layout::Pooled),
    ];
    for (strategy, layout) in configs {
        match JitMemory::new(common::config(strategy, layout)) {
            Ok(memory) => out.push((
                format!("jitmem {strategy}/{layout}"),
                Box::new(move || Box::new(JitmemProvider::new(memory.clone()).unwrap())),
            )),
            Err(e) => eprintln!("jitmem {strategy}/{layout}: skipped here: {e}"),
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    // Precompiled bytes for the `module_bytes` group.
    let code = {
        let mut m = new_module(Box::new(SystemMemoryProvider::new()));
        let (_, mut ctx) = build_sum_to(&mut m);
        let compiled = ctx.compile(m.isa(), &mut ControlPlane::default()).unwrap();
        assert!(compiled.buffer.relocs().is_empty());
        compiled.code_buffer().to_vec()
    };
    let providers = providers();

    let mut g = c.benchmark_group("module_compile");
    for (name, make) in &providers {
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let mut m = new_module(make());
                let (id, mut ctx) = build_sum_to(&mut m);
                m.define_function(id, &mut ctx).unwrap();
                m.finalize_definitions().unwrap();
                call_and_free(m, id);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("module_bytes");
    for (name, make) in &providers {
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let mut m = new_module(make());
                let mut sig = m.make_signature();
                sig.params.push(AbiParam::new(I64));
                sig.returns.push(AbiParam::new(I64));
                let id = m.declare_function("sum_to", Linkage::Export, &sig).unwrap();
                m.define_function_bytes(id, 16, &code, &[]).unwrap();
                m.finalize_definitions().unwrap();
                call_and_free(m, id);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
