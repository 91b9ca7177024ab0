//! Model-based tests of `jitmem_range_heap`: random operation sequences checked
//! against a plain list of live ranges, plus a fragmentation test.

// Test code: failing loudly is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]

use jitmem_range_heap::*;
use proptest::prelude::*;

const ALIGNS: [usize; 7] = [1, 8, 16, 32, 64, 128, 4096];

#[derive(Debug, Clone)]
enum Op {
    Alloc { len: usize, align: usize },
    Free(usize),
    Shrink(usize, usize),
    AddPool { pages: usize, high: bool },
    RemovePool(usize),
    StaleFree(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..5000, prop::sample::select(ALIGNS.to_vec()))
            .prop_map(|(len, align)| Op::Alloc { len, align }),
        5 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), 1usize..5000).prop_map(|(i, n)| Op::Shrink(i, n)),
        1 => (1usize..64, any::<bool>()).prop_map(|(pages, high)| Op::AddPool { pages, high }),
        1 => any::<usize>().prop_map(Op::RemovePool),
        1 => any::<usize>().prop_map(Op::StaleFree),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Live {
    id: RangeId,
    start: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct ModelPool {
    id: PoolId,
    start: usize,
    len: usize,
}

struct Model {
    granule: usize,
    pools: Vec<ModelPool>,
    live: Vec<(Live, PoolId)>,
    freed: Vec<RangeId>,
    /// Next start for low pools (growing upwards).
    next_low: usize,
    /// End of the next high pool (growing downwards from the top of the address space).
    next_high: usize,
}

fn round_up(len: usize, g: usize) -> usize {
    len.div_ceil(g) * g
}

/// Whether `size` bytes aligned to `align` fit in the free run `[start, start + len)`.
fn fits(start: usize, len: usize, size: usize, align: usize) -> bool {
    let pad = start.wrapping_neg() & (align - 1);
    pad <= len && len - pad >= size
}

impl Model {
    fn new(granule: usize) -> Self {
        Self {
            granule,
            pools: Vec::new(),
            live: Vec::new(),
            freed: Vec::new(),
            next_low: 0x1_0000_0000,
            // The end of a pool must be representable: keep the last page unused.
            next_high: usize::MAX - 4095,
        }
    }

    fn live_in(&self, pool: PoolId) -> usize {
        self.live.iter().filter(|(_, p)| *p == pool).count()
    }

    /// Maximal free runs of a pool.
    fn gaps(&self, pool: &ModelPool) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = self
            .live
            .iter()
            .filter(|(_, p)| *p == pool.id)
            .map(|(l, _)| (l.start, l.len))
            .collect();
        ranges.sort_unstable();
        let mut gaps = Vec::new();
        let mut cursor = pool.start;
        for (start, len) in ranges {
            if start > cursor {
                gaps.push((cursor, start - cursor));
            }
            cursor = start + len;
        }
        if cursor < pool.start + pool.len {
            gaps.push((cursor, pool.start + pool.len - cursor));
        }
        gaps
    }

    fn add_pool(&mut self, heap: &mut RangeHeap, pages: usize, high: bool) {
        let len = pages * 4096;
        let start = if high {
            let start = self.next_high - len;
            // Every other pool is exactly adjacent to the previous one.
            self.next_high = if pages % 2 == 0 { start } else { start - 4096 };
            start
        } else {
            let start = self.next_low;
            self.next_low = start + len + if pages % 2 == 0 { 0 } else { 4096 };
            start
        };
        let id = heap.add_pool(start, len).unwrap();
        assert_eq!(heap.pool_range(id), Some((start, len)));
        assert!(heap.pool_is_empty(id));
        // The same range again overlaps.
        assert!(matches!(
            heap.add_pool(start, len),
            Err(RangeError::BadPool { .. })
        ));
        // A pool of 2^32 granules is too large (refused before the overlap check).
        #[cfg(target_pointer_width = "64")]
        {
            let max = u32::MAX as usize * self.granule;
            assert_eq!(heap.max_pool_len(), max);
            let len = max + self.granule;
            if start.checked_add(len).is_some() {
                assert_eq!(
                    heap.add_pool(start, len),
                    Err(RangeError::PoolTooLarge { len, max })
                );
            }
        }
        self.pools.push(ModelPool { id, start, len });
    }

    fn apply(&mut self, heap: &mut RangeHeap, op: &Op) {
        let g = self.granule;
        match *op {
            Op::Alloc { len, align } => {
                let eff = align.max(g);
                match heap.allocate(len, align) {
                    Ok(a) => {
                        assert_eq!(a.len, round_up(len, g));
                        assert_eq!(a.start % eff, 0, "start {:#x} align {eff}", a.start);
                        let pool = self.pools.iter().find(|p| p.id == a.pool).unwrap();
                        assert!(a.start >= pool.start);
                        assert!(a.start + a.len <= pool.start + pool.len);
                        assert_eq!(heap.get(a.id).unwrap(), a);
                        self.live.push((
                            Live {
                                id: a.id,
                                start: a.start,
                                len: a.len,
                            },
                            a.pool,
                        ));
                    }
                    Err(RangeError::Exhausted { len: l, align: al }) => {
                        assert_eq!((l, al), (len, align));
                        // Good fit never misses a block comfortably above the
                        // class-rounded search size, and with at most 32 free blocks
                        // the fallback scan sees every block that could fit.
                        let size = round_up(len, g);
                        let search = size + eff - g;
                        let comfortable = search + search / 8 + g;
                        let few = heap.stats().free_blocks <= 32;
                        for pool in &self.pools {
                            for (start, gap) in self.gaps(pool) {
                                assert!(
                                    gap < comfortable,
                                    "exhausted for {len}@{align} with a free gap of {gap}"
                                );
                                assert!(
                                    !(few && fits(start, gap, size, eff)),
                                    "exhausted for {len}@{align}: {gap} at {start:#x} fits"
                                );
                            }
                        }
                    }
                    Err(e) => panic!("allocate({len}, {align}): {e}"),
                }
            }
            Op::Free(i) => {
                if self.live.is_empty() {
                    return;
                }
                let (l, pool) = self.live.swap_remove(i % self.live.len());
                let f = heap.free(l.id).unwrap();
                assert_eq!((f.start, f.len, f.pool), (l.start, l.len, pool));
                assert_eq!(f.pool_empty, self.live_in(pool) == 0);
                assert_eq!(heap.get(l.id), Err(RangeError::StaleId));
                self.freed.push(l.id);
            }
            Op::Shrink(i, new_len) => {
                if self.live.is_empty() {
                    return;
                }
                let k = i % self.live.len();
                let (l, pool) = self.live[k];
                let res = heap.shrink(l.id, new_len);
                if round_up(new_len, g) > l.len {
                    assert_eq!(
                        res,
                        Err(RangeError::ShrinkTooLarge {
                            len: l.len,
                            new_len
                        })
                    );
                } else {
                    let a = res.unwrap();
                    assert_eq!((a.id, a.start, a.pool), (l.id, l.start, pool));
                    assert_eq!(a.len, round_up(new_len, g));
                    self.live[k].0.len = a.len;
                }
            }
            Op::AddPool { pages, high } => {
                if self.pools.len() < 12 {
                    self.add_pool(heap, pages, high);
                }
            }
            Op::RemovePool(i) => {
                if self.pools.len() <= 1 {
                    return;
                }
                let k = i % self.pools.len();
                let pool = self.pools[k];
                if self.live_in(pool.id) == 0 {
                    assert_eq!(heap.remove_pool(pool.id), Ok((pool.start, pool.len)));
                    assert_eq!(heap.pool_range(pool.id), None);
                    self.pools.swap_remove(k);
                } else {
                    assert_eq!(heap.remove_pool(pool.id), Err(RangeError::PoolInUse));
                }
            }
            Op::StaleFree(i) => {
                if self.freed.is_empty() {
                    return;
                }
                let id = self.freed[i % self.freed.len()];
                assert_eq!(heap.free(id), Err(RangeError::StaleId));
                assert_eq!(heap.shrink(id, 1), Err(RangeError::StaleId));
            }
        }
    }

    fn check(&self, heap: &mut RangeHeap) {
        if let Err(e) = heap.debug_validate() {
            panic!("invariant broken: {e}");
        }
        // No two live ranges overlap.
        let mut ranges: Vec<(usize, usize)> =
            self.live.iter().map(|(l, _)| (l.start, l.len)).collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {w:x?}");
        }
        for (l, pool) in &self.live {
            let a = heap.get(l.id).unwrap();
            assert_eq!((a.start, a.len, a.pool), (l.start, l.len, *pool));
        }
        // Counters.
        let pool_bytes: usize = self.pools.iter().map(|p| p.len).sum();
        let live_bytes: usize = self.live.iter().map(|(l, _)| l.len).sum();
        let free_blocks: usize = self.pools.iter().map(|p| self.gaps(p).len()).sum();
        let s = heap.stats();
        assert_eq!(
            s,
            RangeStats {
                pools: self.pools.len(),
                pool_bytes,
                live_blocks: self.live.len(),
                live_bytes,
                free_bytes: pool_bytes - live_bytes,
                free_blocks,
                metadata_bytes: s.metadata_bytes,
            }
        );
        // The documented cost: a 24-byte node per block, live or free.
        assert!(s.metadata_bytes >= 24 * (s.live_blocks + s.free_blocks));
        // Entirely free pools are one block (free_blocks above is exact, so every
        // pool is fully coalesced), and a whole-pool allocation succeeds. TLSF only
        // promises an exact fit when the fallback scan (32 blocks) sees every block.
        for pool in &self.pools {
            let empty = self.live_in(pool.id) == 0;
            assert_eq!(heap.pool_is_empty(pool.id), empty);
            if empty {
                assert_eq!(self.gaps(pool), vec![(pool.start, pool.len)]);
                match heap.allocate(pool.len, 1) {
                    Ok(a) => {
                        assert_eq!(a.len, pool.len);
                        heap.free(a.id).unwrap();
                        // Taken from a larger pool, the block was split: the tables may
                        // have grown (they never shrink).
                        let after = heap.stats();
                        assert!(after.metadata_bytes >= s.metadata_bytes);
                        assert_eq!(
                            RangeStats {
                                metadata_bytes: s.metadata_bytes,
                                ..after
                            },
                            s
                        );
                    }
                    Err(e) => assert!(
                        s.free_blocks > 32,
                        "whole-pool allocation of {:#x}: {e}",
                        pool.len
                    ),
                }
            }
        }
    }
}

