//! Fuzzes `jitmem::range_heap::RangeHeap` with operation sequences decoded from the raw
//! input, checking it against a small model after every operation. Any panic, in the
//! heap or in a check, is a finding.
//!
//! Run (nightly): `cd crates/jitmem/fuzz && cargo +nightly fuzz run range_heap_ops`

#![no_main]

use jitmem::range_heap::{PoolId, RangeError, RangeHeap, RangeId, RangeStats};
use libfuzzer_sys::fuzz_target;

/// Reads little-endian integers from the input; zeros once it is used up.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    fn usize(&mut self) -> usize {
        self.u64() as usize
    }

    fn pick(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.u16()) % n
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pool {
    id: PoolId,
    start: usize,
    len: usize,
}

#[derive(Clone, Copy, Debug)]
struct Live {
    id: RangeId,
    start: usize,
    len: usize,
    pool: PoolId,
}

struct Model {
    g: usize,
    pools: Vec<Pool>,
    removed: Vec<PoolId>,
    live: Vec<Live>,
    freed: Vec<RangeId>,
}

fn round_up(len: usize, g: usize) -> Option<usize> {
    len.checked_add(g - 1).map(|v| v & !(g - 1))
}

/// Whether `size` bytes aligned to `align` fit in the free run `[start, start + len)`.
fn fits(start: usize, len: usize, size: usize, align: usize) -> bool {
    let pad = start.wrapping_neg() & (align - 1);
    pad <= len && len - pad >= size
}

impl Model {
    fn live_in(&self, pool: PoolId) -> usize {
        self.live.iter().filter(|l| l.pool == pool).count()
    }

    fn gaps(&self, pool: &Pool) -> Vec<(usize, usize)> {
        let mut ranges: Vec<(usize, usize)> = self
            .live
            .iter()
            .filter(|l| l.pool == pool.id)
            .map(|l| (l.start, l.len))
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
        let end = pool.start + pool.len;
        if cursor < end {
            gaps.push((cursor, end - cursor));
        }
        gaps
    }

    /// What `add_pool` must answer: `Err(None)` for a bad pool, `Err(Some(max))` for one
    /// of more than `2^32 - 1` granules (checked after the shape, before overlaps).
    fn pool_check(&self, start: usize, len: usize) -> Result<(), Option<usize>> {
        let mask = self.g - 1;
        if len == 0 || start & mask != 0 || len & mask != 0 {
            return Err(None);
        }
        let Some(end) = start.checked_add(len) else {
            return Err(None);
        };
        if len / self.g > u32::MAX as usize {
            return Err(Some(u32::MAX as usize * self.g));
        }
        if self
            .pools
            .iter()
            .all(|p| end <= p.start || p.start + p.len <= start)
        {
            Ok(())
        } else {
            Err(None)
        }
    }

    fn add_pool(&mut self, heap: &mut RangeHeap, start: usize, len: usize) {
        let expected = self.pool_check(start, len);
        match heap.add_pool(start, len) {
            Ok(id) => {
                assert_eq!(expected, Ok(()), "accepted bad pool {start:#x}+{len:#x}");
                assert_eq!(heap.pool_range(id), Some((start, len)));
                self.pools.push(Pool { id, start, len });
            }
            Err(RangeError::BadPool { .. }) => assert_eq!(
                expected,
                Err(None),
                "rejected good pool {start:#x}+{len:#x}"
            ),
            Err(RangeError::PoolTooLarge { len: l, max }) => {
                assert_eq!(l, len);
                assert_eq!(expected, Err(Some(max)), "pool {start:#x}+{len:#x}");
            }
            Err(e) => panic!("add_pool: unexpected {e:?}"),
        }
    }

