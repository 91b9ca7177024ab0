//! **Toggle**: pages flip between read-write and read-execute (`mprotect` / `VirtualProtect`).
//!
//! Invariants:
//! - **Who may write**: the thread holding a write scope, through the block's executable
//!   address, while the scope's pages are flipped to RW. A page table counts the open scopes of
//!   each page (nested scopes flip once; the last one out flips back).
//! - **Who may run, and when**: every thread, except code on pages whose scope is open (they are
//!   not executable then).
//! - **A neighbour during a write scope or a free**: unaffected. Every Toggle block owns whole
//!   pages, in every layout (the [granule](StrategyRules::granule) is the page), so a scope or a
//!   trap fill only ever flips its own block's pages. The cost is a page per function.
//! - **A forked child**: a copy-on-write copy of every page; it keeps using the memory. The
//!   page table's lock is held across the fork (it is tracked by the fork registry). Pages
//!   another thread had open at the fork stay RW in the child.

use std::collections::BTreeMap;
use std::ptr::NonNull;

use super::{Region, StrategyRules};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::sync::{ForkMutex, RawLock};
use crate::sys::{self, Prot};

pub(crate) struct Toggle {
    /// The open scope count of each writable page (page address -> count): O(log n) in the
    /// pages open.
    open_pages: ForkMutex<BTreeMap<usize, u32>>,
    page: usize,
}

impl Toggle {
    pub(super) fn new() -> Self {
        Toggle {
            open_pages: ForkMutex::new(BTreeMap::new()),
            page: sys::page_size(),
        }
    }
}

impl StrategyRules for Toggle {
    fn strategy(&self) -> Strategy {
        Strategy::Toggle
    }

    fn map(&self, len: usize, _used: usize, _options: sys::MapOptions) -> Result<Region> {
        Ok(Region::private(sys::map_private(len, Prot::RX)?, len, true))
    }

    fn granule(&self, page: usize, _min: usize) -> usize {
        page
    }

    /// A lock and an `mprotect` per run of pages not already open.
    fn acquire(&self, start: usize, end: usize) -> Result<()> {
        let page = self.page;
        let mut open = self.open_pages.lock();
        let pages = page_range(start, end, page);
        let mut flipped: Vec<usize> = Vec::new();
        for p in pages.clone().step_by(page) {
            let count = open.entry(p).or_insert(0);
            if *count == 0 {
                flipped.push(p);
            }
            *count += 1;
        }
        if let Err(e) = for_runs(&flipped, page, Prot::RW) {
            // Undo: restore RX on whatever flipped, and the counts.
            let _ = for_runs(&flipped, page, Prot::RX);
            for p in pages.step_by(page) {
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

    fn release(&self, start: usize, end: usize) -> Result<()> {
        let page = self.page;
        let mut open = self.open_pages.lock();
        let mut closed: Vec<usize> = Vec::new();
        for p in page_range(start, end, page).step_by(page) {
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
        for_runs(&closed, page, Prot::RX)
    }

    fn always_writable(&self) -> bool {
        false
    }

    fn child_keeps_memory(&self) -> bool {
        true
    }

    fn open_pages(&self) -> usize {
        self.open_pages.lock().len()
    }

    fn range_open(&self, start: usize, end: usize) -> bool {
        let range = page_range(start, end, self.page);
        self.open_pages.lock().range(range).next().is_some()
    }

    fn fork_lock(&self) -> Option<&RawLock> {
        Some(self.open_pages.raw())
    }

    fn runs_while_written(&self) -> bool {
        false
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
        // SAFETY: the pages belong to a live block of this memory (the caller holds it), which
        // owns them whole (Toggle's granule is the page), and Toggle's contract is that a
        // block's code does not run while a scope on it is open.
        unsafe { sys::protect(ptr, n * page, prot)? };
        i += n;
    }
    Ok(())
}
