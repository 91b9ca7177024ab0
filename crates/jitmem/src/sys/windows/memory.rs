//! Private memory: `VirtualAlloc`, `VirtualProtect`, `VirtualFree`.

use std::ptr::NonNull;

use windows_sys::Win32::System::Memory::{
    MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_PROTECTION_FLAGS, VirtualAlloc, VirtualFree,
    VirtualProtect,
};

use super::{Os, native, os_error};
use crate::error::Result;
use crate::sys::{Memory, Prot};

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
/// allocation (a region of this crate).
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
