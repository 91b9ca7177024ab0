//! [`JitMemory`]: the allocator of code blocks, for one strategy and one layout.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::block::{CodeBlock, Owner};
use crate::config::{Config, Layout, Strategy};
use crate::error::{Error, Result};
use crate::fork;
use crate::probe;
use crate::range_heap::{PoolId, RangeError, RangeHeap};
use crate::region::Region;
use crate::rights::Rights;
use crate::sync::{ForkMutex, ForkMutexGuard};
use crate::sys;

/// Every block is a multiple of this many bytes and at least this aligned.
pub(crate) const GRANULE: usize = 16;
/// The first pooled chunk; each next one doubles, up to [`MAX_CHUNK`].
const FIRST_CHUNK: usize = 256 << 10;
const MAX_CHUNK: usize = 16 << 20;

/// Executable memory for one JIT: hands out [`CodeBlock`]s.
///
/// Cheap to clone (a reference count); `Send + Sync`. Any thread may allocate, write, publish,
/// run and free blocks at the same time as the others, in every strategy and layout: a write
/// scope or a free never stops another thread running a *different* block. The one restriction
/// is Toggle's: a block whose write scope is open must not run meanwhile (its pages are not
/// executable then; see [`CodeBlock::entry`]). Blocks keep the memory alive, so a `JitMemory`
/// may be dropped before its blocks. Across `fork()`, see [`fork_safety`](crate::fork_safety).
///
/// ```
/// # fn main() -> jitmem::Result<()> {
/// use jitmem::{Config, JitMemory};
/// let memory = JitMemory::new(Config::new())?;
/// let mut block = memory.allocate(16)?;
/// {
///     let mut scope = block.write()?;
///     scope[..16].copy_from_slice(&jitmem::isa::return_constant(42));
///     scope.publish()?;
/// }
/// // SAFETY: the block holds a complete `extern "C" fn() -> u32`.
/// let f: extern "C" fn() -> u32 = unsafe { block.entry(0)? };
/// assert_eq!(f(), 42);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JitMemory {
    shared: Arc<Shared>,
    /// One heap per shard. Pooled memory has one shard per core (up to 8): each thread
    /// allocates from the shard of its slot (round-robin), so up to that many threads do not
    /// share a lock or a chunk. Arena and PerAllocation have one.
    shards: Arc<[Arc<Shard>]>,
}

/// Up to this many Pooled shards.
const MAX_SHARDS: usize = 8;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot: threads are spread over the shards round-robin.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

/// A heap and the common state its blocks need; blocks hold their shard alive.
pub(crate) struct Shard {
    pub(crate) shared: Arc<Shared>,
    /// Behind a fork-aware lock, tracked by the fork registry for the shard's life.
    heap: Option<ForkMutex<Heap>>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(heap) = &self.heap {
            fork::untrack_lock(heap.raw());
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(lock) = self.rights.fork_lock() {
            fork::untrack_lock(lock);
        }
    }
}

/// Why this memory uses the strategy and layout it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The strategy in use.
    pub strategy: Strategy,
    /// The layout in use.
    pub layout: Layout,
    /// Why, in words.
    pub reason: String,
}

/// Counters of a [`JitMemory`]. Reading them takes the heap lock (Pooled, Arena) or a few
/// atomic loads (PerAllocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live blocks.
    pub live_blocks: usize,
    /// Bytes in live blocks (each rounded up to 16 bytes, or to pages for PerAllocation).
    pub live_bytes: usize,
    /// Free bytes inside reserved regions.
    pub free_bytes: usize,
    /// Bytes of address space reserved (physical memory is used only where touched).
    pub reserved_bytes: usize,
    /// Regions (chunks, the arena, or per-allocation mappings) currently mapped. Each is one
    /// mapping, or two for Mirror.
    pub regions: usize,
    /// Pages currently open for writing (Toggle).
    pub open_pages: usize,
}

pub(crate) struct Shared {
    pub(crate) strategy: Strategy,
    pub(crate) layout: Layout,
    pub(crate) rights: Rights,
    pub(crate) page: usize,
    /// Every block is a multiple of this many bytes and at least this aligned: [`GRANULE`],
    /// or the page for Toggle, whose blocks never share a page (a write scope or a trap fill
    /// flips whole pages, and must never make a neighbour's code non-executable).
    pub(crate) granule: usize,
    options: sys::MapOptions,
    default_align: usize,
    /// The fork generation this memory was made in.
    generation: u64,
    choice: Choice,
    per_allocation: PerAllocationStats,
    poison: OnceLock<String>,
}

