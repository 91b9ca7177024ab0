//! [`CodeBlock`]: an owned allocation of code memory, and [`WriteScope`]: the right to write it.
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): code-entry points (`entry` turns an address into a function pointer), the raw write pair of the C ABI, and slices over the writable view of a block's range.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::call_targets;
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::fn_ptr::FnPtr;
use crate::heap::{Allocation, Owner, Shard};
use crate::icache;
use crate::isa;
use crate::strategy::{OpenScopes, StrategyRules};

/// An owned block of code memory. Freed when dropped: its bytes are filled with trap
/// instructions (`int3`, `brk #0xF000`) so that a stale call traps, and its range goes back to the
/// heap (PerAllocation: the mapping is unmapped).
///
/// Written through a [`WriteScope`] ([`write`](Self::write), [`write_range`](Self::write_range)),
/// run through its executable address ([`as_ptr`](Self::as_ptr), [`entry`](Self::entry)).
pub struct CodeBlock {
    shard: Arc<Shard>,
    rx: NonNull<u8>,
    len: usize,
    /// `writable address - executable address`.
    writable_offset: isize,
    owner: Owner,
    /// The write scopes open on this block (Toggle records them; see its module). Changed only
    /// through `&mut self`, so threads writing different blocks share nothing here.
    scopes: OpenScopes,
}

// A block handle is part of the memory each function costs (see the benchmark's `overhead`).
const _: () = assert!(std::mem::size_of::<CodeBlock>() <= 56);

// SAFETY: a CodeBlock owns its range; the shared heap is Sync. Moving it moves ownership.
unsafe impl Send for CodeBlock {}
// SAFETY: &CodeBlock gives only its address and length; writing needs &mut.
unsafe impl Sync for CodeBlock {}

impl CodeBlock {
    pub(crate) fn new(shard: Arc<Shard>, allocation: Allocation) -> Self {
        CodeBlock {
            shard,
            rx: allocation.rx,
            len: allocation.len,
            writable_offset: allocation.writable_offset,
            owner: allocation.owner,
            scopes: OpenScopes::default(),
        }
    }

