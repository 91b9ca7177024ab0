//! The registry of PerThread *shadows* (Apple, under the `jit-write-allowlist` entitlement):
//! each `MAP_JIT` region PerThread maps there gets a private read-write shadow of the same size;
//! write scopes write the shadow, and their end copies `[start, end)` into the `MAP_JIT` pages
//! inside jitmem's allow-listed callback (`sys/apple/rights.rs`). The callback trusts nothing
//! its context says beyond the destination range: it copies only into a live region listed
//! here, and only from that region's own shadow at the same offset, which it derives itself
//! (`resolve`), so it is not a write-anything gadget (Apple, `pthread.h`, on
//! `pthread_jit_write_with_callback_np`: "the callback should assume that the ctx argument is
//! attacker-controlled ... and validate it").
//!
//! Plain Rust without `unsafe`, compiled on every host so that `resolve` and the registry are
//! unit-tested on Linux; only Apple registers anything.

#![cfg_attr(
    not(target_vendor = "apple"),
    allow(
        dead_code,
        reason = "PerThread uses a shadow on Apple only; compiled elsewhere for its tests"
    )
)]

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use crate::error::{Error, Result};

/// One registered region: its shadow's address and the length of both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShadowEntry {
    pub(crate) shadow: usize,
    pub(crate) len: usize,
}

/// Registered regions, by the executable (`MAP_JIT`) start address.
pub(crate) type Regions = BTreeMap<usize, ShadowEntry>;

/// The source of a copy into `[dst, dst + len)`: the address in the shadow of the one region
/// that holds the whole range, at the same offset. Refuses an empty range, a range that wraps,
/// and a range not wholly inside one registered region (a range straddling two adjacent
/// regions is refused too: every write scope lies inside one block, hence one region).
pub(crate) fn resolve(
    regions: &Regions,
    dst: usize,
    len: usize,
) -> std::result::Result<usize, &'static str> {
    if len == 0 {
        return Err("empty copy");
    }
    let end = dst.checked_add(len).ok_or("destination range wraps")?;
    let (&rx, entry) = regions
        .range(..=dst)
        .next_back()
        .ok_or("destination is not in a registered MAP_JIT region")?;
    let region_end = rx.checked_add(entry.len).ok_or("registered region wraps")?;
    if dst >= region_end {
        return Err("destination is not in a registered MAP_JIT region");
    }
    if end > region_end {
        return Err("destination range runs past the end of its MAP_JIT region");
    }
    entry
        .shadow
        .checked_add(dst - rx)
        .ok_or("shadow address wraps")
}

/// Adds `rx`'s region to `regions`, refusing an overlap with a registered one (of either its
/// executable range or its shadow) or an empty or wrapping range.
pub(crate) fn insert(
    regions: &mut Regions,
    rx: usize,
    entry: ShadowEntry,
) -> std::result::Result<(), &'static str> {
    let overlaps =
        |a: usize, b: usize| a < b.saturating_add(entry.len) && b < a.saturating_add(entry.len);
    if entry.len == 0
        || rx.checked_add(entry.len).is_none()
        || entry.shadow.checked_add(entry.len).is_none()
        || overlaps(rx, entry.shadow)
    {
        return Err("bad shadow registration");
    }
    for (&other_rx, other) in regions.iter() {
        let disjoint = |a: usize, alen: usize, b: usize, blen: usize| {
            a.saturating_add(alen) <= b || b.saturating_add(blen) <= a
        };
        for (a, b) in [
            (rx, other_rx),
            (rx, other.shadow),
            (entry.shadow, other_rx),
            (entry.shadow, other.shadow),
        ] {
            if !disjoint(a, entry.len, b, other.len) {
                return Err("shadow registration overlaps a registered region");
            }
        }
    }
    regions.insert(rx, entry);
    Ok(())
}

static REGISTRY: RwLock<Regions> = RwLock::new(BTreeMap::new());

/// A region's place in the registry: dropping it removes the region (it then waits for a copy
/// into it that is running, which holds the registry's read lock).
#[derive(Debug)]
pub(crate) struct Registration {
    rx: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        REGISTRY
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.rx);
    }
}

