//! Windows' Control Flow Guard (CFG) and [`CfgCallTargets`]: the decisions, as pure functions of
//! the configuration and of what the OS says (unit-tested on every host). The system calls are
//! in `sys` (`sys::CallTargets`; Windows: `sys/windows/cfg.rs`).
//!
//! Facts relied on (Microsoft's documentation):
//! - Under CFG an indirect call checks its target against a per-process bitmap; call targets
//!   are 16-byte aligned (`SetProcessValidCallTargets`: "The call targets specified should be
//!   16-byte aligned and in ascending order"). Executable memory is valid everywhere by default
//!   ("Memory Protection Constants": "The default behavior for executable pages allocated is to
//!   be marked valid call targets for CFG").
//! - `PAGE_TARGETS_INVALID` given when executable memory is allocated or committed makes every
//!   location of it an invalid target; the same bit given to `VirtualProtect` means
//!   `PAGE_TARGETS_NO_UPDATE` (both are `0x40000000`): keep the marks, where `VirtualProtect` to
//!   an executable protection would otherwise mark every location valid.

use crate::config::CfgCallTargets;
use crate::error::{Error, Result};

/// CFG's granularity: a valid call target is a multiple of 16 bytes.
pub(crate) const CFG_ALIGN: usize = 16;

/// Whether executable memory is allocated with `PAGE_TARGETS_INVALID` and blocks' entry points
/// are marked valid one by one: only when the configuration asks for [`CfgCallTargets::Explicit`]
/// and the process enforces CFG. Elsewhere every address of executable memory is callable
/// anyway (CFG off: nothing checks; `AllValid`: Windows' default marks), and the call targets
/// are left alone.
///
/// | option | CFG enforced | targets invalid until marked |
/// |---|---|---|
/// | `AllValid` | no | no |
/// | `AllValid` | yes | no (Windows' default: every location valid) |
/// | `Explicit` | no | no (nothing checks calls; marking is a no-op) |
/// | `Explicit` | yes | yes |
pub(crate) fn targets_invalid(option: CfgCallTargets, cfg_enforced: bool) -> bool {
    match option {
        CfgCallTargets::AllValid => false,
        CfgCallTargets::Explicit => cfg_enforced,
    }
}

/// The range and offsets for one `SetProcessValidCallTargets` call marking entry points of a
/// block: `base` and `len` are the whole pages the block touches (ChakraCore passes a page
/// start and the page size), `offsets` are relative to `base`, ascending and without
/// duplicates.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TargetList {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) offsets: Vec<usize>,
}

/// The pages `[block_start, block_start + block_len)` touch (`page` a power of two).
fn pages_of(block_start: usize, block_len: usize, page: usize) -> Result<(usize, usize)> {
    let base = block_start & !(page - 1);
    let end = block_start
        .checked_add(block_len)
        .and_then(|end| end.checked_add(page - 1))
        .ok_or(Error::TooLarge { len: block_len })?
        & !(page - 1);
    Ok((base, end - base))
}

/// Checks `offsets` (in the block at `block_start` of `block_len` bytes) as call targets: each
/// inside the block, at an address that is a multiple of 16. Returns them relative to the
/// block's first page, sorted and deduplicated, as `SetProcessValidCallTargets` wants them.
pub(crate) fn entry_points(
    block_start: usize,
    block_len: usize,
    page: usize,
    offsets: &[usize],
) -> Result<TargetList> {
    let (base, len) = pages_of(block_start, block_len, page)?;
    let mut relative = Vec::with_capacity(offsets.len());
    for &offset in offsets {
        if offset >= block_len {
            return Err(Error::BadCallTarget {
                offset,
                reason: "not inside the block",
            });
        }
        // No overflow: offset < block_len and the block lies in the address space.
        let address = block_start + offset;
        if address % CFG_ALIGN != 0 {
            return Err(Error::BadCallTarget {
                offset,
                reason: "its address is not a multiple of 16 (Control Flow Guard's granularity)",
            });
        }
        relative.push(address - base);
    }
    relative.sort_unstable();
    relative.dedup();
    Ok(TargetList {
        base,
        len,
        offsets: relative,
    })
}

