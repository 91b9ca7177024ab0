//! Finding room within reach of an address (`Config::near`): JITs call their runtime with
//! x86-64 `call rel32` (+-2 GiB) or AArch64 `bl` (+-128 MiB), so V8 and LuaJIT put code near the
//! binary. Here a region's reservation (guard pages included) is put in the nearest free gap of
//! the process's memory map ([`Place::busy_ranges`](super::Place::busy_ranges):
//! `/proc/self/maps` on Linux, a `VirtualQuery` walk of the window on Windows) inside the window,
//! trying candidate addresses in order of distance; a candidate another thread took meanwhile is
//! skipped. Never farther: when the window is full the answer is [`Error::NoRoomNear`].
//!
//! Platform-neutral: what "take this address" means is the caller's `try_at` (Linux: a
//! `MAP_FIXED_NOREPLACE` reservation that a fresh mapping is then moved into; Windows: the
//! region itself, reserved or mapped there with `VirtualAlloc` / `MapViewOfFileEx`).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Near;
use crate::error::{Error, Result};

/// Nothing is placed below this address (Linux's `vm.mmap_min_addr` is 64 KiB; the first MiB
/// is left alone).
const LOWEST: usize = 1 << 20;
/// Rounds of "read the map, try the candidates" before giving up (other threads map too).
const ROUNDS: usize = 3;
/// Candidates per gap: the best position and this many steps away from it on each side.
const STEPS: usize = 4;
/// Addresses tried below the previous reservation before reading the memory map.
const NEXT_FIT_TRIES: usize = 8;

/// Where the last reservation went: the next one first tries just below it (the kernel's own
/// top-down order), a few sizes down, so that a run of placements (a PerAllocation block each)
/// does not read the whole memory map every time (under qemu-user, reading it is slow).
static LAST: AtomicUsize = AtomicUsize::new(0);

/// Reserves `len` bytes (a multiple of the reservation granularity) of inaccessible address
/// space, every byte of it within `near` ([`Place::reserve`](super::Place::reserve) at each
/// candidate).
#[cfg_attr(
    windows,
    allow(dead_code, reason = "Windows places regions at the reservation itself")
)]
pub(crate) fn reserve_near(len: usize, near: Near) -> Result<NonNull<u8>> {
    find_near(len, near, |at| super::reserve(len, Some(at)))
}

/// Calls `try_at(start)` for start addresses of `len` bytes (a multiple of the reservation
/// granularity) lying wholly within `near`, nearest first, until one answers `Some`: `try_at`
/// takes exactly `[start, start + len)` or answers `None` (taken meanwhile) and leaves nothing
/// behind. Costs one try when the space just below the previous placement is free, else a read
/// of the memory map and a try per candidate. `Error::NoRoomNear` when no candidate is left.
pub(crate) fn find_near<T>(
    len: usize,
    near: Near,
    mut try_at: impl FnMut(usize) -> Result<Option<T>>,
) -> Result<T> {
    let no_room = Error::NoRoomNear {
        address: near.address,
        max_distance: near.max_distance,
        len,
    };
    let window = Window::new(near, super::reservation_granularity()).ok_or(no_room)?;
    // Just below the previous placement, stepping down past what others mapped there since.
    let last = LAST.load(Ordering::Relaxed);
    for k in 1..=NEXT_FIT_TRIES {
        let Some(at) = len.checked_mul(k).and_then(|d| last.checked_sub(d)) else {
            break;
        };
        if !window.holds(at, len) {
            break;
        }
        if let Some(got) = try_at(at)? {
            LAST.store(at, Ordering::Relaxed);
            return Ok(got);
        }
    }
    for _ in 0..ROUNDS {
        let busy = super::busy_ranges(window.lo, window.hi).map_err(|source| Error::Os {
            op: "read the process's memory map to place code near an address",
            source,
        })?;
        for at in window.candidates(&busy, len) {
            if let Some(got) = try_at(at)? {
                LAST.store(at, Ordering::Relaxed);
                return Ok(got);
            }
        }
    }
    Err(Error::NoRoomNear {
        address: near.address,
        max_distance: near.max_distance,
        len,
    })
}

