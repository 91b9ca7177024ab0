//! Private memory: `VirtualAlloc`, `VirtualProtect`, `VirtualFree`; and the [`Commit`] concern
//! (reservations committed as they are used) for private memory and mirrors.

use std::ptr::NonNull;

use windows_sys::Win32::System::Memory::{
    MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_NOACCESS, PAGE_PROTECTION_FLAGS, VirtualAlloc,
    VirtualFree, VirtualProtect,
};

use super::{Os, allocation_granularity, native, os_error};
use crate::error::Result;
use crate::sys::{Commit, MapOptions, Memory, MirrorViews, Prot};

impl Memory for Os {
    /// `GetSystemInfo().dwPageSize` (4 KiB on x86-64 and AArch64), read once.
    #[doc(alias = "GetSystemInfo")]
    fn page_size() -> usize {
        super::page_size()
    }

    fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
        map_private(len, prot)
    }

    /// # Safety
    /// The contract of [`Memory::protect`].
    unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { protect(ptr, len, prot) }
    }

    /// # Safety
    /// The contract of [`Memory::unmap`].
    unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { unmap(ptr, len) }
    }
}

/// Reserves and commits `len` bytes (a page multiple) of fresh private memory with `prot`
/// (`VirtualAlloc(MEM_RESERVE | MEM_COMMIT)`). The reservation starts on the allocation
/// granularity; physical pages are used only when touched.
#[doc(alias = "VirtualAlloc")]
fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
    // SAFETY: a new allocation at an address the system picks touches no existing memory.
    let ptr = unsafe {
        VirtualAlloc(
            std::ptr::null(),
            len,
            MEM_RESERVE | MEM_COMMIT,
            native(prot),
        )
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| os_error("VirtualAlloc(MEM_RESERVE | MEM_COMMIT)"))
}

/// Changes the protection of `[ptr, ptr + len)` (`VirtualProtect`). The range lies inside one
/// allocation (a region of this crate). An executable `prot` with [`Prot::targets_invalid`]
/// passes `PAGE_TARGETS_NO_UPDATE`, so that the pages' Control Flow Guard marks survive (see
/// [`native`]).
///
/// # Safety
/// The caller owns the range (it was mapped by this crate and is still mapped) and nothing
/// relies on the old protection (no other thread runs code there when execute is removed).
#[doc(alias = "VirtualProtect")]
unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
    let mut old: PAGE_PROTECTION_FLAGS = 0;
    // SAFETY: the caller owns the page-aligned range; `old` is a valid out-parameter.
    let ok = unsafe { VirtualProtect(ptr.as_ptr().cast(), len, native(prot), &mut old) };
    if ok == 0 {
        return Err(os_error("VirtualProtect"));
    }
    Ok(())
}

/// Releases the private allocation that starts at `ptr` (`VirtualFree(MEM_RELEASE)`). Windows
/// releases whole allocations only: `len` is what the caller mapped, and is not passed on.
///
/// # Safety
/// `ptr` is the start of an allocation made by [`map_private`] of `len` bytes, which the caller
/// owns, and nothing refers to it any more.
#[doc(alias = "VirtualFree")]
unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
    let _ = len;
    // SAFETY: the caller owns the whole allocation and gives it up; MEM_RELEASE needs size 0.
    let ok = unsafe { VirtualFree(ptr.as_ptr().cast(), 0, MEM_RELEASE) };
    if ok == 0 {
        return Err(os_error("VirtualFree(MEM_RELEASE)"));
    }
    Ok(())
}

