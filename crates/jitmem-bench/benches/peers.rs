//! Criterion benchmarks of the peers' hot paths side by side, one group per workload: a
//! 128-byte alloc+free pair, and a 4-byte patch of a live function (write + publish, no call).
//! The peers are those of `jitmem-bench` (its `Peer` trait, so the same code paths as the
//! table): jitmem Mirror (Pooled and Arena), jitmem Toggle, jit-allocator, the C++ asmjit
//! `JitAllocator` dual-mapped (when `libasmjit-dev` was installed at build time), and the two
//! floors. A peer that cannot be made here is skipped with a line on stderr.
//!
//! `cargo bench -p jitmem-bench --bench peers` (add `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jitmem::isa::{RETURN_CONSTANT_PATCH_OFFSET, return_constant};
use jitmem_bench::peers::{self, Peer, Publish};

/// The peers compared, in row order.
const PEERS: [&str; 7] = [
    "jitmem-mirror",
    "jitmem-mirror-arena",
    "jitmem-toggle",
    "jit-allocator",
    "asmjit-dual",
    "floor",
    "mprotect-floor",
];

/// The peer called `name`, or `None` (said on stderr) where it cannot be made.
fn peer(name: &str) -> Option<Box<dyn Peer>> {
    match peers::make(name) {
        Ok(peer) => Some(peer),
        Err(e) => {
            eprintln!("{name}: {e}; skipped");
            None
        }
    }
}

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free_128");
    for name in PEERS {
        let Some(mut peer) = peer(name) else {
            continue;
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let h = peer.alloc(128).unwrap();
                black_box(peer.addr(h));
                peer.free(h).unwrap();
            })
        });
    }
    group.finish();
}

fn patch(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch_4");
    for name in PEERS {
        let Some(mut peer) = peer(name) else {
            continue;
        };
        let h = peer.alloc(16).unwrap();
        peer.write(h, 0, &return_constant(0), Publish::Local)
            .unwrap();
        let mut v = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                v = v.wrapping_add(1);
                let bytes = v.to_le_bytes();
                peer.write(
                    h,
                    RETURN_CONSTANT_PATCH_OFFSET,
                    black_box(&bytes),
                    Publish::Atomic,
                )
                .unwrap();
            })
        });
        // SAFETY: the block holds a return_constant function, published by every write.
        let f = unsafe { peer.function(h) }.unwrap();
        assert_eq!(
            f(),
            v,
            "{name}: the last patch is what the function returns"
        );
        peer.free(h).unwrap();
    }
    group.finish();
}

criterion_group!(benches, alloc_free, patch);
criterion_main!(benches);
