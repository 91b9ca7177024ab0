//! Out-of-band O(1) range allocator (TLSF) for code pools: jitmem's allocator policy, in a
//! crate of its own because it is safe (`forbid(unsafe_code)`), generic over plain addresses,
//! and tested on its own by a model and a fuzzer. jitmem re-exports it as `jitmem::range_heap`.
//!
//! [`RangeHeap`] hands out sub-ranges of *pools*: address ranges that the caller
//! registers with [`RangeHeap::add_pool`] (in `jitmem`, the code chunks a JIT emits
//! into). It is pure bookkeeping over plain `usize` addresses: it never reads or writes
//! the managed memory and contains no `unsafe`. All metadata lives in `Vec`s inside the
//! struct (a slab of nodes addressed by `u32` index), never in the managed memory, so
//! executable pages hold no allocator headers and never have to be made writable just
//! to allocate or free.
//!
//! # Algorithm
//!
//! Two-Level Segregated Fit (TLSF, Masmano et al. 2004). Sizes are counted in
//! *granules* (a power of two >= 8 chosen at [`RangeHeap::new`]). Free blocks sit in
//! segregated, doubly linked free lists: the first level is `floor(log2(size))`, the
//! second level splits each power-of-two range into 16 linear classes (sizes below 16
//! granules map linearly, one class per size). Two levels of bitmaps locate the
//! smallest non-empty class at or above a request in a few bit operations.
//!
//! * [`RangeHeap::allocate`] rounds the request up to the next class boundary ("good
//!   fit"), so any block of the list it finds fits without scanning. If that fails, up
//!   to 32 blocks of the request's own class (and the classes between it and the
//!   rounded one) are checked one by one, so that an exact fit such as a whole empty
//!   pool is still found: with at most 32 free blocks in the heap, an allocation fails
//!   only if no free block can hold it. For an alignment above the granule it searches
//!   for `len + align - granule` bytes, then splits off the misaligned front and the
//!   tail remainder as free blocks.
//! * A free block keeps its place in its list when a split or merge leaves it in the
//!   same class, so carving a large block and giving the piece back touch no list.
//! * [`RangeHeap::free`] coalesces with free *physical* neighbours at once (each node
//!   links to the blocks just below and above it in the same pool), so there are never
//!   two adjacent free blocks, and an entirely free pool is a single free block.
//!   Neighbour links never cross pools: adjacent pools never coalesce.
//!
//! # Memory
//!
//! Every block, live or free, is one 24-byte node (six `u32`s) in a slab. A live block
//! needs its pool and generation but no free-list links; a free block needs the links but
//! neither, so the last two words serve both:
//!
//! | node field | live block | free block |
//! | --- | --- | --- |
//! | `off` | start, in granules from the pool's start | the same |
//! | `len` | length in granules (0 marks a vacant slot) | the same |
//! | `prev_phys` | the block just below, or for a pool's first block, a top-bit marker and the pool's index | the same |
//! | `next_phys` | the block just above in the same pool | the same |
//! | `pool` / `prev_free` | the pool's index | the previous block in the free list |
//! | `tag` / `next_free` | top bit set, 31-bit generation | the next block in the free list (top bit clear) |
//!
//! A free block finds its pool through a physical neighbour: it has a live one on either
//! side (free neighbours always coalesce) unless it is the pool's first block, whose
//! `prev_phys` names the pool. The size class of a free block is computed from its
//! length, not stored.
//!
//! So every block costs 24 bytes of bookkeeping (21% of a 112-byte function; it was 48
//! bytes), plus the slack of the slab's doubling growth: 10,000 live blocks in one pool
//! take 39 bytes each counted by capacity ([`RangeStats::metadata_bytes`]; it was 79).
//! Since free neighbours always coalesce, there are at most as many free blocks as live
//! blocks plus pools. The costs of this layout:
//!
//! * A pool holds at most `2^32 - 1` granules (64 GiB - 16 bytes with 16-byte granules,
//!   [`RangeHeap::max_pool_len`]); [`RangeHeap::add_pool`] refuses a larger one with
//!   [`RangeError::PoolTooLarge`]. Pools may still lie anywhere in the address space.
//! * Generations are 31 bits, drawn from one counter per heap: a stale id is rejected
//!   unless its slot was reused by the very allocation that drew the same counter value
//!   2^31 (or a multiple) allocations later (see [`RangeId`]).
//! * At most `2^31 - 1` nodes and `2^31` pools over the heap's life, so that indices
//!   fit in 31 bits beside the marker bits.
//!
//! # Complexity
//!
//! | operation | cost |
//! | --- | --- |
//! | [`allocate`](RangeHeap::allocate), [`free`](RangeHeap::free), [`shrink`](RangeHeap::shrink) | O(1) (bounded by the bitmap width and a 32-block fallback scan) |
//! | [`get`](RangeHeap::get), [`stats`](RangeHeap::stats), [`pool_range`](RangeHeap::pool_range), [`pool_is_empty`](RangeHeap::pool_is_empty) | O(1) |
//! | [`add_pool`](RangeHeap::add_pool), [`remove_pool`](RangeHeap::remove_pool) | O(log pools) (a `BTreeMap` of pool starts, for the overlap check) |
//!
//! Nothing allocates in the steady state: the node slab only grows when more nodes are
//! live at once than ever before, and freed slots are reused.
//!
//! # Why our own
//!
//! We looked for a crate first. `offset-allocator` 0.2 is also a TLSF, but uses `u32`
//! offsets into a single range, a fixed node budget chosen up front, and has neither
//! alignment nor in-place shrink. `range-alloc` 0.1 scans its free list linearly, so it
//! has no O(1) bound in a fragmented heap. Neither reports a bad free as an error:
//! `offset-allocator` asserts (panics) on a double free and cannot tell a stale handle
//! once its node is reused, and `range-alloc` frees whatever range it is given. Hence
//! this small TLSF, which also grows its node table on demand and takes any number of
//! pools anywhere in the address space (`u32` granule offsets within each pool).
//!
//! # Example
//!
//! ```
//! use jitmem_range_heap::RangeHeap;
//!
//! let mut heap = RangeHeap::new(16)?;
//! let pool = heap.add_pool(0x10_0000, 64 * 1024)?;
//!
//! let a = heap.allocate(100, 64)?;
//! assert_eq!(a.len, 112); // rounded up to the granule
//! assert_eq!(a.start % 64, 0);
//! assert_eq!(a.pool, pool);
//!
//! let a = heap.shrink(a.id, 40)?;
//! assert_eq!(a.len, 48);
//!
//! let freed = heap.free(a.id)?;
//! assert!(freed.pool_empty);
//! assert!(heap.free(a.id).is_err()); // a double free is detected
//!
//! assert_eq!(heap.remove_pool(pool)?, (0x10_0000, 64 * 1024));
//! # Ok::<(), jitmem_range_heap::RangeError>(())
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

/// log2 of the number of second-level classes per first-level class.
const SL_LOG2: u32 = 4;
/// Number of second-level classes per first-level class.
const SL_COUNT: usize = 1 << SL_LOG2;
/// Number of first-level classes (one bit of the `u64` first-level bitmap each).
const FL_COUNT: usize = 64;
/// Top bit of [`Node::tag`]: set on live nodes (whose other bits are the generation),
/// clear on free nodes (whose tag is the next free block) and vacant ones (tag 0).
const USED: u32 = 1 << 31;
/// Top bit of [`Node::prev_phys`]: set on the first block of a pool, whose other bits are
/// the pool's index.
const FIRST: u32 = 1 << 31;
/// The "no node" sentinel of every link: no node index reaches it, and it has neither
/// marker bit.
const NONE: u32 = USED - 1;
/// Largest number of node slots: every index is below [`NONE`].
const MAX_NODES: usize = NONE as usize;
/// Blocks examined by the fallback scan after the good-fit search failed.
const FALLBACK_SCAN: usize = 32;

/// Seeds the generations of each heap differently, so that an id from another heap is
/// (almost always) detected as stale.
static HEAP_SALT: AtomicU32 = AtomicU32::new(0);

/// Identifies one live allocation. Carries a generation so a stale or doubled free is
/// detected.
///
/// Each allocation draws its generation from a 31-bit counter of the heap, and each heap
/// starts its counter at a different value, so an id that was freed already, or comes
/// from another heap, is rejected with [`RangeError::StaleId`], unless its node slot has
/// been reused by an allocation that drew the same value: one made a multiple of 2^31
/// allocations later.
///
/// It packs the node index (low 32 bits) and the live node's tag (high 32 bits: the top
/// bit marks a live node, the other 31 are the generation) in one `u64`, so that it is
/// written and read as one word (two `u32` fields get written separately and then read
/// as one word by callers copying the id, which stalls store-to-load forwarding on x86).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RangeId {
    bits: u64,
}

