//! A region: one contiguous range of code memory mapped for one strategy (a pooled chunk, an
//! arena, or one allocation of the PerAllocation layout).

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::fork::{self, MirrorRecord};
use crate::sys::{self, Prot};

/// An owned mapping: its executable address, its writable address (the same one unless the
/// strategy is Mirror) and its length in bytes (a page multiple).
pub(crate) struct Region {
    rx: NonNull<u8>,
    rw: NonNull<u8>,
    len: usize,
    mirror: Option<Arc<MirrorRecord>>,
    generation: u64,
    /// Whether a fork child keeps this mapping (see `memory::child_keeps_memory`).
    child_keeps: bool,
}

// SAFETY: a Region owns its mapping; moving it to another thread moves that ownership.
unsafe impl Send for Region {}
// SAFETY: &Region only reads addresses and lengths.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes (a page multiple) for `strategy`. `used` is how much of it counts as
    /// handed out from the start (the whole of it for a PerAllocation block).
    pub(crate) fn map(
        strategy: Strategy,
        len: usize,
        used: usize,
        options: sys::MapOptions,
    ) -> Result<Region> {
        let generation = fork::generation();
        let child_keeps = crate::memory::child_keeps_memory(strategy);
        // The platform refusing the strategy outright (not a failed call): say which strategy.
        let refused = |e: Error| match sys::refusal(&e) {
            Some(reason) => Error::Unsupported {
                strategy,
                reason: reason.to_owned(),
            },
            None => e,
        };
        let (rx, rw, mirror) = match strategy {
            Strategy::Toggle => {
                let p = sys::map_private(len, Prot::RX).map_err(refused)?;
                (p, p, None)
            }
            Strategy::Rwx => {
                let p = sys::map_private(len, Prot::RWX).map_err(refused)?;
                (p, p, None)
            }
            Strategy::PerThread => {
                let key = sys::per_thread_key()
                    .map_err(|reason| Error::Unsupported { strategy, reason })?;
                let p = sys::map_per_thread(len, key).map_err(refused)?;
                (p, p, None)
            }
            Strategy::Mirror => {
                let views = sys::map_mirror(len, options).map_err(refused)?;
                let record = Arc::new(MirrorRecord::new(views.rx, len, used));
                // Built before registering so that a failure to register unmaps both views.
                let region = Region {
                    rx: views.rx,
                    rw: views.rw,
                    len,
                    mirror: Some(Arc::clone(&record)),
                    generation,
                    child_keeps,
                };
                fork::register(record)?;
                return Ok(region);
            }
            Strategy::Auto => return Err(Error::Internal("Region::map called with Auto")),
        };
        Ok(Region {
            rx,
            rw,
            len,
            mirror,
            generation,
            child_keeps,
        })
    }

    pub(crate) fn rx(&self) -> NonNull<u8> {
        self.rx
    }

    /// Mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `rw - rx`: add it to an executable address to get the writable one.
    pub(crate) fn diff(&self) -> isize {
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
        if let Some(record) = &self.mirror {
            fork::unregister(record);
            // In a fork child the RW view was never inherited (MADV_DONTFORK): that address
            // may now hold something else, so leave it alone.
            if self.generation == fork::generation() {
                // SAFETY: the RW view is ours and nothing refers to it any more.
                let _ = unsafe { sys::unmap_view(self.rw, self.len) };
            }
            // SAFETY: the RX view is ours and its blocks are gone (they hold the heap alive).
            let _ = unsafe { sys::unmap_view(self.rx, self.len) };
        } else if self.child_keeps || self.generation == fork::generation() {
            // SAFETY: the region is ours and its blocks are gone (they hold the heap alive).
            let _ = unsafe { sys::unmap(self.rx, self.len) };
        }
        // Otherwise (Apple MAP_JIT in a fork child) what the child has at that address is not
        // defined: leave it alone.
    }
}
