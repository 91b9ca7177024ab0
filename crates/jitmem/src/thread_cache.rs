//! The per-thread cache of freed ranges: the allocation fast path of the Pooled and Arena
//! layouts. A freed block of at most [`MAX_CACHED_LEN`] bytes (already filled with traps and
//! published, as every freed block is) is kept by the freeing thread, and the next allocation of
//! the same rounded length on that thread takes it back: no lock, no TLSF work, no system call.
//!
//! - **Bounded**: at most [`ENTRIES_PER_SHARD`] ranges per heap shard per thread (so at most
//!   `ENTRIES_PER_SHARD * MAX_CACHED_LEN` bytes); a full cache sends the block to the heap.
//! - **Counted**: each (thread, shard) slot has a cell, written only by its thread (no atomic
//!   read-modify-write) and registered with the shard, so that [`Stats`](crate::Stats) counts a
//!   cached block as free, not live.
//! - **Flushed** when the thread exits (every range goes back to its heap), and for the calling
//!   thread when a [`JitMemory`](crate::JitMemory) handle is dropped. Ranges cached by *other*
//!   threads stay reserved until those threads exit; they never keep memory
//!   mapped after the memory and all its blocks are gone: a cache names its shard through a
//!   `Weak` reference, so the shard (and its chunks) is unmapped as soon as nothing else holds
//!   it, and the cached ranges are then forgotten.
//! - **Safe under fork**: no lock is involved; a child inherits the forking thread's cache,
//!   whose ranges are valid in the child wherever the memory is usable there (a fork child of a
//!   Mirror memory cannot allocate from it at all).

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

use crate::heap::{Allocation, CacheCell, Owner, Shard};
use crate::range_heap::RangeId;

/// Blocks larger than this are never cached.
pub(crate) const MAX_CACHED_LEN: usize = 1024;
/// Ranges a thread keeps per shard.
pub(crate) const ENTRIES_PER_SHARD: usize = 32;
/// How many of the most recent entries an allocation looks at for an exact fit.
const SCAN: usize = 8;

/// A freed range kept for reuse.
#[derive(Clone, Copy)]
struct Entry {
    id: RangeId,
    rx: NonNull<u8>,
    len: usize,
    writable_offset: isize,
}

struct Slot {
    shard: Weak<Shard>,
    /// What this slot holds, for the shard's stats.
    cell: Arc<CacheCell>,
    entries: Vec<Entry>,
}

#[derive(Default)]
struct ThreadCache {
    slots: Vec<Slot>,
}

impl ThreadCache {
    fn slot(&mut self, shard: &Arc<Shard>) -> Option<&mut Slot> {
        let ptr = Arc::as_ptr(shard);
        self.slots.iter_mut().find(|s| s.shard.as_ptr() == ptr)
    }

    /// Gives every range back to its heap (if the shard is still alive) and forgets the slots.
    fn flush_where(&mut self, mut which: impl FnMut(&Slot) -> bool) {
        let mut i = 0;
        while i < self.slots.len() {
            if which(&self.slots[i]) {
                let slot = self.slots.swap_remove(i);
                give_back(slot);
            } else {
                i += 1;
            }
        }
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        self.flush_where(|_| true);
    }
}

fn give_back(slot: Slot) {
    // A dead shard took its chunks with it: its ranges are just numbers now.
    if let Some(shard) = slot.shard.upgrade() {
        for e in slot.entries {
            let _ = shard.free_cached_range(e.id, &slot.cell, e.len);
        }
        shard.unregister_cell(&slot.cell);
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new(ThreadCache::default());
}

/// A cached range of exactly `len` bytes (already rounded to the granule) aligned to `align`
/// from `shard`, if this thread holds one.
pub(crate) fn take(shard: &Arc<Shard>, len: usize, align: usize) -> Option<Allocation> {
    if len > MAX_CACHED_LEN {
        return None;
    }
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            let slot = cache.slot(shard)?;
            let n = slot.entries.len();
            let i = (n.saturating_sub(SCAN)..n).rev().find(|&i| {
                let e = &slot.entries[i];
                e.len == len && (e.rx.as_ptr() as usize) & (align - 1) == 0
            })?;
            let e = slot.entries.swap_remove(i);
            slot.cell.sub(e.len);
            Some(Allocation {
                rx: e.rx,
                len: e.len,
                writable_offset: e.writable_offset,
                owner: Owner::Range(e.id),
            })
        })
        .ok()
        .flatten()
}

/// Keeps a freed range (filled with traps and published by the caller) for this thread's next
/// allocation of its length. Returns the range when it is not kept (too large, cache full, the
/// thread is exiting): the caller frees it to the heap.
pub(crate) fn put(
    shard: &Arc<Shard>,
    id: RangeId,
    rx: NonNull<u8>,
    len: usize,
    writable_offset: isize,
) -> Result<(), RangeId> {
    if len > MAX_CACHED_LEN {
        return Err(id);
    }
    let kept = CACHE.try_with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            return false;
        };
        if cache.slot(shard).is_none() {
            // Forget slots of shards that died; then open one for this shard.
            cache.flush_where(|s| s.shard.strong_count() == 0);
            let Ok(cell) = shard.register_cell() else {
                return false;
            };
            cache.slots.push(Slot {
                shard: Arc::downgrade(shard),
                cell,
                entries: Vec::with_capacity(ENTRIES_PER_SHARD),
            });
        }
        let Some(slot) = cache.slot(shard) else {
            return false;
        };
        if slot.entries.len() >= ENTRIES_PER_SHARD {
            return false;
        }
        slot.entries.push(Entry {
            id,
            rx,
            len,
            writable_offset,
        });
        slot.cell.add(len);
        true
    });
    if kept == Ok(true) { Ok(()) } else { Err(id) }
}

/// Gives back every range this thread holds for `shard`.
pub(crate) fn flush(shard: &Arc<Shard>) {
    let ptr = Arc::as_ptr(shard);
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            cache.flush_where(|s| s.shard.as_ptr() == ptr);
        }
    });
}
