//! Instruction-cache coherence: `FlushInstructionCache`, `FlushProcessWriteBuffers`.

use windows_sys::Win32::System::Diagnostics::Debug::FlushInstructionCache;
use windows_sys::Win32::System::Threading::{FlushProcessWriteBuffers, GetCurrentProcess};

use super::Os;
use crate::error::Result;
use crate::sys::Icache;

impl Icache for Os {
    /// Makes `[ptr, ptr + len)` coherent for instruction fetch (`FlushInstructionCache` on the
    /// current process), which Windows documents as required after writing code.
    ///
    /// # Safety
    /// The contract of [`Icache::clear_cache`]: the range is mapped and readable.
    #[doc(alias = "FlushInstructionCache")]
    #[inline]
    unsafe fn clear_cache(ptr: *const u8, len: usize) {
        // SAFETY: the pseudo-handle of our own process and a range the caller says is mapped.
        // FlushInstructionCache only fails for a bad process handle, which this is not.
        unsafe { FlushInstructionCache(GetCurrentProcess(), ptr.cast(), len) };
    }

    /// Makes every thread of the process discard instructions it may have fetched before the last
    /// [`clear_cache`](Icache::clear_cache) (`FlushProcessWriteBuffers`).
    ///
    /// What Windows documents is a process-wide memory barrier: the write queue of every processor
    /// running a thread of this process is flushed. What it does to get there is an
    /// inter-processor interrupt to each of those processors, and returning from an interrupt is
    /// serialising on x86-64 (`IRET`) and a context synchronisation event on AArch64 (`ERET`): each
    /// thread refetches its instructions, as with Linux's `membarrier(SYNC_CORE)`. That second part
    /// follows from the implementation, not from a documented contract; it is what other JITs on
    /// Windows rely on as well. Under Wine it is `membarrier` or an equivalent on the Linux host.
    #[doc(alias = "FlushProcessWriteBuffers")]
    fn pipeline_flush_mt() -> Result<()> {
        // SAFETY: no arguments, no preconditions.
        unsafe { FlushProcessWriteBuffers() };
        Ok(())
    }
}
