//! The instruction set's own cache-maintenance sequence, for platforms without a system call for
//! it (Linux on x86-64 and AArch64), and the decoding of AArch64's `CTR_EL0` it relies on.
//!
//! - x86-64 keeps instruction fetch coherent with stores (Intel SDM vol. 3, 8.1.3): a compiler
//!   fence is all a single thread needs.
//! - AArch64 needs, per cache line, `dc cvau` (clean data to the point of unification), `dsb
//!   ish`, `ic ivau` (invalidate instruction cache), `dsb ish`, `isb`, with line sizes read from
//!   `CTR_EL0`; when `CTR_EL0.IDC` or `.DIC` is set the corresponding loop is not needed (Arm
//!   ARM, B2.4.4 "Concurrent modification and execution of instructions").

/// Makes `[ptr, ptr + len)` coherent for instruction fetch with the ISA's own sequence.
///
/// # Safety
/// The range is mapped (readable) memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "other OSes have a system call")
)]
#[inline]
pub(crate) unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { isa::clear_cache(ptr, len) }
}

/// Decodes AArch64's `CTR_EL0`: (smallest data cache line, smallest instruction cache line,
/// IDC: no data clean needed for coherence, DIC: no instruction invalidation needed). Lines are
/// `4 << DminLine` (bits 19:16) and `4 << IminLine` (bits 3:0) bytes (Arm ARM, D23.2 CTR_EL0).
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "aarch64")),
    allow(
        dead_code,
        reason = "used by AArch64's cache maintenance on Linux; tested everywhere"
    )
)]
pub(crate) fn decode_ctr(ctr: u64) -> (usize, usize, bool, bool) {
    let dline = 4usize << ((ctr >> 16) & 0xF);
    let iline = 4usize << (ctr & 0xF);
    (dline, iline, ctr & (1 << 28) != 0, ctr & (1 << 29) != 0)
}

#[cfg(target_arch = "x86_64")]
mod isa {
    use std::sync::atomic::{Ordering, compiler_fence};

    /// A compiler fence: x86-64's instruction fetch is coherent with this thread's stores.
    ///
    /// # Safety
    /// None needed: it touches no memory.
    #[inline]
    pub(super) unsafe fn clear_cache(_ptr: *const u8, _len: usize) {
        compiler_fence(Ordering::SeqCst);
    }
}

#[cfg(target_arch = "aarch64")]
mod isa {
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
    fn line_sizes() -> (usize, usize, bool, bool) {
        super::decode_ctr(cache_type())
    }

    /// `dc cvau` / `ic ivau` over the range's lines, with the barriers between.
    ///
    /// # Safety
    /// The range is mapped (readable) memory.
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
