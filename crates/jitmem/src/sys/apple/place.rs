//! Placement on Apple: reservations at a hinted address, checked (`mmap` without `MAP_FIXED`
//! takes the address as a hint: XNU's `mmap` puts the mapping there when the range is free and
//! elsewhere otherwise, so the result is compared and given back when it differs; XNU has no
//! `MAP_FIXED_NOREPLACE`). Moving a mapping into a reservation is not done here: it would be
//! `mach_vm_remap(VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE)`, which needs each region's inheritance
//! and `MAP_JIT` state carried over, and nothing here can run it. So regions get no guard pages
//! on Apple and `Config::near` is refused. No `PROT_BTI` either (Apple uses PAC and its own
//! code-signing rules, not BTI page attributes).
//!
//! Not run: type-checked for `aarch64-apple-darwin`, `x86_64-apple-darwin`, `aarch64-apple-ios`.

use std::ptr::NonNull;

use super::Os;
use crate::error::Result;
use crate::sys::posix::{non_null_map, unmap};
use crate::sys::{Place, Placement, refused};

impl Place for Os {
    const PLACEMENT: Placement = Placement::Unsupported;

    /// `mmap(at, len, PROT_NONE, MAP_PRIVATE | MAP_ANON)` (`at` as a hint), checked.
    fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>> {
        let hint = at.unwrap_or(0) as *mut libc::c_void;
        // SAFETY: without MAP_FIXED the kernel never replaces an existing mapping; the result
        // is a new mapping nobody else knows about.
        let ptr = unsafe {
            libc::mmap(
                hint,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANON,
                -1,
                0,
            )
        };
        let got = non_null_map(ptr, "mmap(PROT_NONE) reservation")?;
        match at {
            Some(at) if got.as_ptr() as usize != at => {
                // SAFETY: the mapping just made, known to no one else.
                unsafe { unmap(got, len)? };
                Ok(None)
            }
            _ => Ok(Some(got)),
        }
    }

    /// Refused (see the module documentation).
    ///
    /// # Safety
    /// The contract of [`Place::move_mapping`] (nothing is touched).
    unsafe fn move_mapping(_from: NonNull<u8>, _len: usize, _to: NonNull<u8>) -> Result<()> {
        Err(refused(
            "moving a mapping into a reservation",
            "guard pages and Config::near are not implemented on Apple platforms",
        ))
    }

    /// [`busy_from_mappings`](crate::sys::busy_from_mappings).
    fn busy_ranges(lo: usize, hi: usize) -> std::io::Result<Vec<(usize, usize)>> {
        crate::sys::busy_from_mappings(lo, hi)
    }

    /// The view and its guards are one range: one `mach_vm_deallocate` of `[view - guard, view + len +
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
        Err("PROT_BTI is a Linux AArch64 feature; Apple platforms do not offer it".to_owned())
    }
}