fn run(granule: usize, first_pages: usize, ops: &[Op]) {
    let mut heap = RangeHeap::new(granule).unwrap();
    let mut model = Model::new(granule);
    model.add_pool(&mut heap, first_pages, false);
    model.check(&mut heap);
    for op in ops {
        model.apply(&mut heap, op);
        model.check(&mut heap);
    }
    // Free everything: every pool is one free block again and can be removed.
    for (l, _) in std::mem::take(&mut model.live) {
        heap.free(l.id).unwrap();
    }
    model.check(&mut heap);
    for pool in std::mem::take(&mut model.pools) {
        assert_eq!(heap.remove_pool(pool.id), Ok((pool.start, pool.len)));
    }
    // The tables keep their capacity.
    let metadata_bytes = heap.stats().metadata_bytes;
    assert_eq!(
        heap.stats(),
        RangeStats {
            metadata_bytes,
            ..RangeStats::default()
        }
    );
    heap.debug_validate().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matches_model(
        granule in prop::sample::select(vec![8usize, 16, 16, 64]),
        first_pages in 1usize..64,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        run(granule, first_pages, &ops);
    }
}

#[test]
fn fixed_sequence_smoke() {
    let ops = vec![
        Op::Alloc {
            len: 4999,
            align: 4096,
        },
        Op::AddPool {
            pages: 3,
            high: true,
        },
        Op::Alloc { len: 1, align: 1 },
        Op::Shrink(0, 1),
        Op::Free(0),
        Op::StaleFree(0),
        Op::RemovePool(1),
    ];
    run(16, 2, &ops);
}

