//! # jitmem-cranelift: cranelift-jit's code memory from jitmem
//!
//! A [`JITMemoryProvider`] for `cranelift-jit` 0.135 (the newest release that builds with
//! rustc 1.95) whose code memory comes from a [`jitmem::JitMemory`]. The one line a
//! cranelift-jit user changes:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut builder =
//! #     cranelift_jit::JITBuilder::new(cranelift_module::default_libcall_names())?;
//! builder.memory_provider(Box::new(jitmem_cranelift::JitmemProvider::new_default()?));
//! # Ok(()) }
//! ```
//!
//! ## What it adds over cranelift-jit's own providers
//! - **A W^X strategy that fits**: `Toggle` (`mprotect` flips), `PerThread` (protection keys on
//!   Linux x86-64, `MAP_JIT` on Apple Silicon: other threads never see the code writable, even
//!   while it is being written) or `Rwx` (explicit unsafe opt-in only). [`JitmemProvider::new_default`]
//!   picks PerThread where the probe allows it, else Toggle.
//! - **Placement**: with jitmem's `Pooled` or `Arena` layout, the functions of many modules
//!   share chunks (PerThread and Rwx pack functions at 16 bytes; Toggle gives each function its
//!   own pages, as it must to flip them alone), so code lies close together: with an `Arena` of
//!   at most 2 GiB (x86-64) or 128 MiB (AArch64) every direct call between two functions of a
//!   module reaches (no AArch64 veneer is taken). cranelift's `SystemMemoryProvider` maps every
//!   function's pages separately.
//! - **Publish**: [`finalize`](JITMemoryProvider::finalize) takes the write rights back, makes
//!   each range coherent for instruction fetch (AArch64 cache maintenance, `FlushInstructionCache`
//!   on Windows) and then runs `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)` once, so threads that
//!   already run code of this memory refetch.
//! - **Freeing for real**: [`free_memory`](JITMemoryProvider::free_memory) fills every code range
//!   with trap instructions (a stale call traps instead of running old code) and gives it back
//!   to the heap; empty chunks go back to the OS (the mapping count returns to its baseline,
//!   see `tests/recreate.rs`). cranelift's providers unmap but leave no traps.
//! - **A probe that explains a refusal**: [`probe`] says, per strategy, whether it can back
//!   cranelift-jit here and why not.
//! - **BTI for real** (Linux AArch64): with a memory made with `jitmem::Config::bti(true)`
//!   (pages mapped `PROT_BTI`) and an ISA built with `use_bti` (cranelift's landing pads), an
//!   indirect branch into the code that misses a landing pad faults. `finalize` checks that the
//!   two agree: landing pads without `PROT_BTI` on a CPU with BTI, or `PROT_BTI` without landing
//!   pads, are errors ([`Error::BtiNotMapped`], [`Error::BtiWithoutLandingPads`]), not silently
//!   unprotected or faulting code (tested under `qemu-aarch64 -cpu max`). cranelift's own
//!   providers add `PROT_BTI` at finalize when asked, and silently skip it on a CPU without BTI.
//!
//! ## Why not Mirror
//! cranelift-jit copies each function to the pointer `allocate` returned, applies its
//! relocations there (x86-64 `call rel32` and AArch64 `bl` relative to that pointer, absolute
//! `movabs` of function addresses to that pointer) and hands the same pointer out as the
//! function's entry. Code therefore has to be written at the address it runs at. A Mirror block
//! is never writable at its executable address (that is the point of Mirror), and handing
//! cranelift the writable view would make every absolute relocation and every entry point the
//! writable, non-executable address; relocating afterwards is impossible because the provider
//! never sees the relocation list. Making the executable view writable while a module is
//! written would turn Mirror into Toggle on pages it shares with other blocks, which other
//! threads may be running. So [`JitmemProvider::new`] refuses a Mirror memory with
//! [`Error::MirrorNotInPlace`], and `new_default` never picks it.
//!
//! ## Freeing one function
//! cranelift-jit frees memory per module only (`JITModule::free_memory(self)`); there is no call
//! that frees one function. The answer with jitmem: make one `JITModule` per unit you want to
//! free (one function, if need be), each with a provider made from a clone of one
//! [`jitmem::JitMemory`] ([`JitmemProvider::new`]). The modules then share the memory's chunks,
//! so a small module costs its functions' bytes, not a page and a mapping of its own (except
//! with Toggle, whose blocks own whole pages), and freeing the module traps and frees exactly
//! its functions. Calls between modules go through addresses you register with
//! `JITBuilder::symbol` (cranelift calls a non-local function through an absolute address, so
//! it reaches anywhere).
//!
//! ## Threads (PerThread)
//! PerThread write rights belong to a thread. The rights for a module's new code are taken in
//! `allocate` and given back in `finalize`; cranelift writes the code in `define_function` and
//! the relocations in `finalize_definitions`, with no call to the provider in between. Define
//! and finalize a module on one thread: on another thread the relocation writes fault (a
//! crash, not an error), and `finalize` reports the move as [`Error::WrongThread`] when nothing
//! had to be relocated. Toggle and Rwx have no such rule.
//!
//! ## Data objects
//! Writable data objects live on the Rust heap; read-only ones in their own anonymous mapping
//! that `finalize` makes read-only (as cranelift's `SystemMemoryProvider` does). Neither is
//! executable. Both are freed by `free_memory`.
//!
//! ## Dropping without `free_memory`
//! As with cranelift's providers, dropping the provider (dropping a `JITModule`) without
//! `free_memory` leaks its memory on purpose: function pointers taken from the module stay
//! valid for the rest of the process. Code written but never finalized is published first.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::fmt;
use std::io;
use std::thread::ThreadId;

