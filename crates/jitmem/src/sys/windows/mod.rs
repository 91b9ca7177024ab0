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
    PAGE_READWRITE,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

use super::Prot;
use crate::error::Error;

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

/// The `PAGE_*` constant for `prot`.
pub(super) fn native(prot: Prot) -> PAGE_PROTECTION_FLAGS {
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
    fn granularity_is_not_the_page_size() {
        assert_eq!(page_size(), 4096);
        assert!(allocation_granularity().is_power_of_two());
        assert!(allocation_granularity() >= page_size());
    }
}
