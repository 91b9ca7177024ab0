//! **Toggle**: pages flip between read-write and read-execute (`mprotect` / `VirtualProtect`).
//!
//! Invariants:
//! - **Who may write**: the thread holding a write scope, through the block's executable
//!   address, while the scope's pages are flipped to RW. Each block records its own open scopes
//!   ([`OpenScopes`], kept in the `CodeBlock` and changed only through `&mut` to it): opening a
//!   scope flips the pages of its range that no other open scope of the block holds, closing one
//!   flips back the pages that no scope still open holds (nested scopes flip once; the last one
//!   out flips back).
//! - **Who may run, and when**: every thread, except code on pages whose scope is open (they are
//!   not executable then).
//! - **A neighbour during a write scope or a free**: unaffected. Every Toggle block owns whole
//!   pages, in every layout (the [granule](StrategyRules::granule) is the page), so a scope or a
//!   trap fill only ever flips its own block's pages. The cost is a page per function.
//! - **Threads writing different blocks**: share no lock and no table (the kernel still
//!   serialises the `mprotect`s on the process's memory-map lock). A scope that does not nest
//!   costs one `mprotect` of exactly its pages on open, one on close, and an atomic add to the
//!   memory's count of open pages (for [`Stats`](crate::Stats)); no allocation after the
//!   block's first scope (which boxes its record, so that other strategies' blocks carry 8
//!   bytes for it, not 40). Scopes on one
//!   block are serialised by the `&mut` they need (the C ABI holds its registry lock across
//!   each call of the raw pair).
//! - **A forked child**: a copy-on-write copy of every page; it keeps using the memory. Toggle
//!   has no lock for the fork handlers to take: the only shared state is that atomic count, and
//!   a block's record is part of the block. The pages of a block another thread was writing at
//!   the fork stay as that thread left them (writable and not executable while its scope was
//!   open, either way while it was flipping them): the child must not run that block.
//!
//! **What a flip costs.** Almost all of it is the system call, and how much depends on the
//! mapping around the block, not on jitmem's bookkeeping. In the Pooled and Arena layouts a
//! block is a few pages of a larger mapping (a chunk, the arena): making them writable splits
//! the kernel's memory area (VMA) in two or three, and making them executable again merges
//! them back. A block of the PerAllocation layout is its own mapping, and its flips change
//! flags in place. Measured with `jitmem-bench` (a 4-byte patch, publish and call; Intel Xeon,
//! 2 virtualised cores, Linux 6.18; medians of 5 runs): 4,760 ns in Pooled and 3,330 ns in
//! PerAllocation (the `jitmem-toggle-peralloc` row), against 2,910 ns for a raw `mprotect` pair
//! on a mapping of its own (the `region` peer): 1.6x and 1.14x. Under `perf`, the split and the
//! merge are 27% of a Pooled patch's samples. A C loop of `mprotect` RW / 4-byte write /
//! `mprotect` RX / call on the same machine: 2,550 ns on a one-page mapping, 3,750 ns on the
//! first page of a 256 KiB mapping (one split, one merge), 4,250 ns on a page in its middle (two
//! splits, a three-way merge). Layouts are not Toggle's to change: a mapping per block pays in
//! mapping count (`vm.max_map_count`) and an `mmap`/`munmap` per allocation instead.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Region, StrategyRules};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::sys::{self, Prot};

pub(crate) struct Toggle {
    /// Pages open for writing in this memory, for stats: raised and lowered by each flip.
    open_pages: AtomicUsize,
    page: usize,
    /// The protection of pages no scope holds: read-execute, with `PROT_BTI` under
    /// `Config::bti`, and with explicit Control Flow Guard targets under
    /// `Config::cfg_call_targets` (Windows: committed with `PAGE_TARGETS_INVALID`, and flipped
    /// back with `PAGE_TARGETS_NO_UPDATE`, so that a write scope keeps the block's marks).
    rx: Prot,
}

impl Toggle {
    pub(super) fn new(bti: bool, cfg_targets_invalid: bool) -> Self {
        Toggle {
            open_pages: AtomicUsize::new(0),
            page: sys::page_size(),
            rx: Prot::RX
                .with_bti(bti)
                .with_targets_invalid(cfg_targets_invalid),
        }
    }
}

impl StrategyRules for Toggle {
    fn strategy(&self) -> Strategy {
        Strategy::Toggle
    }

    fn map(&self, len: usize, _used: usize, options: sys::MapOptions) -> Result<Region> {
        let ptr = sys::reserve_private(len, self.rx, options)?;
        let ptr = super::region::place_private(ptr, len, options)?;
        Ok(Region::reserved_private(ptr, len, self.rx, true).guarded(options.guard))
    }