#[derive(Default)]
struct PerAllocationStats {
    blocks: AtomicUsize,
    bytes: AtomicUsize,
}

/// The sub-allocated regions of the Pooled and Arena layouts.
struct Heap {
    ranges: RangeHeap,
    chunks: Vec<Chunk>,
    next_chunk: usize,
}

struct Chunk {
    pool: PoolId,
    region: Region,
}

impl Heap {
    fn chunk(&self, pool: PoolId) -> Result<&Chunk> {
        self.chunks
            .iter()
            .find(|c| c.pool == pool)
            .ok_or(Error::Internal("allocation from an unknown chunk"))
    }

    fn add_chunk(
        &mut self,
        strategy: Strategy,
        len: usize,
        options: sys::MapOptions,
    ) -> Result<()> {
        let region = Region::map(strategy, len, 0, options)?;
        let pool = self
            .ranges
            .add_pool(region.rx().as_ptr() as usize, len)
            .map_err(range_error)?;
        self.chunks.push(Chunk { pool, region });
        Ok(())
    }
}

fn range_error(e: RangeError) -> Error {
    match e {
        RangeError::ZeroLength => Error::ZeroLength,
        RangeError::TooLarge { len } => Error::TooLarge { len },
        RangeError::BadAlignment(align) => Error::BadAlignment {
            align,
            page_size: sys::page_size(),
        },
        _ => Error::Internal("range heap refused a request we checked"),
    }
}

impl JitMemory {
    /// Creates code memory as `config` says. With `Strategy::Auto` the [probe](crate::probe)
    /// picks (once per process); an explicit strategy the platform refuses gives
    /// [`Error::Unsupported`] with the reason. Pooled and Arena map their first region now
    /// (system calls); PerAllocation maps and unmaps one trial page.
    pub fn new(config: Config) -> Result<JitMemory> {
        let config = config.with_environment()?;
        let page = sys::page_size();
        if !config.default_align.is_power_of_two() || config.default_align > page {
            return Err(Error::BadAlignment {
                align: config.default_align,
                page_size: page,
            });
        }
        let choice = resolve(&config)?;
        let strategy = choice.strategy;
        if strategy == Strategy::Rwx && !config.rwx_opt_in {
            return Err(Error::RwxNotOptedIn);
        }
        let rights = Rights::for_strategy(strategy)?;
        let unsupported = |e: Error| match e {
            e @ (Error::Unsupported { .. } | Error::MappingLimit { .. }) => e,
            e => Error::Unsupported {
                strategy,
                reason: sys::error_chain(&e),
            },
        };
        let options = shared_options(&config);
        let granule = if strategy == Strategy::Toggle {
            page
        } else {
            GRANULE
        };
        let shared = Arc::new(Shared {
            strategy,
            layout: choice.layout,
            rights,
            page,
            granule,
            options,
            default_align: config.default_align,
            generation: fork::generation(),
            choice,
            per_allocation: PerAllocationStats::default(),
            poison: OnceLock::new(),
        });
        let new_heap = |first: Option<usize>, next_chunk: usize| -> Result<Heap> {
            let mut heap = Heap {
                ranges: RangeHeap::new(granule).map_err(range_error)?,
                chunks: Vec::new(),
                next_chunk,
            };
            if let Some(first) = first {
                heap.add_chunk(strategy, first, options)
                    .map_err(unsupported)?;
            }
            Ok(heap)
        };
        if let Some(lock) = shared.rights.fork_lock() {
            // SAFETY: the lock lives inside the Arc'd Shared (a stable address) and is
            // untracked in Shared's Drop; no tracked lock is held here.
            unsafe { fork::track_lock(lock)? };
        }
        let shard = |heap: Option<Heap>| -> Result<Arc<Shard>> {
            let shard = Arc::new(Shard {
                shared: Arc::clone(&shared),
                heap: heap.map(ForkMutex::new),
            });
            if let Some(heap) = &shard.heap {
                // SAFETY: the lock lives inside the Arc'd Shard (a stable address) and is
                // untracked in Shard's Drop; no tracked lock is held here.
                unsafe { fork::track_lock(heap.raw())? };
            }
            Ok(shard)
        };
        let shards: Vec<Arc<Shard>> = match shared.layout {
            Layout::PerAllocation => {
                drop(Region::map(strategy, page, page, options).map_err(unsupported)?);
                vec![shard(None)?]
            }
            Layout::Arena { size } => {
                let size = round_up(size.max(1), page).ok_or(Error::TooLarge { len: size })?;
                vec![shard(Some(new_heap(Some(size), 0)?))?]
            }
            Layout::Pooled => {
                let first = FIRST_CHUNK.max(page);
                let count = std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .clamp(1, MAX_SHARDS);
                // The first shard maps its first chunk now, which also proves the strategy
                // works; the others map theirs when a thread first allocates from them.
                let mut shards = vec![shard(Some(new_heap(Some(first), first * 2)?))?];
                for _ in 1..count {
                    shards.push(shard(Some(new_heap(None, first)?))?);
                }
                shards
            }
        };
        Ok(JitMemory {
            shared,
            shards: shards.into(),
        })
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.shared.strategy
    }

