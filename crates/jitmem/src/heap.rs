//! The heap behind a [`JitMemory`](crate::JitMemory): the [`Core`] every block of one memory
//! shares (its strategy's [`Rules`], page, granule, fork generation) and the [`Shard`]s that
//! hand out ranges: one per core for Pooled (chunks of 256 KiB doubling to 16 MiB, and the
//! policy that returns empty ones), one arena, or a mapping per block (PerAllocation).
//!
//! Bookkeeping lives here, out of band (a [`RangeHeap`] per shard): code pages hold no headers.
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): tracks its locks' addresses with the fork registry (they must outlive their registration).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::config::{Choice, Layout, Strategy};
use crate::error::{Error, Result};
use crate::fork;
use crate::range_heap::{PoolId, RangeError, RangeHeap, RangeId};
use crate::strategy::{Region, Rules, StrategyRules};
use crate::sync::{ForkMutex, ForkMutexGuard};
use crate::sys;

/// The allocator's smallest granule: every block is a multiple of this many bytes and at least
/// this aligned (more for strategies whose granule is larger: Toggle's is the page).
pub(crate) const MIN_GRANULE: usize = 16;
/// The first pooled chunk; each next one doubles, up to [`MAX_CHUNK`].
pub(crate) const FIRST_CHUNK: usize = 256 << 10;
const MAX_CHUNK: usize = 16 << 20;

/// Counters of a [`JitMemory`](crate::JitMemory). Reading them takes each heap's lock (Pooled,
/// Arena) or a few atomic loads (PerAllocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live blocks.
    pub live_blocks: usize,
    /// Bytes in live blocks (each rounded up to its granule: 16 bytes, or pages for Toggle and
    /// PerAllocation).
    pub live_bytes: usize,
    /// Free bytes inside reserved regions.
    pub free_bytes: usize,
    /// Bytes of address space reserved for code (physical memory is used only where touched),
    /// as the system reserves it, every view counted (a Mirror region has two: twice its
    /// length). Guard pages are not in it: see `guard_bytes`. A pooled chunk or the arena is a
    /// multiple of the reservation unit already; a PerAllocation block takes its length rounded
    /// up to that unit. The unit is the page on Linux and Apple, and the 64 KiB allocation
    /// granularity on Windows, where each PerAllocation function takes at least 64 KiB of
    /// address space (128 KiB for Mirror). On Windows only the parts blocks were handed out
    /// from are committed (in 64 KiB steps, counted against the commit limit): the rest is
    /// reserved address space with no commit charge.
    pub reserved_bytes: usize,
    /// Bytes of address space held as inaccessible guard pages: one page (Linux) or one 64 KiB
    /// allocation granule (Windows) before and after each Pooled chunk and the Arena, for each
    /// view (two views for Mirror), on platforms that make them (Linux, Windows). The address space in use is `reserved_bytes + guard_bytes`; guard
    /// pages use no memory.
    pub guard_bytes: usize,
    /// Regions (chunks, the arena, or per-allocation mappings) currently mapped. Each is one
    /// mapping, or two for Mirror.
    pub regions: usize,
    /// Pages currently open for writing (Toggle).
    pub open_pages: usize,
    /// Freed blocks kept by threads for their next allocation of the same size (the per-thread
    /// cache: at most 32 blocks of up to 1 KiB per thread and heap). Counted in `free_bytes`,
    /// not in `live_blocks`.
    pub cached_blocks: usize,
}

/// What every block and shard of one memory shares.
pub(crate) struct Core {
    pub(crate) rules: Rules,
    pub(crate) layout: Layout,
    pub(crate) page: usize,
    /// Every block is a multiple of this many bytes and at least this aligned (the strategy's
    /// granule: [`MIN_GRANULE`], or the page for Toggle).
    pub(crate) granule: usize,
    pub(crate) options: sys::MapOptions,
    pub(crate) default_align: usize,
    /// The fork generation this memory was made in.
    generation: u64,
    pub(crate) choice: Choice,
    per_allocation: PerAllocationStats,
    poison: OnceLock<String>,
}

