//! # jitmem-wasmtime: wasmtime's code publishing through jitmem
//!
//! A wasmtime [`CustomCodeMemory`] (wasmtime 48, the newest release that builds with rustc
//! 1.95). The one line a wasmtime user changes:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut config = wasmtime::Config::new();
//! config.with_custom_code_memory(Some(std::sync::Arc::new(jitmem_wasmtime::JitmemCodeMemory::new()?)));
//! # Ok(()) }
//! ```
//!
//! ## What it does, and what it cannot do
//! wasmtime owns the code buffer (its `MmapVec`): it maps it, writes the compiled module into
//! it, makes the whole image read-only and then asks the hook to make the text section
//! executable (`publish_executable`), and to make it writable again before it edits or unmaps
//! it (`unpublish_executable`). The hook never chooses an address or a mapping, so jitmem's
//! allocator, layouts and its Mirror and PerThread strategies do not apply: this is jitmem's
//! **Toggle** discipline on wasmtime's pages. What it adds:
//! - **A refusal explained up front**: [`JitmemCodeMemory::new`] runs jitmem's probe and fails
//!   with its reason (SELinux `execmem`, PaX `MPROTECT`, ...) when this process may not make
//!   pages executable with `mprotect`, instead of failing at the first module.
//! - **Checked W^X flips**: the range must be page-aligned (wasmtime promises it; a violation is
//!   an error, not a wider `mprotect`); publish goes read-only → read-execute, never RWX;
//!   unpublish goes read-execute → read-write.
//! - **Coherence on publish**: the range is made coherent for instruction fetch (AArch64 cache
//!   maintenance, `FlushInstructionCache` on Windows) before it becomes executable, and then
//!   `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)` makes every thread refetch: a thread that ran the
//!   previous contents of re-published (patched) code sees the new code.
//! - **Counters** ([`JitmemCodeMemory::publishes`], [`unpublishes`](JitmemCodeMemory::unpublishes))
//!   for tests and monitoring.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::sync::atomic::{AtomicU64, Ordering};

use jitmem::Strategy;
use jitmem::probe::Probe;
use wasmtime::CustomCodeMemory;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This process may not make pages executable with `mprotect` (the probe's reason).
    #[error("wasmtime code cannot be published here: {0}")]
    Refused(String),
    /// wasmtime handed over a range that is not page-aligned.
    #[error("range {ptr:#x}+{len:#x} is not aligned to the page size {page:#x}")]
    Unaligned {
        /// Start of the range.
        ptr: usize,
        /// Length of the range.
        len: usize,
        /// The page size.
        page: usize,
    },
    /// The protection change failed (the OS error kept as the source).
    #[error("mprotect of {len:#x} bytes at {ptr:#x} to {to} failed")]
    Protect {
        /// Start of the range.
        ptr: usize,
        /// Length of the range.
        len: usize,
        /// The protection asked for.
        to: &'static str,
        /// What the OS said.
        #[source]
        source: region::Error,
    },
    /// jitmem's pipeline flush failed.
    #[error("jitmem: {0}")]
    Jitmem(#[from] jitmem::Error),
}

/// A wasmtime [`CustomCodeMemory`] on jitmem's Toggle discipline. See the crate documentation.
#[derive(Debug)]
pub struct JitmemCodeMemory {
    page: usize,
    publishes: AtomicU64,
    unpublishes: AtomicU64,
}

impl JitmemCodeMemory {
    /// Checks (jitmem's probe) that this process may make pages executable with `mprotect`.
    pub fn new() -> Result<JitmemCodeMemory, Error> {
        let probe = Probe::run();
        if let Some((_, Err(why))) = probe
            .strategies
            .iter()
            .find(|(s, _)| *s == Strategy::Toggle)
        {
            return Err(Error::Refused(why.clone()));
        }
        Ok(JitmemCodeMemory {
            page: jitmem::page_size(),
            publishes: AtomicU64::new(0),
            unpublishes: AtomicU64::new(0),
        })
    }

    /// How many ranges were published (made executable).
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }

    /// How many ranges were unpublished (made writable again).
    pub fn unpublishes(&self) -> u64 {
        self.unpublishes.load(Ordering::Relaxed)
    }

    fn check(&self, ptr: *const u8, len: usize) -> Result<(), Error> {
        let addr = ptr as usize;
        if !addr.is_multiple_of(self.page) || !len.is_multiple_of(self.page) {
            return Err(Error::Unaligned {
                ptr: addr,
                len,
                page: self.page,
            });
        }
        Ok(())
    }

    fn publish(&self, ptr: *const u8, len: usize) -> Result<(), Error> {
        self.check(ptr, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: wasmtime passes its own mapped text section (readable), which no thread runs
        // before this publish returns.
        unsafe { jitmem::icache::clear_cache(ptr, len) };
        // SAFETY: the range is wasmtime's mapping of its text section; wasmtime asks for it to
        // become executable and no longer writes it (it made it read-only already).
        unsafe { region::protect(ptr, len, region::Protection::READ_EXECUTE) }.map_err(
            |source| Error::Protect {
                ptr: ptr as usize,
                len,
                to: "read-execute",
                source,
            },
        )?;
        jitmem::icache::pipeline_flush_mt()?;
        self.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unpublish(&self, ptr: *const u8, len: usize) -> Result<(), Error> {
        self.check(ptr, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: wasmtime promises that no code runs from this range any more; it is wasmtime's
        // mapping, which it is about to edit or unmap.
        unsafe { region::protect(ptr, len, region::Protection::READ_WRITE) }.map_err(|source| {
            Error::Protect {
                ptr: ptr as usize,
                len,
                to: "read-write",
                source,
            }
        })?;
        self.unpublishes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl CustomCodeMemory for JitmemCodeMemory {
    fn required_alignment(&self) -> usize {
        self.page
    }

    fn publish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        Ok(self.publish(ptr, len)?)
    }

    fn unpublish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        Ok(self.unpublish(ptr, len)?)
    }
}
