//! Windows on x86-64 and AArch64: `VirtualAlloc`/`VirtualProtect`/`VirtualFree`, mirrors from a pagefile-backed section
//! mapped twice, `FlushInstructionCache`, `FlushProcessWriteBuffers`, `VirtualQuery`
//! introspection, and the probe.
//!
//! Verified by running the test suite for `x86_64-pc-windows-gnu` **under Wine**, not on
//! Windows itself: what is said here about Windows comes from its documentation, and what was
//! run is what Wine does.
//!
//! - **Granularity.** Pages are 4 KiB, but every `VirtualAlloc` reservation and every view
//!   starts on the 64 KiB allocation granularity. Nothing above this module assumes the two are
//!   equal: regions are page multiples, and a one-page region simply leaves the rest of its
//!   64 KiB of address space unused (PerAllocation pays that in address space, not in memory).
//! - **Whole allocations only.** [`unmap`] is `VirtualFree(MEM_RELEASE)` and [`unmap_view`] is
//!   `UnmapViewOfFile`: both release the whole allocation or view that starts at the address,
//!   whatever the length. Every caller gives back exactly what it mapped (a `Region`, an
//!   `ExecBuffer`, a probe page), never a part of it.
//! - **Commit.** Memory is committed when mapped (`MEM_COMMIT`, and a section without
//!   `SEC_RESERVE`): it counts against the system commit limit at once, though physical pages
//!   are only used when touched. A 512 MiB arena is 512 MiB of commit charge.
//! - **No per-thread write rights.** Windows has no protection keys for user memory and no
//!   per-thread JIT write mode, so PerThread is refused with a reason, like on a CPU without PKU.
//! - **No fork.** Windows has no `fork()`: the fork hooks do nothing and are never reached.
//! - **Arbitrary Code Guard** (`ProcessDynamicCodePolicy`) forbids making any memory executable
//!   after it is mapped, and mapping new executable memory: every strategy fails, and the probe
//!   says so.
//! - **Control Flow Guard.** Executable memory is a valid indirect-call target everywhere
//!   (Windows' default) unless `Config::cfg_call_targets` asks for explicit targets and the
//!   process enforces CFG: then executable memory is reserved and committed with
//!   `PAGE_TARGETS_INVALID`, made executable again with `PAGE_TARGETS_NO_UPDATE`, and entry
//!   points are marked with `SetProcessValidCallTargets` (`cfg.rs`). Never run with CFG
//!   enforced: Wine has no CFG.
//! - **Placement.** Guard pages and `Config::near` by making each region where it goes (a
//!   reservation of guard + region + guard; a view mapped between two guard reservations), since
//!   nothing can be moved: see `place.rs`. `VirtualAlloc2` and `MapViewOfFile3` placeholders are
//!   not used (Windows 10 1803; Wine 8 refuses `MEM_RESERVE_PLACEHOLDER`).
//!
//! # Safety
//! Functions that map memory are safe: they create new mappings nobody else knows about.
//! Functions that change or remove existing mappings are `unsafe`, and their callers promise
//! that they own the allocation.

use std::sync::OnceLock;

use windows_sys::Win32::System::Memory::{
    PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE, PAGE_NOACCESS, PAGE_PROTECTION_FLAGS, PAGE_READONLY,
    PAGE_READWRITE, PAGE_TARGETS_INVALID, PAGE_TARGETS_NO_UPDATE,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

use super::Prot;
use crate::error::Error;

mod cfg;
mod fork;
mod icache;
mod introspect;
mod memory;
mod mirror;
mod place;
mod probe;
mod rights;
mod wait;

/// Windows, implementing every concern of the platform interface (one file each).
pub(crate) struct Os;

impl super::Platform for Os {}

// ---------------------------------------------------------------------------------------------
// System facts.

/// What `GetSystemInfo` says, read once.
pub(super) struct System {
    pub(super) page: usize,
    pub(super) granularity: usize,
    pub(super) lowest: usize,
    pub(super) highest: usize,
}

pub(super) fn system() -> &'static System {
    static SYSTEM: OnceLock<System> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let mut info = SYSTEM_INFO::default();
        // SAFETY: info is a valid, writable SYSTEM_INFO; GetSystemInfo cannot fail.
        unsafe { GetSystemInfo(&mut info) };
        let power_of_two = |v: u32, fallback: usize| {
            usize::try_from(v)
                .ok()
                .filter(|v| v.is_power_of_two())
                .unwrap_or(fallback)
        };
        System {
            page: power_of_two(info.dwPageSize, 4096),
            granularity: power_of_two(info.dwAllocationGranularity, 64 << 10),
            lowest: info.lpMinimumApplicationAddress as usize,
            highest: info.lpMaximumApplicationAddress as usize,
        }
    })
}

