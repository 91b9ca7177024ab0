//! Instruction-cache coherence: what makes freshly written bytes safe to execute.
//!
//! Two functions, in the style of wasmtime's `jit-icache-coherence`:
//! 1. [`clear_cache`] after writing code, for the written range, before running it;
//! 2. [`pipeline_flush_mt`] when other threads may already be running code in that range
//!    (patching live code), so that no thread keeps executing stale prefetched instructions.
//!
//! ```
//! # fn main() -> jitmem::Result<()> {
//! let memory = jitmem::JitMemory::new(jitmem::Config::new())?;
//! let mut block = memory.allocate(16)?;
//! let mut scope = block.write()?;
//! scope[..16].copy_from_slice(&jitmem::isa::return_constant(1));
//! // `publish` calls clear_cache for the written range; `publish_live` also
//! // calls pipeline_flush_mt.
//! scope.publish()?;
//! # Ok(()) }
//! ```
//!
//! - x86-64 keeps instruction fetch coherent with stores (Intel SDM vol. 3, 8.1.3): a compiler
//!   fence is all a single thread needs; other threads need a serialising instruction, which
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)` forces on each of them.
//! - AArch64 needs, per cache line, `dc cvau` (clean data to the point of unification), `dsb
//!   ish`, `ic ivau` (invalidate instruction cache), `dsb ish`, `isb`, with line sizes read from
//!   `CTR_EL0`; when `CTR_EL0.IDC` or `.DIC` is set the corresponding loop is not needed (Arm
//!   ARM, B2.4.4 "Concurrent modification and execution of instructions").
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): cache maintenance on caller-given ranges and the AArch64 maintenance instructions.

use std::cell::Cell;

use crate::error::Result;

thread_local! {
    /// Publishes and pipeline flushes done by this thread (see [`publish_count`]).
    static PUBLISHES: Cell<u64> = const { Cell::new(0) };
    static PIPELINE_FLUSHES: Cell<u64> = const { Cell::new(0) };
}

/// **The** way written code becomes runnable: every jitmem path that makes written bytes
/// executable (a write scope's end, a trap fill, [`ExecBuffer`](crate::ExecBuffer), the C ABI
/// and seed 000's API in every mode, a fork child's private copy of Mirror code) ends here.
/// It makes `[ptr, ptr + len)` coherent for instruction fetch ([`clear_cache`]) and counts the
/// call for this thread ([`publish_count`]), so that tests can check the path is taken where a
/// missing flush would not show (x86-64, qemu-user, whose instruction cache is always coherent).
///
/// # Safety
/// The range is mapped (readable) memory.
#[inline]
pub unsafe fn publish(ptr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { clear_cache(ptr, len) };
    PUBLISHES.set(PUBLISHES.get().wrapping_add(1));
}

/// How many times this thread has gone through [`publish`] (a fork child inherits the count of
/// the thread that forked, plus the publishes of the fork handler).
pub fn publish_count() -> u64 {
    PUBLISHES.get()
}

/// How many times this thread has flushed every thread's pipeline ([`pipeline_flush_mt`]).
pub fn pipeline_flush_count() -> u64 {
    PIPELINE_FLUSHES.get()
}

/// Makes `[ptr, ptr + len)` coherent between data writes and instruction fetch on this thread
/// (and, on AArch64, for every core: the maintenance is broadcast to the inner shareable domain).
/// Cost: nothing on Linux x86-64; a few instructions per cache line on Linux AArch64; a system
/// call on Windows (`FlushInstructionCache`); Apple's `sys_icache_invalidate` (a libSystem
/// routine, user space).
///
/// # Safety
/// The range is mapped (readable) memory.
#[inline]
pub unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { crate::sys::clear_cache(ptr, len) }
}

/// Makes every thread of the process discard instructions it may have fetched before the last
/// [`clear_cache`]: on Linux `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)` (registered on first
/// use). Cost: a system call and an inter-processor interrupt to each CPU running one of our
/// threads (a few microseconds). Windows: `FlushProcessWriteBuffers`. Apple (no membarrier):
/// reading every thread's registers (`thread_get_state`), which forces each through the kernel.
pub fn pipeline_flush_mt() -> Result<()> {
    crate::sys::pipeline_flush_mt()?;
    PIPELINE_FLUSHES.set(PIPELINE_FLUSHES.get().wrapping_add(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pipeline_flush_is_counted() {
        // Needs Linux >= 4.16 (membarrier SYNC_CORE), which every supported kernel has.
        let before = super::pipeline_flush_count();
        super::pipeline_flush_mt().unwrap();
        assert_eq!(super::pipeline_flush_count(), before + 1);
    }

    #[test]
    fn publish_is_counted_per_thread() {
        let code = [0xC3u8; 16];
        let before = super::publish_count();
        // SAFETY: a readable local array.
        unsafe { super::publish(code.as_ptr(), code.len()) };
        assert_eq!(super::publish_count(), before + 1);
        let other = std::thread::spawn(super::publish_count).join().unwrap();
        assert_eq!(other, 0, "a new thread starts at zero");
    }
}