/// The addresses a region may start at: `[lo, hi)` holds every byte, on `granularity`.
#[derive(Clone, Copy, Debug)]
struct Window {
    address: usize,
    lo: usize,
    /// One past the last byte allowed.
    hi: usize,
    granularity: usize,
}

impl Window {
    fn new(near: Near, granularity: usize) -> Option<Window> {
        let lo = near.address.saturating_sub(near.max_distance).max(LOWEST);
        let lo = lo.checked_add(granularity - 1)? & !(granularity - 1);
        let hi = near
            .address
            .saturating_add(near.max_distance)
            .saturating_add(1);
        (lo < hi).then_some(Window {
            address: near.address,
            lo,
            hi,
            granularity,
        })
    }

    /// Whether `[start, start + len)` lies in the window.
    fn holds(&self, start: usize, len: usize) -> bool {
        start >= self.lo && start.checked_add(len).is_some_and(|end| end <= self.hi)
    }

    /// Start addresses to try for `len` bytes, nearest first, in the gaps between the sorted
    /// or unsorted `busy` ranges.
    fn candidates(&self, busy: &[(usize, usize)], len: usize) -> Vec<usize> {
        let g = self.granularity;
        let mut busy = busy.to_vec();
        busy.sort_unstable();
        let mut gaps = Vec::new();
        let mut free_from = 0usize;
        for &(start, end) in &busy {
            if start > free_from {
                gaps.push((free_from, start));
            }
            free_from = free_from.max(end);
        }
        gaps.push((free_from, usize::MAX));
        let step = len.max(g).div_ceil(g) * g;
        let mut out = Vec::new();
        for (start, end) in gaps {
            let (start, end) = (start.max(self.lo), end.min(self.hi));
            let Some(first) = start.checked_add(g - 1).map(|s| s & !(g - 1)) else {
                continue;
            };
            let Some(last) = end.checked_sub(len).map(|s| s & !(g - 1)) else {
                continue;
            };
            if first > last || start >= end {
                continue;
            }
            let ideal = self.address.saturating_sub(len / 2) & !(g - 1);
            let best = ideal.clamp(first, last);
            out.push(best);
            for k in 1..=STEPS {
                let away = step.saturating_mul(k);
                if let Some(below) = best.checked_sub(away).filter(|s| *s >= first) {
                    out.push(below);
                }
                if let Some(above) = best.checked_add(away).filter(|s| *s <= last) {
                    out.push(above);
                }
            }
        }
        let centre = |s: usize| s.saturating_add(len / 2).abs_diff(self.address);
        out.sort_unstable_by_key(|s| centre(*s));
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 4096;

    fn window(address: usize, max_distance: usize) -> Window {
        Window::new(
            Near {
                address,
                max_distance,
            },
            P,
        )
        .unwrap()
    }

    /// Every candidate keeps every byte inside the window and outside every busy range.
    #[test]
    fn candidates_are_free_and_in_reach() {
        let w = window(0x4000_0000, 0x10_0000);
        let busy = [
            (0x3ff0_0000, 0x4000_8000),
            (0x4001_0000, 0x4002_0000),
            (0x4008_0000, 0x4100_0000),
        ];
        let len = 4 * P;
        let c = w.candidates(&busy, len);
        assert!(!c.is_empty());
        for &s in &c {
            assert!(w.holds(s, len), "{s:#x} out of reach");
            assert_eq!(s % P, 0);
            for &(b, e) in &busy {
                assert!(s + len <= b || s >= e, "{s:#x} overlaps {b:#x}..{e:#x}");
            }
        }
        // The nearest gap comes first: 0x4000_8000..0x4001_0000 holds exactly 8 pages.
        assert_eq!(c[0], 0x4000_8000);
    }

    /// A full window has no candidate; a window beyond the address space is clipped.
    #[test]
    fn a_full_window_has_no_candidates() {
        let w = window(0x4000_0000, 0x1_0000);
        assert!(w.candidates(&[(0x3000_0000, 0x5000_0000)], P).is_empty());
        let top = window(usize::MAX - 10 * P, 100 * P);
        for s in top.candidates(&[], P) {
            assert!(top.holds(s, P));
        }
        assert!(
            Window::new(
                Near {
                    address: 0,
                    max_distance: 10
                },
                P
            )
            .is_none()
        );
    }
}