    fn granule(&self, page: usize, _min: usize) -> usize {
        page
    }

    /// One `mprotect` of the scope's pages (none when an open scope of the block already holds
    /// them all; one per run of pages no open scope holds when scopes nest on overlapping
    /// ranges). No lock, no allocation unless scopes nest.
    fn acquire(&self, scopes: &mut OpenScopes, start: usize, end: usize) -> Result<()> {
        let scopes = scopes.get();
        let run = Pages::covering(start, end, self.page);
        let mut opened = 0;
        for gap in scopes.gaps(run) {
            // SAFETY: see `protect`.
            if let Err(e) = unsafe { protect(gap, Prot::RW) } {
                // Undo: every page of a gap was executable (no scope held it); restore them all,
                // including any the failed call changed.
                for gap in scopes.gaps(run) {
                    // SAFETY: as above.
                    let _ = unsafe { protect(gap, self.rx) };
                }
                return Err(e);
            }
            opened += gap.len();
        }
        scopes.push(run);
        self.open_pages
            .fetch_add(opened / self.page, Ordering::Relaxed);
        Ok(())
    }

    /// One `mprotect` of the scope's pages that no other open scope of the block holds.
    fn release(&self, scopes: &mut OpenScopes, start: usize, end: usize) -> Result<()> {
        let scopes = scopes.get();
        let run = Pages::covering(start, end, self.page);
        if !scopes.remove(run) {
            return Err(Error::Internal(
                "write scope released a page it never opened",
            ));
        }
        let closed: usize = scopes.gaps(run).map(Pages::len).sum();
        self.open_pages
            .fetch_sub(closed / self.page, Ordering::Relaxed);
        let mut result = Ok(());
        for gap in scopes.gaps(run) {
            // SAFETY: see `protect`.
            let flipped = unsafe { protect(gap, self.rx) };
            // Every gap is tried; the first error is the answer.
            result = result.and(flipped);
        }
        result
    }

    fn always_writable(&self) -> bool {
        false
    }

    fn child_keeps_memory(&self) -> bool {
        true
    }

    fn open_pages(&self) -> usize {
        self.open_pages.load(Ordering::Relaxed)
    }

    fn runs_while_written(&self) -> bool {
        false
    }
}

/// The record of a block's open write scopes, kept in every `CodeBlock` (8 bytes) and filled
/// only by Toggle: boxed on the block's first Toggle scope (one allocation per block: Toggle
/// blocks are pages, and the other strategies never pay for it).
#[derive(Default)]
pub(crate) struct OpenScopes(Option<Box<Scopes>>);

const _: () = assert!(std::mem::size_of::<OpenScopes>() == 8);

impl OpenScopes {
    /// True when no scope is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_empty())
    }

    /// True when an open scope holds a page of the bytes `[start, end)`: only a leaked scope can,
    /// once the block is being freed or shrunk.
    pub(crate) fn overlaps(&self, start: usize, end: usize) -> bool {
        self.0.as_ref().is_some_and(|s| s.overlaps(start, end))
    }

    fn get(&mut self) -> &mut Scopes {
        self.0.get_or_insert_with(Box::default)
    }
}

/// The write scopes open on one block, as the runs of pages each one holds: the block's own page
/// table, out of band (code pages hold no header). Kept in every `CodeBlock`, filled only by
/// Toggle. No allocation while at most one scope is open (the safe API cannot open two on one
/// block); scopes nested through the C ABI's raw pair go to a boxed `Vec` (so that the record
/// costs every block 24 bytes, not 40).
#[derive(Default)]
pub(crate) struct Scopes {
    /// The first scope still open (empty when none is).
    first: Pages,
    /// The others, in no order: only ever non-empty while `first` is.
    more: Vec<Pages>,
}

impl Scopes {
    /// True when no scope is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// True when an open scope holds a page of the bytes `[start, end)`: only a leaked scope can,
    /// once the block is being freed or shrunk.
    pub(crate) fn overlaps(&self, start: usize, end: usize) -> bool {
        // Scopes hold whole pages, so overlapping the bytes is overlapping their pages.
        self.iter().any(|p| p.start < end && start < p.end)
    }

