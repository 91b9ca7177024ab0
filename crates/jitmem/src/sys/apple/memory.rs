//! Private memory: POSIX `mmap`, `mprotect`, `munmap`, `sysconf` (never `MAP_JIT`: see `rights.rs`).

use std::ptr::NonNull;

use super::Os;
use crate::error::Result;
use crate::sys::{Memory, Prot, posix};

impl Memory for Os {
    #[inline]
    fn page_size() -> usize {
        posix::page_size()
    }

    fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
        posix::map_private(len, prot)
    }

    /// `mprotect`.
    ///
    /// # Safety
    /// The contract of [`Memory::protect`].
    unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { posix::protect(ptr, len, prot) }
    }

    /// `munmap`.
    ///
    /// # Safety
    /// The contract of [`Memory::unmap`].
    unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { posix::unmap(ptr, len) }
    }
}