impl RangeId {
    #[inline(always)]
    fn new(index: u32, tag: u32) -> Self {
        Self {
            bits: u64::from(index) | (u64::from(tag) << 32),
        }
    }

    #[inline(always)]
    fn index(self) -> u32 {
        self.bits as u32
    }

    /// The live node's tag: [`USED`] and the generation.
    #[inline(always)]
    fn tag(self) -> u32 {
        (self.bits >> 32) as u32
    }
}

impl fmt::Debug for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeId")
            .field("index", &self.index())
            .field("generation", &(self.tag() & !USED))
            .finish()
    }
}

/// Identifies one pool added with [`RangeHeap::add_pool`].
///
/// Pool ids are never reused within a heap: an id of a removed pool stays invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolId(u32);

/// One live allocation, as returned by [`RangeHeap::allocate`], [`RangeHeap::shrink`]
/// and [`RangeHeap::get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Id to pass to [`RangeHeap::free`], [`RangeHeap::shrink`] and [`RangeHeap::get`].
    pub id: RangeId,
    /// First address of the range.
    pub start: usize,
    /// Length in bytes: the requested length rounded up to the granule.
    pub len: usize,
    /// The pool the range lies in.
    pub pool: PoolId,
}

/// What [`RangeHeap::free`] released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freed {
    /// First address of the freed range.
    pub start: usize,
    /// Length of the freed range in bytes.
    pub len: usize,
    /// The pool the range was in.
    pub pool: PoolId,
    /// true when the pool is now entirely free
    pub pool_empty: bool,
}

/// Counters of a [`RangeHeap`], kept up to date on every operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeStats {
    /// Number of pools.
    pub pools: usize,
    /// Total bytes of all pools.
    pub pool_bytes: usize,
    /// Number of live allocations.
    pub live_blocks: usize,
    /// Bytes in live allocations (rounded lengths).
    pub live_bytes: usize,
    /// Free bytes: `pool_bytes - live_bytes`.
    pub free_bytes: usize,
    /// Number of free blocks (maximal free runs, since neighbours always coalesce).
    pub free_blocks: usize,
    /// Bytes of the heap's own tables on the allocator's heap: capacity times element
    /// size of the node slab (24 bytes a block) and the pool table. It only grows (slots
    /// are reused, never returned). Not counted: the fixed part inside the
    /// [`RangeHeap`] value itself (the free-list heads and bitmaps, about 4.4 KiB) and
    /// the map of pool starts (one small B-tree entry per pool).
    pub metadata_bytes: usize,
}

/// Errors of [`RangeHeap`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// A zero-length allocation or shrink was requested.
    #[error("zero-length range requested")]
    ZeroLength,
    /// The alignment is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(usize),
    /// The granule passed to [`RangeHeap::new`] is not a power of two of at least 8.
    #[error("granule {0} is not a power of two of at least 8")]
    BadGranule(usize),
    /// The length rounded up to the granule, plus the alignment, overflows `usize`.
    #[error("a range of {len} bytes is too large to represent")]
    TooLarge {
        /// The requested length.
        len: usize,
    },
    /// No free range fits the request (or, in theory, the node table is full).
    #[error("no free range of {len} bytes aligned to {align}")]
    Exhausted {
        /// The requested length.
        len: usize,
        /// The requested alignment.
        align: usize,
    },
    /// The id is unknown, already freed (double free) or from another heap.
    #[error("stale range id: unknown, already freed, or from another heap")]
    StaleId,
    /// The pool is invalid: unaligned start or length, zero length, overlap with an
    /// existing pool, address overflow, or an unknown pool id.
    #[error("bad pool: {reason}")]
    BadPool {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`RangeHeap::add_pool`] was given a pool of more than `2^32 - 1` granules
    /// ([`RangeHeap::max_pool_len`]): positions within a pool are `u32` granule counts.
    #[error("a pool of {len} bytes is larger than the {max} bytes a pool can hold")]
    PoolTooLarge {
        /// The pool's length.
        len: usize,
        /// The largest pool length accepted.
        max: usize,
    },
    /// [`RangeHeap::remove_pool`] was called on a pool that still has live allocations.
    #[error("pool still has live allocations")]
    PoolInUse,
    /// [`RangeHeap::shrink`] was asked for a length above the current one.
    #[error("cannot shrink a range of {len} bytes to {new_len} bytes")]
    ShrinkTooLarge {
        /// The current length of the allocation.
        len: usize,
        /// The requested new length.
        new_len: usize,
    },
}

/// One block of a pool (or a vacant slot). Links are node indices, `NONE` for none;
/// positions and lengths are in granules, relative to the pool's start.
///
/// The state is in `len` and `tag`: live when `tag & USED != 0`, vacant when `len == 0`
/// (then `tag == 0` and `next_phys` links the vacant slots), free otherwise. See the
/// module documentation's table.
#[derive(Clone, Copy, Debug)]
struct Node {
    off: u32,
    len: u32,
    /// The block below, or `FIRST | pool` for the first block of a pool.
    prev_phys: u32,
    next_phys: u32,
    /// Live: the pool's index. Free: the previous block in its free list.
    pool: u32,
    /// Live: `USED | generation`. Free: the next block in its free list. Vacant: 0.
    tag: u32,
}

const _: () = assert!(size_of::<Node>() == 24);

impl Node {
    /// Whether an in-chain node (never vacant) is free.
    #[inline(always)]
    fn is_free(&self) -> bool {
        self.tag & USED == 0
    }
}

/// Whether a `prev_phys` value names a node (rather than the pool of a first block).
#[inline(always)]
fn is_node(prev_phys: u32) -> bool {
    prev_phys & FIRST == 0
}

#[derive(Clone, Copy, Debug)]
struct Pool {
    start: usize,
    len: usize,
    /// The node at the pool's start (kept up to date by `set_next_phys`).
    first: u32,
    alive: bool,
}

/// Free-list class of a block of `size` granules (`size >= 1`).
#[inline(always)]
fn mapping_insert(size: usize) -> (usize, usize) {
    if size < SL_COUNT {
        (0, size)
    } else {
        let log2 = usize::BITS - 1 - size.leading_zeros();
        let fl = (log2 - SL_LOG2 + 1) as usize;
        let sl = (size >> (log2 - SL_LOG2)) & (SL_COUNT - 1);
        (fl, sl)
    }
}

/// Class to start the good-fit search at: `size` rounded up to the next class boundary,
/// so that every block of that class or above holds at least `size` granules.
#[inline]
fn mapping_search(size: usize) -> (usize, usize) {
    if size < SL_COUNT {
        (0, size)
    } else {
        let log2 = usize::BITS - 1 - size.leading_zeros();
        let round = (1usize << (log2 - SL_LOG2)) - 1;
        mapping_insert(size.saturating_add(round))
    }
}

/// Free-list class of a node of `len` granules.
#[inline(always)]
fn class_of(len: u32) -> (usize, usize) {
    mapping_insert(len as usize)
}

/// Bytes from `start` up to the next multiple of `align` (a power of two).
#[inline]
fn align_pad(start: usize, align: usize) -> usize {
    start.wrapping_neg() & (align - 1)
}

/// An out-of-band TLSF range allocator over caller-registered pools.
///
/// See the [module documentation](self) for the algorithm and costs.
pub struct RangeHeap {
    granule: usize,
    shift: u32,
    fl_bitmap: u64,
    sl_bitmap: [u32; FL_COUNT],
    heads: [[u32; SL_COUNT]; FL_COUNT],
    nodes: Vec<Node>,
    vacant_head: u32,
    vacant_count: usize,
    pools: Vec<Pool>,
    pool_starts: BTreeMap<usize, u32>,
    live_pools: usize,
    pool_bytes: usize,
    live_blocks: usize,
    live_bytes: usize,
    free_blocks: usize,
    /// The generation of the next allocation (only its low 31 bits are used).
    next_generation: u32,
}

