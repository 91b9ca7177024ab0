//! Blocks addressed by their code pointer, for callers that hold raw pointers (C, C++).
//!
//! A `BTreeMap` from a block's executable start to the block finds the block containing any
//! pointer in O(log n) (the seed's `FindRegion` scanned linearly), and answers foreign
//! pointers and double frees with an error instead of undefined behaviour. Write scopes opened
//! through raw pointers are recorded per block (range and thread) so that unbalanced ends,
//! ends on another thread, and frees with a scope open are refused.
//!
//! A registry made [`with_transient_alias`](Registry::with_transient_alias) (the CodeGen
//! LuckNoTXM mode, on Unix) keeps each block's writable alias inaccessible (`PROT_NONE`) except
//! between [`open_window`](Registry::open_window) and the matching
//! [`close_window`](Registry::close_window): a store through the alias outside such a window
//! faults, as the seed's unmapped alias would, while the block itself comes from a shared
//! memfd-backed pool instead of a memfd, an open and two mappings of its own. Its blocks are
//! page-aligned whole pages, so protecting one block's alias never touches another's.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::thread::ThreadId;

use jitmem::{CodeBlock, JitMemory};

use crate::status::{CError, JitmemStatus};

struct Entry {
    block: CodeBlock,
    /// The size the caller asked for (what a sized free must repeat).
    requested: usize,
    /// Open raw write scopes, innermost last.
    scopes: Vec<(Range<usize>, ThreadId)>,
    /// Open writable windows (`open_window` minus `close_window`).
    windows: u32,
}

/// The blocks of one [`JitMemory`], by executable start address.
pub(crate) struct Registry {
    pub(crate) memory: JitMemory,
    blocks: Mutex<BTreeMap<usize, Entry>>,
    /// Writable aliases are accessible only inside windows (see the module docs).
    transient_alias: bool,
}

