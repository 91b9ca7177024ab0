//! Per-thread write rights: not on Windows (no protection keys for user memory, no per-thread
//! JIT write mode), so PerThread is refused with a reason, like on a CPU without PKU.

use std::ptr::NonNull;

use super::Os;
use crate::error::Result;
use crate::sys::{Rights, refused};

const NO_PER_THREAD: &str = "Windows has no per-thread write rights for memory pages (no protection keys for user memory, no per-thread JIT write mode); use Mirror";

impl Rights for Os {
    /// No `fork()`, so nothing is lost across one.
    const PER_THREAD_SURVIVES_FORK: bool = true;

    /// Refused, always, with the reason.
    fn thread_rights_token() -> std::result::Result<u32, String> {
        Err(NO_PER_THREAD.to_owned())
    }

    /// Never reached ([`Rights::thread_rights_token`] refuses, so no PerThread memory is made);
    /// refuses too.
    fn map_per_thread(_len: usize, _key: u32) -> Result<NonNull<u8>> {
        Err(refused("map per-thread memory", NO_PER_THREAD))
    }

    /// Does nothing: there are no per-thread rights to grant (never called: no key).
    ///
    /// # Safety
    /// The contract of [`Rights::grant_thread_write_rights`].
    unsafe fn grant_thread_write_rights(_key: u32) -> u32 {
        0
    }

    /// Does nothing: see `grant_thread_write_rights`.
    ///
    /// # Safety
    /// The contract of [`Rights::withdraw_thread_write_rights`].
    unsafe fn withdraw_thread_write_rights(_key: u32, _saved: u32) {}
}