    /// The executable address of the block's first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.rx.as_ptr()
    }

    /// The block's length in bytes (the request rounded up to 16 bytes, or to pages in the
    /// PerAllocation layout and for Toggle, whose blocks never share a page).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: blocks are never empty. Present for the `len`/`is_empty` convention.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The executable address range.
    pub fn addr_range(&self) -> Range<usize> {
        let start = self.rx.as_ptr() as usize;
        start..start + self.len
    }

    /// The strategy of the memory this block came from.
    pub fn strategy(&self) -> Strategy {
        self.shard.core.strategy()
    }

    /// Opens a write scope over the whole block. See [`write_range`](Self::write_range).
    pub fn write(&mut self) -> Result<WriteScope<'_>> {
        self.write_range(0..self.len)
    }

    /// Opens a write scope over `range` (offsets in the block), for writing new code or patching
    /// live code. Cost: Toggle, one `mprotect` of the range's pages, none if a scope already holds
    /// them open (and code on those pages cannot run until the scope ends); PerThread, one
    /// `WRPKRU` for the outermost scope of the thread (Apple under the `jit-write-allowlist`
    /// entitlement: the scope writes a shadow, and its end copies the range into the code
    /// through jitmem's allow-listed callback); Mirror and Rwx, nothing.
    pub fn write_range(&mut self, range: Range<usize>) -> Result<WriteScope<'_>> {
        self.check_range(&range)?;
        self.acquire(&range)?;
        Ok(WriteScope {
            block: self,
            range,
            finished: false,
            _not_send: PhantomData,
        })
    }

    pub(crate) fn check_range(&self, range: &Range<usize>) -> Result<()> {
        if range.start >= range.end || range.end > self.len {
            return Err(Error::OutOfRange {
                start: range.start,
                end: range.end,
                len: self.len,
            });
        }
        Ok(())
    }

    /// Acquires write rights over `range` (checked by the caller).
    pub(crate) fn acquire(&mut self, range: &Range<usize>) -> Result<()> {
        self.shard.core.check_usable()?;
        let start = self.rx.as_ptr() as usize + range.start;
        let end = start + (range.end - range.start);
        self.shard.core.rules.acquire(&mut self.scopes, start, end)
    }

    /// Withdraws the rights [`acquire`](Self::acquire) granted and makes the range coherent for
    /// instruction fetch.
    pub(crate) fn release(&mut self, range: &Range<usize>) -> Result<()> {
        let start = self.rx.as_ptr() as usize + range.start;
        let len = range.end - range.start;
        let released = self
            .shard
            .core
            .rules
            .release(&mut self.scopes, start, start + len);
        // SAFETY: the range lies inside the block, which is mapped and readable.
        unsafe { icache::publish(start as *const u8, len) };
        released
    }

    /// `writable address - executable address` for this block: 0 unless the strategy is
    /// Mirror, or PerThread on Apple under the `jit-write-allowlist` entitlement (its shadow,
    /// whose bytes reach the code when a scope over them ends). Writing through
    /// `as_ptr() + writable_offset()` needs write rights (a scope).
    pub fn writable_offset(&self) -> isize {
        self.writable_offset
    }

    /// For foreign-function layers (the C API) that hand out the writable address themselves:
    /// `Ok` when this process may write the block now ([`Error::ForkedChild`] in a fork child
    /// of a Mirror or Apple MAP_JIT memory, whose writable view or rights are not the child's;
    /// [`Error::Poisoned`] after a failed publish).
    #[doc(hidden)]
    pub fn check_writable(&self) -> Result<()> {
        self.shard.core.check_usable()
    }

    /// For foreign-function layers (the C API) that cannot hold a [`WriteScope`] borrow: grants
    /// write rights over `range` and returns the writable address of its first byte.
    ///
    /// # Safety
    /// Each successful call is matched by exactly one [`end_write_raw`](Self::end_write_raw)
    /// for the same range, on the same thread (PerThread rights belong to a thread), before the
    /// block is shrunk or dropped; writes through the pointer stay inside `range` and happen
    /// before that call.
    #[doc(hidden)]
    pub unsafe fn begin_write_raw(&mut self, range: Range<usize>) -> Result<*mut u8> {
        self.check_range(&range)?;
        self.acquire(&range)?;
        Ok(self.rw_ptr(range.start))
    }

    /// Ends what [`begin_write_raw`](Self::begin_write_raw) began, as
    /// [`WriteScope::publish`] (or `publish_live` when `live`).
    ///
    /// # Safety
    /// As for `begin_write_raw`: called once per successful `begin_write_raw` with its range.
    #[doc(hidden)]
    pub unsafe fn end_write_raw(&mut self, range: Range<usize>, live: bool) -> Result<()> {
        self.check_range(&range)?;
        self.release(&range)?;
        if live {
            icache::pipeline_flush_mt()?;
        }
        Ok(())
    }

    /// Turns the code at `offset` into a function pointer of type `F` (any ABI and arity a JIT
    /// uses: see [`FnPtr`]; a non-function type does not compile).
    ///
    /// # Safety
    /// The bytes at `offset` are a complete, published function with `F`'s signature and ABI.
    /// The block must outlive every call through the pointer, and with Toggle the block must not
    /// run while a write scope on it is open (its pages are not executable then; other blocks
    /// are unaffected).
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when `offset` is not inside the block.
    pub unsafe fn entry<F: FnPtr>(&self, offset: usize) -> Result<F> {
        if self.strategy() == Strategy::PerThread {
            // The calling thread may run code that reads its own bytes (crate::allow_code_reads).
            crate::sys::allow_thread_code_reads();
        }
        // SAFETY: forwarded from the caller; the range is the block's executable range.
        unsafe { crate::fn_ptr::entry_at(self.rx, self.len, offset) }
    }

    /// Marks the code at `offsets` (offsets in the block) as valid targets of indirect calls
    /// under Windows' Control Flow Guard (CFG), for memory made with
    /// [`CfgCallTargets::Explicit`](crate::CfgCallTargets::Explicit): call it for every entry
    /// point that is reached through a function pointer (a direct call or jump needs no mark).
    /// The marks last until the block is freed, or shrunk below them (a freed or shrunk range
    /// has its marks withdrawn before it is handed out again); write scopes keep them.
    ///
    /// Each offset must lie inside the block at an address that is a multiple of 16 (CFG's
    /// granularity; align entry points to 16 bytes), else [`Error::BadCallTarget`]; the order
    /// does not matter and duplicates are fine. The check is made everywhere, so that a JIT
    /// tested on Linux does not fail on Windows.
    ///
    /// Only on Windows in a process that enforces CFG, with `Explicit`, does this make a system
    /// call (`SetProcessValidCallTargets`, one per call; its failure is an [`Error::Os`] with the
    /// OS error, e.g. `ERROR_COMMITMENT_LIMIT`). Everywhere else it is a checked no-op:
    /// with [`CfgCallTargets::AllValid`](crate::CfgCallTargets::AllValid) every location is a
    /// valid target already (Windows' default), and where CFG is not enforced (a host built
    /// without `/guard:cf`, Windows before 10, Wine, every other OS) nothing checks indirect
    /// calls. [`JitMemory::cfg_targets_enforced`](crate::JitMemory::cfg_targets_enforced) says
    /// which.
    pub fn allow_indirect_calls(&self, offsets: &[usize]) -> Result<()> {
        let core = &self.shard.core;
        let list =
            call_targets::entry_points(self.rx.as_ptr() as usize, self.len, core.page, offsets)?;
        if !core.options.cfg_targets_invalid {
            return Ok(());
        }
        self.set_call_targets(&list, true)
    }

    /// Withdraws every Control Flow Guard mark of `range` (offsets in the block) before the
    /// range is handed out again, so that a later block there has no valid target it did not
    /// ask for. Nothing to do unless the memory's call targets are explicit and enforced.
    fn withdraw_call_targets(&self, range: Range<usize>) -> Result<()> {
        let core = &self.shard.core;
        if !core.options.cfg_targets_invalid {
            return Ok(());
        }
        let start = self.rx.as_ptr() as usize + range.start;
        let list = call_targets::every_target(start, range.end - range.start, core.page)?;
        self.set_call_targets(&list, false)
    }

    fn set_call_targets(&self, list: &call_targets::TargetList, valid: bool) -> Result<()> {
        // The pages' start, derived from the block's pointer: base <= rx.
        let below = (self.rx.as_ptr() as usize) - list.base;
        let base = NonNull::new(self.rx.as_ptr().wrapping_sub(below))
            .ok_or(Error::Internal("call targets at a null page"))?;
        crate::sys::set_call_targets(base, list.len, &list.offsets, valid)
    }

    /// Shrinks the block to `new_len` bytes (rounded up to 16, or to the page for Toggle, whose
    /// blocks own whole pages): JITs over-allocate, then know
    /// the final size. The tail is filled with traps and returned to the heap. In the
    /// PerAllocation layout the tail stays mapped (the mapping is page-granular) but is trapped.
    pub fn shrink(&mut self, new_len: usize) -> Result<()> {
        let rounded = crate::heap::round_up(new_len, self.shard.core.granule);
        let rounded = match rounded {
            Some(r) if new_len > 0 && r <= self.len => r,
            _ => {
                return Err(Error::BadShrink {
                    len: self.len,
                    new_len,
                });
            }
        };
        if rounded == self.len {
            return Ok(());
        }
        self.shard.core.check_usable()?;
        self.fill_traps(rounded..self.len)?;
        self.withdraw_call_targets(rounded..self.len)?;
        let start = self.rx.as_ptr() as usize;
        if self.scopes.overlaps(start + rounded, start + self.len) {
            return Err(Error::WrongState(
                "a write scope over the tail was leaked (mem::forget): the tail cannot be given back",
            ));
        }
        match &self.owner {
            Owner::Range(id) => {
                self.len = self.shard.shrink_range(*id, rounded)?;
            }
            Owner::Region(_) | Owner::Leaked => self.len = rounded,
        }
        Ok(())
    }

    /// Fills `range` with trap instructions, with write rights for the duration. Where writing
    /// needs no rights (Mirror, Rwx) this is a plain fill of the writable view.
    fn fill_traps(&mut self, range: Range<usize>) -> Result<()> {
        if self.shard.core.rules.always_writable() {
            self.check_range(&range)?;
            self.shard.core.check_usable()?;
            let len = range.end - range.start;
            // SAFETY: [range] lies inside the block (checked above); its writable view is
            // always writable for these strategies; &mut self makes this the only reference.
            let bytes = unsafe { std::slice::from_raw_parts_mut(self.rw_ptr(range.start), len) };
            isa::fill_traps(bytes);
            // SAFETY: the executable view of the same range is mapped.
            unsafe { icache::publish(self.rx.as_ptr().wrapping_add(range.start), len) };
            return Ok(());
        }
        let mut scope = self.write_range(range)?;
        isa::fill_traps(&mut scope);
        scope.publish()
    }

    pub(crate) fn rules(&self) -> &crate::strategy::Rules {
        &self.shard.core.rules
    }

    pub(crate) fn rw_ptr(&self, offset: usize) -> *mut u8 {
        self.rx
            .as_ptr()
            .wrapping_offset(self.writable_offset)
            .wrapping_add(offset)
    }
}