/// Makes the writable alias of `entry`'s block accessible (read-write) or not (`PROT_NONE`).
/// Never makes anything executable, so W^X holds.
#[cfg(unix)]
fn protect_alias(entry: &Entry, writable: bool) -> Result<(), CError> {
    let rw = (entry.block.as_ptr() as usize).wrapping_add_signed(entry.block.writable_offset());
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: [rw, rw + len) is this block's own writable alias, mapped by jitmem for the
    // block's life; transient-alias registries allocate page-aligned whole pages, so the range
    // is page-aligned and holds no other block. Nothing reads or writes it while the registry
    // lock (held by every caller) is held, except code the caller writes inside a window.
    let r = unsafe { libc::mprotect(rw as *mut libc::c_void, entry.block.len(), prot) };
    if r != 0 {
        return Err(CError::new(
            JitmemStatus::Os,
            format!(
                "mprotect of the writable alias at {rw:#x} failed: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn protect_alias(_entry: &Entry, _writable: bool) -> Result<(), CError> {
    Ok(())
}

fn unknown(ptr: usize) -> CError {
    CError::new(
        JitmemStatus::UnknownPointer,
        format!(
            "{ptr:#x} is not a live allocation of this jitmem memory (a foreign pointer, or already freed)"
        ),
    )
}

/// Checks that `[ptr, ptr + size)`, `ptr` being `offset` bytes into `entry`, ends inside it.
fn check_inside(entry: &Entry, ptr: usize, offset: usize, size: usize) -> Result<(), CError> {
    if offset
        .checked_add(size)
        .is_none_or(|end| end > entry.block.len())
    {
        return Err(CError::new(
            JitmemStatus::SizeMismatch,
            format!(
                "{size} bytes from {ptr:#x} go past the end of its allocation ({} bytes)",
                entry.block.len() - offset
            ),
        ));
    }
    Ok(())
}

impl Registry {
    pub(crate) fn new(memory: JitMemory) -> Self {
        Registry {
            memory,
            blocks: Mutex::new(BTreeMap::new()),
            transient_alias: false,
        }
    }

    /// A registry whose blocks' writable aliases are accessible only inside windows (see the
    /// module docs); on Unix only (elsewhere, a plain registry). `memory` must be a Mirror.
    pub(crate) fn with_transient_alias(memory: JitMemory) -> Self {
        Registry {
            memory,
            blocks: Mutex::new(BTreeMap::new()),
            transient_alias: cfg!(unix),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, BTreeMap<usize, Entry>>, CError> {
        self.blocks
            .lock()
            .map_err(|_| CError::new(JitmemStatus::Internal, "block registry lock poisoned"))
    }

    /// Live allocations.
    pub(crate) fn live(&self) -> usize {
        self.blocks.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// Refuses (`Unbalanced`) while any block has a write scope open: dropping such a block
    /// would leave its rights granted (under PerThread, to that thread, forever).
    pub(crate) fn check_no_open_scope(&self) -> Result<(), CError> {
        let blocks = self.lock()?;
        let open: usize = blocks.values().map(|e| e.scopes.len()).sum();
        if open > 0 {
            let first = blocks
                .iter()
                .find(|(_, e)| !e.scopes.is_empty())
                .map_or(0, |(start, _)| *start);
            return Err(CError::new(
                JitmemStatus::Unbalanced,
                format!(
                    "{open} write scope(s) are still open (the first on the block at {first:#x}); end them first; nothing was freed"
                ),
            ));
        }
        Ok(())
    }

    /// Allocates `len` bytes aligned to `align` (None: the memory's default alignment).
    /// A transient-alias registry allocates page-aligned whole pages, whatever `align` says.
    pub(crate) fn allocate(&self, len: usize, align: Option<usize>) -> Result<usize, CError> {
        let block = if self.transient_alias {
            let page = self.memory.page_size();
            let whole = len.checked_next_multiple_of(page).ok_or_else(|| {
                CError::new(JitmemStatus::TooLarge, format!("{len} bytes is too large"))
            })?;
            self.memory.allocate_aligned(whole.max(page), page)?
        } else {
            match align {
                Some(align) => self.memory.allocate_aligned(len, align)?,
                None => self.memory.allocate(len)?,
            }
        };
        let start = block.as_ptr() as usize;
        let entry = Entry {
            block,
            requested: len,
            scopes: Vec::new(),
            windows: 0,
        };
        if self.transient_alias {
            // If this fails the block is dropped with its alias still writable (trap fill).
            protect_alias(&entry, false)?;
        }
        self.lock()?.insert(start, entry);
        Ok(start)
    }

    /// Frees the block that starts at `ptr`; with `size`, only if it is the size allocated.
    pub(crate) fn free(&self, ptr: usize, size: Option<usize>) -> Result<(), CError> {
        let mut blocks = self.lock()?;
        let entry = blocks.get(&ptr).ok_or_else(|| unknown(ptr))?;
        if let Some(size) = size {
            if size != entry.requested {
                return Err(CError::new(
                    JitmemStatus::SizeMismatch,
                    format!(
                        "free of {ptr:#x} with size {size}, but it was allocated with size {}; nothing was freed",
                        entry.requested
                    ),
                ));
            }
        }
        if !entry.scopes.is_empty() {
            return Err(CError::new(
                JitmemStatus::Unbalanced,
                format!(
                    "free of {ptr:#x} while {} write scope(s) are open on it; nothing was freed",
                    entry.scopes.len()
                ),
            ));
        }
        // The free fills the block with traps through its alias: make it writable first. A
        // fork child has no alias (not inherited) and jitmem does not fill there.
        let forked = matches!(
            entry.block.check_writable(),
            Err(jitmem::Error::ForkedChild { .. })
        );
        if self.transient_alias && entry.windows == 0 && !forked {
            protect_alias(entry, true)?;
        }
        // Unregister first, then free: no other thread can find a block being torn down
        // (the seed unmapped first and unregistered after).
        let entry = blocks.remove(&ptr).ok_or_else(|| unknown(ptr))?;
        drop(blocks);
        drop(entry);
        Ok(())
    }

    /// Runs `f` on the block containing `ptr`, with the offset of `ptr` in it.
    fn with_block<T>(
        &self,
        ptr: usize,
        f: impl FnOnce(&mut Entry, usize) -> Result<T, CError>,
    ) -> Result<T, CError> {
        let mut blocks = self.lock()?;
        let (start, entry) = blocks
            .range_mut(..=ptr)
            .next_back()
            .ok_or_else(|| unknown(ptr))?;
        let offset = ptr - *start;
        if offset >= entry.block.len() {
            return Err(unknown(ptr));
        }
        f(entry, offset)
    }

    /// Opens a write scope over `[ptr, ptr + len)` (`len` None: to the end of the block) and
    /// returns the writable address of `ptr`.
    pub(crate) fn begin_write(&self, ptr: usize, len: Option<usize>) -> Result<usize, CError> {
        self.with_block(ptr, |entry, offset| {
            let end = match len {
                Some(len) => offset.checked_add(len).ok_or_else(|| {
                    CError::new(JitmemStatus::InvalidArgument, "write range overflows")
                })?,
                None => entry.block.len(),
            };
            let range = offset..end;
            // SAFETY: the range is recorded and released exactly once by end_write (or never,
            // and then free refuses), on this thread (end_write checks the thread).
            let rw = unsafe { entry.block.begin_write_raw(range.clone()) }?;
            entry.scopes.push((range, std::thread::current().id()));
            Ok(rw as usize)
        })
    }

    /// Opens a write scope over the whole block containing `ptr` (seed 000's Legacy toggle).
    pub(crate) fn begin_write_block(&self, ptr: usize) -> Result<usize, CError> {
        self.with_block(ptr, |entry, offset| {
            let range = 0..entry.block.len();
            // SAFETY: as in begin_write.
            let rw = unsafe { entry.block.begin_write_raw(range.clone()) }?;
            entry.scopes.push((range, std::thread::current().id()));
            Ok(rw as usize + offset)
        })
    }

    /// Ends the innermost write scope of the block containing `ptr`, publishing it.
    pub(crate) fn end_write(&self, ptr: usize, live: bool) -> Result<(), CError> {
        self.with_block(ptr, |entry, _| {
            let Some((range, thread)) = entry.scopes.last().cloned() else {
                return Err(CError::new(
                    JitmemStatus::Unbalanced,
                    format!("write scope end on {ptr:#x} without a matching begin"),
                ));
            };
            if thread != std::thread::current().id() {
                return Err(CError::new(
                    JitmemStatus::Unbalanced,
                    "write scope ended on another thread than the one that began it",
                ));
            }
            entry.scopes.pop();
            // SAFETY: this range was opened by begin_write on this thread and is closed once.
            unsafe { entry.block.end_write_raw(range, live) }?;
            Ok(())
        })
    }

    /// `writable - executable` for the block containing `ptr`, checking that
    /// `[ptr, ptr + size)` lies inside it.
    pub(crate) fn writable_offset(&self, ptr: usize, size: usize) -> Result<isize, CError> {
        self.with_block(ptr, |entry, offset| {
            check_inside(entry, ptr, offset, size)?;
            // A fork child of a Mirror has no writable view: never hand out its old address.
            entry.block.check_writable()?;
            Ok(entry.block.writable_offset())
        })
    }

    /// Opens a writable window over `[ptr, ptr + size)`, which must lie inside one block, and
    /// returns `writable - executable` (`jitmem_codegen_writable_diff`). With a transient
    /// alias, the block's alias becomes writable until the last window on it closes.
    pub(crate) fn open_window(&self, ptr: usize, size: usize) -> Result<isize, CError> {
        self.with_block(ptr, |entry, offset| {
            check_inside(entry, ptr, offset, size)?;
            entry.block.check_writable()?;
            if self.transient_alias {
                if entry.windows == 0 {
                    protect_alias(entry, true)?;
                }
                entry.windows = entry.windows.checked_add(1).ok_or_else(|| {
                    CError::new(JitmemStatus::Unbalanced, "too many open writable regions")
                })?;
            }
            Ok(entry.block.writable_offset())
        })
    }

    /// Closes a window opened by [`open_window`](Self::open_window) (`jitmem_codegen_free_
    /// writable_region`): checks `diff`, publishes `[ptr, ptr + size)`, and with a transient
    /// alias makes the alias inaccessible again when this was the block's last open window.
    pub(crate) fn close_window(&self, ptr: usize, size: usize, diff: isize) -> Result<(), CError> {
        self.with_block(ptr, |entry, offset| {
            check_inside(entry, ptr, offset, size)?;
            let actual = entry.block.writable_offset();
            if actual != diff {
                return Err(CError::new(
                    JitmemStatus::InvalidArgument,
                    format!("diff {diff} is not this allocation's writable offset ({actual})"),
                ));
            }
            if self.transient_alias && entry.windows == 0 {
                return Err(CError::new(
                    JitmemStatus::Unbalanced,
                    format!(
                        "FreeWritableRegion on {ptr:#x} without an open AllocateWritableRegionAndGetDiff on its allocation"
                    ),
                ));
            }
            // SAFETY: [offset, offset + size) lies inside a live block (checked; the registry
            // lock held by with_block keeps it from being freed), whose executable view is
            // mapped and readable.
            unsafe { jitmem::icache::publish(entry.block.as_ptr().wrapping_add(offset), size) };
            if self.transient_alias {
                entry.windows -= 1;
                if entry.windows == 0 {
                    protect_alias(entry, false)?;
                }
            }
            Ok(())
        })
    }

    /// Makes code written through the writable view runnable: publishes (`jitmem::icache::
    /// publish`) `[ptr, ptr + size)`, which must lie inside one block, or with `size` None the
    /// whole block containing `ptr`.
    pub(crate) fn publish(&self, ptr: usize, size: Option<usize>) -> Result<(), CError> {
        self.with_block(ptr, |entry, offset| {
            let (start, len) = match size {
                Some(size) => {
                    check_inside(entry, ptr, offset, size)?;
                    (offset, size)
                }
                None => (0, entry.block.len()),
            };
            // SAFETY: [start, start + len) lies inside a live block (checked; the registry lock
            // held by with_block keeps it from being freed), whose executable view is mapped
            // and readable.
            unsafe { jitmem::icache::publish(entry.block.as_ptr().wrapping_add(start), len) };
            Ok(())
        })
    }

    /// Shrinks the block that starts at `ptr`.
    pub(crate) fn shrink(&self, ptr: usize, new_len: usize) -> Result<(), CError> {
        self.with_block(ptr, |entry, offset| {
            if offset != 0 {
                return Err(unknown(ptr));
            }
            if !entry.scopes.is_empty() {
                return Err(CError::new(
                    JitmemStatus::Unbalanced,
                    "shrink with a write scope open",
                ));
            }
            entry.block.shrink(new_len)?;
            entry.requested = entry.requested.min(new_len);
            Ok(())
        })
    }
}
