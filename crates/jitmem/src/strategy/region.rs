//! [`Region`]: one contiguous range of code memory mapped by a strategy (a pooled chunk, an
//! arena, or one allocation of the PerAllocation layout), unmapped when dropped.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::fork::{self, MirrorRecord};
use crate::sys::{self, MapOptions, MirrorViews, Near, Prot};

/// An owned mapping: its executable address, its writable address (the same one unless the
/// strategy is Mirror, or PerThread under Apple's allow-list, whose writes go to a shadow) and
/// its length in bytes (a page multiple). With guard pages, each view sits in a reservation
/// with `guard` inaccessible bytes before and after it, which the region owns too (a shadow
/// has none).
pub(crate) struct Region {
    rx: NonNull<u8>,
    rw: NonNull<u8>,
    len: usize,
    guard: usize,
    mirror: Option<Arc<MirrorRecord>>,
    /// PerThread under Apple's allow-list: `rw` is a private RW shadow (`sys::map_private`,
    /// `len` bytes, no guard pages) registered for jitmem's copy callback while this lives.
    shadow: Option<sys::shadow::Registration>,
    /// The fork generation the region was mapped in.
    generation: u64,
    /// Whether a fork child keeps this mapping (the strategy's fork policy).
    child_keeps: bool,
    /// Commit on demand (Windows, [`sys::Commit`]): bytes from the start that are committed, a
    /// multiple of the commit granule or the whole region. Raised only by
    /// [`ensure_committed`](Self::ensure_committed), whose callers are serialised (the heap's
    /// lock, or the region's creation).
    committed: AtomicUsize,
    /// The protection pages of a private region are committed with (its strategy's resting
    /// protection); a mirror commits this on its executable view (RX, with explicit Control
    /// Flow Guard targets or not) and RW on its writable one.
    commit_prot: Prot,
}

// SAFETY: a Region owns its mapping; moving it to another thread moves that ownership.
unsafe impl Send for Region {}
// SAFETY: &Region only reads addresses and lengths.
unsafe impl Sync for Region {}

impl Region {
    /// A private mapping of `len` bytes at `ptr`, usable as mapped, written in place
    /// (PerThread).
    pub(crate) fn private(ptr: NonNull<u8>, len: usize, child_keeps: bool) -> Region {
        let region = Region::reserved_private(ptr, len, Prot::RX, child_keeps);
        region.committed.store(len, Ordering::Relaxed);
        region
    }

    /// A private reservation of `len` bytes at `ptr` ([`sys::reserve_private`]), written in place
    /// (Toggle, Rwx), whose pages are committed with `prot` as they are used.
    pub(crate) fn reserved_private(
        ptr: NonNull<u8>,
        len: usize,
        prot: Prot,
        child_keeps: bool,
    ) -> Region {
        Region {
            rx: ptr,
            rw: ptr,
            len,
            guard: 0,
            mirror: None,
            shadow: None,
            generation: fork::generation(),
            child_keeps,
            committed: AtomicUsize::new(0),
            commit_prot: prot,
        }
    }

    /// A private mapping of `len` bytes at `ptr` (PerThread's `MAP_JIT` memory), written through
    /// the RW shadow `shadow` of the same length, registered as `registration`; both unmapped
    /// when dropped.
    pub(crate) fn shadowed(
        ptr: NonNull<u8>,
        shadow: NonNull<u8>,
        len: usize,
        child_keeps: bool,
        registration: sys::shadow::Registration,
    ) -> Region {
        let mut region = Region::private(ptr, len, child_keeps);
        region.rw = shadow;
        region.shadow = Some(registration);
        region
    }

    /// A mirror's two reserved views ([`sys::reserve_mirror`]), registered with the fork
    /// registry as `record`; the executable view is committed with `rx`.
    pub(crate) fn mirror(
        views: MirrorViews,
        len: usize,
        rx: Prot,
        record: Arc<MirrorRecord>,
    ) -> Region {
        Region {
            rx: views.rx,
            rw: views.rw,
            len,
            guard: 0,
            mirror: Some(record),
            shadow: None,
            generation: fork::generation(),
            child_keeps: false,
            committed: AtomicUsize::new(0),
            commit_prot: rx,
        }
    }

