//! Criterion benchmarks of jitmem's own hot paths, per strategy: alloc+free pairs (also into a
//! 50%-fragmented 64 MiB heap), patching live code, and churn. The side-by-side comparison
//! with other crates is `jitmem-bench`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jitmem::{Config, JitMemory, Layout, Strategy, isa};

fn memory(strategy: Strategy, layout: Layout) -> Option<JitMemory> {
    JitMemory::new(
        Config::new()
            .strategy(strategy)
            .layout(layout)
            .ignore_environment(),
    )
    .ok()
}

const STRATEGIES: [Strategy; 3] = [Strategy::Mirror, Strategy::PerThread, Strategy::Toggle];

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free");
    for strategy in STRATEGIES {
        let Some(memory) = memory(strategy, Layout::Pooled) else {
            continue;
        };
        group.bench_function(BenchmarkId::new("pooled", strategy), |b| {
            b.iter(|| drop(black_box(memory.allocate(128).unwrap())))
        });
    }
    // 50% fragmented: fill 64 MiB with 128-byte blocks, free every other one.
    let arena = Layout::Arena { size: 64 << 20 };
    if let Some(memory) = memory(Strategy::Mirror, arena) {
        let mut blocks = Vec::new();
        while let Ok(b) = memory.allocate(128) {
            blocks.push(b);
        }
        let mut keep = Vec::with_capacity(blocks.len() / 2);
        for (i, b) in blocks.into_iter().enumerate() {
            if i % 2 == 0 {
                keep.push(b);
            }
        }
        group.bench_function(BenchmarkId::new("fragmented", Strategy::Mirror), |b| {
            b.iter(|| drop(black_box(memory.allocate(128).unwrap())))
        });
        drop(keep);
    }
    group.finish();
}

fn patch(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch");
    for strategy in STRATEGIES {
        let Some(memory) = memory(strategy, Layout::Pooled) else {
            continue;
        };
        let mut block = memory.allocate(16).unwrap();
        {
            let mut scope = block.write().unwrap();
            scope.copy_from_slice(&isa::return_constant(0));
            scope.publish().unwrap();
        }
        // SAFETY: the block holds a return_constant function for the whole benchmark.
        let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
        let at = isa::RETURN_CONSTANT_PATCH_OFFSET;
        let mut v = 0u32;
        group.bench_function(BenchmarkId::new("write4_publish_call", strategy), |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                let mut scope = block.write_range(at..at + 4).unwrap();
                scope.copy_from_slice(&v.to_le_bytes());
                scope.publish().unwrap();
                assert_eq!(f(), v);
            })
        });
    }
    group.finish();
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.sample_size(10);
    for strategy in STRATEGIES {
        let Some(memory) = memory(strategy, Layout::Pooled) else {
            continue;
        };
        group.bench_function(BenchmarkId::new("20000_blocks", strategy), |b| {
            b.iter(|| {
                let mut live = Vec::with_capacity(1000);
                let mut x = 0x2545_F491_4F6C_DD1Du64;
                for i in 0..20_000u32 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = 16 + (x % 2033) as usize;
                    let mut block = memory.allocate(len).unwrap();
                    {
                        let mut scope = block.write_range(0..16).unwrap();
                        scope.copy_from_slice(&isa::return_constant(i));
                        scope.publish().unwrap();
                    }
                    // SAFETY: a return_constant function was just published.
                    let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
                    assert_eq!(f(), i);
                    if live.len() == 1000 {
                        live.swap_remove((x >> 32) as usize % 1000);
                    }
                    live.push(block);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, alloc_free, patch, churn);
criterion_main!(benches);
