//! Placement on Windows: guard pages and `Config::near`, by making each region where it goes
//! ([`Placement::AtReservation`]). Windows cannot move an allocation or a view into a
//! reservation (there is no `mremap`), so nothing is moved: the region itself is reserved, or
//! its view mapped, at a chosen address.
//!
//! - **Private regions** (Toggle, Rwx): one `VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)` of
//!   `guard + span + guard` bytes (`span`: the region rounded up to the 64 KiB allocation
//!   granularity); the region is the middle, committed on demand ([`Commit`](crate::sys::Commit)),
//!   and the two ends are never committed: reserved address space that faults when touched and
//!   that no other allocation can take. Released with the region (`VirtualFree(MEM_RELEASE)` of
//!   the whole allocation).
//! - **Mirror views** (a `SEC_RESERVE` section's two views): `MapViewOfFileEx` at `base + guard`,
//!   then `VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)` of `guard` bytes at `base` and at
//!   `base + guard + span`. Each call fails rather than replace what is there (Microsoft's
//!   `VirtualAlloc` documentation: with a non-NULL address, "the specified address is rounded
//!   down to the nearest multiple of the allocation granularity" and the call fails if the range
//!   is not free; `MapViewOfFileEx`'s `lpBaseAddress`: "If there is not enough address space at
//!   the specified address, the function fails", with `ERROR_INVALID_ADDRESS` as seen under
//!   Wine, the only code taken for "taken"); another thread may take part of `base..` between the
//!   calls, in which case what was made is given back and the next address is tried. Without
//!   `near`, `base` is room the system just found (a reservation of the whole span, given back
//!   at once); jitmem's own threads place views one at a time (a lock), so only a thread
//!   allocating by other means can race. Released by [`Place::unmap_guarded_view`]: the view, then each guard.
//!   Placeholders (`VirtualAlloc2(MEM_RESERVE_PLACEHOLDER)`, `MapViewOfFile3(
//!   MEM_REPLACE_PLACEHOLDER)`, Windows 10 1803) would close that window, but Wine 8 (where this
//!   is run) and older Windows 10 lack them, and importing them would stop the binary loading
//!   there.
//! - **`Config::near`**: the candidates are the free gaps of a `VirtualQuery` walk
//!   ([`near::find_near`](crate::sys::near::find_near)), nearest first, each a 64 KiB-aligned
//!   address whose whole span, guards included, lies in the window; a taken candidate is
//!   skipped; a full window is `Error::NoRoomNear`. Only the executable view of a mirror is
//!   placed near (the writable one gets guards, anywhere), as on Linux.
//!
//! A region smaller than a granule leaves the rest of its last granule free but unusable by
//! anyone (every allocation and view starts on the granularity), so the "after" guard starts at
//! `span`, not at `len`; a byte just past `len` faults either way.
//!
//! Verified under Wine 8 (`tests/placement.rs`), not on Windows. No `PROT_BTI` on Windows.

use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;

use windows_sys::Win32::Foundation::{ERROR_INVALID_ADDRESS, GetLastError, HANDLE};
use windows_sys::Win32::System::Memory::{
    FILE_MAP, MEM_FREE, MEM_RELEASE, MEM_RESERVE, MEMORY_BASIC_INFORMATION, MapViewOfFileEx,
    PAGE_NOACCESS, PAGE_PROTECTION_FLAGS, VirtualAlloc, VirtualFree, VirtualQuery,
};

use super::{Os, allocation_granularity, os_error, system};
use crate::error::{Error, Result};
use crate::sys::{MapOptions, Mirror, Near, Place, Placement, Prot, near, refused};

/// Attempts at mapping a view with its guards at room the system found, before giving up (each
/// failure means another thread, not placing a view through jitmem, took part of that room
/// between two calls).
const RACE_TRIES: usize = 16;

/// Held while a view and its guards are placed (see [`map_view_placed`]).
static PLACING: Mutex<()> = Mutex::new(());

impl Place for Os {
    const PLACEMENT: Placement = Placement::AtReservation;

