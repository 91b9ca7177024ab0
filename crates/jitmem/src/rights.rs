//! Write rights: what a write scope acquires and gives back, per strategy.

use std::collections::BTreeMap;
use std::ptr::NonNull;

use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::sync::{ForkMutex, RawLock};
use crate::sys::{self, Prot};

/// How a strategy grants and withdraws write access.
pub(crate) enum Rights {
    /// Toggle: the pages flip RW while at least one scope covers them. The map holds the open
    /// scope count of each writable page (page address -> count): O(log n) in the pages open.
    Toggle {
        open_pages: ForkMutex<BTreeMap<usize, u32>>,
        page: usize,
    },
    /// PerThread: the calling thread's rights for `key` (Linux: its PKRU; Apple: its MAP_JIT
    /// write mode) grant write access.
    ProtectionKey { key: u32 },
    /// Mirror and Rwx: the writable address is always writable.
    Always,
}

impl Rights {
    pub(crate) fn for_strategy(strategy: Strategy) -> Result<Rights> {
        Ok(match strategy {
            Strategy::Toggle => Rights::Toggle {
                open_pages: ForkMutex::new(BTreeMap::new()),
                page: sys::page_size(),
            },
            Strategy::PerThread => Rights::ProtectionKey {
                key: sys::per_thread_key()
                    .map_err(|reason| Error::Unsupported { strategy, reason })?,
            },
            Strategy::Mirror | Strategy::Rwx => Rights::Always,
            Strategy::Auto => return Err(Error::Internal("rights for Auto")),
        })
    }

    /// Grants write access to the executable range `[start, end)` (`start < end`). Toggle: a
    /// lock and an `mprotect` per run of pages not already open; PerThread: one `WRPKRU` for the
    /// outermost scope of this thread; otherwise nothing.
    #[inline]
    pub(crate) fn acquire(&self, start: usize, end: usize) -> Result<()> {
        match self {
            Rights::Always => Ok(()),
            Rights::ProtectionKey { key } => pkru::acquire(*key),
            Rights::Toggle { open_pages, page } => {
                let mut open = open_pages.lock();
                let pages = page_range(start, end, *page);
                let mut flipped: Vec<usize> = Vec::new();
                for p in pages.clone().step_by(*page) {
                    let count = open.entry(p).or_insert(0);
                    if *count == 0 {
                        flipped.push(p);
                    }
                    *count += 1;
                }
                if let Err(e) = for_runs(&flipped, *page, Prot::RW) {
                    // Undo: restore RX on whatever flipped, and the counts.
                    let _ = for_runs(&flipped, *page, Prot::RX);
                    for p in pages.step_by(*page) {
                        if let Some(count) = open.get_mut(&p) {
                            *count -= 1;
                            if *count == 0 {
                                open.remove(&p);
                            }
                        }
                    }
                    return Err(e);
                }
                Ok(())
            }
        }
    }

    /// Withdraws what [`acquire`](Self::acquire) granted for the same range.
    #[inline]
    pub(crate) fn release(&self, start: usize, end: usize) -> Result<()> {
        match self {
            Rights::Always => Ok(()),
            Rights::ProtectionKey { key } => pkru::release(*key),
            Rights::Toggle { open_pages, page } => {
                let mut open = open_pages.lock();
                let mut closed: Vec<usize> = Vec::new();
                for p in page_range(start, end, *page).step_by(*page) {
                    match open.get_mut(&p) {
                        Some(count) if *count > 1 => *count -= 1,
                        Some(_) => {
                            open.remove(&p);
                            closed.push(p);
                        }
                        None => {
                            return Err(Error::Internal(
                                "write scope released a page it never opened",
                            ));
                        }
                    }
                }
                for_runs(&closed, *page, Prot::RX)
            }
        }
    }

    /// True when writes need no rights at all (Mirror, Rwx).
    #[inline]
    pub(crate) fn always_writable(&self) -> bool {
        matches!(self, Rights::Always)
    }

    /// The lock a fork must wait for (Toggle's page table), if any.
    pub(crate) fn fork_lock(&self) -> Option<&RawLock> {
        match self {
            Rights::Toggle { open_pages, .. } => Some(open_pages.raw()),
            _ => None,
        }
    }

    /// Pages currently open for writing (Toggle), for tests and stats.
    pub(crate) fn open_pages(&self) -> usize {
        match self {
            Rights::Toggle { open_pages, .. } => open_pages.lock().len(),
            _ => 0,
        }
    }
}

fn page_range(start: usize, end: usize, page: usize) -> std::ops::Range<usize> {
    let first = start & !(page - 1);
    let last = end.saturating_add(page - 1) & !(page - 1);
    first..last
}

/// Applies `prot` to each run of consecutive pages in the sorted list `pages`.
fn for_runs(pages: &[usize], page: usize, prot: Prot) -> Result<()> {
    let mut i = 0;
    while let Some(&first) = pages.get(i) {
        let mut n = 1;
        while pages.get(i + n) == Some(&(first + n * page)) {
            n += 1;
        }
        let ptr = NonNull::new(first as *mut u8).ok_or(Error::Internal("null page"))?;
        // SAFETY: the pages belong to a live region of this heap (the caller holds a block in
        // it), and Toggle's contract is that their code does not run while a scope is open.
        unsafe { sys::protect(ptr, n * page, prot)? };
        i += n;
    }
    Ok(())
}

/// Per-thread rights: the outermost scope of a thread grants them, the matching end withdraws
/// them; inner scopes only count.
mod pkru {
    use std::cell::Cell;

    use crate::error::Result;
    use crate::sys;

    thread_local! {
        /// Open scopes of this thread, and the platform's saved rights from the outermost one.
        static DEPTH: Cell<u32> = const { Cell::new(0) };
        static SAVED: Cell<u32> = const { Cell::new(0) };
    }

    pub(super) fn acquire(key: u32) -> Result<()> {
        let depth = DEPTH.get();
        if depth == 0 {
            // SAFETY: the key came from sys::per_thread_key (Rights::ProtectionKey is only built
            // from it); release pairs with this on the same thread (the scope is !Send).
            SAVED.set(unsafe { sys::per_thread_begin(key) });
        }
        DEPTH.set(depth + 1);
        Ok(())
    }

    pub(super) fn release(key: u32) -> Result<()> {
        let depth = DEPTH.get();
        if depth == 0 {
            return Err(crate::Error::Internal(
                "per-thread write rights released more often than acquired",
            ));
        }
        DEPTH.set(depth - 1);
        if depth == 1 {
            // SAFETY: pairs with the per_thread_begin of the outermost scope on this thread.
            unsafe { sys::per_thread_end(key, SAVED.get()) };
        }
        Ok(())
    }
}