use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider};
use cranelift_module::{ModuleError, ModuleResult};
use jitmem::probe::Probe;
use jitmem::{CodeBlock, Config, JitMemory, Strategy};

pub use cranelift_jit;
pub use jitmem;

/// What can go wrong in the provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// jitmem refused (its error kept as the source).
    #[error("jitmem: {0}")]
    Jitmem(#[from] jitmem::Error),
    /// A Mirror memory was given: cranelift-jit writes code where it runs it.
    #[error("{MIRROR_REASON}")]
    MirrorNotInPlace,
    /// PerThread code written on one thread was finalized on another.
    #[error(
        "the module's code was written on {writing:?} and finalized on {finalizing:?}: PerThread write rights belong to a thread, so define and finalize a module on one thread"
    )]
    WrongThread {
        /// The thread that allocated (and so may write) the module's new code.
        writing: ThreadId,
        /// The thread that called finalize.
        finalizing: ThreadId,
    },
    /// cranelift emits BTI landing pads (the ISA flag `use_bti`) on a CPU that enforces them,
    /// but the memory is not mapped with `PROT_BTI`: the code would run unprotected.
    #[error(
        "cranelift emits BTI landing pads (use_bti) but the JitMemory does not map PROT_BTI: build it with jitmem::Config::bti(true)"
    )]
    BtiNotMapped,
    /// The memory is mapped with `PROT_BTI` but cranelift emits no landing pads: the first
    /// indirect call into the code would fault (`SIGILL`).
    #[error(
        "the JitMemory maps PROT_BTI (Config::bti) but cranelift emits no BTI landing pads: set the AArch64 ISA flag use_bti"
    )]
    BtiWithoutLandingPads,
    /// A data object could not be mapped or protected.
    #[error("data object memory: {0}")]
    Data(#[source] io::Error),
}

/// Why Mirror cannot back cranelift-jit (see the crate documentation).
pub const MIRROR_REASON: &str = "strategy mirror cannot back cranelift-jit: cranelift writes each function and its relocations at the address it runs it at, and a mirror's executable view is never writable (use toggle or perthread)";

/// A cranelift-jit memory provider whose code memory comes from jitmem. See the crate
/// documentation.
pub struct JitmemProvider {
    memory: JitMemory,
    /// Code written since the last finalize: write rights are held over each whole block.
    open: Vec<CodeBlock>,
    /// The thread that took the write rights of `open` (PerThread rights are per thread).
    writer: Option<ThreadId>,
    /// Published code.
    published: Vec<CodeBlock>,
    /// Writable data objects (a `Vec`, not a `Box`, so that moving it asserts no uniqueness over
    /// the bytes cranelift and the generated code write through raw pointers).
    writable: Vec<Vec<u8>>,
    /// Read-only data objects not yet protected.
    readonly_open: Vec<memmap2::MmapMut>,
    /// Read-only data objects, protected.
    readonly: Vec<memmap2::Mmap>,
}