#[test]
fn fragmentation() {
    const POOL: usize = 64 << 20;
    const BLOCK: usize = 128;
    let base = 0x7f00_0000_0000usize;
    let mut heap = RangeHeap::new(16).unwrap();
    let pool = heap.add_pool(base, POOL).unwrap();

    let mut live = Vec::with_capacity(POOL / BLOCK);
    while let Ok(a) = heap.allocate(BLOCK, 16) {
        live.push(a);
    }
    assert_eq!(live.len(), POOL / BLOCK);
    assert_eq!(heap.stats().free_bytes, 0);

    // Free every other block: the heap is a comb of 128-byte holes.
    let mut kept = Vec::with_capacity(live.len() / 2);
    let mut holes = 0usize;
    for (i, a) in live.into_iter().enumerate() {
        if i % 2 == 0 {
            heap.free(a.id).unwrap();
            holes += 1;
        } else {
            kept.push(a);
        }
    }
    let s = heap.stats();
    assert_eq!(s.free_blocks, holes);
    assert_eq!(s.free_bytes, holes * BLOCK);
    // Nothing larger than a hole fits anywhere.
    assert!(heap.allocate(BLOCK + 16, 16).is_err());
    // The holes are 256-aligned: an aligned request of a hole's size still fits
    // exactly, found by the bounded scan of its own size class.
    let aligned = heap.allocate(BLOCK, 256).unwrap();
    assert_eq!(aligned.start % 256, 0);
    heap.free(aligned.id).unwrap();
    heap.debug_validate().unwrap();

    // Every hole can be reused, in O(1) each.
    let mut refill = Vec::with_capacity(holes);
    for _ in 0..holes {
        let a = heap.allocate(BLOCK, 16).unwrap();
        assert_eq!(a.len, BLOCK);
        refill.push(a);
    }
    assert!(matches!(
        heap.allocate(BLOCK, 16),
        Err(RangeError::Exhausted { .. })
    ));
    assert_eq!(heap.stats().free_blocks, 0);

    // Freeing restores everything: one free block, the whole pool allocatable.
    for a in kept.into_iter().chain(refill) {
        heap.free(a.id).unwrap();
    }
    heap.debug_validate().unwrap();
    let s = heap.stats();
    assert_eq!((s.live_blocks, s.live_bytes, s.free_blocks), (0, 0, 1));
    assert!(heap.pool_is_empty(pool));
    let all = heap.allocate(POOL, 1 << 20).unwrap();
    assert_eq!((all.start, all.len), (base, POOL));
    heap.free(all.id).unwrap();
    assert_eq!(heap.remove_pool(pool), Ok((base, POOL)));
}