    fn allocate(&mut self, heap: &mut RangeHeap, len: usize, align: usize) {
        let g = self.g;
        let res = heap.allocate(len, align);
        if len == 0 {
            assert_eq!(res, Err(RangeError::ZeroLength));
            return;
        }
        if !align.is_power_of_two() {
            assert_eq!(res, Err(RangeError::BadAlignment(align)));
            return;
        }
        let eff = align.max(g);
        let Some(search) = round_up(len, g).and_then(|s| s.checked_add(eff - g)) else {
            assert_eq!(res, Err(RangeError::TooLarge { len }));
            return;
        };
        let size = search - (eff - g);
        match res {
            Ok(a) => {
                assert_eq!(a.len, size);
                assert_eq!(a.start % eff, 0, "start {:#x} align {eff}", a.start);
                let pool = self
                    .pools
                    .iter()
                    .find(|p| p.id == a.pool)
                    .expect("allocation in an unknown pool");
                assert!(a.start >= pool.start && a.start + a.len <= pool.start + pool.len);
                assert_eq!(heap.get(a.id), Ok(a));
                self.live.push(Live {
                    id: a.id,
                    start: a.start,
                    len: a.len,
                    pool: a.pool,
                });
            }
            Err(RangeError::Exhausted { len: l, align: al }) => {
                assert_eq!((l, al), (len, align));
                // Good fit never misses a block comfortably above the class-rounded
                // search size, and with at most 32 free blocks the fallback scan sees
                // every block that could fit.
                let comfortable = search.saturating_add(search / 8).saturating_add(g);
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
            Err(e) => panic!("allocate({len}, {align}): unexpected {e:?}"),
        }
    }

    fn check(&self, heap: &mut RangeHeap) {
        if let Err(e) = heap.debug_validate() {
            panic!("invariant broken: {e}");
        }
        let mut ranges: Vec<(usize, usize)> = self.live.iter().map(|l| (l.start, l.len)).collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {w:x?}");
        }
        let pool_bytes: usize = self.pools.iter().map(|p| p.len).sum();
        let live_bytes: usize = self.live.iter().map(|l| l.len).sum();
        let free_blocks: usize = self.pools.iter().map(|p| self.gaps(p).len()).sum();
        let stats = heap.stats();
        assert_eq!(
            stats,
            RangeStats {
                pools: self.pools.len(),
                pool_bytes,
                live_blocks: self.live.len(),
                live_bytes,
                free_bytes: pool_bytes - live_bytes,
                free_blocks,
                metadata_bytes: stats.metadata_bytes,
            }
        );
        // The documented cost: a 24-byte node per block, live or free.
        assert!(stats.metadata_bytes >= 24 * (stats.live_blocks + stats.free_blocks));
        for pool in &self.pools {
            let empty = self.live_in(pool.id) == 0;
            assert_eq!(heap.pool_is_empty(pool.id), empty);
            if empty {
                // Fully coalesced (free_blocks above is exact): the whole pool is
                // allocatable in one piece whenever the fallback scan sees every block.
                assert_eq!(self.gaps(pool), vec![(pool.start, pool.len)]);
                match heap.allocate(pool.len, 1) {
                    Ok(a) => {
                        assert_eq!(a.len, pool.len);
                        assert!(heap.free(a.id).is_ok());
                        // Taken from a larger pool, the block was split: the node table
                        // may have grown (it never shrinks).
                        let after = heap.stats();
                        assert!(after.metadata_bytes >= stats.metadata_bytes);
                        assert_eq!(
                            RangeStats {
                                metadata_bytes: stats.metadata_bytes,
                                ..after
                            },
                            stats
                        );
                    }
                    Err(e) => assert!(
                        stats.free_blocks > 32,
                        "whole-pool allocation of {:#x}: {e}",
                        pool.len
                    ),
                }
            }
        }
        for &id in &self.removed {
            assert_eq!(heap.pool_range(id), None);
            assert!(!heap.pool_is_empty(id));
        }
    }
}

const ALIGNS: [usize; 16] = [
    0,
    1,
    3,
    8,
    16,
    32,
    64,
    128,
    4096,
    65536,
    1 << 20,
    1 << 30,
    usize::MAX / 2 + 1,
    usize::MAX,
    24,
    16,
];