/// Every possible call target (each multiple of 16) of the bytes `[start, start + len)`,
/// relative to the first page they touch: what a freed or shrunk range withdraws, so that a
/// range handed out again carries no valid target of its previous block.
pub(crate) fn every_target(start: usize, len: usize, page: usize) -> Result<TargetList> {
    let (base, pages_len) = pages_of(start, len, page)?;
    let first = start
        .checked_next_multiple_of(CFG_ALIGN)
        .ok_or(Error::TooLarge { len })?;
    let end = start + len;
    let offsets = (first..end)
        .step_by(CFG_ALIGN)
        .map(|address| address - base)
        .collect();
    Ok(TargetList {
        base,
        len: pages_len,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    #[test]
    fn only_explicit_under_enforced_cfg_makes_targets_invalid() {
        assert!(!targets_invalid(CfgCallTargets::AllValid, false));
        assert!(!targets_invalid(CfgCallTargets::AllValid, true));
        assert!(!targets_invalid(CfgCallTargets::Explicit, false));
        assert!(targets_invalid(CfgCallTargets::Explicit, true));
        assert_eq!(CfgCallTargets::default(), CfgCallTargets::AllValid);
    }

    #[test]
    fn entry_points_are_sorted_deduplicated_and_relative_to_the_first_page() {
        // A block of 256 bytes at 0x10_0f80: it touches two pages.
        let start = 0x10_0f80;
        let list = entry_points(start, 0x100, PAGE, &[0x90, 0, 0x20, 0x90]).unwrap();
        assert_eq!(list.base, 0x10_0000);
        assert_eq!(list.len, 2 * PAGE);
        assert_eq!(list.offsets, [0xf80, 0xfa0, 0x1010]);
        // No offsets: a valid, empty list.
        assert!(
            entry_points(start, 16, PAGE, &[])
                .unwrap()
                .offsets
                .is_empty()
        );
    }

    #[test]
    fn entry_points_outside_the_block_or_unaligned_are_refused() {
        let start = 0x20_0010;
        let err = entry_points(start, 64, PAGE, &[0, 64]).unwrap_err();
        assert!(
            matches!(err, Error::BadCallTarget { offset: 64, reason } if reason.contains("inside")),
            "{err}"
        );
        let err = entry_points(start, 64, PAGE, &[8]).unwrap_err();
        assert!(
            matches!(err, Error::BadCallTarget { offset: 8, reason } if reason.contains("16")),
            "{err}"
        );
        // Alignment is of the address, not the offset: a block at an 8-byte boundary.
        let err = entry_points(0x20_0008, 64, PAGE, &[0]).unwrap_err();
        assert!(matches!(err, Error::BadCallTarget { offset: 0, .. }));
        assert_eq!(
            entry_points(0x20_0008, 64, PAGE, &[8]).unwrap().offsets,
            [0x10]
        );
        // A block at the top of the address space does not overflow.
        assert!(entry_points(usize::MAX - 15, 16, PAGE, &[0]).is_err());
    }

    #[test]
    fn every_target_covers_each_16_byte_address_of_the_range() {
        let list = every_target(0x30_0ff0, 0x30, PAGE).unwrap();
        assert_eq!(list.base, 0x30_0000);
        assert_eq!(list.len, 2 * PAGE);
        assert_eq!(list.offsets, [0xff0, 0x1000, 0x1010]);
        // An unaligned start: the first target is the next multiple of 16.
        let list = every_target(0x30_0008, 0x20, PAGE).unwrap();
        assert_eq!(list.offsets, [0x10, 0x20]);
        // A whole page of a Toggle block: 256 targets.
        assert_eq!(
            every_target(0x40_0000, PAGE, PAGE).unwrap().offsets.len(),
            256
        );
    }
}
