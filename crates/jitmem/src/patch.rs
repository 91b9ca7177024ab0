//! Patching code that may be running: [`CodeBlock::patch`], [`CodeBlock::patch_live`],
//! [`CodeBlock::patch_live_data`] and [`LivePatches`], from the cheapest guarantee to the
//! strongest.
//!
//! | call | system calls | what a thread running the code meanwhile sees |
//! |---|---|---|
//! | [`patch_live`](CodeBlock::patch_live) | none (PerThread: two `WRPKRU`) | the old or the new instruction, never a mix, for the patches [`isa::check_live_patch`] accepts; the new one at the latest after its next serialising / context-synchronising event (a system call, an interrupt, a context switch) |
//! | [`patch_live_data`](CodeBlock::patch_live_data) | none | the old or the new word (one single-copy-atomic store, release order) |
//! | [`LivePatches`] | one `membarrier` per batch | any patch, any length; after [`publish`](LivePatches::publish) returns, no thread runs the old bytes; during the batch a thread may run a mix of old and new bytes, so it must not run the patched code meanwhile (e.g. it is not linked in yet, or the patch is a jump target nobody reaches) |
//! | a write scope's [`publish_live`](crate::WriteScope::publish_live) | one `membarrier` per scope | as `LivePatches`, for one scope |
//! | [`patch`](CodeBlock::patch) / [`publish`](crate::WriteScope::publish) | none (Toggle: an `mprotect` pair) | nothing is promised to other threads: for code no other thread runs |
//!
//! Toggle refuses the live calls ([`Error::NotLivePatchable`]): its written pages are not
//! executable, so another thread running them faults.
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): the one atomic store
//! through a block's writable view, and reading its executable view.

use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

use crate::block::CodeBlock;
use crate::error::{Error, Result};
use crate::icache;
use crate::isa;
use crate::strategy::StrategyRules;

const TOGGLE_REFUSAL: &str =
    "Toggle makes written pages non-executable, so a thread running them meanwhile faults";

impl CodeBlock {
    /// Writes `bytes` at `offset` through a write scope and publishes it for this thread (see
    /// [`WriteScope::publish`](crate::WriteScope::publish)): for code that no other thread runs
    /// meanwhile, or as one step of a [`LivePatches`] batch.
    pub fn patch(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        let range = self.patch_range(offset, bytes.len())?;
        let mut scope = self.write_range(range)?;
        scope.copy_from_slice(bytes);
        scope.publish()
    }

    /// Whether this block offers [`patch_live`](Self::patch_live) and
    /// [`patch_live_data`](Self::patch_live_data): every strategy but Toggle, whose written
    /// pages are not executable (use [`patch`](Self::patch) there, for code no other thread
    /// runs meanwhile).
    pub fn patches_live(&self) -> bool {
        self.rules().runs_while_written()
    }

    /// Replaces `bytes.len()` bytes of code at `offset` that other threads may be running right
    /// now, with one single-copy-atomic store and no system call: what JITs use to link blocks
    /// (a jump's target, a call's displacement, a `NOP` turned into a `B`).
    ///
    /// The patch must follow the instruction set's rule for concurrent modification, checked
    /// here against the bytes it replaces ([`isa::check_live_patch`]: on x86-64 an aligned 1, 2,
    /// 4 or 8-byte store inside one instruction; on AArch64 one instruction among `B`, `BL`,
    /// `NOP`, `ISB`, `BRK`, `SVC`, `HVC`, `SMC`, old and new). A thread running the code sees
    /// the old or the new instruction, never a mix, and the new one at the latest after its
    /// next system call, interrupt or context switch; when every thread must have left the old
    /// code *now*, use [`LivePatches`] (one `membarrier` per batch).
    ///
    /// # Errors
    /// [`Error::OutOfRange`] outside the block; [`Error::NotLivePatchable`] when the rule is
    /// broken, or the strategy is Toggle (its written pages are not executable).
    pub fn patch_live(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        let range = self.patch_range(offset, bytes.len())?;
        self.check_runs_while_written()?;
        let addr = self.as_ptr() as usize + offset;
        // The old bytes are read with the rights held: reading PerThread code outside a scope
        // is not promised (see the PerThread module docs).
        self.acquire(&range)?;
        // SAFETY: the range lies inside the block (patch_range), whose writable view is mapped
        // and readable with the rights just acquired; &mut self excludes any writer.
        let old = unsafe { std::slice::from_raw_parts(self.rw_ptr(offset), bytes.len()) };
        let checked = isa::check_live_patch(addr, old, bytes)
            .map_err(|reason| Error::NotLivePatchable { reason });
        if let Err(e) = checked {
            self.release(&range)?;
            return Err(e);
        }
        self.store_acquired(range, bytes)
    }

