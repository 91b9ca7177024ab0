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
//!
//! **Apple with the `com.apple.security.cs.jit-write-allowlist` entitlement** (shadow writes):
//! `pthread_jit_write_protect_np` terminates such a process, so each region gets a private RW
//! *shadow* of the same size (memory cost: twice the code), the scope's slice (and
//! [`writable_offset`](crate::CodeBlock::writable_offset)) points into the shadow, and the end of
//! each scope copies its range into the `MAP_JIT` pages inside jitmem's own allow-listed
//! callback (`pthread_jit_write_with_callback_np`), then publishes it as usual. The callback
//! validates its destination (inside a live region jitmem mapped) and takes the source from
//! that region's own shadow, so it is not a write-anything gadget; a copy of 1, 2, 4 or 8
//! aligned bytes is one single-copy-atomic store, so `patch_live` keeps its promise. No thread
//! ever enters write mode outside the callback, so a writing thread may keep running
//! PerThread code. Bytes written through the shadow outside a scope reach the code only when a
//! later scope over them ends. Needs `jit_write_allow_callbacks!` in the binary (it lists
//! jitmem's callback); refused without it. Compile-checked only: never run on Apple hardware.

use std::cell::Cell;
use std::ptr::NonNull;

use super::{OpenScopes, Region, StrategyRules};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::sys::{self, Prot};

/// The platform's fork policy for per-thread memory.
pub(super) const CHILD_KEEPS_MEMORY: bool = sys::PER_THREAD_SURVIVES_FORK;

pub(crate) struct PerThread {
    /// The platform's token for the rights (Linux: the protection key; Apple: how writes are
    /// made, see `sys::shadow_writes`).
    token: u32,
    /// Writes go to a shadow of each region, copied at the end of each scope (Apple's
    /// allow-list; see the module docs).
    shadow: bool,
}

impl PerThread {
    pub(super) fn new() -> Result<Self> {
        let token = sys::thread_rights_token().map_err(|reason| Error::Unsupported {
            strategy: Strategy::PerThread,
            reason,
            source: None,
        })?;
        Ok(PerThread {
            token,
            shadow: sys::shadow_writes(token),
        })
    }

    /// The region at `ptr` (placed) with a fresh shadow of `len` bytes, registered for the copy
    /// callback; on error unmaps both.
    fn with_shadow(
        &self,
        ptr: NonNull<u8>,
        len: usize,
        options: sys::MapOptions,
    ) -> Result<Region> {
        let unmap_code = || {
            let start = NonNull::new(ptr.as_ptr().wrapping_sub(options.guard)).unwrap_or(ptr);
            // SAFETY: the fresh placed mapping (and its guards), known to no one else.
            let _ = unsafe { sys::unmap(start, len + 2 * options.guard) };
        };
        let shadow = sys::map_private(len, Prot::RW).inspect_err(|_| unmap_code())?;
        match sys::shadow::register(ptr.as_ptr() as usize, shadow.as_ptr() as usize, len) {
            Ok(registration) => {
                Ok(
                    Region::shadowed(ptr, shadow, len, CHILD_KEEPS_MEMORY, registration)
                        .guarded(options.guard),
                )
            }
            Err(e) => {
                // SAFETY: the fresh shadow, known to no one else.
                let _ = unsafe { sys::unmap(shadow, len) };
                unmap_code();
                Err(e)
            }
        }
    }
}

impl StrategyRules for PerThread {
    fn strategy(&self) -> Strategy {
        Strategy::PerThread
    }

    fn map(&self, len: usize, _used: usize, options: sys::MapOptions) -> Result<Region> {
        let ptr = sys::map_per_thread(len, self.token)?;
        let ptr = super::region::place_private(ptr, len, options)?;
        if self.shadow {
            return self.with_shadow(ptr, len, options);
        }
        Ok(Region::private(ptr, len, CHILD_KEEPS_MEMORY).guarded(options.guard))
    }

    fn granule(&self, _page: usize, min: usize) -> usize {
        min
    }

    /// One `WRPKRU` (or `pthread_jit_write_protect_np(0)`) for the outermost scope of the
    /// thread. Shadow writes: no rights to take (the shadow is plain RW memory), only the check
    /// that the scope's end will be able to copy.
    fn acquire(&self, _scopes: &mut OpenScopes, _start: usize, _end: usize) -> Result<()> {
        if self.shadow {
            return sys::check_shadow_write(self.token);
        }
        thread_rights::acquire(self.token)
    }

    /// Shadow writes: copies `[start, end)` from the shadow into the `MAP_JIT` pages (jitmem's
    /// allow-listed callback); the caller publishes it afterwards.
    fn release(&self, _scopes: &mut OpenScopes, start: usize, end: usize) -> Result<()> {
        if self.shadow {
            // SAFETY: the caller holds the block mutably with the scope over [start, end) that
            // wrote the shadow (StrategyRules::release's contract).
            return unsafe { sys::copy_from_shadow(self.token, start, end - start) };
        }
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