#[derive(Default)]
struct PerAllocationStats {
    blocks: AtomicUsize,
    bytes: AtomicUsize,
    /// Address space the blocks' mappings take: each rounded up to the system's reservation
    /// granularity (64 KiB on Windows; twice that for a Mirror block, which has two views).
    reserved: AtomicUsize,
}

/// The address space a per-allocation mapping of `len` bytes takes, all views counted: Windows
/// reserves 64 KiB units (a 4 KiB Toggle block takes 64 KiB, a Mirror block two views of
/// 64 KiB), elsewhere the page-rounded length (two of them for Mirror).
fn per_allocation_reservation(core: &Core, len: usize) -> usize {
    let one = round_up(len, sys::reservation_granularity()).unwrap_or(len);
    one.saturating_mul(core.views())
}

impl Core {
    /// The common state of a memory of `choice`'s strategy and layout. No strategy has a lock
    /// of its own for the fork registry to track (Toggle's record of open scopes is per block).
    pub(crate) fn new(
        choice: Choice,
        options: sys::MapOptions,
        default_align: usize,
    ) -> Result<Arc<Core>> {
        // Every memory installs the fork handlers, whatever its strategy: the fork generation
        // (which decides what a child may do with memory made before the fork) only counts forks
        // once they are installed.
        fork::ensure_handlers()?;
        let rules = Rules::new(choice.strategy, &options)?;
        let page = sys::page_size();
        Ok(Arc::new(Core {
            granule: rules.granule(page, MIN_GRANULE),
            rules,
            layout: choice.layout,
            page,
            options,
            default_align,
            generation: fork::generation(),
            choice,
            per_allocation: PerAllocationStats::default(),
            poison: OnceLock::new(),
        }))
    }

    pub(crate) fn strategy(&self) -> Strategy {
        self.rules.strategy()
    }

    /// How many views (reservations of address space) each region has: two for Mirror.
    fn views(&self) -> usize {
        if self.strategy() == Strategy::Mirror {
            2
        } else {
            1
        }
    }

    /// Refuses work on memory that a fork child may not use (the strategy's fork policy) or
    /// that was poisoned.
    pub(crate) fn check_usable(&self) -> Result<()> {
        if !self.usable_in_this_process() {
            return Err(Error::ForkedChild {
                strategy: self.strategy(),
            });
        }
        if let Some(why) = self.poison.get() {
            return Err(Error::Poisoned(why.clone()));
        }
        Ok(())
    }

    /// False in a fork child for memory made before the fork whose strategy does not survive
    /// it: its writable views (Mirror) or write rights (Apple MAP_JIT) are not the child's.
    pub(crate) fn usable_in_this_process(&self) -> bool {
        self.rules.child_keeps_memory() || fork::generation() == self.generation
    }

    pub(crate) fn poison(&self, why: String) {
        let _ = self.poison.set(why);
    }

    pub(crate) fn per_allocation_freed(&self, len: usize) {
        self.per_allocation.blocks.fetch_sub(1, Ordering::Relaxed);
        self.per_allocation.bytes.fetch_sub(len, Ordering::Relaxed);
        self.per_allocation
            .reserved
            .fetch_sub(per_allocation_reservation(self, len), Ordering::Relaxed);
    }
}

/// Where a block's memory came from.
pub(crate) enum Owner {
    /// A range of a pooled chunk or of the arena.
    Range(RangeId),
    /// Its own mapping (PerAllocation); dropping it unmaps the block.
    Region(Box<Region>),
    /// Given up: the block's drop found it unsafe to reuse or unmap (see `CodeBlock`'s Drop).
    Leaked,
}

/// A range handed out by a shard: what a [`CodeBlock`](crate::CodeBlock) is made of.
pub(crate) struct Allocation {
    pub(crate) rx: NonNull<u8>,
    pub(crate) len: usize,
    pub(crate) writable_offset: isize,
    pub(crate) owner: Owner,
}