    /// Replaces a 4- or 8-byte, naturally aligned data word inside the block (a literal pool
    /// entry read by `LDR (literal)`, a jump table slot, a constant read with RIP-relative
    /// addressing) with one single-copy-atomic store (release order) and no system call. Threads
    /// reading it meanwhile see the old or the new word. Not for instructions: see
    /// [`patch_live`](Self::patch_live).
    ///
    /// # Errors
    /// [`Error::OutOfRange`], [`Error::NotLivePatchable`] (size, alignment, Toggle).
    pub fn patch_live_data(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        let range = self.patch_range(offset, bytes.len())?;
        self.check_runs_while_written()?;
        isa::check_live_data(self.as_ptr() as usize + offset, bytes.len())
            .map_err(|reason| Error::NotLivePatchable { reason })?;
        self.acquire(&range)?;
        self.store_acquired(range, bytes)
    }

    fn patch_range(&self, offset: usize, len: usize) -> Result<std::ops::Range<usize>> {
        let range = offset..offset.saturating_add(len);
        self.check_range(&range)?;
        Ok(range)
    }

    fn check_runs_while_written(&self) -> Result<()> {
        if self.patches_live() {
            Ok(())
        } else {
            Err(Error::NotLivePatchable {
                reason: TOGGLE_REFUSAL,
            })
        }
    }

    /// One atomic store of `bytes` (1, 2, 4 or 8 bytes, aligned to its length: checked by the
    /// caller) over `range`, whose write rights the caller acquired; then the rights are
    /// released and the range published.
    fn store_acquired(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) -> Result<()> {
        let dst = self.rw_ptr(range.start);
        // SAFETY: `dst` is the writable view of `range`, inside the block, writable by this
        // thread until `release` (rights acquired by the caller), and aligned to the store's size (the
        // executable address is, by the caller's check, and the two views differ by a multiple
        // of the page). The atomics make the store single-copy atomic for concurrent fetches.
        unsafe {
            match *bytes {
                [b] => AtomicU8::from_ptr(dst).store(b, Ordering::Release),
                [a, b] => AtomicU16::from_ptr(dst.cast())
                    .store(u16::from_ne_bytes([a, b]), Ordering::Release),
                [a, b, c, d] => AtomicU32::from_ptr(dst.cast())
                    .store(u32::from_ne_bytes([a, b, c, d]), Ordering::Release),
                [a, b, c, d, e, f, g, h] => AtomicU64::from_ptr(dst.cast()).store(
                    u64::from_ne_bytes([a, b, c, d, e, f, g, h]),
                    Ordering::Release,
                ),
                _ => {
                    self.release(&range)?;
                    return Err(Error::Internal("live store of an unchecked length"));
                }
            }
        }
        self.release(&range)
    }
}

/// A batch of patches to code other threads may be running, made visible to every thread by
/// one `membarrier` at [`publish`](Self::publish) instead of one per patch.
///
/// Each [`patch`](Self::patch) is a write scope published for this thread; `publish` then makes
/// every thread of the process discard instructions fetched before it
/// ([`icache::pipeline_flush_mt`]). Until then another thread may run a mix of old and new
/// bytes of a patched range, so use it for code no thread enters during the batch (code being
/// linked in, stubs, a whole function rewritten before its entry is redirected with
/// [`CodeBlock::patch_live`]). Dropping an unpublished batch still flushes (best effort: an
/// error there cannot be returned).
///
/// ```
/// # fn main() -> jitmem::Result<()> {
/// use jitmem::{Config, JitMemory, LivePatches, isa};
/// let memory = JitMemory::new(Config::new())?;
/// let mut blocks = vec![memory.allocate(16)?, memory.allocate(16)?];
/// let mut batch = LivePatches::new();
/// for (i, block) in blocks.iter_mut().enumerate() {
///     batch.patch(block, 0, &isa::return_constant(i as u32))?;
/// }
/// assert_eq!(batch.pending(), 2);
/// batch.publish()?; // one membarrier for both
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
#[must_use = "call publish() so that every thread sees the patches"]
pub struct LivePatches {
    pending: usize,
}

impl LivePatches {
    /// An empty batch.
    pub fn new() -> Self {
        LivePatches::default()
    }

    /// Writes `bytes` at `offset` of `block` and publishes it for this thread; every thread
    /// sees it after [`publish`](Self::publish).
    ///
    /// # Errors
    /// As [`CodeBlock::patch`]; [`Error::NotLivePatchable`] for Toggle memory.
    pub fn patch(&mut self, block: &mut CodeBlock, offset: usize, bytes: &[u8]) -> Result<()> {
        block.check_runs_while_written()?;
        block.patch(offset, bytes)?;
        self.pending += 1;
        Ok(())
    }

    /// Patches made since the last [`publish`](Self::publish).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// One `membarrier` (when anything is pending): after it returns, no thread of the process
    /// runs instructions fetched before the patches.
    pub fn publish(mut self) -> Result<()> {
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        self.pending = 0;
        icache::pipeline_flush_mt()
    }
}

impl Drop for LivePatches {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
