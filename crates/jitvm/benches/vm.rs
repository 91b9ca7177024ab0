//! Criterion: the interpreter and the JIT side by side on the workloads (smaller sizes
//! than `jitvm bench` so that criterion can repeat them), and compile speed.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jitvm::bench::{Workload, compile_workload, count_instructions};
use jitvm::tier::JitMode;
use jitvm::vm::{self, RunOptions};
use jitvm::{Limits, jit::compile_cost};

fn workloads(c: &mut Criterion) {
    for (workload, n) in [
        (Workload::Loop, 1_000_000),
        (Workload::LoopDiv, 1_000_000),
        (Workload::Fib, 20),
    ] {
        let program = workload.program(n).unwrap();
        let instructions = count_instructions(&program).unwrap();
        let mut group = c.benchmark_group(workload.name());
        group.throughput(Throughput::Elements(instructions));
        group.sample_size(10);
        for (name, mode) in [("interpreter", JitMode::Off), ("jit", JitMode::Eager)] {
            let options = RunOptions {
                jit: mode,
                limits: Limits::default(),
                ..RunOptions::default()
            };
            group.bench_with_input(BenchmarkId::new(name, n), &program, |b, p| {
                b.iter(|| vm::run(p, &options, std::io::sink()).ended.unwrap())
            });
        }
        group.finish();
    }
}

fn compile_speed(c: &mut Criterion) {
    let source = compile_workload(100);
    let program = jitvm::verify::verify(&jitvm::text::parse(&source).unwrap()).unwrap();
    let instructions = program.functions()[0].code().len() as u64;
    let memory = jitmem::JitMemory::new(jitmem::Config::new()).unwrap();
    let mut group = c.benchmark_group("compile");
    group.throughput(Throughput::Elements(instructions));
    group.bench_function("compile+allocate+publish", |b| {
        b.iter(|| compile_cost(&program, 0, &memory).unwrap())
    });
    group.finish();
}

criterion_group!(benches, workloads, compile_speed);
criterion_main!(benches);