impl std::fmt::Debug for CodeBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeBlock")
            .field("rx", &self.rx)
            .field("len", &self.len)
            .field("strategy", &self.strategy())
            .finish()
    }
}

impl Drop for CodeBlock {
    fn drop(&mut self) {
        // A fork child that may not use this memory (Mirror, Apple MAP_JIT) has no writable
        // view or rights: it only does the bookkeeping.
        let usable = self.shard.core.usable_in_this_process();
        let owner = std::mem::replace(&mut self.owner, Owner::Leaked);
        // Heap ranges are filled with traps; a PerAllocation mapping goes away whole (stale
        // calls fault on unmapped memory). A fill that fails (rights could not be acquired)
        // leaves memory whose state we do not know: leak it rather than hand it out again.
        let filled =
            !usable || matches!(owner, Owner::Region(_)) || self.fill_traps(0..self.len).is_ok();
        // A range handed out again must carry no Control Flow Guard mark of this block: a
        // withdrawal that fails leaks the range too. (A PerAllocation mapping goes away whole.)
        let withdrawn =
            matches!(owner, Owner::Region(_)) || self.withdraw_call_targets(0..self.len).is_ok();
        // A write scope on this block that was leaked (`mem::forget`) still holds its pages open
        // (Toggle): they stay writable and not executable for good (the record that would close
        // them goes away with this block), so the trap fill did not make them executable, and
        // the memory's count of open pages still counts them. Reusing or unmapping the range
        // would hand out pages in that state. Leak the block instead.
        let core = &self.shard.core;
        let keep = !filled || !withdrawn || !self.scopes.is_empty();
        match owner {
            Owner::Range(id) if !keep => {
                // A usable block was trap-filled and published: this thread may hand it out
                // again without the heap. A fork child's unusable memory only gets bookkeeping.
                let kept = usable
                    && crate::thread_cache::put(
                        &self.shard,
                        id,
                        self.rx,
                        self.len,
                        self.writable_offset,
                    )
                    .is_ok();
                if !kept {
                    let _ = self.shard.free_range(id);
                }
            }
            Owner::Region(region) if !keep => {
                core.per_allocation_freed(region.len());
                drop(region);
            }
            Owner::Region(region) => std::mem::forget(region),
            Owner::Range(_) | Owner::Leaked => {}
        }
    }
}