/// A heap and the core its blocks need; blocks hold their shard alive.
pub(crate) struct Shard {
    pub(crate) core: Arc<Core>,
    /// Behind a fork-aware lock, tracked by the fork registry for the shard's life. None for
    /// PerAllocation, whose blocks are mappings of their own.
    heap: Option<ForkMutex<Heap>>,
}

/// What one thread's cache holds of one shard's ranges ([`crate::thread_cache`]), packed: blocks
/// above [`CACHED_BLOCK_SHIFT`], bytes below. Written only by its thread (a load and a store, no
/// read-modify-write), read by [`Shard::add_stats`] under the heap's lock.
#[derive(Default)]
pub(crate) struct CacheCell(AtomicU64);

/// Where the block count starts in a [`CacheCell`] (bytes below: up to 1 TiB).
const CACHED_BLOCK_SHIFT: u32 = 40;

impl CacheCell {
    /// A range of `len` bytes entered the cache. Only the owning thread calls this.
    pub(crate) fn add(&self, len: usize) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(
            v.wrapping_add((1 << CACHED_BLOCK_SHIFT) | len as u64),
            Ordering::Relaxed,
        );
    }

    /// A range of `len` bytes left the cache. Only the owning thread calls this.
    pub(crate) fn sub(&self, len: usize) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(
            v.wrapping_sub((1 << CACHED_BLOCK_SHIFT) | len as u64),
            Ordering::Relaxed,
        );
    }

    fn blocks_and_bytes(&self) -> (usize, usize) {
        let v = self.0.load(Ordering::Relaxed);
        (
            (v >> CACHED_BLOCK_SHIFT) as usize,
            (v & ((1 << CACHED_BLOCK_SHIFT) - 1)) as usize,
        )
    }
}

/// The sub-allocated regions of the Pooled and Arena layouts.
struct Heap {
    ranges: RangeHeap,
    chunks: Vec<Chunk>,
    next_chunk: usize,
    /// The cells of the threads whose caches hold (or held) ranges of this heap.
    cells: Vec<Arc<CacheCell>>,
}

struct Chunk {
    pool: PoolId,
    region: Region,
}

impl Heap {
    /// A heap; with `first`, maps its first chunk of that many bytes now.
    fn new(core: &Core, first: Option<usize>, next_chunk: usize) -> Result<Heap> {
        let mut heap = Heap {
            ranges: RangeHeap::new(core.granule).map_err(range_error)?,
            chunks: Vec::new(),
            next_chunk,
            cells: Vec::new(),
        };
        if let Some(first) = first {
            heap.add_chunk(core, first)?;
        }
        Ok(heap)
    }

    fn chunk(&self, pool: PoolId) -> Result<&Chunk> {
        self.chunks
            .iter()
            .find(|c| c.pool == pool)
            .ok_or(Error::Internal("allocation from an unknown chunk"))
    }

    fn add_chunk(&mut self, core: &Core, len: usize) -> Result<()> {
        // The range heap takes pools of up to 2^32 - 1 granules: refuse before mapping.
        if len > self.ranges.max_pool_len() {
            return Err(Error::TooLarge { len });
        }
        let region = core.rules.map_region(len, 0, core.options)?;
        let pool = self
            .ranges
            .add_pool(region.rx().as_ptr() as usize, len)
            .map_err(range_error)?;
        self.chunks.push(Chunk { pool, region });
        Ok(())
    }
}

pub(crate) fn range_error(e: RangeError) -> Error {
    match e {
        RangeError::ZeroLength => Error::ZeroLength,
        RangeError::TooLarge { len } | RangeError::PoolTooLarge { len, .. } => {
            Error::TooLarge { len }
        }
        RangeError::BadAlignment(align) => Error::BadAlignment {
            align,
            page_size: sys::page_size(),
        },
        _ => Error::Internal("range heap refused a request we checked"),
    }
}

