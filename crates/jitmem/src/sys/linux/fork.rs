//! Fork safety of mirrors: POSIX `pthread_atfork` and private snapshots of shared code.

use std::ptr::NonNull;

use super::Os;
use crate::error::Result;
use crate::sys::{Fork, posix};

impl Fork for Os {
    fn register_atfork(
        prepare: unsafe extern "C" fn(),
        parent: unsafe extern "C" fn(),
        child: unsafe extern "C" fn(),
    ) -> Result<()> {
        posix::register_atfork(prepare, parent, child)
    }

    /// # Safety
    /// The contract of [`Fork::snapshot_for_fork`].
    unsafe fn snapshot_for_fork(rx: NonNull<u8>, used: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded from the caller.
        unsafe { posix::snapshot_for_fork(rx, used) }
    }

    /// # Safety
    /// The contract of [`Fork::discard_snapshot`].
    unsafe fn discard_snapshot(snapshot: NonNull<u8>, used: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { posix::discard_snapshot(snapshot, used) }
    }

    /// # Safety
    /// The contract of [`Fork::install_snapshot_after_fork`].
    unsafe fn install_snapshot_after_fork(
        snapshot: Option<NonNull<u8>>,
        rx: NonNull<u8>,
        len: usize,
        used: usize,
    ) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe { posix::install_snapshot_after_fork(snapshot, rx, len, used) }
    }
}