    /// `VirtualAlloc(at, len, MEM_RESERVE, PAGE_NOACCESS)`; `Ok(None)` when `at` is taken or
    /// outside the user address space.
    fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>> {
        reserve(len, at)
    }

    /// Refused: never called ([`Placement::AtReservation`]).
    ///
    /// # Safety
    /// The contract of [`Place::move_mapping`] (nothing is touched).
    unsafe fn move_mapping(_from: NonNull<u8>, _len: usize, _to: NonNull<u8>) -> Result<()> {
        Err(refused(
            "moving a mapping into a reservation",
            "Windows cannot move an allocation or a view: regions are made where they go",
        ))
    }

    /// `VirtualQuery` from `lo` up to `hi`: every region that is not `MEM_FREE` (reserved or
    /// committed; a region is a run of pages of one allocation in one state), as `[start, end)`.
    /// Only the window is walked, and no region's name is asked for (unlike
    /// [`Introspect::mappings`](crate::sys::Introspect::mappings)).
    fn busy_ranges(lo: usize, hi: usize) -> io::Result<Vec<(usize, usize)>> {
        busy_ranges(lo, hi)
    }

    /// `UnmapViewOfFile(view)`, then `VirtualFree(MEM_RELEASE)` of each guard reservation
    /// ([`map_view_placed`]).
    ///
    /// # Safety
    /// The contract of [`Place::unmap_guarded_view`].
    unsafe fn unmap_guarded_view(view: NonNull<u8>, len: usize, guard: usize) -> Result<()> {
        // SAFETY: the caller owns the view.
        unsafe { <Os as Mirror>::unmap_view(view, len)? };
        if guard == 0 {
            return Ok(());
        }
        let span = span(len)?;
        for at in [
            view.as_ptr().wrapping_sub(guard),
            view.as_ptr().wrapping_add(span),
        ] {
            // SAFETY: the guard reservations made next to the view by map_view_placed, which
            // the caller owns.
            unsafe { release(at)? };
        }
        Ok(())
    }

    fn bti_support() -> std::result::Result<(), String> {
        Err("PROT_BTI is a Linux AArch64 feature; Windows does not offer it".to_owned())
    }
}