/// The right to write a range of a [`CodeBlock`]: dereferences to `&mut [u8]` over the writable
/// view. Scopes nest (Toggle counts open scopes per page, PerThread per thread).
///
/// End it with [`publish`](Self::publish) (or [`publish_live`](Self::publish_live) when other
/// threads may be running this code). Dropping it without publishing — on an early error return
/// or a panic — also withdraws the write rights and makes the range coherent; only the error of
/// that last step is lost, and it poisons the memory instead.
///
/// `!Send`: with PerThread the rights belong to the thread that opened the scope.
///
/// Forgetting a scope (`std::mem::forget`) is safe but leaks what it holds: with Toggle its
/// pages stay writable and not executable, and the block is never reused or unmapped (its drop
/// leaks it; `shrink` refuses to give back an open tail); with PerThread the thread keeps its
/// write rights for the memory's protection key.
///
/// ```compile_fail
/// # let memory = jitmem::JitMemory::new(jitmem::Config::new()).unwrap();
/// # let mut block = memory.allocate(16).unwrap();
/// let scope = block.write().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(scope)); // error: `*const ()` cannot be sent between threads
/// });
/// ```
pub struct WriteScope<'a> {
    block: &'a mut CodeBlock,
    range: Range<usize>,
    finished: bool,
    _not_send: PhantomData<*const ()>,
}

impl WriteScope<'_> {
    /// The block offset at which this scope's bytes start.
    pub fn offset(&self) -> usize {
        self.range.start
    }

    /// Withdraws the write rights and makes the written bytes visible to instruction fetch on
    /// this thread (and, on AArch64, to every core's instruction cache). Toggle: an `mprotect`
    /// per run of pages no other scope holds; otherwise no system call.
    pub fn publish(mut self) -> Result<()> {
        self.finish()
    }

    /// As [`publish`](Self::publish), then makes every thread of the process discard stale
    /// prefetched instructions (`membarrier` sync-core): use it when patching code that other
    /// threads may be running.
    pub fn publish_live(mut self) -> Result<()> {
        self.finish()?;
        icache::pipeline_flush_mt()
    }

    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.block.release(&self.range)
    }
}

impl Deref for WriteScope<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let len = self.range.end - self.range.start;
        // SAFETY: the writable view of [range] is mapped, readable, and ours for the scope's
        // life (the block is mutably borrowed).
        unsafe { std::slice::from_raw_parts(self.block.rw_ptr(self.range.start), len) }
    }
}

impl DerefMut for WriteScope<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.range.end - self.range.start;
        // SAFETY: as in deref; write rights were acquired when the scope opened and are held
        // until it finishes, and the &mut borrow of the block makes this the only slice.
        unsafe { std::slice::from_raw_parts_mut(self.block.rw_ptr(self.range.start), len) }
    }
}

impl Drop for WriteScope<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            self.block.shard.core.poison(crate::sys::error_chain(&e));
        }
    }
}
