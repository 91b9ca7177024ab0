//! [`Region`]: one contiguous range of code memory mapped by a strategy (a pooled chunk, an
//! arena, or one allocation of the PerAllocation layout), unmapped when dropped.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fork::{self, MirrorRecord};
use crate::sys::{self, MirrorViews};

/// An owned mapping: its executable address, its writable address (the same one unless the
/// strategy is Mirror) and its length in bytes (a page multiple).
pub(crate) struct Region {
    rx: NonNull<u8>,
    rw: NonNull<u8>,
    len: usize,
    mirror: Option<Arc<MirrorRecord>>,
    /// The fork generation the region was mapped in.
    generation: u64,
    /// Whether a fork child keeps this mapping (the strategy's fork policy).
    child_keeps: bool,
}

// SAFETY: a Region owns its mapping; moving it to another thread moves that ownership.
unsafe impl Send for Region {}
// SAFETY: &Region only reads addresses and lengths.
unsafe impl Sync for Region {}

impl Region {
    /// A private mapping of `len` bytes at `ptr`, written in place (Toggle, PerThread, Rwx).
    pub(crate) fn private(ptr: NonNull<u8>, len: usize, child_keeps: bool) -> Region {
        Region {
            rx: ptr,
            rw: ptr,
            len,
            mirror: None,
            generation: fork::generation(),
            child_keeps,
        }
    }

    /// A mirror's two views, registered with the fork registry as `record`.
    pub(crate) fn mirror(views: MirrorViews, len: usize, record: Arc<MirrorRecord>) -> Region {
        Region {
            rx: views.rx,
            rw: views.rw,
            len,
            mirror: Some(record),
            generation: fork::generation(),
            child_keeps: false,
        }
    }

    pub(crate) fn rx(&self) -> NonNull<u8> {
        self.rx
    }

    /// Mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `writable address - executable address`: add it to an executable address to get the
    /// writable one (0 unless Mirror).
    pub(crate) fn writable_offset(&self) -> isize {
        (self.rw.as_ptr() as isize).wrapping_sub(self.rx.as_ptr() as isize)
    }

    /// Records that bytes up to `end` (an offset in the region) have been handed out, so that a
    /// fork child copies them.
    pub(crate) fn note_used(&self, end: usize) {
        if let Some(record) = &self.mirror {
            // A plain load first: the mark rarely moves, and an atomic RMW costs ~10 ns.
            if record.used.load(Ordering::Relaxed) < end {
                record.used.fetch_max(end, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let same_process = self.generation == fork::generation();
        if let Some(record) = &self.mirror {
            fork::unregister(record);
            // In a fork child the RW view was never inherited (MADV_DONTFORK): that address
            // may now hold something else, so leave it alone.
            if same_process {
                // SAFETY: the RW view is ours and nothing refers to it any more.
                let _ = unsafe { sys::unmap_view(self.rw, self.len) };
            }
            // SAFETY: the RX view is ours (in a child: the private copy the fork handler put
            // there) and its blocks are gone (they hold the heap alive).
            let _ = unsafe { sys::unmap_view(self.rx, self.len) };
        } else if self.child_keeps || same_process {
            // SAFETY: the region is ours and its blocks are gone (they hold the heap alive).
            let _ = unsafe { sys::unmap(self.rx, self.len) };
        }
        // Otherwise (Apple MAP_JIT in a fork child) what the child has at that address is not
        // defined: leave it alone.
    }
}