impl fmt::Debug for JitmemProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitmemProvider")
            .field("strategy", &self.memory.strategy())
            .field("layout", &self.memory.layout())
            .field("open_blocks", &self.open.len())
            .field("published_blocks", &self.published.len())
            .finish()
    }
}

impl JitmemProvider {
    /// A provider on `memory`. Clones of one `JitMemory` give providers (one per `JITModule`)
    /// that share its chunks. Refuses a Mirror memory ([`Error::MirrorNotInPlace`]).
    pub fn new(memory: JitMemory) -> Result<JitmemProvider, Error> {
        if memory.strategy() == Strategy::Mirror {
            return Err(Error::MirrorNotInPlace);
        }
        Ok(JitmemProvider {
            memory,
            open: Vec::new(),
            writer: None,
            published: Vec::new(),
            writable: Vec::new(),
            readonly_open: Vec::new(),
            readonly: Vec::new(),
        })
    }

    /// A provider on a new memory made from `config`. When the config asks for `Auto` and
    /// `JITMEM_STRATEGY` is unset, the strategy is [`in_place_strategy`]'s pick instead of
    /// jitmem's Auto (which prefers Mirror).
    pub fn with_config(config: Config) -> Result<JitmemProvider, Error> {
        let config = if config.requested_strategy() == Strategy::Auto
            && std::env::var_os(jitmem::STRATEGY_ENV).is_none()
        {
            config.strategy(in_place_strategy())
        } else {
            config
        };
        JitmemProvider::new(JitMemory::new(config)?)
    }

    /// A provider on a new Pooled memory with the best in-place strategy here.
    pub fn new_default() -> Result<JitmemProvider, Error> {
        JitmemProvider::with_config(Config::new())
    }

    /// The memory the code comes from (for its [`stats`](JitMemory::stats), or to clone for
    /// the next module's provider).
    pub fn memory(&self) -> &JitMemory {
        &self.memory
    }

    /// Publishes the open blocks: write rights back, icache coherent. Returns the first error
    /// (every block is tried; a block whose publish failed is kept, unusable, until freed).
    fn publish_open(&mut self) -> Result<(), Error> {
        let mut first = None;
        for mut block in self.open.drain(..) {
            let range = 0..block.len();
            // SAFETY: `allocate` opened exactly this range with `begin_write_raw` on the writer
            // thread (checked by the callers for PerThread), and nothing ended it since.
            if let Err(e) = unsafe { block.end_write_raw(range, false) } {
                first.get_or_insert(Error::Jitmem(e));
            }
            self.published.push(block);
        }
        self.writer = None;
        first.map_or(Ok(()), Err)
    }

    /// Whether the calling thread may end the open blocks' write rights.
    fn check_writer(&self) -> Result<(), Error> {
        let me = std::thread::current().id();
        match self.writer {
            Some(writing) if writing != me && self.memory.strategy() == Strategy::PerThread => {
                Err(Error::WrongThread {
                    writing,
                    finalizing: me,
                })
            }
            _ => Ok(()),
        }
    }

    fn allocate_code(&mut self, size: usize, align: u64) -> Result<*mut u8, Error> {
        let align = usize::try_from(align).map_err(|_| {
            Error::Jitmem(jitmem::Error::BadAlignment {
                align: usize::MAX,
                page_size: self.memory.page_size(),
            })
        })?;
        let mut block = self.memory.allocate_aligned(size.max(1), align)?;
        let range = 0..block.len();
        // SAFETY: ended exactly once with this range by `publish_open` (finalize, free_memory or
        // drop) before the block is dropped; PerThread's same-thread rule is checked there.
        let ptr = unsafe { block.begin_write_raw(range)? };
        if block.writable_offset() != 0 {
            // Unreachable: `new` refuses Mirror, the only strategy with a second view. Give the
            // rights back and refuse rather than hand cranelift a pointer it cannot run.
            let len = block.len();
            // SAFETY: ends the scope begun just above, on this thread.
            unsafe { block.end_write_raw(0..len, false)? };
            return Err(Error::MirrorNotInPlace);
        }
        if self.writer.is_none() {
            self.writer = Some(std::thread::current().id());
        }
        self.open.push(block);
        Ok(ptr)
    }