    /// Makes the first `end` bytes usable: commits what is not committed yet, up to the next
    /// commit granule (Windows; a no-op where mappings are usable as mapped). A failure (the
    /// system's commit limit, Arbitrary Code Guard) is an `Error::Os` whose source is the OS
    /// error, and leaves the region as it was: nothing above the mark is handed out.
    ///
    /// Callers are serialised (the heap's lock, or the region's creation): the mark is read and
    /// raised without a race, so that no page is committed twice.
    pub(crate) fn ensure_committed(&self, end: usize) -> Result<()> {
        let Some(granule) = sys::commit_granule() else {
            return Ok(());
        };
        let done = self.committed.load(Ordering::Relaxed);
        if end <= done {
            return Ok(());
        }
        let target = crate::heap::round_up(end, granule)
            .ok_or(Error::TooLarge { len: end })?
            .min(self.len);
        let (offset, len) = (done, target - done);
        // In range: done < end <= target <= self.len.
        let at = |base: NonNull<u8>| {
            NonNull::new(base.as_ptr().wrapping_add(offset))
                .ok_or(Error::Internal("commit address wrapped"))
        };
        if self.mirror.is_some() {
            // SAFETY: [offset, offset + len) of both views of our section, above the mark:
            // never committed through either view.
            unsafe {
                sys::commit(at(self.rx)?, len, self.commit_prot)?;
                sys::commit(at(self.rw)?, len, Prot::RW)?;
            }
        } else {
            // SAFETY: [offset, offset + len) of our reservation, above the mark: never
            // committed.
            unsafe { sys::commit(at(self.rx)?, len, self.commit_prot)? };
        }
        self.committed.store(target, Ordering::Relaxed);
        Ok(())
    }

    /// The region's views were placed (by [`place_private`] or [`place_mirror`]) with `guard`
    /// bytes of guard pages on each side.
    pub(crate) fn guarded(mut self, guard: usize) -> Region {
        self.guard = guard;
        self
    }

    /// Bytes of guard pages the region holds (both sides of each view).
    pub(crate) fn guard_bytes(&self) -> usize {
        // A shadow has no guard pages.
        let views = if self.mirror.is_some() { 2 } else { 1 };
        views * 2 * self.guard
    }

    pub(crate) fn rx(&self) -> NonNull<u8> {
        self.rx
    }