/// Registers the region at `rx` with its shadow at `shadow`, both `len` bytes, until the
/// returned [`Registration`] is dropped.
pub(crate) fn register(rx: usize, shadow: usize, len: usize) -> Result<Registration> {
    let mut regions = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    insert(&mut regions, rx, ShadowEntry { shadow, len })
        .map_err(Error::Internal)
        .map(|()| Registration { rx })
}

/// Runs `f(src)` for a copy into `[dst, dst + len)` ([`resolve`]), holding the registry's read
/// lock so that the region stays registered (and mapped: the region unregisters before it
/// unmaps) until `f` returns.
pub(crate) fn with_source<R>(
    dst: usize,
    len: usize,
    f: impl FnOnce(usize) -> R,
) -> std::result::Result<R, &'static str> {
    let regions = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let src = resolve(&regions, dst, len)?;
    Ok(f(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX: usize = 0x10_0000;
    const SHADOW: usize = 0x80_0000;
    const LEN: usize = 0x4000;

    fn one() -> Regions {
        let mut r = Regions::new();
        insert(
            &mut r,
            RX,
            ShadowEntry {
                shadow: SHADOW,
                len: LEN,
            },
        )
        .unwrap();
        r
    }

    #[test]
    fn copies_come_from_the_regions_own_shadow_at_the_same_offset() {
        let r = one();
        assert_eq!(resolve(&r, RX, LEN), Ok(SHADOW));
        assert_eq!(resolve(&r, RX + 0x10, 8), Ok(SHADOW + 0x10));
        assert_eq!(resolve(&r, RX + LEN - 1, 1), Ok(SHADOW + LEN - 1));
    }

    #[test]
    fn copies_outside_a_live_region_are_refused() {
        let r = one();
        assert!(resolve(&r, RX - 1, 1).is_err(), "before the region");
        assert!(resolve(&r, RX + LEN, 1).is_err(), "just past it");
        assert!(resolve(&r, RX + LEN - 4, 8).is_err(), "runs past its end");
        assert!(resolve(&r, RX, 0).is_err(), "empty");
        assert!(resolve(&r, usize::MAX - 2, 8).is_err(), "wraps");
        assert!(
            resolve(&r, SHADOW, 8).is_err(),
            "the shadow is no destination"
        );
        assert!(
            resolve(&Regions::new(), RX, 8).is_err(),
            "nothing registered"
        );
    }

    #[test]
    fn a_range_over_two_adjacent_regions_is_refused() {
        let mut r = one();
        insert(
            &mut r,
            RX + LEN,
            ShadowEntry {
                shadow: SHADOW + LEN,
                len: LEN,
            },
        )
        .unwrap();
        assert_eq!(resolve(&r, RX + LEN, 8), Ok(SHADOW + LEN));
        assert!(resolve(&r, RX + LEN - 4, 8).is_err());
    }

    #[test]
    fn overlapping_registrations_are_refused() {
        let mut r = one();
        let e = |shadow| ShadowEntry { shadow, len: LEN };
        assert!(
            insert(&mut r, RX + 0x1000, e(0x200_0000)).is_err(),
            "executable overlap"
        );
        assert!(
            insert(&mut r, 0x300_0000, e(SHADOW + 0x1000)).is_err(),
            "shadow overlap"
        );
        assert!(
            insert(&mut r, SHADOW, e(0x400_0000)).is_err(),
            "onto a shadow"
        );
        assert!(
            insert(&mut r, 0x500_0000, e(0x500_0000)).is_err(),
            "its own shadow"
        );
        assert!(
            insert(
                &mut r,
                0x600_0000,
                ShadowEntry {
                    shadow: 0x700_0000,
                    len: 0
                }
            )
            .is_err()
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_dropped_registration_is_no_destination() {
        // Addresses no other test (of any module) registers: the registry is process-wide.
        let (rx, shadow) = (usize::MAX / 2, usize::MAX / 2 + 0x10_0000);
        let reg = register(rx, shadow, LEN).unwrap();
        assert_eq!(with_source(rx + 8, 8, |src| src), Ok(shadow + 8));
        assert!(register(rx, shadow + 0x20_0000, LEN).is_err());
        drop(reg);
        assert!(with_source(rx + 8, 8, |src| src).is_err());
    }
}