fn run(data: &[u8]) {
    let mut input = Input { data };
    let g = 8usize << (input.u8() % 4);
    let mut heap = RangeHeap::new(g).expect("valid granule");
    let mut model = Model {
        g,
        pools: Vec::new(),
        removed: Vec::new(),
        live: Vec::new(),
        freed: Vec::new(),
    };
    model.add_pool(&mut heap, 0x1_0000_0000, 1 << 20);
    let mut ops = 0;
    while !input.is_empty() && ops < 2000 {
        ops += 1;
        match input.u8() % 10 {
            0..=2 => {
                let kind = input.u8();
                let len = match kind % 8 {
                    0 => usize::MAX - usize::from(input.u8()),
                    1 => usize::from(input.u16()) << (input.u8() % 24),
                    _ => usize::from(input.u16() % 5000),
                };
                let align = if kind & 0x80 != 0 {
                    1usize << (input.u8() % 64)
                } else {
                    ALIGNS[usize::from(input.u8()) % ALIGNS.len()]
                };
                model.allocate(&mut heap, len, align);
            }
            3 | 4 => {
                if model.live.is_empty() {
                    continue;
                }
                let k = input.pick(model.live.len());
                let l = model.live.swap_remove(k);
                let f = heap.free(l.id).expect("free of a live id");
                assert_eq!((f.start, f.len, f.pool), (l.start, l.len, l.pool));
                assert_eq!(f.pool_empty, model.live_in(l.pool) == 0);
                model.freed.push(l.id);
            }
            5 => {
                if model.live.is_empty() {
                    continue;
                }
                let k = input.pick(model.live.len());
                let new_len = match input.u8() % 4 {
                    0 => usize::MAX - usize::from(input.u8()),
                    _ => usize::from(input.u16()),
                };
                let l = model.live[k];
                let res = heap.shrink(l.id, new_len);
                if new_len == 0 {
                    assert_eq!(res, Err(RangeError::ZeroLength));
                } else {
                    match round_up(new_len, g) {
                        Some(n) if n <= l.len => {
                            let a = res.expect("valid shrink");
                            assert_eq!((a.id, a.start, a.len, a.pool), (l.id, l.start, n, l.pool));
                            model.live[k].len = n;
                        }
                        _ => assert_eq!(
                            res,
                            Err(RangeError::ShrinkTooLarge {
                                len: l.len,
                                new_len
                            })
                        ),
                    }
                }
            }
            6 => {
                if model.pools.len() >= 16 {
                    continue;
                }
                let (start, len) = match input.u8() % 5 {
                    // Anywhere, possibly unaligned or overlapping.
                    0 => (input.usize(), usize::from(input.u16()) * input.pick(4 * g)),
                    // Around the largest pool, 2^32 - 1 granules (not a page is touched).
                    4 => {
                        let granules = (u32::MAX as usize - 2).saturating_add(input.pick(5));
                        (
                            0x1000_0000_0000usize.saturating_mul(1 + input.pick(8)),
                            granules.saturating_mul(g),
                        )
                    }
                    // Near the top of the address space.
                    1 => {
                        let len = (usize::from(input.u16()) + 1) * g;
                        let below = usize::from(input.u16()) * g;
                        (
                            usize::MAX.wrapping_sub(len).wrapping_sub(below) & !(g - 1),
                            len,
                        )
                    }
                    // Adjacent to (or overlapping) an existing pool.
                    _ => {
                        let len = (usize::from(input.u16()) + 1) * g;
                        let p = model.pools.get(input.pick(model.pools.len())).copied();
                        match p {
                            Some(p) if input.u8() % 2 == 0 => (p.start.wrapping_add(p.len), len),
                            Some(p) => (p.start.wrapping_sub(len), len),
                            None => (0x2_0000_0000, len),
                        }
                    }
                };
                model.add_pool(&mut heap, start, len);
            }
            7 => {
                if input.u8() % 4 == 0 && !model.removed.is_empty() {
                    let id = model.removed[input.pick(model.removed.len())];
                    assert!(matches!(
                        heap.remove_pool(id),
                        Err(RangeError::BadPool { .. })
                    ));
                    continue;
                }
                if model.pools.is_empty() {
                    continue;
                }
                let k = input.pick(model.pools.len());
                let p = model.pools[k];
                if model.live_in(p.id) == 0 {
                    assert_eq!(heap.remove_pool(p.id), Ok((p.start, p.len)));
                    model.pools.swap_remove(k);
                    model.removed.push(p.id);
                } else {
                    assert_eq!(heap.remove_pool(p.id), Err(RangeError::PoolInUse));
                }
            }
            _ => {
                if model.freed.is_empty() {
                    continue;
                }
                let id = model.freed[input.pick(model.freed.len())];
                assert_eq!(heap.free(id), Err(RangeError::StaleId));
                assert_eq!(heap.get(id), Err(RangeError::StaleId));
                assert_eq!(heap.shrink(id, 1), Err(RangeError::StaleId));
            }
        }
        model.check(&mut heap);
    }
    // Free everything; every pool must then be removable.
    for l in std::mem::take(&mut model.live) {
        assert!(heap.free(l.id).is_ok());
    }
    model.check(&mut heap);
    for p in std::mem::take(&mut model.pools) {
        assert_eq!(heap.remove_pool(p.id), Ok((p.start, p.len)));
    }
    // The node table keeps its capacity.
    let metadata_bytes = heap.stats().metadata_bytes;
    assert_eq!(
        heap.stats(),
        RangeStats {
            metadata_bytes,
            ..RangeStats::default()
        }
    );
}

fuzz_target!(|data: &[u8]| run(data));