    fn allocate_data(&mut self, size: usize, align: u64, readonly: bool) -> Result<*mut u8, Error> {
        let align = usize::try_from(align)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| Error::Data(io::Error::other("alignment is not a power of two")))?;
        if readonly {
            // A fresh anonymous mapping is page-aligned, which covers any alignment cranelift
            // asks of data (at most a page).
            if align > jitmem::page_size() {
                return Err(Error::Data(io::Error::other(
                    "alignment above the page size",
                )));
            }
            let mut map = memmap2::MmapMut::map_anon(size.max(1)).map_err(Error::Data)?;
            let ptr = map.as_mut_ptr();
            self.readonly_open.push(map);
            Ok(ptr)
        } else {
            let total = size
                .checked_add(align)
                .ok_or_else(|| Error::Data(io::Error::other("data object too large")))?;
            let mut buf = vec![0u8; total];
            let base = buf.as_mut_ptr();
            let ptr = base.wrapping_add(base.align_offset(align));
            self.writable.push(buf);
            Ok(ptr)
        }
    }

    fn protect_readonly(&mut self) -> Result<(), Error> {
        for map in self.readonly_open.drain(..) {
            self.readonly
                .push(map.make_read_only().map_err(Error::Data)?);
        }
        Ok(())
    }

    fn finalize_inner(&mut self, branch_protection: BranchProtection) -> Result<(), Error> {
        bti_check(
            branch_protection == BranchProtection::BTI,
            self.memory.bti(),
            cpu_enforces_bti(),
        )?;
        self.check_writer()?;
        self.protect_readonly()?;
        let published = self.publish_open();
        // Threads that already run code of this memory refetch (membarrier SYNC_CORE).
        jitmem::icache::pipeline_flush_mt()?;
        published
    }
}

/// Whether code compiled with landing pads (`pads`) may be published in memory mapped with
/// `PROT_BTI` or not (`mapped`), on a CPU that enforces BTI or not (`enforced`): pads without
/// `PROT_BTI` are refused where BTI exists (the protection asked for would silently be off;
/// elsewhere the pads are NOPs, as with cranelift's own providers), and `PROT_BTI` without pads
/// always (the first indirect call would fault).
fn bti_check(pads: bool, mapped: bool, enforced: bool) -> Result<(), Error> {
    match (pads, mapped) {
        (true, false) if enforced => Err(Error::BtiNotMapped),
        (false, true) => Err(Error::BtiWithoutLandingPads),
        _ => Ok(()),
    }
}