impl Shard {
    /// A shard of `core`; `heap`: None (PerAllocation), or the first chunk's size (mapped now)
    /// and the next chunk's.
    pub(crate) fn new(
        core: &Arc<Core>,
        heap: Option<(Option<usize>, usize)>,
    ) -> Result<Arc<Shard>> {
        let heap = match heap {
            Some((first, next)) => Some(ForkMutex::new(Heap::new(core, first, next)?)),
            None => None,
        };
        let shard = Arc::new(Shard {
            core: Arc::clone(core),
            heap,
        });
        if let Some(heap) = &shard.heap {
            // SAFETY: the lock lives inside the Arc'd Shard (a stable address) and is untracked
            // in Shard's Drop; no tracked lock is held here.
            unsafe { fork::track_lock(heap.raw())? };
        }
        Ok(shard)
    }

    /// Hands out `len` bytes aligned to `align` (both checked by the caller: `len > 0`,
    /// `align` a power of two up to the page).
    pub(crate) fn allocate(&self, len: usize, align: usize) -> Result<Allocation> {
        let core = &self.core;
        let Some(heap) = &self.heap else {
            let rounded = round_up(len, core.page)
                .filter(|n| *n <= isize::MAX as usize)
                .ok_or(Error::TooLarge { len })?;
            let region = core.rules.map_region(rounded, rounded, core.options)?;
            core.per_allocation.blocks.fetch_add(1, Ordering::Relaxed);
            core.per_allocation
                .bytes
                .fetch_add(rounded, Ordering::Relaxed);
            core.per_allocation
                .reserved
                .fetch_add(per_allocation_reservation(core, rounded), Ordering::Relaxed);
            return Ok(Allocation {
                rx: region.rx(),
                len: rounded,
                writable_offset: region.writable_offset(),
                owner: Owner::Region(Box::new(region)),
            });
        };
        let mut heap = heap.lock();
        let allocation = match heap.ranges.allocate(len, align) {
            Ok(a) => a,
            Err(RangeError::Exhausted { .. }) => match core.layout {
                Layout::Arena { size } => {
                    return Err(Error::Exhausted {
                        len,
                        align,
                        arena: size,
                        free: heap.ranges.stats().free_bytes,
                    });
                }
                _ => {
                    // Policy: chunks double (from 256 KiB) up to 16 MiB, or fit the request.
                    let need = len
                        .checked_add(align)
                        .and_then(|n| round_up(n, core.page))
                        .filter(|n| *n <= isize::MAX as usize)
                        .ok_or(Error::TooLarge { len })?;
                    let size = heap.next_chunk.max(need);
                    heap.add_chunk(core, size)?;
                    heap.next_chunk = (heap.next_chunk * 2).min(MAX_CHUNK);
                    heap.ranges.allocate(len, align).map_err(range_error)?
                }
            },
            Err(e) => return Err(range_error(e)),
        };
        let chunk = heap.chunk(allocation.pool)?;
        let base = chunk.region.rx().as_ptr() as usize;
        let end = allocation.start + allocation.len - base;
        // Commit on demand (Windows): the range's pages are committed before it is handed out;
        // if the system refuses (its commit limit), the range goes back and the caller gets the
        // OS error, nothing is left half-usable.
        if let Err(e) = chunk.region.ensure_committed(end) {
            heap.ranges
                .free(allocation.id)
                .map_err(|_| Error::Internal("a range just allocated could not be freed"))?;
            return Err(e);
        }
        chunk.region.note_used(end);
        let writable_offset = chunk.region.writable_offset();
        drop(heap);
        let rx = NonNull::new(allocation.start as *mut u8).ok_or(Error::Internal("null block"))?;
        Ok(Allocation {
            rx,
            len: allocation.len,
            writable_offset,
            owner: Owner::Range(allocation.id),
        })
    }