    /// The layout in use.
    pub fn layout(&self) -> Layout {
        self.shared.layout
    }

    /// The strategy and layout in use, and why.
    pub fn choice(&self) -> &Choice {
        &self.shared.choice
    }

    /// Allocates a block of `len` bytes at the default alignment (16 bytes unless configured).
    /// Pooled and Arena: a lock and O(1) bookkeeping (plus a new chunk's `mmap` when the
    /// pool is full); PerAllocation: a mapping (2-6 system calls).
    pub fn allocate(&self, len: usize) -> Result<CodeBlock> {
        self.allocate_aligned(len, self.shared.default_align)
    }

    /// Allocates a block of `len` bytes whose executable address is a multiple of `align` (a
    /// power of two up to the page size).
    pub fn allocate_aligned(&self, len: usize, align: usize) -> Result<CodeBlock> {
        let shared = &self.shared;
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        // No mapping can be larger than isize::MAX bytes.
        if len > isize::MAX as usize {
            return Err(Error::TooLarge { len });
        }
        if !align.is_power_of_two() || align > shared.page {
            return Err(Error::BadAlignment {
                align,
                page_size: shared.page,
            });
        }
        shared.check_usable()?;
        let shard = self.shard();
        let Some(heap) = &shard.heap else {
            let rounded = round_up(len, shared.page).ok_or(Error::TooLarge { len })?;
            if rounded > isize::MAX as usize {
                return Err(Error::TooLarge { len });
            }
            let region = Region::map(shared.strategy, rounded, rounded, shared.options)?;
            shared.per_allocation.blocks.fetch_add(1, Ordering::Relaxed);
            shared
                .per_allocation
                .bytes
                .fetch_add(rounded, Ordering::Relaxed);
            let (rx, diff) = (region.rx(), region.diff());
            return Ok(CodeBlock::new(
                Arc::clone(shard),
                rx,
                rounded,
                diff,
                Owner::Region(Box::new(region)),
            ));
        };
        let mut heap = heap.lock();
        let allocation = match heap.ranges.allocate(len, align) {
            Ok(a) => a,
            Err(RangeError::Exhausted { .. }) => match shared.layout {
                Layout::Arena { size } => {
                    return Err(Error::Exhausted {
                        len,
                        align,
                        arena: size,
                        free: heap.ranges.stats().free_bytes,
                    });
                }
                _ => {
                    let need = len
                        .checked_add(align)
                        .and_then(|n| round_up(n, shared.page))
                        .filter(|n| *n <= isize::MAX as usize)
                        .ok_or(Error::TooLarge { len })?;
                    let size = heap.next_chunk.max(need);
                    heap.add_chunk(shared.strategy, size, shared.options)?;
                    heap.next_chunk = (heap.next_chunk * 2).min(MAX_CHUNK);
                    heap.ranges.allocate(len, align).map_err(range_error)?
                }
            },
            Err(e) => return Err(range_error(e)),
        };
        let chunk = heap.chunk(allocation.pool)?;
        let base = chunk.region.rx().as_ptr() as usize;
        chunk
            .region
            .note_used(allocation.start + allocation.len - base);
        let diff = chunk.region.diff();
        drop(heap);
        let rx = NonNull::new(allocation.start as *mut u8).ok_or(Error::Internal("null block"))?;
        Ok(CodeBlock::new(
            Arc::clone(shard),
            rx,
            allocation.len,
            diff,
            Owner::Range(allocation.id),
        ))
    }

    /// The shard of the calling thread.
    fn shard(&self) -> &Arc<Shard> {
        let i = if self.shards.len() == 1 {
            0
        } else {
            SLOT.with(|slot| *slot) % self.shards.len()
        };
        // In range: shards is never empty (new makes at least one).
        &self.shards[i]
    }