    fn iter(&self) -> impl Iterator<Item = Pages> + '_ {
        std::iter::once(self.first)
            .filter(|p| !p.is_empty())
            .chain(self.more.iter().copied())
    }

    fn push(&mut self, run: Pages) {
        if self.first.is_empty() {
            self.first = run;
        } else {
            self.more.push(run);
        }
    }

    /// Removes one scope holding exactly `run`; false if none does.
    fn remove(&mut self, run: Pages) -> bool {
        if let Some(i) = self.more.iter().rposition(|p| *p == run) {
            self.more.swap_remove(i);
        } else if self.first == run && !run.is_empty() {
            self.first = self.more.pop().unwrap_or_default();
        } else {
            return false;
        }
        true
    }

    /// The runs of `run` that no open scope holds, in address order.
    fn gaps(&self, run: Pages) -> Gaps<'_> {
        Gaps {
            scopes: self,
            at: run.start,
            end: run.end,
        }
    }
}

/// See [`Scopes::gaps`]. With no scope open, one gap: the whole run.
struct Gaps<'a> {
    scopes: &'a Scopes,
    at: usize,
    end: usize,
}

impl Iterator for Gaps<'_> {
    type Item = Pages;

    fn next(&mut self) -> Option<Pages> {
        while self.at < self.end {
            let at = self.at;
            // Skip what an open scope holds.
            if let Some(held) = self
                .scopes
                .iter()
                .filter(|p| p.contains(at))
                .map(|p| p.end)
                .max()
            {
                self.at = held;
                continue;
            }
            let end = self
                .scopes
                .iter()
                .filter(|p| p.start > at)
                .map(|p| p.start)
                .fold(self.end, usize::min);
            self.at = end;
            return Some(Pages { start: at, end });
        }
        None
    }
}

/// Whole pages `[start, end)`, as addresses.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Pages {
    start: usize,
    end: usize,
}

impl Pages {
    /// The pages that the bytes `[start, end)` touch.
    fn covering(start: usize, end: usize, page: usize) -> Pages {
        Pages {
            start: start & !(page - 1),
            end: end.saturating_add(page - 1) & !(page - 1),
        }
    }

    fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// Length in bytes.
    fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }

    fn contains(&self, at: usize) -> bool {
        self.start <= at && at < self.end
    }
}

/// Applies `prot` to `pages`.
///
/// # Safety
/// The pages belong to a live block of this memory (the caller holds it), which owns them whole
/// (Toggle's granule is the page), and Toggle's contract is that a block's code does not run
/// while a scope on it is open.
unsafe fn protect(pages: Pages, prot: Prot) -> Result<()> {
    let ptr = NonNull::new(pages.start as *mut u8).ok_or(Error::Internal("null page"))?;
    // SAFETY: forwarded from the caller.
    unsafe { sys::protect(ptr, pages.len(), prot) }
}

#[cfg(test)]
mod tests {
    use super::{Pages, Scopes};

    const P: usize = 4096;

    fn pages(first: usize, last: usize) -> Pages {
        Pages {
            start: first * P,
            end: (last + 1) * P,
        }
    }

    fn gaps(scopes: &Scopes, run: Pages) -> Vec<(usize, usize)> {
        scopes
            .gaps(run)
            .map(|g| (g.start / P, g.end / P - 1))
            .collect()
    }

    #[test]
    fn bytes_cover_whole_pages() {
        assert_eq!(Pages::covering(P + 1, P + 5, P), pages(1, 1));
        assert_eq!(Pages::covering(P, 3 * P, P), pages(1, 2));
        assert_eq!(Pages::covering(P - 1, P + 1, P), pages(0, 1));
    }

    #[test]
    fn gaps_are_the_pages_no_open_scope_holds() {
        let mut s = Scopes::default();
        assert_eq!(gaps(&s, pages(2, 9)), [(2, 9)]);
        s.push(pages(4, 5));
        s.push(pages(5, 6));
        s.push(pages(9, 12));
        assert_eq!(gaps(&s, pages(2, 9)), [(2, 3), (7, 8)]);
        assert_eq!(gaps(&s, pages(4, 6)), []);
        assert!(s.overlaps(6 * P + 10, 6 * P + 11));
        assert!(!s.overlaps(7 * P, 9 * P));
        // Removing the first scope keeps the others.
        assert!(s.remove(pages(4, 5)));
        assert!(!s.remove(pages(4, 5)), "removed once");
        assert_eq!(gaps(&s, pages(4, 6)), [(4, 4)]);
        assert!(s.remove(pages(9, 12)) && s.remove(pages(5, 6)));
        assert!(s.is_empty());
        assert!(!s.remove(Pages::default()), "an empty run was never opened");
    }

    #[test]
    fn one_scope_needs_no_allocation() {
        let mut s = Scopes::default();
        s.push(pages(0, 3));
        assert_eq!(s.more.capacity(), 0);
        assert!(s.remove(pages(0, 3)) && s.is_empty());
    }
}
