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

/// The ISA's own cache-maintenance sequence, for platforms without a system call for it.
///
/// # Safety
/// The range is mapped (readable) memory.
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "other OSes have a system call")
)]
#[inline]
pub(crate) unsafe fn isa_clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { arch::clear_cache(ptr, len) }
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

/// Decodes AArch64's `CTR_EL0`: (smallest data cache line, smallest instruction cache line,
/// IDC: no data clean needed for coherence, DIC: no instruction invalidation needed). Lines are
/// `4 << DminLine` (bits 19:16) and `4 << IminLine` (bits 3:0) bytes (Arm ARM, D23.2 CTR_EL0).
#[cfg_attr(
    not(target_arch = "aarch64"),
    allow(
        dead_code,
        reason = "used by AArch64's cache maintenance; tested everywhere"
    )
)]
pub(crate) fn decode_ctr(ctr: u64) -> (usize, usize, bool, bool) {
    let dline = 4usize << ((ctr >> 16) & 0xF);
    let iline = 4usize << (ctr & 0xF);
    (dline, iline, ctr & (1 << 28) != 0, ctr & (1 << 29) != 0)
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use std::sync::atomic::{Ordering, compiler_fence};

    pub(super) unsafe fn clear_cache(_ptr: *const u8, _len: usize) {
        compiler_fence(Ordering::SeqCst);
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    /// `CTR_EL0`, readable from EL0 on Linux (the kernel traps and emulates it where needed).
    fn cache_type() -> u64 {
        let ctr: u64;
        // SAFETY: reading CTR_EL0 has no side effects.
        unsafe {
            std::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags))
        };
        ctr
    }

    /// (data line size, instruction line size, IDC, DIC) from `CTR_EL0`.
    pub(crate) fn line_sizes() -> (usize, usize, bool, bool) {
        super::decode_ctr(cache_type())
    }

    pub(super) unsafe fn clear_cache(ptr: *const u8, len: usize) {
        let (dline, iline, idc, dic) = line_sizes();
        let start = ptr as usize;
        let end = start.saturating_add(len);
        if !idc {
            let mut addr = start & !(dline - 1);
            while addr < end {
                // SAFETY: the caller guarantees the range is mapped; dc cvau on a mapped line.
                unsafe {
                    std::arch::asm!("dc cvau, {}", in(reg) addr, options(nostack, preserves_flags))
                };
                addr += dline;
            }
        }
        // SAFETY: a barrier has no memory-safety preconditions.
        unsafe { std::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
        if !dic {
            let mut addr = start & !(iline - 1);
            while addr < end {
                // SAFETY: as above, ic ivau on a mapped line.
                unsafe {
                    std::arch::asm!("ic ivau, {}", in(reg) addr, options(nostack, preserves_flags))
                };
                addr += iline;
            }
            // SAFETY: a barrier has no memory-safety preconditions.
            unsafe { std::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
        }
        // SAFETY: an instruction barrier has no memory-safety preconditions.
        unsafe { std::arch::asm!("isb", options(nostack, preserves_flags)) };
    }
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

    /// Known `CTR_EL0` values decode to their line sizes and flags on every host (the AArch64
    /// maintenance loops use this decoding).
    #[test]
    fn ctr_el0_decodes() {
        // Cortex-A72: 64-byte lines, neither IDC nor DIC.
        assert_eq!(super::decode_ctr(0x8444_C004), (64, 64, false, false));
        // 32-byte lines.
        assert_eq!(super::decode_ctr(0x8433_C003), (32, 32, false, false));
        // Neoverse N1 style: IDC and DIC set (no maintenance loop needed).
        assert_eq!(super::decode_ctr(0xB444_C004), (64, 64, true, true));
        // Different data and instruction lines.
        assert_eq!(super::decode_ctr(0x8445_C003), (128, 32, false, false));
    }
}