    /// Counters: live blocks and bytes, reserved bytes, regions (over all shards).
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            open_pages: self.shared.rights.open_pages(),
            ..Stats::default()
        };
        for shard in self.shards.iter() {
            shard.add_stats(&mut stats);
        }
        stats
    }

    /// The page size this memory works with.
    pub fn page_size(&self) -> usize {
        self.shared.page
    }
}

impl std::fmt::Debug for JitMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitMemory")
            .field("strategy", &self.shared.strategy)
            .field("layout", &self.shared.layout)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The platform options a configuration asks for.
fn shared_options(config: &Config) -> sys::MapOptions {
    sys::MapOptions {
        txm_handshake: config.txm_handshake,
    }
}

/// Resolves `Auto` through the probe and picks the default layout.
fn resolve(config: &Config) -> Result<Choice> {
    let auto = || {
        probe::auto_choice().map_err(|reason| Error::Unsupported {
            strategy: Strategy::Auto,
            reason,
        })
    };
    let mut choice = match config.strategy {
        Strategy::Auto => auto()?,
        strategy => Choice {
            strategy,
            layout: Layout::Pooled,
            reason: "asked for by the configuration".to_owned(),
        },
    };
    if let Some(layout) = config.layout {
        choice.layout = layout;
    }
    Ok(choice)
}

/// The fork policy: may a fork child keep using memory of `strategy` made before the fork?
/// Toggle, Rwx and Linux PerThread (protection keys) use private mappings: the child has a
/// copy-on-write copy and may keep allocating, writing and running. Mirror's writable views are
/// not inherited (`MADV_DONTFORK`; the child runs a private copy of the code) and Apple's
/// MAP_JIT memory is not defined across fork: the child may run the code it has, and every
/// other call gives [`Error::ForkedChild`].
pub(crate) fn child_keeps_memory(strategy: Strategy) -> bool {
    match strategy {
        Strategy::Toggle | Strategy::Rwx | Strategy::Auto => true,
        Strategy::Mirror => false,
        Strategy::PerThread => sys::PER_THREAD_SURVIVES_FORK,
    }
}

pub(crate) fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|n| n & !(to - 1))
}

impl Shared {
    /// Refuses work on memory that a fork child may not use (see [`child_keeps_memory`]) or
    /// that was poisoned.
    pub(crate) fn check_usable(&self) -> Result<()> {
        if !self.usable_in_this_process() {
            return Err(Error::ForkedChild {
                strategy: self.strategy,
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
        child_keeps_memory(self.strategy) || fork::generation() == self.generation
    }

    pub(crate) fn poison(&self, why: String) {
        let _ = self.poison.set(why);
    }

    pub(crate) fn per_allocation_freed(&self, len: usize) {
        self.per_allocation.blocks.fetch_sub(1, Ordering::Relaxed);
        self.per_allocation.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

impl Shard {
    fn heap(&self) -> Result<ForkMutexGuard<'_, Heap>> {
        Ok(self
            .heap
            .as_ref()
            .ok_or(Error::Internal("range block without a heap"))?
            .lock())
    }

    /// Returns a block's range to the heap (the caller has already filled it with traps).
    pub(crate) fn free_range(&self, id: crate::range_heap::RangeId) -> Result<()> {
        let mut guard = self.heap()?;
        let freed = guard
            .ranges
            .free(id)
            .map_err(|_| Error::Internal("double free of a block"))?;
        if freed.pool_empty && self.shared.layout == Layout::Pooled {
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

    /// Shrinks a heap block in place; returns its new length.
    pub(crate) fn shrink_range(
        &self,
        id: crate::range_heap::RangeId,
        new_len: usize,
    ) -> Result<usize> {
        let a = self
            .heap()?
            .ranges
            .shrink(id, new_len)
            .map_err(|_| Error::Internal("shrink of an unknown block"))?;
        Ok(a.len)
    }

    /// Adds this shard's counters to `stats`.
    fn add_stats(&self, stats: &mut Stats) {
        match &self.heap {
            None => {
                let pa = &self.shared.per_allocation;
                let blocks = pa.blocks.load(Ordering::Relaxed);
                let bytes = pa.bytes.load(Ordering::Relaxed);
                stats.live_blocks += blocks;
                stats.live_bytes += bytes;
                stats.reserved_bytes += bytes;
                stats.regions += blocks;
            }
            Some(heap) => {
                let h = heap.lock();
                let s = h.ranges.stats();
                stats.live_blocks += s.live_blocks;
                stats.live_bytes += s.live_bytes;
                stats.free_bytes += s.free_bytes;
                stats.reserved_bytes += s.pool_bytes;
                stats.regions += h.chunks.len();
            }
        }
    }
}
