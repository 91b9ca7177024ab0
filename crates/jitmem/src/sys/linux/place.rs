//! Placement: `mmap(PROT_NONE, MAP_FIXED_NOREPLACE)` reservations, `mremap(MREMAP_FIXED)` to move
//! a fresh mapping into one, and `HWCAP2_BTI` for `PROT_BTI`.
//!
//! References: mmap(2) (`MAP_FIXED_NOREPLACE`, Linux 4.17: "Note that older kernels which do
//! not recognize the MAP_FIXED_NOREPLACE flag will typically (upon detecting a collision with a
//! preexisting mapping) fall back to a 'non-MAP_FIXED' type of behavior: they will return an
//! address that is different from the requested address. Therefore, backward-compatible
//! software should check the returned address against the requested address"); mremap(2)
//! (`MREMAP_FIXED`: "any previous mapping at the address range specified by new_address and
//! new_size is unmapped"); Linux `Documentation/arch/arm64/elf_hwcaps.rst` (`HWCAP2_BTI`) and
//! `arch/arm64/include/uapi/asm/mman.h` (`PROT_BTI`).

use std::io;
use std::ptr::NonNull;

use super::Os;
use crate::error::{Error, Result};
use crate::sys::posix::{map_error, map_private, unmap};
use crate::sys::{Place, Placement, Prot};

impl Place for Os {
    const PLACEMENT: Placement = Placement::MoveIntoReservation;

    fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>> {
        match at {
            None => map_private(len, Prot::NONE).map(Some),
            Some(at) => reserve_at(len, at),
        }
    }

    /// `mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to)`: the VMA moves with its
    /// flags (`MADV_DONTFORK`, the protection key, the read-only descriptor's missing
    /// `VM_MAYWRITE`).
    ///
    /// # Safety
    /// The contract of [`Place::move_mapping`].
    unsafe fn move_mapping(from: NonNull<u8>, len: usize, to: NonNull<u8>) -> Result<()> {
        // SAFETY: the caller owns the mapping at `from` and the reservation at `to`, which
        // MREMAP_FIXED replaces.
        let moved = unsafe {
            libc::mremap(
                from.as_ptr().cast(),
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.as_ptr().cast::<libc::c_void>(),
            )
        };
        if moved == libc::MAP_FAILED {
            return Err(Error::last_os("mremap(MREMAP_MAYMOVE | MREMAP_FIXED)"));
        }
        if moved.cast::<u8>() != to.as_ptr() {
            return Err(Error::Internal("mremap(MREMAP_FIXED) moved elsewhere"));
        }
        Ok(())
    }

    /// [`busy_from_mappings`](crate::sys::busy_from_mappings).
    fn busy_ranges(lo: usize, hi: usize) -> std::io::Result<Vec<(usize, usize)>> {
        crate::sys::busy_from_mappings(lo, hi)
    }

    /// The view and its guards are one range: one `munmap` of `[view - guard, view + len +
    /// guard)`.
    ///
    /// # Safety
    /// The contract of [`Place::unmap_guarded_view`].
    unsafe fn unmap_guarded_view(view: NonNull<u8>, len: usize, guard: usize) -> Result<()> {
        let (start, total) = crate::sys::guarded_range(view, len, guard)?;
        // SAFETY: the caller owns the view and its guards, which form this one range.
        unsafe { <Os as crate::sys::Mirror>::unmap_view(start, total) }
    }

    fn bti_support() -> std::result::Result<(), String> {
        bti_support()
    }
}

/// `mmap(at, len, PROT_NONE, MAP_FIXED_NOREPLACE)`, checked: a kernel older than 4.17 ignores
/// the flag and may return another address, which is given back.
fn reserve_at(len: usize, at: usize) -> Result<Option<NonNull<u8>>> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the result is a new
    // mapping nobody else knows about.
    let ptr = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        const OP: &str = "mmap(PROT_NONE, MAP_FIXED_NOREPLACE)";
        return match io::Error::last_os_error().raw_os_error() {
            // Out of mappings (MappingLimit) or memory: no other address would do, so say so
            // at once rather than trying every candidate (each failure would count the
            // process's mappings again).
            Some(libc::ENOMEM) => Err(map_error(OP)),
            // Taken, or below mmap_min_addr.
            Some(libc::EEXIST | libc::EINVAL | libc::EPERM) => Ok(None),
            _ => Err(Error::last_os(OP)),
        };
    }
    let Some(got) = NonNull::new(ptr.cast::<u8>()) else {
        return Ok(None);
    };
    if got.as_ptr() as usize != at {
        // An old kernel took the flag for a hint and put the mapping elsewhere.
        // SAFETY: the mapping just made, known to no one else.
        unsafe { unmap(got, len)? };
        return Ok(None);
    }
    Ok(Some(got))
}

/// `HWCAP2_BTI` (`arch/arm64/include/uapi/asm/hwcap.h`: `1 << 17`).
#[cfg(target_arch = "aarch64")]
const HWCAP2_BTI: libc::c_ulong = 1 << 17;

#[cfg(target_arch = "aarch64")]
fn bti_support() -> std::result::Result<(), String> {
    // SAFETY: getauxval reads the process's auxiliary vector; no preconditions.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    if hwcap2 & HWCAP2_BTI == 0 {
        return Err("this CPU (or emulator) has no BTI: HWCAP2_BTI is clear, so the kernel refuses PROT_BTI (under qemu-user, run with -cpu max)".to_owned());
    }
    Ok(())
}

#[cfg(not(target_arch = "aarch64"))]
fn bti_support() -> std::result::Result<(), String> {
    Err("BTI (PROT_BTI) is an AArch64 feature; this is x86-64".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::posix::page_size;

    /// A reservation at a taken address is refused, never put elsewhere; a free one is exact.
    #[test]
    fn reservations_are_exact_or_refused() {
        let page = page_size();
        let taken = map_private(4 * page, Prot::NONE).unwrap();
        let at = taken.as_ptr() as usize;
        assert!(reserve_at(page, at + page).unwrap().is_none(), "taken");
        // SAFETY: test-owned mapping.
        unsafe { unmap(NonNull::new((at + 2 * page) as *mut u8).unwrap(), 2 * page).unwrap() };
        let got = reserve_at(page, at + 2 * page).unwrap().expect("free now");
        assert_eq!(got.as_ptr() as usize, at + 2 * page);
        // SAFETY: test-owned mappings.
        unsafe {
            unmap(got, page).unwrap();
            unmap(taken, 2 * page).unwrap();
        }
    }
}