/// Whether this CPU enforces BTI landing pads on PROT_BTI pages (only AArch64 Linux with FEAT_BTI).
fn cpu_enforces_bti() -> bool {
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    {
        std::arch::is_aarch64_feature_detected!("bti")
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    {
        false
    }
}

fn backend(e: Error) -> ModuleError {
    ModuleError::Backend(anyhow::Error::new(e))
}

impl JITMemoryProvider for JitmemProvider {
    fn allocate(&mut self, size: usize, align: u64, kind: JITMemoryKind) -> io::Result<*mut u8> {
        match kind {
            JITMemoryKind::Executable => self.allocate_code(size, align),
            JITMemoryKind::Writable => self.allocate_data(size, align, false),
            JITMemoryKind::ReadOnly => self.allocate_data(size, align, true),
        }
        .map_err(io::Error::other)
    }

    /// Traps every code range and frees it (jitmem fills freed blocks with trap instructions and
    /// unmaps empty chunks), and frees the data objects.
    unsafe fn free_memory(&mut self) {
        if self.check_writer().is_ok() {
            // Errors cannot be reported from here; a block that failed to publish is freed below
            // all the same (its drop fills it with traps through jitmem's own rights).
            let _ = self.publish_open();
        } else {
            // PerThread code written on another thread: its rights belong to that thread and
            // cannot be ended here, and a block must not be dropped inside its raw scope. Leak
            // those blocks (the writing thread keeps its rights until it ends).
            std::mem::forget(std::mem::take(&mut self.open));
            self.writer = None;
        }
        self.published.clear();
        self.writable.clear();
        self.readonly_open.clear();
        self.readonly.clear();
    }

    fn finalize(&mut self, branch_protection: BranchProtection) -> ModuleResult<()> {
        self.finalize_inner(branch_protection).map_err(backend)
    }
}

impl Drop for JitmemProvider {
    fn drop(&mut self) {
        if self.check_writer().is_ok() {
            let _ = self.publish_open();
        }
        // Leaked on purpose, as cranelift's providers do: pointers into the module stay valid.
        std::mem::forget(std::mem::take(&mut self.open));
        std::mem::forget(std::mem::take(&mut self.published));
        std::mem::forget(std::mem::take(&mut self.writable));
        std::mem::forget(std::mem::take(&mut self.readonly_open));
        std::mem::forget(std::mem::take(&mut self.readonly));
    }
}

/// Picks the in-place strategy for cranelift-jit here: PerThread where the probe allows it
/// (writes need no system call and other threads never see the code writable), else Toggle.
/// The probe runs once per process; later calls reuse its answer.
pub fn in_place_strategy() -> Strategy {
    static PICK: std::sync::OnceLock<Strategy> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        if Probe::run().allows(Strategy::PerThread) {
            Strategy::PerThread
        } else {
            Strategy::Toggle
        }
    })
}

/// What [`probe`] found: per strategy, whether it can back cranelift-jit here, and why not.
#[derive(Clone, Debug)]
pub struct CraneliftProbe {
    /// Each concrete strategy: usable with cranelift-jit, or the reason it is not.
    pub strategies: Vec<(Strategy, Result<(), String>)>,
    /// What [`JitmemProvider::new_default`] picks.
    pub pick: Strategy,
}

impl CraneliftProbe {
    /// Whether `strategy` can back cranelift-jit here.
    pub fn allows(&self, strategy: Strategy) -> bool {
        self.strategies
            .iter()
            .any(|(s, r)| *s == strategy && r.is_ok())
    }

    /// Why `strategy` cannot back cranelift-jit here (`None` when it can).
    pub fn refusal(&self, strategy: Strategy) -> Option<&str> {
        self.strategies
            .iter()
            .find(|(s, _)| *s == strategy)
            .and_then(|(_, r)| r.as_ref().err().map(String::as_str))
    }
}

impl fmt::Display for CraneliftProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (strategy, r) in &self.strategies {
            match r {
                Ok(()) => writeln!(f, "{strategy}: usable with cranelift-jit")?,
                Err(why) => writeln!(f, "{strategy}: not usable: {why}")?,
            }
        }
        write!(f, "default pick: {}", self.pick)
    }
}

/// Runs jitmem's probe and says, per strategy, whether it can back cranelift-jit here.
pub fn probe() -> CraneliftProbe {
    let p = Probe::run();
    let strategies = p
        .strategies
        .iter()
        .map(|(s, r)| {
            let r = match (s, r) {
                (Strategy::Mirror, _) => Err(MIRROR_REASON.to_owned()),
                (_, Err(e)) => Err(e.clone()),
                (Strategy::Rwx, Ok(())) => Err(
                    "rwx gives up W^X: only with Config::allow_rwx_without_wx (unsafe opt-in)"
                        .to_owned(),
                ),
                (_, Ok(())) => Ok(()),
            };
            (*s, r)
        })
        .collect();
    CraneliftProbe {
        strategies,
        pick: in_place_strategy(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Error, bti_check};

    #[test]
    fn bti_pads_and_prot_bti_must_agree() {
        for enforced in [false, true] {
            assert!(bti_check(false, false, enforced).is_ok());
            assert!(bti_check(true, true, enforced).is_ok());
            assert!(matches!(
                bti_check(false, true, enforced),
                Err(Error::BtiWithoutLandingPads)
            ));
        }
        assert!(matches!(
            bti_check(true, false, true),
            Err(Error::BtiNotMapped)
        ));
        assert!(bti_check(true, false, false).is_ok());
    }
}