/// Reservations committed as they are used.
///
/// Microsoft's documentation (<https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-virtualalloc>):
/// `MEM_RESERVE` "reserves a range of the process's virtual address space without allocating
/// any actual physical storage in memory or in the paging file on disk", and `MEM_COMMIT`
/// "allocates memory charges (from the overall size of memory and the paging files on disk)
/// for the specified reserved memory pages"; committing a reserved range of a view of a
/// section created with `SEC_RESERVE` is what
/// <https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-createfilemappingw>
/// describes ("the reserved pages can be committed in subsequent calls to the VirtualAlloc
/// function"), and what .NET's double mapping does (dotnet/runtime,
/// `src/coreclr/minipal/Windows/doublemapping.cpp`: `CommitDoubleMappedMemory`).
impl Commit for Os {
    fn reserve_private(len: usize, prot: Prot, options: MapOptions) -> Result<NonNull<u8>> {
        if options.guard > 0 || options.near.is_some() {
            return super::place::reserve_private(len, prot, options);
        }
        reserve_private(len, prot)
    }

    fn reserve_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
        super::mirror::reserve_mirror(len, options)
    }

    /// # Safety
    /// The contract of [`Commit::commit`].
    unsafe fn commit(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { commit(ptr, len, prot) }
    }

    /// The allocation granularity (64 KiB): one `VirtualAlloc(MEM_COMMIT)` per 64 KiB of code
    /// handed out (per view for a mirror), and at most 64 KiB - 1 bytes of commit charge per
    /// region beyond what its blocks use.
    fn commit_granule() -> Option<usize> {
        Some(allocation_granularity())
    }

    /// Every reservation starts on the allocation granularity and takes a multiple of it.
    fn reservation_granularity() -> usize {
        allocation_granularity()
    }
}

/// Reserves `len` bytes of address space (`VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)`): no commit
/// charge, no page usable until [`commit`] gives it its protection.
///
/// For memory whose Control Flow Guard targets are explicit ([`Prot::targets_invalid`]) the
/// reservation itself is made with `prot` (`PAGE_EXECUTE_READ | PAGE_TARGETS_INVALID`): memory
/// must be allocated with an execute protection from the start to get a CFG bitmap, and
/// `SetProcessValidCallTargets` fails on memory allocated otherwise and made executable later
/// (MicrosoftDocs/sdk-api pull request 442). Reserved pages stay inaccessible whatever the
/// protection, until committed.
#[doc(alias = "VirtualAlloc")]
fn reserve_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
    let protection = if prot.targets_invalid() {
        native(prot)
    } else {
        PAGE_NOACCESS
    };
    // SAFETY: a new reservation at an address the system picks touches no existing memory.
    let ptr = unsafe { VirtualAlloc(std::ptr::null(), len, MEM_RESERVE, protection) };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| os_error("VirtualAlloc(MEM_RESERVE)"))
}

/// Commits `[ptr, ptr + len)` of a reservation (private, or a view of a `SEC_RESERVE` section)
/// with `prot` (`VirtualAlloc(MEM_COMMIT)`; with `PAGE_TARGETS_INVALID` when
/// [`Prot::targets_invalid`], as ChakraCore commits its JIT's section views:
/// `VirtualAllocEx(MEM_COMMIT, PAGE_EXECUTE_READ | PAGE_TARGETS_INVALID)`,
/// `lib/Common/Memory/SectionAllocWrapper.cpp`). A failure keeps the OS error as its source:
/// `ERROR_COMMITMENT_LIMIT` (1455) when the system's commit limit is reached,
/// `ERROR_DYNAMIC_CODE_BLOCKED` (1655) under Arbitrary Code Guard.
///
/// # Safety
/// The contract of [`Commit::commit`]: the range is inside a reservation the caller owns and
/// was never committed (`MEM_COMMIT` on a committed page sets its protection anew).
#[doc(alias = "VirtualAlloc")]
unsafe fn commit(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
    // SAFETY: the caller owns the reserved, never committed range.
    let done = unsafe { VirtualAlloc(ptr.as_ptr().cast(), len, MEM_COMMIT, native(prot)) };
    if done.is_null() {
        return Err(os_error("VirtualAlloc(MEM_COMMIT)"));
    }
    Ok(())
}
