//! fork: Windows has none. The hooks do nothing and are never reached.

use std::ptr::NonNull;

use super::Os;
use crate::error::Result;
use crate::sys::Fork;

impl Fork for Os {
    /// Does nothing and succeeds: Windows has no `fork()`, so the handlers could never run.
    fn register_atfork(
        _prepare: unsafe extern "C" fn(),
        _parent: unsafe extern "C" fn(),
        _child: unsafe extern "C" fn(),
    ) -> Result<()> {
        Ok(())
    }

    /// Never called (no `fork()`, so no atfork handler runs): makes no snapshot.
    ///
    /// # Safety
    /// The contract of [`Fork::snapshot_for_fork`] (none needed: it touches no memory).
    unsafe fn snapshot_for_fork(_rx: NonNull<u8>, _used: usize) -> Option<NonNull<u8>> {
        None
    }

    /// Never called (no `fork()`): does nothing.
    ///
    /// # Safety
    /// The contract of [`Fork::discard_snapshot`] (none needed: it touches no memory).
    unsafe fn discard_snapshot(_snapshot: NonNull<u8>, _used: usize) {}

    /// Never called (no `fork()`): does nothing and reports failure.
    ///
    /// # Safety
    /// The contract of [`Fork::install_snapshot_after_fork`] (none needed: it touches no
    /// memory).
    unsafe fn install_snapshot_after_fork(
        _snapshot: Option<NonNull<u8>>,
        _rx: NonNull<u8>,
        _len: usize,
        _used: usize,
    ) -> bool {
        false
    }
}