impl fmt::Debug for RangeHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeHeap")
            .field("granule", &self.granule)
            .field("stats", &self.stats())
            .field("node_slots", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl RangeHeap {
    /// Creates an empty heap (no pools). O(1), no allocation.
    ///
    /// `granule`: power of two >= 8 (default users pass 16); every start and len is a
    /// multiple of it. Otherwise [`RangeError::BadGranule`].
    pub fn new(granule: usize) -> Result<Self, RangeError> {
        if !granule.is_power_of_two() || granule < 8 {
            return Err(RangeError::BadGranule(granule));
        }
        let salt = HEAP_SALT
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9);
        Ok(Self {
            granule,
            shift: granule.trailing_zeros(),
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: [[NONE; SL_COUNT]; FL_COUNT],
            nodes: Vec::new(),
            vacant_head: NONE,
            vacant_count: 0,
            pools: Vec::new(),
            pool_starts: BTreeMap::new(),
            live_pools: 0,
            pool_bytes: 0,
            live_blocks: 0,
            live_bytes: 0,
            free_blocks: 0,
            next_generation: salt,
        })
    }

    /// The granule every start and length is a multiple of. O(1).
    #[inline]
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// The largest pool [`add_pool`](Self::add_pool) accepts: `2^32 - 1` granules (or the
    /// largest multiple of the granule that `usize` holds, if that is less). O(1).
    #[inline]
    pub fn max_pool_len(&self) -> usize {
        (u32::MAX as usize).saturating_mul(self.granule) & !(self.granule - 1)
    }

    /// Adds `[start, start + len)` as a pool and returns its id. O(log pools).
    ///
    /// `start` and `len` must be multiples of the granule, `len > 0`, `start + len` must
    /// not overflow `usize`, and the range must not overlap an existing pool (adjacent is
    /// fine: pools never coalesce). Otherwise [`RangeError::BadPool`]. A pool of more than
    /// [`max_pool_len`](Self::max_pool_len) bytes (`2^32 - 1` granules) is refused with
    /// [`RangeError::PoolTooLarge`].
    ///
    /// Pool ids are never reused, so the pool table keeps one small entry per
    /// `add_pool` over the heap's life (at most `2^31` of them).
    pub fn add_pool(&mut self, start: usize, len: usize) -> Result<PoolId, RangeError> {
        let mask = self.granule - 1;
        if len == 0 {
            return Err(RangeError::BadPool {
                reason: "zero length",
            });
        }
        if start & mask != 0 || len & mask != 0 {
            return Err(RangeError::BadPool {
                reason: "start or length is not a multiple of the granule",
            });
        }
        let end = start.checked_add(len).ok_or(RangeError::BadPool {
            reason: "start + len overflows usize",
        })?;
        let granules = u32::try_from(len >> self.shift).map_err(|_| RangeError::PoolTooLarge {
            len,
            max: self.max_pool_len(),
        })?;
        if let Some((&other_start, &other)) = self.pool_starts.range(..end).next_back() {
            let other_end = self
                .pools
                .get(other as usize)
                .map_or(other_start, |p| p.start + p.len);
            if other_end > start {
                return Err(RangeError::BadPool {
                    reason: "overlaps an existing pool",
                });
            }
        }
        // Below the FIRST marker bit.
        let id = u32::try_from(self.pools.len())
            .ok()
            .filter(|&id| id < FIRST)
            .ok_or(RangeError::BadPool {
                reason: "too many pools",
            })?;
        if !self.can_take(1) {
            return Err(RangeError::BadPool {
                reason: "node table is full",
            });
        }
        let first = self.new_node(0, granules, FIRST | id, NONE);
        self.insert_free(first);
        self.pools.push(Pool {
            start,
            len,
            first,
            alive: true,
        });
        self.pool_starts.insert(start, id);
        self.live_pools += 1;
        self.pool_bytes += len;
        Ok(PoolId(id))
    }

    /// Removes an entirely free pool and returns `(start, len)`. O(log pools).
    ///
    /// [`RangeError::PoolInUse`] if anything is live in it, [`RangeError::BadPool`] if
    /// the id is unknown or already removed.
    pub fn remove_pool(&mut self, pool: PoolId) -> Result<(usize, usize), RangeError> {
        let p = match self.pools.get(pool.0 as usize) {
            Some(p) if p.alive => *p,
            _ => {
                return Err(RangeError::BadPool {
                    reason: "unknown pool",
                });
            }
        };
        // An empty pool is one free block at `first` (free neighbours always coalesce).
        if !self.first_spans_pool(&p) {
            return Err(RangeError::PoolInUse);
        }
        self.remove_free(p.first);
        self.release_slot(p.first);
        if let Some(entry) = self.pools.get_mut(pool.0 as usize) {
            entry.alive = false;
        }
        self.pool_starts.remove(&p.start);
        self.live_pools -= 1;
        self.pool_bytes -= p.len;
        Ok((p.start, p.len))
    }

    /// `(start, len)` of a pool, `None` for an unknown or removed pool. O(1).
    #[inline]
    pub fn pool_range(&self, pool: PoolId) -> Option<(usize, usize)> {
        match self.pools.get(pool.0 as usize) {
            Some(p) if p.alive => Some((p.start, p.len)),
            _ => None,
        }
    }

    /// Whether the pool has no live allocation (false for an unknown or removed pool).
    /// O(1).
    #[inline]
    pub fn pool_is_empty(&self, pool: PoolId) -> bool {
        matches!(self.pools.get(pool.0 as usize), Some(p) if p.alive && self.first_spans_pool(p))
    }

    /// Whether the pool's first node is free and covers the whole pool, which is the
    /// case exactly when nothing in it is live (free neighbours always coalesce).
    #[inline]
    fn first_spans_pool(&self, p: &Pool) -> bool {
        matches!(self.nodes.get(p.first as usize),
            Some(n) if n.is_free() && n.next_phys == NONE && self.bytes(n.len) == p.len)
    }

    /// Allocates `len` bytes (rounded up to the granule) at an address that is a multiple
    /// of `align`. O(1).
    ///
    /// `align` is any power of two; an alignment below the granule means the granule.
    /// TLSF good-fit search: the request is rounded up to the next size-class boundary
    /// so that any block in the found list fits, using the two-level bitmaps. If that
    /// finds nothing, at most 32 blocks of the lower classes down to the request's own
    /// are checked for an exact fit (so with at most 32 free blocks in the heap, it
    /// fails only when no free block can hold the request). For `align > granule` the
    /// search is for `len + align - granule` bytes; the misaligned front of the block
    /// found and the tail remainder are split off as free blocks.
    ///
    /// Errors: [`RangeError::ZeroLength`], [`RangeError::BadAlignment`],
    /// [`RangeError::TooLarge`] when the rounded length plus alignment overflows
    /// `usize`, [`RangeError::Exhausted`] when no free block fits.
    pub fn allocate(&mut self, len: usize, align: usize) -> Result<Allocation, RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroLength);
        }
        if !align.is_power_of_two() {
            return Err(RangeError::BadAlignment(align));
        }
        let eff_align = if align < self.granule {
            self.granule
        } else {
            align
        };
        let size = self.round_up(len).ok_or(RangeError::TooLarge { len })?;
        let search = size
            .checked_add(eff_align - self.granule)
            .ok_or(RangeError::TooLarge { len })?;
        // A split needs at most two fresh nodes: reserve them before touching anything.
        if !self.can_take(2) {
            return Err(RangeError::Exhausted { len, align });
        }
        let block = match self.find_good_fit(search >> self.shift) {
            Some(b) => b,
            None => self
                .find_fallback(size, eff_align)
                .ok_or(RangeError::Exhausted { len, align })?,
        };
        Ok(self.carve(block, size, eff_align))
    }

    /// Frees a live allocation in O(1), coalescing with free physical neighbours
    /// (neighbour links are per node, never across pools).
    ///
    /// [`RangeError::StaleId`] for an unknown, already freed or foreign id; nothing is
    /// changed then.
    pub fn free(&mut self, id: RangeId) -> Result<Freed, RangeError> {
        let idx = self.live_index(id)?;
        let Node {
            off,
            len,
            prev_phys: prev,
            next_phys: next,
            pool,
            ..
        } = self.nodes[idx as usize];
        let bytes = self.bytes(len);
        self.live_blocks -= 1;
        self.live_bytes -= bytes;

        let prev_free = is_node(prev) && self.nodes[prev as usize].is_free();
        let next_free = next != NONE && self.nodes[next as usize].is_free();
        // The merged block: the pool is empty when it has no neighbours left.
        let merged = match (prev_free, next_free) {
            (true, true) => {
                // prev absorbs this block and next.
                let (next_len, after) = {
                    let n = &self.nodes[next as usize];
                    (n.len, n.next_phys)
                };
                self.remove_free(next);
                let p = &mut self.nodes[prev as usize];
                let old = p.len;
                p.len = old + len + next_len;
                p.next_phys = after;
                if after != NONE {
                    self.nodes[after as usize].prev_phys = prev;
                }
                self.release_slot(idx);
                self.release_slot(next);
                self.reclass(prev, old);
                prev
            }
            (true, false) => {
                // prev grows upwards.
                let p = &mut self.nodes[prev as usize];
                let old = p.len;
                p.len = old + len;
                p.next_phys = next;
                if next != NONE {
                    self.nodes[next as usize].prev_phys = prev;
                }
                self.release_slot(idx);
                self.reclass(prev, old);
                prev
            }
            (false, true) => {
                // next grows downwards (and may become the pool's first node).
                let n = &mut self.nodes[next as usize];
                let old = n.len;
                n.off = off;
                n.len = old + len;
                n.prev_phys = prev;
                self.set_next_phys(prev, next);
                self.release_slot(idx);
                self.reclass(next, old);
                next
            }
            (false, false) => {
                self.insert_free(idx);
                idx
            }
        };
        let pool_empty = {
            let m = &self.nodes[merged as usize];
            !is_node(m.prev_phys) && m.next_phys == NONE
        };
        Ok(Freed {
            start: self.addr(pool, off),
            len: bytes,
            pool: PoolId(pool),
            pool_empty,
        })
    }

    /// Shrinks a live allocation in place to `new_len` (rounded up to the granule; must be
    /// `> 0` and `<=` the current length); the tail is freed and coalesced with a free
    /// successor. Returns the new [`Allocation`] (same id and start). O(1).
    ///
    /// Errors: [`RangeError::StaleId`], [`RangeError::ZeroLength`],
    /// [`RangeError::ShrinkTooLarge`] (and, in theory, [`RangeError::Exhausted`] when the
    /// node table holds 2^31 - 1 nodes); nothing is changed then.
    pub fn shrink(&mut self, id: RangeId, new_len: usize) -> Result<Allocation, RangeError> {
        let idx = self.live_index(id)?;
        if new_len == 0 {
            return Err(RangeError::ZeroLength);
        }
        let node = self.nodes[idx as usize];
        let len = self.bytes(node.len);
        let new_size = match self.round_up(new_len) {
            Some(s) if s <= len => s,
            _ => return Err(RangeError::ShrinkTooLarge { len, new_len }),
        };
        // new_size <= len, whose granule count fits in a u32.
        let new_g = (new_size >> self.shift) as u32;
        let cut = node.len - new_g;
        if cut == 0 {
            return Ok(self.allocation(idx));
        }
        let tail_off = node.off + new_g;
        let next = node.next_phys;
        if next != NONE && self.nodes[next as usize].is_free() {
            // Grow the free successor downwards.
            let n = &mut self.nodes[next as usize];
            let old = n.len;
            n.off = tail_off;
            n.len = old + cut;
            self.reclass(next, old);
        } else {
            if !self.can_take(1) {
                return Err(RangeError::Exhausted {
                    len: new_len,
                    align: self.granule,
                });
            }
            let tail = self.new_node(tail_off, cut, idx, next);
            if next != NONE {
                self.nodes[next as usize].prev_phys = tail;
            }
            self.nodes[idx as usize].next_phys = tail;
            self.insert_free(tail);
        }
        self.nodes[idx as usize].len = new_g;
        self.live_bytes -= self.bytes(cut);
        Ok(self.allocation(idx))
    }

    /// Looks up a live allocation: start, len and pool. O(1).
    ///
    /// [`RangeError::StaleId`] for an unknown, freed or foreign id.
    #[inline]
    pub fn get(&self, id: RangeId) -> Result<Allocation, RangeError> {
        let idx = self.live_index(id)?;
        Ok(self.allocation(idx))
    }

    /// Current counters. O(1): they are kept up to date by every operation.
    #[inline]
    pub fn stats(&self) -> RangeStats {
        RangeStats {
            pools: self.live_pools,
            pool_bytes: self.pool_bytes,
            live_blocks: self.live_blocks,
            live_bytes: self.live_bytes,
            free_bytes: self.pool_bytes - self.live_bytes,
            free_blocks: self.free_blocks,
            metadata_bytes: self.nodes.capacity() * size_of::<Node>()
                + self.pools.capacity() * size_of::<Pool>(),
        }
    }

    /// Checks every internal invariant (physical chains, coalescing, free lists, bitmaps,
    /// vacant slots, counters) in O(nodes + pools) and describes the first violation.
    /// For tests and fuzzing; not needed in normal use.
    #[doc(hidden)]
    pub fn debug_validate(&self) -> Result<(), String> {
        let mut used = 0usize;
        let mut used_bytes = 0usize;
        let mut free = 0usize;
        let mut pool_bytes = 0usize;
        let mut pools = 0usize;
        let mut in_chain = 0usize;
        for (pi, p) in self.pools.iter().enumerate() {
            if !p.alive {
                continue;
            }
            pools += 1;
            pool_bytes += p.len;
            match self.pool_starts.get(&p.start) {
                Some(&id) if id as usize == pi => {}
                _ => return Err(format!("pool {pi} missing from the start map")),
            }
            let mut cur = p.first;
            // The first block's `prev_phys` names the pool.
            let mut prev = FIRST | pi as u32;
            // In granules from the pool's start.
            let mut at = 0usize;
            let mut live = 0usize;
            let mut prev_free = false;
            while cur != NONE {
                let n = self
                    .nodes
                    .get(cur as usize)
                    .ok_or_else(|| format!("pool {pi}: link {cur} out of range"))?;
                in_chain += 1;
                if in_chain > self.nodes.len() {
                    return Err("physical chain cycle".into());
                }
                if n.prev_phys != prev {
                    return Err(format!("node {cur}: prev_phys {} != {prev}", n.prev_phys));
                }
                if n.off as usize != at {
                    return Err(format!("node {cur}: offset {} != {at}", n.off));
                }
                if n.len == 0 {
                    return Err(format!("node {cur}: vacant in a chain"));
                }
                if n.is_free() {
                    if prev_free {
                        return Err(format!("node {cur}: two adjacent free blocks"));
                    }
                    free += 1;
                    prev_free = true;
                } else {
                    if n.pool as usize != pi {
                        return Err(format!("node {cur}: pool {} != {pi}", n.pool));
                    }
                    used += 1;
                    live += 1;
                    used_bytes += self.bytes(n.len);
                    prev_free = false;
                }
                at += n.len as usize;
                prev = cur;
                cur = n.next_phys;
            }
            if at.checked_mul(self.granule) != Some(p.len) {
                return Err(format!("pool {pi}: chain ends at granule {at}"));
            }
            if (live == 0) != self.first_spans_pool(p) {
                return Err(format!(
                    "pool {pi}: {live} live but first_spans_pool disagrees"
                ));
            }
        }
        if pools != self.live_pools || pools != self.pool_starts.len() {
            return Err("pool count mismatch".into());
        }
        if pool_bytes != self.pool_bytes {
            return Err("pool_bytes mismatch".into());
        }
        if used != self.live_blocks || used_bytes != self.live_bytes {
            return Err(format!(
                "live counters {}/{} != counted {used}/{used_bytes}",
                self.live_blocks, self.live_bytes
            ));
        }
        if free != self.free_blocks {
            return Err(format!(
                "free_blocks {} != counted {free}",
                self.free_blocks
            ));
        }
        // Free lists and bitmaps. Every listed node is a free, non-vacant one, and the
        // slot count below shows that those are all in chains.
        let mut listed = 0usize;
        for fl in 0..FL_COUNT {
            let fl_bit = self.fl_bitmap & (1u64 << fl) != 0;
            if fl_bit != (self.sl_bitmap[fl] != 0) {
                return Err(format!("fl bitmap bit {fl} inconsistent"));
            }
            for sl in 0..SL_COUNT {
                let head = self.heads[fl][sl];
                if (head != NONE) != (self.sl_bitmap[fl] & (1u32 << sl) != 0) {
                    return Err(format!("sl bitmap bit {fl}/{sl} inconsistent"));
                }
                let mut prev = NONE;
                let mut cur = head;
                while cur != NONE {
                    let n = self
                        .nodes
                        .get(cur as usize)
                        .ok_or_else(|| format!("free link {cur} out of range"))?;
                    listed += 1;
                    if listed > free {
                        return Err("free lists hold more blocks than the chains".into());
                    }
                    if n.len == 0 || !n.is_free() || n.pool != prev {
                        return Err(format!("free node {cur}: bad state or prev_free"));
                    }
                    if class_of(n.len) != (fl, sl) {
                        return Err(format!("free node {cur} in the wrong list"));
                    }
                    prev = cur;
                    cur = n.tag;
                }
            }
        }
        if listed != free {
            return Err(format!("{listed} listed free blocks != {free} in chains"));
        }
        let mut vacant = 0usize;
        let mut cur = self.vacant_head;
        while cur != NONE {
            let n = self
                .nodes
                .get(cur as usize)
                .ok_or_else(|| format!("vacant link {cur} out of range"))?;
            if n.len != 0 || n.tag != 0 {
                return Err(format!("node {cur} in the vacant list is not vacant"));
            }
            vacant += 1;
            if vacant > self.nodes.len() {
                return Err("vacant list cycle".into());
            }
            cur = n.next_phys;
        }
        if vacant != self.vacant_count || vacant + used + free != self.nodes.len() {
            return Err(format!(
                "slots: {vacant} vacant + {used} used + {free} free != {}",
                self.nodes.len()
            ));
        }
        Ok(())
    }

    // ----- internals -------------------------------------------------------------
    //
    // Node indices stored in links, heads and pools were all produced by `new_node`, and
    // the node slab never shrinks, so indexing `self.nodes` with them is in bounds; so is
    // indexing `self.pools` with a live node's pool or a first block's marker. Indices
    // coming from callers (`RangeId`, `PoolId`) go through `get`.

    #[inline]
    fn round_up(&self, len: usize) -> Option<usize> {
        let mask = self.granule - 1;
        len.checked_add(mask).map(|v| v & !mask)
    }

    /// Bytes of `granules` granules of a pool (whose length in bytes fits a `usize`, so
    /// this cannot overflow).
    #[inline(always)]
    fn bytes(&self, granules: u32) -> usize {
        (granules as usize) << self.shift
    }

    /// Address of the granule `off` of `pool`.
    #[inline(always)]
    fn addr(&self, pool: u32, off: u32) -> usize {
        self.pools[pool as usize].start + self.bytes(off)
    }

    /// The pool of a free block whose `prev_phys` is `prev`: named by the marker of a
    /// first block, else taken from the block below, which is live (free blocks never
    /// touch).
    #[inline(always)]
    fn pool_below(&self, prev: u32) -> u32 {
        if is_node(prev) {
            self.nodes[prev as usize].pool
        } else {
            prev & !FIRST
        }
    }

    #[inline]
    fn live_index(&self, id: RangeId) -> Result<u32, RangeError> {
        let tag = id.tag();
        match self.nodes.get(id.index() as usize) {
            Some(n) if n.tag == tag && tag & USED != 0 => Ok(id.index()),
            _ => Err(RangeError::StaleId),
        }
    }

    #[inline]
    fn allocation(&self, idx: u32) -> Allocation {
        let n = &self.nodes[idx as usize];
        Allocation {
            id: RangeId::new(idx, n.tag),
            start: self.addr(n.pool, n.off),
            len: self.bytes(n.len),
            pool: PoolId(n.pool),
        }
    }

    /// Whether `n` more nodes can be created.
    #[inline]
    fn can_take(&self, n: usize) -> bool {
        self.vacant_count + (MAX_NODES - self.nodes.len()) >= n
    }

    /// Takes a vacant slot (or grows the slab) for a new node, in no list yet; the caller
    /// checked `can_take`, and then links it (`insert_free`) or marks it live.
    #[inline]
    fn new_node(&mut self, off: u32, len: u32, prev_phys: u32, next_phys: u32) -> u32 {
        let node = Node {
            off,
            len,
            prev_phys,
            next_phys,
            pool: NONE,
            tag: 0,
        };
        let head = self.vacant_head;
        if head != NONE {
            let slot = &mut self.nodes[head as usize];
            self.vacant_head = slot.next_phys;
            self.vacant_count -= 1;
            *slot = node;
            head
        } else {
            // Below NONE: `can_take` keeps the slab within MAX_NODES.
            let idx = self.nodes.len() as u32;
            self.nodes.push(node);
            idx
        }
    }

    /// Makes node `idx` (in no free list) a live block of `pool`, with the next
    /// generation; returns its tag.
    #[inline(always)]
    fn mark_used(&mut self, idx: u32, pool: u32) -> u32 {
        let tag = USED | self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let n = &mut self.nodes[idx as usize];
        n.pool = pool;
        n.tag = tag;
        tag
    }

    /// Puts node `idx` (in no chain or list any more) in the vacant list. Its `off`,
    /// `prev_phys` and `pool` keep stale values, never read.
    #[inline]
    fn release_slot(&mut self, idx: u32) {
        let n = &mut self.nodes[idx as usize];
        n.len = 0;
        n.tag = 0;
        n.next_phys = self.vacant_head;
        self.vacant_head = idx;
        self.vacant_count += 1;
    }

    /// Points the `next_phys` of `prev` (a `prev_phys` value) at `idx`, or makes `idx`
    /// the first node of the pool that `prev` names.
    #[inline]
    fn set_next_phys(&mut self, prev: u32, idx: u32) {
        if is_node(prev) {
            self.nodes[prev as usize].next_phys = idx;
        } else if let Some(p) = self.pools.get_mut((prev & !FIRST) as usize) {
            p.first = idx;
        }
    }

    /// Adds free block `idx` to the head of the list for its length.
    #[inline(always)]
    fn insert_free(&mut self, idx: u32) {
        let (fl, sl) = class_of(self.nodes[idx as usize].len);
        self.link(idx, fl, sl);
        self.free_blocks += 1;
    }

    /// Unlinks free block `idx` (whose length is still the one it was listed with) from
    /// its list. Its `pool` and `tag` still hold list links: the caller marks it live or
    /// releases it.
    #[inline(always)]
    fn remove_free(&mut self, idx: u32) {
        let (fl, sl) = class_of(self.nodes[idx as usize].len);
        self.unlink(idx, fl, sl);
        self.free_blocks -= 1;
    }

    /// Moves free block `idx`, listed with length `old_len`, to the list for its new
    /// length; it stays where it is when the class did not change (the common case for
    /// a large block that is split or grown by a little).
    #[inline(always)]
    fn reclass(&mut self, idx: u32, old_len: u32) {
        let new = class_of(self.nodes[idx as usize].len);
        let old = class_of(old_len);
        if new != old {
            self.unlink(idx, old.0, old.1);
            self.link(idx, new.0, new.1);
        }
    }

    /// Pushes free block `idx` onto the list `(fl, sl)`.
    #[inline(always)]
    fn link(&mut self, idx: u32, fl: usize, sl: usize) {
        let head = self.heads[fl][sl];
        {
            let n = &mut self.nodes[idx as usize];
            n.pool = NONE;
            n.tag = head;
        }
        if head != NONE {
            self.nodes[head as usize].pool = idx;
        }
        self.heads[fl][sl] = idx;
        self.fl_bitmap |= 1u64 << fl;
        self.sl_bitmap[fl] |= 1u32 << sl;
    }

    /// Takes free block `idx` out of the list `(fl, sl)`.
    #[inline(always)]
    fn unlink(&mut self, idx: u32, fl: usize, sl: usize) {
        let (prev, next) = {
            let n = &self.nodes[idx as usize];
            (n.pool, n.tag)
        };
        if prev != NONE {
            self.nodes[prev as usize].tag = next;
        } else {
            self.heads[fl][sl] = next;
            if next == NONE {
                self.sl_bitmap[fl] &= !(1u32 << sl);
                if self.sl_bitmap[fl] == 0 {
                    self.fl_bitmap &= !(1u64 << fl);
                }
            }
        }
        if next != NONE {
            self.nodes[next as usize].pool = prev;
        }
    }

    /// The first non-empty class at or above `(fl, sl)`.
    #[inline]
    fn next_nonempty(&self, fl: usize, sl: usize) -> Option<(usize, usize)> {
        let mut fl = fl;
        let mut sl_map = self.sl_bitmap.get(fl)? & (u32::MAX << sl);
        if sl_map == 0 {
            let above = u64::MAX.checked_shl(fl as u32 + 1).unwrap_or(0);
            let fl_map = self.fl_bitmap & above;
            if fl_map == 0 {
                return None;
            }
            fl = fl_map.trailing_zeros() as usize;
            sl_map = self.sl_bitmap[fl];
        }
        Some((fl, sl_map.trailing_zeros() as usize))
    }

    /// Good fit: the head of the first non-empty class at or above `size` granules
    /// rounded up to a class boundary. Every block there holds at least `size` granules.
    #[inline]
    fn find_good_fit(&self, size: usize) -> Option<u32> {
        let (fl, sl) = mapping_search(size);
        let (fl, sl) = self.next_nonempty(fl, sl)?;
        Some(self.heads[fl][sl])
    }

    /// After the good-fit search failed: walks the classes from the one holding `size`
    /// upwards (all below the good-fit class, since that search failed), checking at
    /// most `FALLBACK_SCAN` blocks for an actual fit of `size` bytes at `align`.
    #[cold]
    fn find_fallback(&self, size: usize, align: usize) -> Option<u32> {
        let (mut fl, mut sl) = mapping_insert(size >> self.shift);
        let mut budget = FALLBACK_SCAN;
        loop {
            let (f, s) = self.next_nonempty(fl, sl)?;
            let mut cur = self.heads[f][s];
            while cur != NONE {
                if budget == 0 {
                    return None;
                }
                budget -= 1;
                let n = &self.nodes[cur as usize];
                let len = self.bytes(n.len);
                let pad = align_pad(self.addr(self.pool_below(n.prev_phys), n.off), align);
                if pad <= len && len - pad >= size {
                    return Some(cur);
                }
                cur = n.tag;
            }
            if s + 1 < SL_COUNT {
                fl = f;
                sl = s + 1;
            } else {
                fl = f + 1;
                sl = 0;
            }
        }
    }

    /// Turns free block `block` (still in its free list, and holding `size` bytes at
    /// `align`) into a used block, splitting off the misaligned front and the tail as
    /// free blocks. `block` keeps the largest-address free part (the tail, else the
    /// front) and stays in its list when its class does not change; the other parts get
    /// fresh nodes (at most two, reserved by the caller).
    #[inline]
    fn carve(&mut self, block: u32, size: usize, align: usize) -> Allocation {
        let Node {
            off: b_off,
            len: b_len,
            prev_phys: b_prev,
            next_phys: b_next,
            ..
        } = self.nodes[block as usize];
        let pool = self.pool_below(b_prev);
        let b_start = self.addr(pool, b_off);
        // The block holds `pad + size` bytes: both are granule multiples below its length.
        let pad = (align_pad(b_start, align) >> self.shift) as u32;
        let size = (size >> self.shift) as u32;
        let off = b_off + pad;
        let rest = b_len - pad - size;
        let used = if rest != 0 {
            // `block` becomes the tail [off + size, end).
            let used = self.new_node(off, size, b_prev, block);
            if pad != 0 {
                // The front is a new free block. Its predecessor is used: a free
                // block never has a free neighbour.
                let front = self.new_node(b_off, pad, b_prev, used);
                self.set_next_phys(b_prev, front);
                self.nodes[used as usize].prev_phys = front;
                self.insert_free(front);
            } else {
                self.set_next_phys(b_prev, used);
            }
            let b = &mut self.nodes[block as usize];
            b.off = off + size;
            b.len = rest;
            b.prev_phys = used;
            self.reclass(block, b_len);
            used
        } else if pad != 0 {
            // `block` keeps the front [b_off, off).
            let used = self.new_node(off, size, block, b_next);
            if b_next != NONE {
                self.nodes[b_next as usize].prev_phys = used;
            }
            let b = &mut self.nodes[block as usize];
            b.len = pad;
            b.next_phys = used;
            self.reclass(block, b_len);
            used
        } else {
            // Exact fit.
            self.remove_free(block);
            block
        };
        let tag = self.mark_used(used, pool);
        let len = self.bytes(size);
        self.live_blocks += 1;
        self.live_bytes += len;
        Allocation {
            id: RangeId::new(used, tag),
            start: b_start + self.bytes(pad),
            len,
            pool: PoolId(pool),
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]
mod tests {
    use super::*;

    const G: usize = 16;

    fn heap_with_pool(start: usize, len: usize) -> (RangeHeap, PoolId) {
        let mut h = RangeHeap::new(G).unwrap();
        let p = h.add_pool(start, len).unwrap();
        (h, p)
    }

    fn check(h: &RangeHeap) {
        h.debug_validate().unwrap();
    }

    #[test]
    fn new_rejects_bad_granules() {
        for g in [0, 1, 2, 4, 7, 12, 24, usize::MAX] {
            assert_eq!(RangeHeap::new(g).unwrap_err(), RangeError::BadGranule(g));
        }
        for g in [8, 16, 4096, 1 << 20] {
            assert_eq!(RangeHeap::new(g).unwrap().granule(), g);
        }
    }

    #[test]
    fn mapping_is_monotonic_and_search_rounds_up() {
        let mut last = (0, 0);
        for size in 1..100_000usize {
            let c = mapping_insert(size);
            assert!(c >= last, "size {size}");
            assert!(c.1 < SL_COUNT);
            last = c;
            // Every block of the search class or above holds at least `size`.
            let s = mapping_search(size);
            assert!(s >= c);
            for bigger in size..size + 64 {
                if mapping_insert(bigger) >= s {
                    assert!(bigger >= size);
                }
            }
            for smaller in size.saturating_sub(64).max(1)..size {
                assert!(
                    mapping_insert(smaller) < s,
                    "{smaller} would be found for {size}"
                );
            }
        }
        let top = usize::MAX >> 3;
        assert!(mapping_insert(top).0 < FL_COUNT);
        assert!(mapping_search(top).0 < FL_COUNT);
    }

    #[test]
    fn alignment_up_to_64k() {
        let (mut h, _) = heap_with_pool(0x1000_0010, 16 << 20);
        let mut live = Vec::new();
        let mut shift = 0;
        while 1usize << shift <= 64 * 1024 {
            let align = 1usize << shift;
            for len in [1, 16, 17, 100, 4096, 5000] {
                let a = h.allocate(len, align).unwrap();
                assert_eq!(a.start % align.max(G), 0, "align {align}");
                assert_eq!(a.len, len.div_ceil(G) * G);
                live.push(a);
                check(&h);
            }
            shift += 1;
        }
        live.sort_by_key(|a| a.start);
        for w in live.windows(2) {
            assert!(w[0].start + w[0].len <= w[1].start);
        }
        for a in &live {
            h.free(a.id).unwrap();
            check(&h);
        }
        assert_eq!(h.stats().free_blocks, 1);
        assert_eq!(h.stats().live_bytes, 0);
    }

    #[test]
    fn coalescing_in_every_order() {
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let (mut h, p) = heap_with_pool(0x4000, 3 * 256);
            let a: Vec<Allocation> = (0..3).map(|_| h.allocate(256, 16).unwrap()).collect();
            assert_eq!(h.stats().free_blocks, 0);
            assert!(h.allocate(16, 16).is_err());
            for (k, &i) in order.iter().enumerate() {
                let f = h.free(a[i].id).unwrap();
                assert_eq!(f.pool_empty, k == 2);
                check(&h);
            }
            assert!(h.pool_is_empty(p));
            assert_eq!(h.stats().free_blocks, 1);
            let whole = h.allocate(3 * 256, 1).unwrap();
            assert_eq!((whole.start, whole.len), (0x4000, 768));
            check(&h);
        }
    }

    #[test]
    fn whole_pool_allocation_with_odd_sizes() {
        // Sizes that are not on a class boundary need the fallback scan.
        for len_g in [1usize, 15, 16, 17, 31, 33, 1000, 1023, 4097, 123_457] {
            let len = len_g * G;
            let (mut h, _) = heap_with_pool(0x10_0000, len);
            let a = h.allocate(len, 1).unwrap();
            assert_eq!(a.len, len);
            h.free(a.id).unwrap();
            // Aligned: the pool start is 1 MiB aligned.
            let a = h.allocate(len, 1 << 20).unwrap();
            assert_eq!(a.start, 0x10_0000);
            h.free(a.id).unwrap();
            check(&h);
        }
    }

    #[test]
    fn aligned_fit_in_a_hole_between_used_blocks() {
        // A full pool with a misaligned hole [0x10400, 0x10c00) between a and c.
        let (mut h, p) = heap_with_pool(0x10000, 0x1000);
        let a = h.allocate(0x400, 16).unwrap();
        let b = h.allocate(0x800, 16).unwrap();
        let c = h.allocate(0x400, 16).unwrap();
        assert_eq!((a.start, b.start, c.start), (0x10000, 0x10400, 0x10c00));
        h.free(b.id).unwrap();
        check(&h);
        // Too big for the good-fit search (0x400 + 0x800 - 16), found by the fallback
        // scan: the front [0x10400, 0x10800) stays free, no tail remains.
        let d = h.allocate(0x400, 0x800).unwrap();
        assert_eq!(d.start, 0x10800);
        check(&h);
        assert_eq!(h.stats().free_blocks, 1);
        // Same with a tail: hole [0x10400, 0x10c00) again, 0x200 at 0x800.
        h.free(d.id).unwrap();
        let e = h.allocate(0x200, 0x800).unwrap();
        assert_eq!(e.start, 0x10800);
        assert_eq!(h.stats().free_blocks, 2);
        check(&h);
        for id in [c.id, e.id, a.id] {
            h.free(id).unwrap();
            check(&h);
        }
        assert!(h.pool_is_empty(p));
        assert_eq!(h.stats().free_blocks, 1);
    }

    #[test]
    fn shrink_then_free() {
        let (mut h, p) = heap_with_pool(0x8000, 4096);
        let a = h.allocate(1000, 64).unwrap();
        let b = h.allocate(100, 16).unwrap();
        let a2 = h.shrink(a.id, 100).unwrap();
        assert_eq!((a2.id, a2.start, a2.len), (a.id, a.start, 112));
        assert_eq!(h.get(a.id).unwrap(), a2);
        check(&h);
        // Shrink by nothing and growth.
        assert_eq!(h.shrink(a.id, 112).unwrap(), a2);
        assert_eq!(
            h.shrink(a.id, 113).unwrap_err(),
            RangeError::ShrinkTooLarge {
                len: 112,
                new_len: 113
            }
        );
        assert_eq!(h.shrink(a.id, 0).unwrap_err(), RangeError::ZeroLength);
        assert_eq!(
            h.shrink(a.id, usize::MAX).unwrap_err(),
            RangeError::ShrinkTooLarge {
                len: 112,
                new_len: usize::MAX
            }
        );
        // Shrink b, whose successor is free: the tail merges into it.
        let blocks = h.stats().free_blocks;
        h.shrink(b.id, 16).unwrap();
        assert_eq!(h.stats().free_blocks, blocks);
        assert_eq!(h.stats().live_bytes, 112 + 16);
        check(&h);
        h.free(a.id).unwrap();
        h.free(b.id).unwrap();
        check(&h);
        assert!(h.pool_is_empty(p));
        assert_eq!(h.stats().free_blocks, 1);
        assert_eq!(h.shrink(a.id, 16).unwrap_err(), RangeError::StaleId);
    }

    #[test]
    fn double_free_and_stale_ids() {
        let (mut h, _) = heap_with_pool(0x8000, 4096);
        let a = h.allocate(64, 16).unwrap();
        h.free(a.id).unwrap();
        assert_eq!(h.free(a.id).unwrap_err(), RangeError::StaleId);
        assert_eq!(h.get(a.id).unwrap_err(), RangeError::StaleId);
        // The slot is reused by the next allocation: the old id stays stale.
        let b = h.allocate(64, 16).unwrap();
        assert_eq!(b.id.index(), a.id.index());
        assert_ne!(b.id, a.id);
        assert_eq!(h.free(a.id).unwrap_err(), RangeError::StaleId);
        assert_eq!(h.get(b.id).unwrap().start, b.start);
        // Slots released by coalescing and reused by splits.
        let c = h.allocate(64, 16).unwrap();
        h.free(b.id).unwrap();
        h.free(c.id).unwrap();
        for _ in 0..4 {
            let d = h.allocate(32, 16).unwrap();
            assert_ne!(d.id, b.id);
            assert_ne!(d.id, c.id);
        }
        for id in [a.id, b.id, c.id] {
            assert_eq!(h.free(id).unwrap_err(), RangeError::StaleId);
        }
        // An id that was never issued.
        let bogus = RangeId::new(1_000_000, 0);
        assert_eq!(h.free(bogus).unwrap_err(), RangeError::StaleId);
        check(&h);
    }

    #[test]
    fn id_from_another_heap_is_stale() {
        let (mut h1, _) = heap_with_pool(0x8000, 4096);
        let (mut h2, _) = heap_with_pool(0x8000, 4096);
        let a = h1.allocate(64, 16).unwrap();
        let b = h2.allocate(64, 16).unwrap();
        assert_eq!(a.id.index(), b.id.index());
        assert_eq!(h2.free(a.id).unwrap_err(), RangeError::StaleId);
        assert_eq!(h1.get(b.id).unwrap_err(), RangeError::StaleId);
    }

    #[test]
    fn argument_errors() {
        let (mut h, _) = heap_with_pool(0x8000, 4096);
        assert_eq!(h.allocate(0, 16).unwrap_err(), RangeError::ZeroLength);
        for align in [0, 3, 24, 100, usize::MAX] {
            assert_eq!(
                h.allocate(16, align).unwrap_err(),
                RangeError::BadAlignment(align)
            );
        }
        for len in [usize::MAX, usize::MAX - 10, usize::MAX - 14] {
            assert_eq!(
                h.allocate(len, 16).unwrap_err(),
                RangeError::TooLarge { len }
            );
        }
        // Rounds fine but the alignment pushes it over.
        let len = usize::MAX - 31;
        assert_eq!(
            h.allocate(len, 64).unwrap_err(),
            RangeError::TooLarge { len }
        );
        assert_eq!(
            h.allocate(16, 1 << (usize::BITS - 1)).unwrap_err(),
            RangeError::Exhausted {
                len: 16,
                align: 1 << (usize::BITS - 1)
            }
        );
        // Representable but far too big.
        let len = usize::MAX - 20;
        assert_eq!(
            h.allocate(len, 1).unwrap_err(),
            RangeError::Exhausted { len, align: 1 }
        );
        check(&h);
        assert_eq!(h.stats().live_blocks, 0);
    }

    #[test]
    fn exhaustion_then_recovery() {
        let (mut h, p) = heap_with_pool(0x10000, 1024);
        let mut live = Vec::new();
        loop {
            match h.allocate(48, 16) {
                Ok(a) => live.push(a),
                Err(e) => {
                    assert_eq!(e, RangeError::Exhausted { len: 48, align: 16 });
                    break;
                }
            }
        }
        assert_eq!(live.len(), 1024 / 48);
        assert!(h.allocate(1024, 16).is_err());
        check(&h);
        // Still works: the 16-byte remainder is usable, and freeing restores everything.
        let small = h.allocate(16, 16).unwrap();
        assert!(h.allocate(16, 16).is_err());
        h.free(small.id).unwrap();
        for a in live {
            h.free(a.id).unwrap();
        }
        check(&h);
        assert!(h.pool_is_empty(p));
        let all = h.allocate(1024, 1024).unwrap();
        assert_eq!(all.start, 0x10000);
    }

    #[test]
    fn no_pools_means_exhausted() {
        let mut h = RangeHeap::new(16).unwrap();
        assert_eq!(
            h.allocate(16, 16).unwrap_err(),
            RangeError::Exhausted { len: 16, align: 16 }
        );
        assert_eq!(h.stats(), RangeStats::default());
    }

    #[test]
    fn pools_add_remove() {
        let mut h = RangeHeap::new(G).unwrap();
        let p1 = h.add_pool(0x10000, 0x1000).unwrap();
        let p2 = h.add_pool(0x11000, 0x1000).unwrap(); // adjacent is fine
        assert_eq!(h.pool_range(p1), Some((0x10000, 0x1000)));
        let bad = |r: Result<PoolId, RangeError>| matches!(r, Err(RangeError::BadPool { .. }));
        assert!(bad(h.add_pool(0x10800, 0x1000))); // overlaps p1 and p2
        assert!(bad(h.add_pool(0xF000, 0x1010))); // overlaps p1 by one granule
        assert!(bad(h.add_pool(0x11FF0, 0x20))); // overlaps the end of p2
        assert!(bad(h.add_pool(0x10100, 0x100))); // inside p1
        assert!(bad(h.add_pool(0x0, 0x100000))); // covers both
        assert!(bad(h.add_pool(0x20000, 0))); // zero length
        assert!(bad(h.add_pool(0x20008, 0x100))); // unaligned start
        assert!(bad(h.add_pool(0x20000, 0x108))); // unaligned len
        assert!(bad(h.add_pool(usize::MAX - 0xFF, 0x200))); // overflow
        assert!(h.add_pool(0xF000, 0x1000).is_ok()); // adjacent below
        check(&h);

        // Adjacent pools never coalesce.
        let a = h.allocate(0x1000, 16).unwrap();
        let b = h.allocate(0x1000, 16).unwrap();
        assert_ne!(a.pool, b.pool);
        assert_eq!(h.remove_pool(a.pool).unwrap_err(), RangeError::PoolInUse);
        assert!(!h.pool_is_empty(a.pool));
        h.free(a.id).unwrap();
        h.free(b.id).unwrap();
        assert_eq!(h.stats().free_blocks, 3);
        assert!(h.allocate(0x1010, 16).is_err());

        assert_eq!(h.remove_pool(p1).unwrap(), (0x10000, 0x1000));
        assert!(matches!(h.remove_pool(p1), Err(RangeError::BadPool { .. })));
        assert_eq!(h.pool_range(p1), None);
        assert!(!h.pool_is_empty(p1));
        assert!(matches!(
            h.remove_pool(PoolId(77)),
            Err(RangeError::BadPool { .. })
        ));
        // The space can be added again, with a new id.
        let p3 = h.add_pool(0x10000, 0x1000).unwrap();
        assert_ne!(p3, p1);
        check(&h);
        let s = h.stats();
        assert_eq!((s.pools, s.pool_bytes, s.free_blocks), (3, 0x3000, 3));
        h.remove_pool(p2).unwrap();
        h.remove_pool(p3).unwrap();
        check(&h);
        assert_eq!(h.stats().pools, 1);
    }

    #[test]
    fn pool_near_top_of_address_space() {
        let mut h = RangeHeap::new(G).unwrap();
        let len = 1usize << 20;
        let start = (usize::MAX - len + 1) & !(len - 1); // ends at usize::MAX - 0xFFFFF + len
        let start = start - len; // end = start + len must be representable
        let p = h.add_pool(start, len).unwrap();
        // The highest pool possible: its end, usize::MAX - G + 1, is representable.
        let top = usize::MAX - 2 * G + 1;
        let p_top = h.add_pool(top, G).unwrap();
        // The very last granule would end at 2^BITS: rejected, not a panic.
        assert!(matches!(
            h.add_pool(usize::MAX - G + 1, G),
            Err(RangeError::BadPool { .. })
        ));
        assert!(matches!(
            h.add_pool(top, 2 * G),
            Err(RangeError::BadPool { .. })
        ));
        let a = h.allocate(len / 2, len / 2).unwrap();
        assert_eq!(a.start % (len / 2), 0);
        assert_eq!(a.pool, p);
        let t = h.allocate(G, 1).unwrap();
        assert_eq!(t.start, top);
        assert_eq!(t.pool, p_top);
        // Alignments whose aligned address would overflow do not fit.
        assert!(h.allocate(G, 1 << (usize::BITS - 1)).is_err());
        let rest = h.allocate(len / 2, 1).unwrap();
        assert!(h.allocate(G, 1).is_err());
        check(&h);
        h.free(t.id).unwrap();
        h.free(a.id).unwrap();
        h.free(rest.id).unwrap();
        assert_eq!(h.remove_pool(p).unwrap(), (start, len));
        assert_eq!(h.remove_pool(p_top).unwrap(), (top, G));
        check(&h);
    }

    #[test]
    fn huge_pool_512m() {
        let len = 512usize << 20;
        let start = 0x7f00_0000_0000usize;
        let (mut h, p) = heap_with_pool(start, len);
        let a = h.allocate(256 << 20, 64 << 10).unwrap();
        let b = h.allocate(200 << 20, 2 << 20).unwrap();
        let c = h.allocate(1, 1).unwrap();
        assert!(h.allocate(100 << 20, 16).is_err());
        check(&h);
        h.free(b.id).unwrap();
        h.free(a.id).unwrap();
        let f = h.free(c.id).unwrap();
        assert!(f.pool_empty);
        let all = h.allocate(len, 1 << 20).unwrap();
        assert_eq!((all.start, all.len, all.pool), (start, len, p));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn pool_size_limit() {
        let start = 0x4000_0000_0000usize;
        for g in [8usize, 16, 64] {
            let mut h = RangeHeap::new(g).unwrap();
            let max = u32::MAX as usize * g;
            assert_eq!(h.max_pool_len(), max);
            // One granule more is refused, and nothing changes.
            assert_eq!(
                h.add_pool(start, max + g).unwrap_err(),
                RangeError::PoolTooLarge { len: max + g, max }
            );
            assert_eq!(h.stats(), RangeStats::default());
            // The largest pool works up to its last granule (offsets near u32::MAX).
            let p = h.add_pool(start, max).unwrap();
            let all = h.allocate(max, 1).unwrap();
            assert_eq!((all.start, all.len, all.pool), (start, max, p));
            h.free(all.id).unwrap();
            let big = h.allocate(max - 3 * g, 1).unwrap();
            let a = h.allocate(g, 1).unwrap();
            let b = h.allocate(2 * g, 1).unwrap();
            assert_eq!(big.start, start);
            assert_eq!(a.start, start + max - 3 * g);
            assert_eq!(b.start + b.len, start + max);
            assert!(h.allocate(1, 1).is_err());
            check(&h);
            let a = h.shrink(a.id, 1).unwrap();
            assert_eq!(a.len, g);
            h.free(b.id).unwrap();
            let b = h.shrink(big.id, g).unwrap();
            assert_eq!(h.stats().free_bytes, max - 2 * g);
            check(&h);
            h.free(a.id).unwrap();
            assert!(h.free(b.id).unwrap().pool_empty);
            assert_eq!(h.remove_pool(p).unwrap(), (start, max));
            check(&h);
        }
        // With a huge granule, any pool `usize` can express fits.
        let g = 1usize << 40;
        let mut h = RangeHeap::new(g).unwrap();
        assert_eq!(h.max_pool_len(), usize::MAX & !(g - 1));
        let p = h.add_pool(g, usize::MAX / 2 + 1).unwrap();
        let a = h.allocate(usize::MAX / 2 + 1, 1).unwrap();
        assert_eq!((a.start, a.pool), (g, p));
        check(&h);
    }

    #[test]
    fn node_size_and_metadata_per_live_block() {
        assert_eq!(size_of::<Node>(), 24);
        const BLOCKS: usize = 10_000;
        let (mut h, _) = heap_with_pool(0x10_0000, 16 << 20);
        assert!(h.stats().metadata_bytes > 0);
        let ids: Vec<RangeId> = (0..BLOCKS)
            .map(|_| h.allocate(100, 16).unwrap().id)
            .collect();
        // 10,000 live nodes and the free tail of the pool.
        assert_eq!(h.nodes.len(), BLOCKS + 1);
        let s = h.stats();
        let node_bytes = h.nodes.capacity() * size_of::<Node>();
        let per_block = s.metadata_bytes as f64 / BLOCKS as f64;
        println!(
            "{BLOCKS} live 112-byte blocks: {} node bytes by length ({} per block), \
             {node_bytes} by capacity ({} per block), metadata_bytes {} ({per_block:.1} per block)",
            h.nodes.len() * size_of::<Node>(),
            h.nodes.len() * size_of::<Node>() / BLOCKS,
            node_bytes / BLOCKS,
            s.metadata_bytes,
        );
        assert_eq!(
            s.metadata_bytes,
            node_bytes + h.pools.capacity() * size_of::<Pool>()
        );
        assert!(per_block < 40.0, "{per_block} bytes per live block");
        // Freeing every other block costs nothing more: the nodes stay, as free blocks.
        for id in ids.iter().step_by(2) {
            h.free(*id).unwrap();
        }
        assert_eq!(h.nodes.len(), BLOCKS + 1);
        assert_eq!(h.stats().metadata_bytes, s.metadata_bytes);
        check(&h);
    }

    #[test]
    fn generations_wrap_at_31_bits() {
        let (mut h, _) = heap_with_pool(0x8000, 4096);
        h.next_generation = u32::MAX - 1;
        let ids: Vec<RangeId> = (0..4).map(|_| h.allocate(16, 16).unwrap().id).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(h.get(*id).unwrap().start, 0x8000 + 16 * i);
            assert_ne!(id.tag() & USED, 0);
        }
        assert_eq!(
            format!("{:?}", ids[1]),
            "RangeId { index: 2, generation: 2147483647 }"
        );
        assert_eq!(
            format!("{:?}", ids[2]),
            "RangeId { index: 3, generation: 0 }"
        );
        // A stale id is told apart until its slot is reused by an allocation that draws
        // the same generation, 2^31 allocations later: then it passes as live. Here the
        // counter is wound on by hand.
        let a = h.allocate(16, 16).unwrap();
        h.free(a.id).unwrap();
        let b = h.allocate(16, 16).unwrap();
        assert_eq!(b.id.index(), a.id.index());
        assert_eq!(h.free(a.id).unwrap_err(), RangeError::StaleId);
        h.free(b.id).unwrap();
        h.next_generation = (a.id.tag() & !USED).wrapping_add(1 << 31);
        let c = h.allocate(16, 16).unwrap();
        assert_eq!(c.id, a.id);
        assert!(h.free(a.id).is_ok());
        check(&h);
    }

    #[test]
    fn stats_track_everything() {
        let (mut h, _) = heap_with_pool(0x10000, 0x10000);
        let a = h.allocate(100, 256).unwrap();
        let s = h.stats();
        assert_eq!(s.live_blocks, 1);
        assert_eq!(s.live_bytes, 112);
        assert_eq!(s.free_bytes, 0x10000 - 112);
        assert_eq!(s.free_blocks, 1);
        h.free(a.id).unwrap();
        assert_eq!(h.stats().free_bytes, 0x10000);
        let dbg = format!("{h:?}");
        assert!(dbg.contains("RangeHeap"));
    }
}