/// The page size (`GetSystemInfo().dwPageSize`, 4 KiB on x86-64 and AArch64), read once.
#[doc(alias = "GetSystemInfo")]
pub(super) fn page_size() -> usize {
    system().page
}

/// The allocation granularity (`dwAllocationGranularity`, 64 KiB): where every reservation and
/// every view starts. Larger than the page size; nothing may assume they are equal.
pub(super) fn allocation_granularity() -> usize {
    system().granularity
}

/// The `PAGE_*` constant for `prot`, with `PAGE_TARGETS_INVALID` for an executable protection
/// whose locations must not be valid Control Flow Guard targets until marked
/// ([`Prot::targets_invalid`]).
///
/// One bit, two meanings (both are `0x40000000`;
/// <https://learn.microsoft.com/en-us/windows/win32/memory/memory-protection-constants>): given
/// to `VirtualAlloc` (`MEM_RESERVE`, `MEM_COMMIT`) it is `PAGE_TARGETS_INVALID`, "Sets all
/// locations in the pages as invalid targets for CFG"; given to `VirtualProtect` it is
/// `PAGE_TARGETS_NO_UPDATE`, "Pages in the region will not have their CFG information updated
/// while the protection changes for VirtualProtect", without which making pages executable
/// marks every location valid again. Both are what a region of explicit targets wants, so
/// every call that maps, commits or protects such a region passes the bit with its execute
/// protection (Toggle's flip back to read-execute included), and never with another.
pub(super) fn native(prot: Prot) -> PAGE_PROTECTION_FLAGS {
    const _: () = assert!(PAGE_TARGETS_INVALID == PAGE_TARGETS_NO_UPDATE);
    let targets = if prot.targets_invalid() {
        PAGE_TARGETS_INVALID
    } else {
        0
    };
    native_access(prot) | targets
}

/// The `PAGE_*` access constant for `prot`.
fn native_access(prot: Prot) -> PAGE_PROTECTION_FLAGS {
    match prot {
        Prot::NONE => PAGE_NOACCESS,
        Prot::RW => PAGE_READWRITE,
        Prot::RX => PAGE_EXECUTE_READ,
        Prot::RWX => PAGE_EXECUTE_READWRITE,
        // Only the four protections above exist; any other keeps write and execute as asked.
        other => match (other.write(), other.exec()) {
            (true, true) => PAGE_EXECUTE_READWRITE,
            (true, false) => PAGE_READWRITE,
            (false, true) => PAGE_EXECUTE_READ,
            (false, false) => PAGE_READONLY,
        },
    }
}

pub(super) fn os_error(op: &'static str) -> Error {
    Error::last_os(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_invalid_goes_with_execute_protections_only() {
        assert_eq!(native(Prot::RX), PAGE_EXECUTE_READ);
        let rx = Prot::RX.with_targets_invalid(true);
        assert_eq!(native(rx), PAGE_EXECUTE_READ | PAGE_TARGETS_INVALID);
        let rwx = Prot::RWX.with_targets_invalid(true);
        assert_eq!(native(rwx), PAGE_EXECUTE_READWRITE | PAGE_TARGETS_INVALID);
        // Toggle's write side: not executable, so no CFG bit (VirtualProtect would refuse it).
        assert_eq!(native(Prot::RW.with_targets_invalid(true)), PAGE_READWRITE);
    }

    #[test]
    fn granularity_is_not_the_page_size() {
        assert_eq!(page_size(), 4096);
        assert!(allocation_granularity().is_power_of_two());
        assert!(allocation_granularity() >= page_size());
    }
}
