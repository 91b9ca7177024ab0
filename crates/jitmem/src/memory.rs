//! [`JitMemory`]: the allocator of code blocks, for one strategy and one layout.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::block::{CodeBlock, Owner};
use crate::config::{Config, Layout, Strategy};
use crate::error::{Error, Result};
use crate::fork;
use crate::probe;
use crate::range_heap::{PoolId, RangeError, RangeHeap};
use crate::region::Region;
use crate::rights::Rights;
use crate::sys;

/// Every block is a multiple of this many bytes and at least this aligned.
pub(crate) const GRANULE: usize = 16;
/// The first pooled chunk; each next one doubles, up to [`MAX_CHUNK`].
const FIRST_CHUNK: usize = 256 << 10;
const MAX_CHUNK: usize = 16 << 20;

/// Executable memory for one JIT: hands out [`CodeBlock`]s.
///
/// Cheap to clone (a reference count); `Send + Sync`: any thread may allocate, write, publish
/// and free at the same time. Blocks keep the memory alive, so a `JitMemory` may be dropped
/// before its blocks.
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
    options: sys::MapOptions,
    default_align: usize,
    /// The fork generation this memory was made in.
    generation: u64,
    choice: Choice,
    heap: Option<Mutex<Heap>>,
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
        let heap = match choice.layout {
            Layout::PerAllocation => {
                drop(
                    Region::map(strategy, page, page, shared_options(&config))
                        .map_err(unsupported)?,
                );
                None
            }
            Layout::Pooled | Layout::Arena { .. } => {
                let (first, next_chunk) = match choice.layout {
                    Layout::Arena { size } => {
                        let size =
                            round_up(size.max(1), page).ok_or(Error::TooLarge { len: size })?;
                        (size, 0)
                    }
                    _ => (FIRST_CHUNK.max(page), (FIRST_CHUNK * 2).max(page)),
                };
                let mut heap = Heap {
                    ranges: RangeHeap::new(GRANULE).map_err(range_error)?,
                    chunks: Vec::new(),
                    next_chunk,
                };
                heap.add_chunk(strategy, first, shared_options(&config))
                    .map_err(unsupported)?;
                Some(Mutex::new(heap))
            }
        };
        Ok(JitMemory {
            shared: Arc::new(Shared {
                strategy,
                layout: choice.layout,
                rights,
                page,
                options: shared_options(&config),
                default_align: config.default_align,
                generation: fork::generation(),
                choice,
                heap,
                per_allocation: PerAllocationStats::default(),
                poison: OnceLock::new(),
            }),
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
        let Some(heap) = &shared.heap else {
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
                Arc::clone(shared),
                rx,
                rounded,
                diff,
                Owner::Region(region),
            ));
        };
        let mut heap = shared.lock(heap)?;
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
            Arc::clone(shared),
            rx,
            allocation.len,
            diff,
            Owner::Range(allocation.id),
        ))
    }

    /// Counters: live blocks and bytes, reserved bytes, regions.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
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

pub(crate) fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|n| n & !(to - 1))
}

impl Shared {
    fn lock<'a>(&self, heap: &'a Mutex<Heap>) -> Result<MutexGuard<'a, Heap>> {
        heap.lock()
            .map_err(|_| Error::Internal("heap lock poisoned"))
    }

    /// Refuses work on memory that lost its writable views in a fork or was poisoned.
    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.strategy == Strategy::Mirror && fork::generation() != self.generation {
            return Err(Error::ForkedChild {
                strategy: self.strategy,
            });
        }
        if let Some(why) = self.poison.get() {
            return Err(Error::Poisoned(why.clone()));
        }
        Ok(())
    }

    /// True when the writable views of this memory are still ours to write (not a fork child
    /// of a Mirror).
    pub(crate) fn writable_views_present(&self) -> bool {
        self.strategy != Strategy::Mirror || fork::generation() == self.generation
    }

    pub(crate) fn poison(&self, why: String) {
        let _ = self.poison.set(why);
    }

    /// Returns a block's range to the heap (the caller has already filled it with traps).
    pub(crate) fn free_range(&self, id: crate::range_heap::RangeId) -> Result<()> {
        let heap = self
            .heap
            .as_ref()
            .ok_or(Error::Internal("range block without a heap"))?;
        let mut guard = self.lock(heap)?;
        let freed = guard
            .ranges
            .free(id)
            .map_err(|_| Error::Internal("double free of a block"))?;
        if freed.pool_empty && self.layout == Layout::Pooled {
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
        let heap = self
            .heap
            .as_ref()
            .ok_or(Error::Internal("range block without a heap"))?;
        let mut guard = self.lock(heap)?;
        let a = guard
            .ranges
            .shrink(id, new_len)
            .map_err(|_| Error::Internal("shrink of an unknown block"))?;
        Ok(a.len)
    }

    pub(crate) fn per_allocation_freed(&self, len: usize) {
        self.per_allocation.blocks.fetch_sub(1, Ordering::Relaxed);
        self.per_allocation.bytes.fetch_sub(len, Ordering::Relaxed);
    }

    fn stats(&self) -> Stats {
        let open_pages = self.rights.open_pages();
        match &self.heap {
            None => {
                let blocks = self.per_allocation.blocks.load(Ordering::Relaxed);
                let bytes = self.per_allocation.bytes.load(Ordering::Relaxed);
                Stats {
                    live_blocks: blocks,
                    live_bytes: bytes,
                    free_bytes: 0,
                    reserved_bytes: bytes,
                    regions: blocks,
                    open_pages,
                }
            }
            Some(heap) => match heap.lock() {
                Ok(h) => {
                    let s = h.ranges.stats();
                    Stats {
                        live_blocks: s.live_blocks,
                        live_bytes: s.live_bytes,
                        free_bytes: s.free_bytes,
                        reserved_bytes: s.pool_bytes,
                        regions: h.chunks.len(),
                        open_pages,
                    }
                }
                Err(_) => Stats::default(),
            },
        }
    }
}