    fn heap(&self) -> Result<ForkMutexGuard<'_, Heap>> {
        Ok(self
            .heap
            .as_ref()
            .ok_or(Error::Internal("range block without a heap"))?
            .lock())
    }

    /// Returns a block's range to the heap (the caller has already filled it with traps).
    pub(crate) fn free_range(&self, id: RangeId) -> Result<()> {
        self.free_range_from(id, None)
    }

    /// Returns a range a thread's cache held (`len` bytes) to the heap: the cache count drops
    /// under the heap's lock, so that [`add_stats`](Self::add_stats) never sees the range both
    /// live and uncached.
    pub(crate) fn free_cached_range(
        &self,
        id: RangeId,
        cell: &CacheCell,
        len: usize,
    ) -> Result<()> {
        self.free_range_from(id, Some((cell, len)))
    }

    fn free_range_from(&self, id: RangeId, cached: Option<(&CacheCell, usize)>) -> Result<()> {
        let mut guard = self.heap()?;
        let freed = guard
            .ranges
            .free(id)
            .map_err(|_| Error::Internal("double free of a block"))?;
        if let Some((cell, len)) = cached {
            cell.sub(len);
        }
        if freed.pool_empty && self.core.layout == Layout::Pooled {
            // Policy: keep one empty chunk to absorb alloc/free churn; release any other.
            let other_empty = guard
                .chunks
                .iter()
                .any(|c| c.pool != freed.pool && guard.ranges.pool_is_empty(c.pool));
            if other_empty {
                guard.ranges.remove_pool(freed.pool).map_err(range_error)?;
                let i = guard
                    .chunks
                    .iter()
                    .position(|c| c.pool == freed.pool)
                    .ok_or(Error::Internal("empty pool without a chunk"))?;
                let chunk = guard.chunks.swap_remove(i);
                drop(guard);
                drop(chunk);
            }
        }
        Ok(())
    }

    /// A new thread cache's cell for this shard, counted by [`add_stats`](Self::add_stats)
    /// until [`unregister_cell`](Self::unregister_cell).
    pub(crate) fn register_cell(&self) -> Result<Arc<CacheCell>> {
        let cell = Arc::new(CacheCell::default());
        self.heap()?.cells.push(Arc::clone(&cell));
        Ok(cell)
    }

    /// Forgets a thread cache's cell (its ranges were given back).
    pub(crate) fn unregister_cell(&self, cell: &Arc<CacheCell>) {
        if let Ok(mut heap) = self.heap() {
            heap.cells.retain(|c| !Arc::ptr_eq(c, cell));
        }
    }

    /// Shrinks a heap block in place; returns its new length.
    pub(crate) fn shrink_range(&self, id: RangeId, new_len: usize) -> Result<usize> {
        let a = self
            .heap()?
            .ranges
            .shrink(id, new_len)
            .map_err(|_| Error::Internal("shrink of an unknown block"))?;
        Ok(a.len)
    }

    /// Adds this shard's counters to `stats`.
    pub(crate) fn add_stats(&self, stats: &mut Stats) {
        match &self.heap {
            None => {
                let pa = &self.core.per_allocation;
                let blocks = pa.blocks.load(Ordering::Relaxed);
                let bytes = pa.bytes.load(Ordering::Relaxed);
                stats.live_blocks += blocks;
                stats.live_bytes += bytes;
                stats.reserved_bytes += pa.reserved.load(Ordering::Relaxed);
                stats.regions += blocks;
            }
            Some(heap) => {
                let h = heap.lock();
                let s = h.ranges.stats();
                // Ranges in threads' caches are free to the user: the heap counts them live.
                let (cached_blocks, cached_bytes) = h
                    .cells
                    .iter()
                    .map(|c| c.blocks_and_bytes())
                    .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
                stats.live_blocks += s.live_blocks.saturating_sub(cached_blocks);
                stats.live_bytes += s.live_bytes.saturating_sub(cached_bytes);
                stats.free_bytes += s.free_bytes + cached_bytes;
                stats.cached_blocks += cached_blocks;
                stats.reserved_bytes += s.pool_bytes.saturating_mul(self.core.views());
                stats.guard_bytes += h
                    .chunks
                    .iter()
                    .map(|c| c.region.guard_bytes())
                    .sum::<usize>();
                stats.regions += h.chunks.len();
            }
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(heap) = &self.heap {
            fork::untrack_lock(heap.raw());
        }
    }
}

pub(crate) fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|n| n & !(to - 1))
}