    /// Mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `writable address - executable address`: add it to an executable address to get the
    /// writable one (0 unless Mirror, or a PerThread shadow).
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

impl Region {
    /// `[view - guard, view + len + guard)`: a view and its guard pages.
    fn with_guards(&self, view: NonNull<u8>) -> (NonNull<u8>, usize) {
        let start = view.as_ptr().wrapping_sub(self.guard);
        (
            NonNull::new(start).unwrap_or(view),
            self.len + 2 * self.guard,
        )
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let same_process = self.generation == fork::generation();
        if let Some(registration) = self.shadow.take() {
            if same_process {
                // Unregistered before anything is unmapped: waits for a copy into this region
                // that is running (it holds the registry's read lock).
                drop(registration);
            } else {
                // A fork child: another thread may have held the registry's lock at the fork,
                // and the child never copies (its MAP_JIT memory is unusable): leave the entry.
                std::mem::forget(registration);
            }
            // SAFETY: the shadow is our private mapping of `len` bytes (in a fork child, the
            // child's own copy of it), and nothing refers to it any more.
            let _ = unsafe { sys::unmap(self.rw, self.len) };
        }
        if let Some(record) = &self.mirror {
            fork::unregister(record);
            if same_process {
                // SAFETY: the RW view and its guards are ours and nothing refers to them.
                let _ = unsafe { sys::unmap_guarded_view(self.rw, self.len, self.guard) };
            } else if self.guard > 0 {
                // In a fork child the RW view was never inherited (MADV_DONTFORK): that address
                // may now hold something else, so leave it alone; its guard pages were
                // inherited (private, inaccessible) and are ours.
                let (before, _) = self.with_guards(self.rw);
                let after = self.rw.as_ptr().wrapping_add(self.len);
                for guard in [before.as_ptr(), after] {
                    if let Some(guard) = NonNull::new(guard) {
                        // SAFETY: an inherited guard reservation of ours.
                        let _ = unsafe { sys::unmap(guard, self.guard) };
                    }
                }
            }
            // SAFETY: the RX view and its guards are ours (in a child: the private copy the
            // fork handler put there) and its blocks are gone (they hold the heap alive).
            let _ = unsafe { sys::unmap_guarded_view(self.rx, self.len, self.guard) };
        } else if self.child_keeps || same_process {
            let (rx, len) = self.with_guards(self.rx);
            // SAFETY: the region and its guards are ours and its blocks are gone (they hold
            // the heap alive).
            let _ = unsafe { sys::unmap(rx, len) };
        }
        // Otherwise (Apple MAP_JIT in a fork child) what the child has at that address is not
        // defined: leave it alone.
    }
}

/// Moves the fresh view `[ptr, ptr + len)` into a reservation of `guard + len + guard` bytes
/// (within `near` when given), so that it has inaccessible guard pages on both sides; returns
/// its new address. Without guard pages and `near` it stays where it is, and so it does where
/// the platform placed it when it was made ([`sys::Placement::AtReservation`]: Windows). On
/// error the view is where it was, and the caller still owns it.
fn place_view(
    ptr: NonNull<u8>,
    len: usize,
    guard: usize,
    near: Option<Near>,
) -> Result<NonNull<u8>> {
    if (guard == 0 && near.is_none()) || sys::PLACEMENT != sys::Placement::MoveIntoReservation {
        return Ok(ptr);
    }
    let total = guard
        .checked_mul(2)
        .and_then(|g| g.checked_add(len))
        .ok_or(Error::TooLarge { len })?;
    let base = match near {
        Some(near) => sys::near::reserve_near(total, near)?,
        None => sys::reserve(total, None)?.ok_or(Error::Internal("reservation at no address"))?,
    };
    let to = NonNull::new(base.as_ptr().wrapping_add(guard)).ok_or(Error::Internal("null view"))?;
    // SAFETY: `ptr` is the caller's fresh mapping, `to..to + len` lies inside the reservation
    // just made.
    match unsafe { sys::move_mapping(ptr, len, to) } {
        Ok(()) => Ok(to),
        Err(e) => {
            // SAFETY: the reservation just made, known to no one else.
            let _ = unsafe { sys::unmap(base, total) };
            Err(e)
        }
    }
}

/// Places a fresh private mapping `[ptr, ptr + len)` (Toggle, PerThread, Rwx) as `options`
/// say (guard pages, `Config::near`); on error unmaps it.
pub(crate) fn place_private(
    ptr: NonNull<u8>,
    len: usize,
    options: MapOptions,
) -> Result<NonNull<u8>> {
    place_view(ptr, len, options.guard, options.near).inspect_err(|_| {
        // SAFETY: the caller's fresh mapping, which failed to move and is known to no one else.
        let _ = unsafe { sys::unmap(ptr, len) };
    })
}

/// Places a fresh mirror's views as `options` say: the executable view near `Config::near`'s
/// address, both with guard pages; then guards the executable view with BTI if asked. On error
/// unmaps both views.
pub(crate) fn place_mirror(
    views: MirrorViews,
    len: usize,
    options: MapOptions,
) -> Result<MirrorViews> {
    let unmap_rw = |rw: NonNull<u8>, guard: usize| {
        let start = NonNull::new(rw.as_ptr().wrapping_sub(guard)).unwrap_or(rw);
        // SAFETY: the fresh RW view (and its guards), known to no one else.
        let _ = unsafe { sys::unmap_view(start, len + 2 * guard) };
    };
    let rx = match place_view(views.rx, len, options.guard, options.near) {
        Ok(rx) => rx,
        Err(e) => {
            // SAFETY: the fresh RX view, which did not move.
            let _ = unsafe { sys::unmap_view(views.rx, len) };
            unmap_rw(views.rw, 0);
            return Err(e);
        }
    };
    // With guard pages the view always moved into a reservation holding them (or, where the
    // platform places regions as it makes them, already sat between its guards).
    let rx_guard = options.guard;
    let unmap_rx = || {
        let start = NonNull::new(rx.as_ptr().wrapping_sub(rx_guard)).unwrap_or(rx);
        // SAFETY: the fresh RX view (and its guards), known to no one else.
        let _ = unsafe { sys::unmap_view(start, len + 2 * rx_guard) };
    };
    let rw = match place_view(views.rw, len, options.guard, None) {
        Ok(rw) => rw,
        Err(e) => {
            unmap_rx();
            unmap_rw(views.rw, 0);
            return Err(e);
        }
    };
    if options.bti {
        // SAFETY: the fresh RX view, which nothing runs yet; PROT_BTI only restricts it.
        if let Err(e) = unsafe { sys::protect(rx, len, Prot::RX.with_bti(true)) } {
            unmap_rx();
            unmap_rw(rw, options.guard);
            return Err(e);
        }
    }
    Ok(MirrorViews { rx, rw })
}
