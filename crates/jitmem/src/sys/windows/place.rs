//! Placement on Windows: `VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)` at a candidate address
//! (Microsoft's `VirtualAlloc` documentation: with a non-NULL `lpAddress` and `MEM_RESERVE` the
//! region is reserved there, rounded down to the allocation granularity, and the call fails
//! when any of it is already reserved). Windows cannot move an allocation or a view into a
//! reservation, so regions get no guard pages here and `Config::near` is refused; placing
//! Windows regions would map them at the chosen address directly (`VirtualAlloc` or
//! `MapViewOfFile3` with placeholders, `VirtualAlloc2` with `MEM_ADDRESS_REQUIREMENTS`), which is
//! left for the commit-on-demand reservation code. No `PROT_BTI` on Windows.

use std::ptr::NonNull;

use windows_sys::Win32::System::Memory::{MEM_RESERVE, PAGE_NOACCESS, VirtualAlloc};

use super::{Os, os_error};
use crate::error::Result;
use crate::sys::{Place, refused};

impl Place for Os {
    const MOVES: bool = false;


    /// `VirtualAlloc(at, len, MEM_RESERVE, PAGE_NOACCESS)`; `Ok(None)` when `at` is taken or
    /// outside the user address space.
    fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>> {
        let address = at.unwrap_or(0) as *const core::ffi::c_void;
        // SAFETY: MEM_RESERVE never replaces an existing allocation; the result is new.
        let ptr = unsafe { VirtualAlloc(address, len, MEM_RESERVE, PAGE_NOACCESS) };
        match (NonNull::new(ptr.cast::<u8>()), at) {
            (Some(got), _) => Ok(Some(got)),
            (None, Some(_)) => Ok(None),
            (None, None) => Err(os_error("VirtualAlloc(MEM_RESERVE, PAGE_NOACCESS)")),
        }
    }

    /// Refused (see the module documentation).
    ///
    /// # Safety
    /// The contract of [`Place::move_mapping`] (nothing is touched).
    unsafe fn move_mapping(_from: NonNull<u8>, _len: usize, _to: NonNull<u8>) -> Result<()> {
        Err(refused(
            "moving a mapping into a reservation",
            "Windows cannot move an allocation or a view: guard pages and Config::near are not implemented on Windows",
        ))
    }

    fn bti_support() -> std::result::Result<(), String> {
        Err("PROT_BTI is a Linux AArch64 feature; Windows does not offer it".to_owned())
    }
}
