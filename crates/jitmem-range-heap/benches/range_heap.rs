//! Criterion benchmarks of the range heap's hot paths: an allocate+free pair of 128 bytes
//! (in an empty pool, and in a 64 MiB pool that is a 50% comb of 128-byte holes), and a
//! fragmented mix of random sizes, alignments and frees, with about 16k and 250k live
//! blocks.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jitmem_range_heap::{RangeHeap, RangeId};

const BASE: usize = 0x7f00_0000_0000;
const POOL: usize = 64 << 20;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n
    }

    /// A JIT-like size: mostly small functions, some large ones.
    fn size(&mut self) -> usize {
        match self.below(16) {
            0..=9 => 16 + self.below(240),
            10..=14 => 256 + self.below(1792),
            _ => 2048 + self.below(14336),
        }
    }

    fn align(&mut self) -> usize {
        [16, 16, 16, 32, 64, 64, 256, 4096][self.below(8)]
    }
}

fn heap() -> RangeHeap {
    let mut heap = RangeHeap::new(16).unwrap();
    heap.add_pool(BASE, POOL).unwrap();
    heap
}

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free_128");
    // Carves the front of the pool's one free block; the free merges it back.
    let mut h = heap();
    group.bench_function("empty_pool", |b| {
        b.iter(|| {
            let a = h.allocate(black_box(128), 16).unwrap();
            h.free(black_box(a.id)).unwrap();
        })
    });
    // 50% fragmented: 64 MiB of 128-byte blocks, every other one freed. Exact fits of a
    // hole between two live blocks; the free has no free neighbour.
    let mut h = heap();
    let mut blocks = Vec::new();
    while let Ok(a) = h.allocate(128, 16) {
        blocks.push(a.id);
    }
    let mut keep = Vec::with_capacity(blocks.len() / 2);
    for (i, id) in blocks.into_iter().enumerate() {
        if i % 2 == 0 {
            keep.push(id);
        } else {
            h.free(id).unwrap();
        }
    }
    group.bench_function("fragmented_64m", |b| {
        b.iter(|| {
            let a = h.allocate(black_box(128), 16).unwrap();
            h.free(black_box(a.id)).unwrap();
        })
    });
    drop(keep);
    group.finish();
}

/// A heap of `pool` bytes after `warmup` random allocations, each followed by the free
/// of a random live block with probability 1/2 (so about `warmup / 2` live blocks).
/// Each iteration frees a random one of them and allocates a random new one in its place.
fn mix_in(c: &mut Criterion, name: &str, pool: usize, warmup: usize) {
    let mut h = RangeHeap::new(16).unwrap();
    h.add_pool(BASE, pool).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut live: Vec<RangeId> = Vec::new();
    for _ in 0..warmup {
        let (len, align) = (rng.size(), rng.align());
        if let Ok(a) = h.allocate(len, align) {
            live.push(a.id);
        }
        if rng.below(2) == 0 && !live.is_empty() {
            let k = rng.below(live.len());
            h.free(live.swap_remove(k)).unwrap();
        }
    }
    let ops: Vec<(usize, usize, usize)> = (0..1 << 16)
        .map(|_| (rng.below(live.len()), rng.size(), rng.align()))
        .collect();
    let mut at = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            let (k, len, align) = ops[at % ops.len()];
            at += 1;
            h.free(black_box(live[k])).unwrap();
            live[k] = h.allocate(black_box(len), align).unwrap().id;
        })
    });
}

fn mix(c: &mut Criterion) {
    // About 16k live blocks of mixed sizes and alignments: the node table fits in L2.
    mix_in(c, "fragmented_mix", POOL, 32_000);
    // About 250k live blocks in 1 GiB: a node table of megabytes.
    mix_in(c, "fragmented_mix_large", 1 << 30, 500_000);
}

criterion_group!(benches, alloc_free, mix);
criterion_main!(benches);