/// See [`Place::busy_ranges`].
fn busy_ranges(lo: usize, hi: usize) -> io::Result<Vec<(usize, usize)>> {
    let sys = system();
    let mut out = Vec::new();
    let mut addr = lo.max(sys.lowest);
    let end = hi.min(sys.highest.saturating_add(1));
    while addr < end {
        let mut info = MEMORY_BASIC_INFORMATION::default();
        // SAFETY: VirtualQuery only reads the process's address-space bookkeeping and writes
        // `info`, whose size we pass.
        let n = unsafe {
            VirtualQuery(
                addr as *const core::ffi::c_void,
                &mut info,
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        if n == 0 {
            return Err(io::Error::last_os_error());
        }
        let start = info.BaseAddress as usize;
        let next = start.saturating_add(info.RegionSize);
        if info.State != MEM_FREE {
            out.push((start, next));
        }
        if next <= addr {
            break;
        }
        addr = next;
    }
    Ok(out)
}

/// `len` rounded up to the allocation granularity: the address space a view of `len` bytes
/// takes (nothing else can start before its end).
fn span(len: usize) -> Result<usize> {
    let g = allocation_granularity();
    len.checked_next_multiple_of(g)
        .ok_or(Error::TooLarge { len })
}

/// `guard + span(len) + guard`.
fn total(len: usize, guard: usize) -> Result<usize> {
    guard
        .checked_mul(2)
        .and_then(|g| g.checked_add(span(len).ok()?))
        .ok_or(Error::TooLarge { len })
}

/// `VirtualAlloc(at, len, MEM_RESERVE, PAGE_NOACCESS)`; `Ok(None)` when `at` is taken or outside
/// the user address space.
fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>> {
    reserve_with(len, at, PAGE_NOACCESS)
}

/// [`reserve`] with the reservation's `protection` (pages stay inaccessible until committed).
fn reserve_with(
    len: usize,
    at: Option<usize>,
    protection: PAGE_PROTECTION_FLAGS,
) -> Result<Option<NonNull<u8>>> {
    let address = at.unwrap_or(0) as *const core::ffi::c_void;
    // SAFETY: MEM_RESERVE never replaces an existing allocation; the result is new.
    let ptr = unsafe { VirtualAlloc(address, len, MEM_RESERVE, protection) };
    match (NonNull::new(ptr.cast::<u8>()), at) {
        (Some(got), Some(at)) if got.as_ptr() as usize != at => {
            // Not where asked (never expected: the address is on the granularity).
            // SAFETY: the reservation just made, known to no one else.
            unsafe { release(got.as_ptr())? };
            Ok(None)
        }
        (Some(got), _) => Ok(Some(got)),
        (None, Some(_)) => Ok(None),
        (None, None) => Err(os_error("VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)")),
    }
}

/// `VirtualFree(at, 0, MEM_RELEASE)`: the whole allocation that starts at `at`.
///
/// # Safety
/// The caller owns that allocation and nothing refers to it any more.
unsafe fn release(at: *mut u8) -> Result<()> {
    // SAFETY: forwarded from the caller; MEM_RELEASE needs size 0.
    if unsafe { VirtualFree(at.cast(), 0, MEM_RELEASE) } == 0 {
        return Err(os_error("VirtualFree(MEM_RELEASE)"));
    }
    Ok(())
}

/// [`Commit::reserve_private`](crate::sys::Commit::reserve_private) with guard pages or
/// `Config::near`: one reservation of `guard + span + guard` bytes (within `near` when given);
/// returns the region's start, `guard` bytes into it. No page is committed. With explicit
/// Control Flow Guard targets ([`Prot::targets_invalid`]) the reservation is made with `prot`,
/// as `memory.rs`'s own reservation is (a CFG bitmap needs an execute protection from the
/// start); the guards are never committed either way.
pub(super) fn reserve_private(len: usize, prot: Prot, options: MapOptions) -> Result<NonNull<u8>> {
    let guard = options.guard;
    let total = total(len, guard)?;
    let protection = if prot.targets_invalid() {
        super::native(prot)
    } else {
        PAGE_NOACCESS
    };
    let base = match options.near {
        Some(near) => near::find_near(total, near, |at| reserve_with(total, Some(at), protection))?,
        None => reserve_with(total, None, protection)?
            .ok_or(Error::Internal("reservation at no address"))?,
    };
    NonNull::new(base.as_ptr().wrapping_add(guard)).ok_or(Error::Internal("null region"))
}

/// A view of `len` bytes of `section` with `access` (`MapViewOfFileEx`), with `guard` bytes of
/// reserved, never-committed address space on each side, within `near` when given (see the
/// module documentation). The view is released with [`Place::unmap_guarded_view`].
pub(super) fn map_view_placed(
    section: HANDLE,
    access: FILE_MAP,
    len: usize,
    guard: usize,
    near: Option<Near>,
    op: &'static str,
) -> Result<NonNull<u8>> {
    let span = span(len)?;
    let total = total(len, guard)?;
    // jitmem's own threads place views one at a time: otherwise they would all be shown the
    // same room (the lowest free range) and take it from one another every time.
    let _placing = PLACING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let try_at = |base: usize| map_view_at(section, access, len, guard, span, base, op);
    if let Some(near) = near {
        return near::find_near(total, near, try_at);
    }
    for _ in 0..RACE_TRIES {
        // Room the system finds for the whole span, given back at once and mapped next.
        let room = reserve(total, None)?.ok_or(Error::Internal("reservation at no address"))?;
        // SAFETY: the reservation just made, known to no one else.
        unsafe { release(room.as_ptr())? };
        if let Some(view) = try_at(room.as_ptr() as usize)? {
            return Ok(view);
        }
    }
    Err(Error::Os {
        op,
        source: io::Error::other(
            "other threads took the address space found for a view and its guard pages, every time",
        ),
    })
}

/// The view at `base + guard` and its guards at `base` and `base + guard + span`; `Ok(None)`
/// (with nothing left behind) when some of that range is taken.
fn map_view_at(
    section: HANDLE,
    access: FILE_MAP,
    len: usize,
    guard: usize,
    span: usize,
    base: usize,
    op: &'static str,
) -> Result<Option<NonNull<u8>>> {
    let at = base.checked_add(guard).ok_or(Error::TooLarge { len })?;
    // SAFETY: a new view of the caller's section; MapViewOfFileEx never replaces what is at
    // `at`, it fails instead.
    let view = unsafe {
        MapViewOfFileEx(
            section,
            access,
            0,
            0,
            len,
            at as *const core::ffi::c_void,
        )
    };
    let Some(view) = NonNull::new(view.Value.cast::<u8>()) else {
        // SAFETY: reads the calling thread's last-error value.
        let code = unsafe { GetLastError() };
        // Taken (or beyond the address space); anything else (the commit limit, Arbitrary Code
        // Guard) is the caller's error.
        return if code == ERROR_INVALID_ADDRESS {
            Ok(None)
        } else {
            Err(os_error(op))
        };
    };
    let unmap = |view: NonNull<u8>| {
        // SAFETY: the view just made, known to no one else.
        unsafe { <Os as Mirror>::unmap_view(view, len) }
    };
    if view.as_ptr() as usize != at {
        unmap(view)?;
        return Ok(None);
    }
    if guard == 0 {
        return Ok(Some(view));
    }
    let Some(before) = reserve(guard, Some(base))? else {
        unmap(view)?;
        return Ok(None);
    };
    let after = at.checked_add(span).ok_or(Error::TooLarge { len })?;
    if reserve(guard, Some(after))?.is_none() {
        // SAFETY: the guard just made, known to no one else.
        unsafe { release(before.as_ptr())? };
        unmap(view)?;
        return Ok(None);
    }
    Ok(Some(view))
}

#[cfg(test)]
mod tests {
    use windows_sys::Win32::Foundation::{CloseHandle, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::System::Memory::{
        CreateFileMappingW, FILE_MAP_WRITE, MEM_MAPPED, MEM_PRIVATE, PAGE_READWRITE, SEC_RESERVE,
    };

    use super::*;
    use crate::sys::page_size;

    /// `(state, type, allocation base)` of the page at `at`.
    fn query(at: usize) -> (u32, u32, usize) {
        let mut info = MEMORY_BASIC_INFORMATION::default();
        // SAFETY: VirtualQuery only reads the address-space bookkeeping into `info`.
        let n = unsafe {
            VirtualQuery(
                at as *const _,
                &mut info,
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        assert_ne!(n, 0);
        (info.State, info.Type, info.AllocationBase as usize)
    }

    /// A private region of 3 pages is one reservation: a granule of guard, its span, a granule
    /// of guard; releasing it frees all of it.
    #[test]
    fn a_private_region_sits_between_its_guards() {
        let g = allocation_granularity();
        let len = 3 * page_size();
        let options = MapOptions {
            guard: g,
            ..MapOptions::default()
        };
        // Plain, and with explicit CFG targets (reserved with an execute protection).
        for prot in [Prot::RX, Prot::RX.with_targets_invalid(true)] {
            let region = reserve_private(len, prot, options).unwrap().as_ptr() as usize;
            let base = region - g;
            for at in [base, region, region + g - 1, region + g + g - 1] {
                assert_eq!(query(at), (MEM_RESERVE, MEM_PRIVATE, base), "{at:#x}");
            }
            assert_ne!(query(region + 2 * g).2, base);
            // SAFETY: the test's own reservation.
            unsafe { release(base as *mut u8).unwrap() };
            assert_eq!(query(region).0, MEM_FREE);
        }
    }

    /// The window walk sees a reservation of ours inside it, and nothing of it outside.
    #[test]
    fn busy_ranges_sees_what_is_reserved_in_the_window() {
        let g = allocation_granularity();
        let r = reserve(4 * g, None).unwrap().unwrap().as_ptr() as usize;
        let busy = busy_ranges(r - 8 * g, r + 8 * g).unwrap();
        assert!(busy.contains(&(r, r + 4 * g)), "{busy:x?}");
        for &(s, e) in &busy {
            assert!(s < r + 8 * g && e > r - 8 * g, "{s:#x}..{e:#x} is outside the window");
        }
        // SAFETY: the test's own reservation.
        unsafe { release(r as *mut u8).unwrap() };
        assert!(!busy_ranges(r, r + 4 * g).unwrap().contains(&(r, r + 4 * g)));
    }

    /// An unnamed pagefile-backed `SEC_RESERVE` section of `len` bytes for a test (which closes
    /// it).
    fn test_section(len: usize) -> HANDLE {
        // SAFETY: a new unnamed section with default security; nothing else refers to it.
        let section = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                std::ptr::null(),
                PAGE_READWRITE | SEC_RESERVE,
                0,
                u32::try_from(len).unwrap(),
                std::ptr::null(),
            )
        };
        assert!(!section.is_null());
        section
    }

    /// Threads placing views with guards at once, while another thread reserves and releases
    /// address space in a loop (each may take room a placement found): every view ends up
    /// between its own two guards, and everything is given back.
    #[test]
    fn views_placed_by_racing_threads_each_get_their_guards() {
        let g = allocation_granularity();
        let len = g;
        let section = test_section(len);
        let handle = section as usize;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let views: Vec<usize> = std::thread::scope(|s| {
            // Another allocator at work meanwhile, not through jitmem (nor its lock).
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = reserve(g, None).unwrap().unwrap();
                    // SAFETY: the reservation just made.
                    unsafe { release(r.as_ptr()).unwrap() };
                }
            });
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(move || {
                        (0..32)
                            .map(|_| {
                                let section = handle as HANDLE;
                                map_view_placed(section, FILE_MAP_WRITE, len, g, None, "test")
                                    .unwrap()
                                    .as_ptr() as usize
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // Every placing thread joined before the allocator stops, even one that failed.
            let joined: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            joined.into_iter().flat_map(|views| views.unwrap()).collect()
        });
        for &v in &views {
            assert_eq!(query(v - g), (MEM_RESERVE, MEM_PRIVATE, v - g), "{v:#x}");
            assert_eq!(query(v).1, MEM_MAPPED, "{v:#x}");
            assert_eq!(query(v + len), (MEM_RESERVE, MEM_PRIVATE, v + len), "{v:#x}");
        }
        for &v in &views {
            let view = NonNull::new(v as *mut u8).unwrap();
            // SAFETY: the test's own views and guards.
            unsafe { <Os as Place>::unmap_guarded_view(view, len, g).unwrap() };
        }
        // SAFETY: the test's own section handle.
        unsafe { CloseHandle(section) };
    }

    /// A view has a guard reservation on each side; the same room again is refused (`None`)
    /// and leaves nothing behind; unmapping the view releases its guards too.
    #[test]
    fn a_view_sits_between_guards_and_taken_room_is_refused() {
        let g = allocation_granularity();
        let len = 2 * g;
        let section = test_section(len);
        let view = map_view_placed(section, FILE_MAP_WRITE, len, g, None, "test").unwrap();
        let v = view.as_ptr() as usize;
        assert_eq!(query(v - g), (MEM_RESERVE, MEM_PRIVATE, v - g));
        assert_eq!(query(v).1, MEM_MAPPED);
        assert_eq!(query(v + len), (MEM_RESERVE, MEM_PRIVATE, v + len));
        let again = map_view_at(section, FILE_MAP_WRITE, len, g, len, v - g, "test").unwrap();
        assert!(again.is_none(), "taken room must be refused");
        assert_eq!(query(v + len).2, v + len, "the refused try left the guard alone");
        // SAFETY: the test's own view and guards; the section handle is ours.
        unsafe {
            <Os as Place>::unmap_guarded_view(view, len, g).unwrap();
            CloseHandle(section);
        }
        for at in [v - g, v, v + len] {
            assert_eq!(query(at).0, MEM_FREE, "{at:#x}");
        }
    }
}
