//! **PerThread**: pages are read-write-execute in the page tables, but each *thread* holds write
//! rights only inside its write scope: Linux memory protection keys on x86-64 (`pkey_mprotect`
//! + `WRPKRU`), `MAP_JIT` + `pthread_jit_write_protect_np` on Apple Silicon.
//!
//! Invariants:
//! - **Who may write**: only the thread holding a write scope (its PKRU, or its MAP_JIT write
//!   mode). The outermost scope of a thread grants, the matching end withdraws; inner scopes
//!   only count. A thread *created* inside a scope inherits its creator's rights (Linux copies
//!   PKRU into new threads).
//! - **Who may run, and when**: every thread, always (keys do not govern instruction fetch).
//! - **Who may read the code as data** (code reading its own constants, a fault handler
//!   decoding the faulting instruction): Apple, every thread. Linux: every thread created after
//!   jitmem was loaded, and every thread once it has opened a write scope or taken an
//!   [`entry`](crate::CodeBlock::entry); a thread that is older than the key (a library loaded
//!   with `dlopen`, or `JITMEM_PKEY_AT_LOAD=0`) and every signal handler must call
//!   [`crate::allow_code_reads`] first, or die of `SIGSEGV` on the first read. Why: the kernel
//!   gives them "access disabled" for a new key (`sys/linux/rights.rs`; shown in CI's emulated-PKU
//!   VM by `tests/per_thread_rights.rs`, which faulted before the fix).
//! - **A neighbour during a write scope or a free**: unaffected (no page changes protection).
//! - **A forked child**: Linux: a copy-on-write copy with the same key and the forking thread's
//!   PKRU; it keeps using the memory. Apple: MAP_JIT across fork is not defined, so the child
//!   gets `Error::ForkedChild` and its drop leaves the mapping alone.

use std::cell::Cell;

use super::{OpenScopes, Region, StrategyRules};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::sys;

/// The platform's fork policy for per-thread memory.
pub(super) const CHILD_KEEPS_MEMORY: bool = sys::PER_THREAD_SURVIVES_FORK;

pub(crate) struct PerThread {
    /// The platform's token for the rights (Linux: the protection key; Apple: unused).
    token: u32,
}

impl PerThread {
    pub(super) fn new() -> Result<Self> {
        let token = sys::thread_rights_token().map_err(|reason| Error::Unsupported {
            strategy: Strategy::PerThread,
            reason,
            source: None,
        })?;
        Ok(PerThread { token })
    }
}

impl StrategyRules for PerThread {
    fn strategy(&self) -> Strategy {
        Strategy::PerThread
    }

    fn map(&self, len: usize, _used: usize, options: sys::MapOptions) -> Result<Region> {
        let ptr = sys::map_per_thread(len, self.token)?;
        let ptr = super::region::place_private(ptr, len, options)?;
        Ok(Region::private(ptr, len, CHILD_KEEPS_MEMORY).guarded(options.guard))
    }

    fn granule(&self, _page: usize, min: usize) -> usize {
        min
    }

    /// One `WRPKRU` (or `pthread_jit_write_protect_np(0)`) for the outermost scope of the
    /// thread.
    fn acquire(&self, _scopes: &mut OpenScopes, _start: usize, _end: usize) -> Result<()> {
        thread_rights::acquire(self.token)
    }

    fn release(&self, _scopes: &mut OpenScopes, _start: usize, _end: usize) -> Result<()> {
        thread_rights::release(self.token)
    }

    fn always_writable(&self) -> bool {
        false
    }

    fn child_keeps_memory(&self) -> bool {
        CHILD_KEEPS_MEMORY
    }
}

/// This thread's write rights: the outermost scope grants them, the matching end withdraws
/// them; inner scopes only count.
mod thread_rights {
    use super::Cell;
    use crate::error::Result;
    use crate::sys;

    thread_local! {
        /// Open scopes of this thread, and the platform's saved rights from the outermost one.
        static DEPTH: Cell<u32> = const { Cell::new(0) };
        static SAVED: Cell<u32> = const { Cell::new(0) };
    }

    pub(super) fn acquire(token: u32) -> Result<()> {
        let depth = DEPTH.get();
        if depth == 0 {
            // SAFETY: the token came from sys::thread_rights_token (PerThread is only built from
            // it); release pairs with this on the same thread (the scope is !Send).
            SAVED.set(unsafe { sys::grant_thread_write_rights(token) });
        }
        DEPTH.set(depth + 1);
        Ok(())
    }

    pub(super) fn release(token: u32) -> Result<()> {
        let depth = DEPTH.get();
        if depth == 0 {
            return Err(crate::Error::Internal(
                "per-thread write rights released more often than acquired",
            ));
        }
        DEPTH.set(depth - 1);
        if depth == 1 {
            // SAFETY: pairs with the grant_thread_write_rights of the outermost scope on this thread.
            unsafe { sys::withdraw_thread_write_rights(token, SAVED.get()) };
        }
        Ok(())
    }
}
