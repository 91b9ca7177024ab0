//! The platform layer: the one place that names operating systems.
//!
//! Everything above speaks in strategies, layouts and ranges; everything here speaks in pages,
//! views and system calls. The interface is a set of small traits, one per concern, each
//! documenting its contract once (the `# Safety` of its `unsafe` functions included):
//!
//! | trait | functions | used for |
//! |---|---|---|
//! | [`Memory`] | `page_size`, `map_private`, `protect`, `unmap` | Toggle, Rwx, `ExecBuffer`, probe pages |
//! | [`Mirror`] | `map_mirror`, `unmap_view`, `mirror_backing` | two views of the same pages (Mirror) |
//! | [`Commit`] | `reserve_private`, `reserve_mirror`, `commit`, `commit_granule`, `reservation_granularity` | code regions whose pages are committed as they are used (Windows) |
//! | [`Rights`] | `thread_rights_token`, `map_per_thread`, `grant_thread_write_rights`, `withdraw_thread_write_rights`, `PER_THREAD_SURVIVES_FORK`, `shadow_writes`, `check_shadow_write`, `copy_from_shadow` | per-thread write rights (PerThread; Apple's allow-list shadow) |
//! | [`Icache`] | `clear_cache`, `pipeline_flush_mt` | instruction-cache coherence |
//! | [`Fork`] | `register_atfork`, `snapshot_for_fork`, `discard_snapshot`, `install_snapshot_after_fork` | fork safety of mirrors |
//! | [`Introspect`] | `mappings`, `mapping_count`, `mapping_limit`, `thread_stack` | the process's memory map, the calling thread's stack |
//! | [`Wait`] | `wait_while_equal`, `wake_one` | sleeping on a contended lock word |
//! | [`Probe`] | `probe_facts` | what the probe reports |
//! | [`Place`] | `PLACEMENT`, `reserve`, `move_mapping`, `unmap_guarded_view`, `bti_support` | guard pages, placement near an address (`Config::near`, with [`near`]'s search), BTI (`Config::bti`) |
//! | [`CallTargets`] | `cfg_enforced`, `set_call_targets` | Windows' Control Flow Guard (`Config::cfg_call_targets`) |
//!
//! Each backend is a folder with one file per concern (`memory.rs`, `mirror.rs`, `rights.rs`,
//! `icache.rs`, `fork.rs`, `introspect.rs`, `wait.rs`, `probe.rs`, `place.rs`), each file holding that
//! concern's `impl Trait for Os` (Windows also `cfg.rs`; the others implement [`CallTargets`]
//! with `impl_no_call_targets!`), and a `mod.rs` that declares `pub(crate) struct Os` and
//! `impl Platform for Os {}`:
//!
//! | backend | targets |
//! |---|---|
//! | `linux/` | Linux on x86-64 and AArch64 |
//! | `apple/` | macOS and iOS on x86-64 and AArch64 |
//! | `windows/` | Windows on x86-64 and AArch64 |
//! | `unsupported.rs` | every other target (Linux on riscv64, s390x, wasm32, ...): it compiles, and answers every call with an "unsupported" error that says why, so that crates built on jitmem build there and run without a JIT |
//!
//! POSIX code shared by Linux and Apple is in `posix.rs`, platform-neutral types in
//! `common.rs`, the ISA's cache-maintenance sequence in `arch.rs`.
//!
//! **The compile-time check.** [`Platform`] has every concern trait as a supertrait, and every
//! concern trait's items have no default: a backend whose `Os` lacks a concern, or a function of
//! one, fails to compile at its `impl Platform for Os {}`, and the selected backend must be a
//! `Platform` (the `const _` below) or nothing compiles. The rest of the crate calls the free
//! functions of this module (`sys::page_size()`, ...), thin forwarders to `Os`.
//!
//! **Dependencies.** Code under `sys/` uses only `crate::error` from the crate (and std, libc,
//! windows-sys, mach2). A platform that refuses a strategy outright says so with [`refused`]
//! (`Error::Os` with an `ErrorKind::Unsupported` source); the layers that know the strategy
//! turn that into `Error::Unsupported` ([`refusal`] recognises it).
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): the platform layer makes
//! system calls on memory the crate owns.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use crate::error::{Error, Result};

/// `impl Fork for Os` of a platform without `fork()` or without mirrors (Windows, the
/// unsupported backend): no handlers are needed, none of the hooks is ever reached.
#[cfg_attr(
    all(unix, any(target_arch = "x86_64", target_arch = "aarch64"), not(test)),
    allow(
        unused_macros,
        reason = "used by the Windows and unsupported backends only"
    )
)]
macro_rules! impl_no_fork {
    ($why:literal) => {
        impl $crate::sys::Fork for Os {
            #[doc = concat!("Does nothing and succeeds: ", $why, ".")]
            fn register_atfork(
                _prepare: unsafe extern "C" fn(),
                _parent: unsafe extern "C" fn(),
                _child: unsafe extern "C" fn(),
            ) -> $crate::error::Result<()> {
                Ok(())
            }

            /// Never called: makes no snapshot.
            ///
            /// # Safety
            /// None needed: it touches no memory.
            unsafe fn snapshot_for_fork(
                _rx: std::ptr::NonNull<u8>,
                _used: usize,
            ) -> Option<std::ptr::NonNull<u8>> {
                None
            }

            /// Never called: does nothing.
            ///
            /// # Safety
            /// None needed: it touches no memory.
            unsafe fn discard_snapshot(_snapshot: std::ptr::NonNull<u8>, _used: usize) {}

            /// Never called: does nothing and reports failure.
            ///
            /// # Safety
            /// None needed: it touches no memory.
            unsafe fn install_snapshot_after_fork(
                _snapshot: Option<std::ptr::NonNull<u8>>,
                _rx: std::ptr::NonNull<u8>,
                _len: usize,
                _used: usize,
            ) -> bool {
                false
            }
        }
    };
}
#[cfg_attr(
    all(unix, any(target_arch = "x86_64", target_arch = "aarch64"), not(test)),
    allow(
        unused_imports,
        reason = "used by the Windows and unsupported backends only"
    )
)]
pub(crate) use impl_no_fork;

/// `impl CallTargets for Os` of a platform without Control Flow Guard: nothing enforces call
/// targets, so every address of executable memory is callable and there is nothing to mark.
#[cfg_attr(
    all(
        windows,
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(test)
    ),
    allow(unused_macros, reason = "used by the backends other than Windows")
)]
macro_rules! impl_no_call_targets {
    () => {
        impl $crate::sys::CallTargets for Os {
            /// Never: this platform has no Control Flow Guard.
            fn cfg_enforced() -> bool {
                false
            }

            /// Nothing to mark (never called: [`cfg_enforced`](Self::cfg_enforced) is false).
            fn set_call_targets(
                _base: std::ptr::NonNull<u8>,
                _len: usize,
                _offsets: &[usize],
                _valid: bool,
            ) -> $crate::error::Result<()> {
                Ok(())
            }
        }
    };
}
#[cfg_attr(
    all(
        windows,
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(test)
    ),
    allow(unused_imports, reason = "used by the backends other than Windows")
)]
pub(crate) use impl_no_call_targets;

mod arch;
mod common;
pub(crate) mod near;
pub(crate) use common::*;
pub use common::{Mapping, MirrorBacking, TxmProtocol};

/// Backend selection. Each target condition is written once, in one of these macros, which
/// put it on every item they are given (the `cfg_if` pattern).
macro_rules! on_linux {
    ($($item:item)*) => {$(
        #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
        $item
    )*};
}
macro_rules! on_apple {
    ($($item:item)*) => {$(
        #[cfg(all(target_vendor = "apple", any(target_arch = "x86_64", target_arch = "aarch64")))]
        $item
    )*};
}
macro_rules! on_windows {
    ($($item:item)*) => {$(
        #[cfg(all(windows, any(target_arch = "x86_64", target_arch = "aarch64")))]
        $item
    )*};
}
/// Every target without a backend of its own.
macro_rules! on_other {
    ($($item:item)*) => {$(
        #[cfg(not(all(
            any(target_os = "linux", target_vendor = "apple", windows),
            any(target_arch = "x86_64", target_arch = "aarch64")
        )))]
        $item
    )*};
}

on_linux! {
    mod linux;
    use linux as backend;
}
on_apple! {
    mod apple;
    use apple as backend;
    pub(crate) use apple::{
        code_signing_flags, copy_callback, debugger_attached, freeze_jit_write_callbacks,
        has_entitlement, jit_granted_by_debugger, jit_write_with_callback, register_allow_list,
        txm_detach, txm_protocol,
    };
}
/// Apple decisions as pure functions of the OS's answers (unit-tested on every host).
#[cfg(any(target_vendor = "apple", test))]
pub(crate) mod apple_policy;
/// POSIX code shared by Linux and Apple.
#[cfg(all(
    any(target_os = "linux", target_vendor = "apple"),
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod posix;
/// PerThread's RW shadows under Apple's JIT write allow-list (plain Rust, tested on every host).
pub(crate) mod shadow;
/// The TXM handshakes of iOS 26 (legacy and universal scripts). Compiled for Apple, and for
/// Linux AArch64 and the host's unit tests, which run its logic against fake debuggers.
#[cfg(any(
    target_vendor = "apple",
    all(target_os = "linux", target_arch = "aarch64"),
    test
))]
pub(crate) mod txm;
on_windows! {
    mod windows;
    use windows as backend;
}
on_other! {
    use unsupported as backend;
}
/// Every other target. Also compiled into the host's unit tests, which check its answers.
#[cfg(any(
    test,
    not(all(
        any(target_os = "linux", target_vendor = "apple", windows),
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))
))]
mod unsupported;
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) use unsupported::{
    code_signing_flags, copy_callback, debugger_attached, freeze_jit_write_callbacks,
    has_entitlement, jit_granted_by_debugger, jit_write_with_callback, register_allow_list,
    txm_detach, txm_protocol,
};

/// The platform this crate was built for: the selected backend's `Os`.
pub(crate) use backend::Os;

// ---------------------------------------------------------------------------------------------
// The interface.

/// A complete platform: every concern implemented. Each backend says `impl Platform for Os {}`,
/// which compiles only if its `Os` implements every supertrait.
pub(crate) trait Platform:
    Memory + Mirror + Commit + Rights + Icache + Fork + Introspect + Wait + Probe + Place + CallTargets
{
}

/// The selected backend is a complete [`Platform`].
const _: () = {
    const fn is_platform<P: Platform>() {}
    is_platform::<Os>();
};

/// Private memory: Toggle and Rwx regions, `ExecBuffer`, the probe's trial pages.
///
/// Mapping functions are safe: they create new mappings nobody else knows about. Functions that
/// change or remove existing mappings are `unsafe`: the caller owns what it passes.
pub(crate) trait Memory {
    /// The page size of this process, read once: the unit of every mapping and protection
    /// change. A power of two.
    fn page_size() -> usize;

    /// Maps `len` bytes (a non-zero page multiple) of fresh private memory with `prot`, at an
    /// address the system picks; physical pages are used only when touched. Never `MAP_JIT` on
    /// Apple, so the result may be given to [`Memory::protect`].
    fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>>;

    /// Changes the protection of `[ptr, ptr + len)` (page-aligned, inside one mapping).
    ///
    /// # Safety
    /// The caller owns the range (it was mapped by this crate, never as PerThread memory, and is
    /// still mapped) and nothing relies on the old protection (no other thread runs code there
    /// when execute is removed).
    unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()>;

    /// Unmaps the mapping `[ptr, ptr + len)` made by [`Memory::map_private`] (or
    /// [`Rights::map_per_thread`]). Windows releases whole allocations only, so `ptr` and `len`
    /// are exactly what was mapped.
    ///
    /// # Safety
    /// The caller owns the whole mapping and nothing refers to it any more.
    unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()>;
}

/// Two views of the same pages: the Mirror strategy.
pub(crate) trait Mirror {
    /// Maps `len` bytes (a non-zero page multiple) twice: a read-write view and a read-execute
    /// view of the same pages. The executable view can never be made writable, and a `fork()`
    /// child never inherits the writable one.
    fn map_mirror(len: usize, options: MapOptions) -> Result<MirrorViews>;

    /// Removes one view of a mirror: exactly a view [`Mirror::map_mirror`] returned, whole.
    ///
    /// # Safety
    /// The caller owns the view and nothing refers to it any more.
    unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()>;

    /// What holds the pages of mirrors, once one has been made in this process.
    fn mirror_backing() -> Option<MirrorBacking>;
}

/// Code regions (pooled chunks, the arena, per-allocation blocks) reserved first and committed
/// as they are used. On Windows committed memory counts against the system commit limit at
/// once (`MEM_COMMIT`, a section's default `SEC_COMMIT`), so a 512 MiB arena committed at
/// creation would cost 512 MiB of commit charge and could fail with `ERROR_COMMITMENT_LIMIT`;
/// jitmem reserves regions and commits the pages blocks are handed out from, in
/// [`Commit::commit_granule`] steps. Elsewhere a mapping is usable as mapped (the kernel backs
/// a page when it is first touched) and committing is a no-op (the trait's default methods).
///
/// Kept apart from [`Memory::map_private`] and [`Mirror::map_mirror`], whose mappings are
/// usable at once (`ExecBuffer`, the probe's trial pages).
pub(crate) trait Commit: Memory + Mirror {
    /// Reserves `len` bytes (a non-zero page multiple) of private memory for `prot`; no page is
    /// usable before [`Commit::commit`] (where `commit_granule` is `Some`). Default: the
    /// mapping itself ([`Memory::map_private`]), usable as mapped.
    fn reserve_private(len: usize, prot: Prot, _options: MapOptions) -> Result<NonNull<u8>> {
        Self::map_private(len, prot)
    }

    /// Like [`Mirror::map_mirror`], but both views are only reserved: no page is usable before
    /// it is committed through each view (where `commit_granule` is `Some`). Default: the
    /// mirror itself, usable as mapped.
    fn reserve_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
        Self::map_mirror(len, options)
    }

    /// Commits `[ptr, ptr + len)` (page-aligned) of a reservation with `prot`. Default:
    /// nothing to commit (never called: `commit_granule` is `None`).
    ///
    /// # Safety
    /// The range lies inside a reservation made by this trait that the caller owns, and no page
    /// of it was committed before (committing a committed page would reset its protection,
    /// e.g. under an open Toggle write scope).
    unsafe fn commit(_ptr: NonNull<u8>, _len: usize, _prot: Prot) -> Result<()> {
        Ok(())
    }

    /// `Some(bytes)`: reserved memory must be committed before use, in steps of this many bytes
    /// (a page multiple). `None` (the default): reserved memory is usable as mapped.
    fn commit_granule() -> Option<usize> {
        None
    }

    /// The unit in which the system reserves address space: every mapping takes a multiple of
    /// it (Windows: the 64 KiB allocation granularity; by default the page).
    fn reservation_granularity() -> usize {
        Self::page_size()
    }
}

/// Per-thread write rights: the PerThread strategy.
pub(crate) trait Rights {
    /// Whether a `fork()` child may keep using PerThread memory made before the fork.
    const PER_THREAD_SURVIVES_FORK: bool;

    /// The key under which PerThread memory is mapped, decided once per process; `Err` says, in
    /// words a user can act on, why this process has no per-thread write rights.
    fn thread_rights_token() -> std::result::Result<u32, String>;

    /// Maps `len` bytes of fresh memory executable by every thread and writable only by a
    /// thread inside [`Rights::grant_thread_write_rights`] for `key`.
    fn map_per_thread(len: usize, key: u32) -> Result<NonNull<u8>>;

    /// Grants the calling thread write access to the memory under `key`; returns what
    /// [`Rights::withdraw_thread_write_rights`] needs to withdraw it.
    ///
    /// # Safety
    /// `key` came from [`Rights::thread_rights_token`]; the caller pairs this with
    /// `withdraw_thread_write_rights` on the same thread, and takes responsibility for the rights it grants.
    unsafe fn grant_thread_write_rights(key: u32) -> u32;

    /// Withdraws what [`Rights::grant_thread_write_rights`] granted: never leaves write access behind.
    ///
    /// # Safety
    /// As for `grant_thread_write_rights`, whose return value `saved` is.
    unsafe fn withdraw_thread_write_rights(key: u32, saved: u32);

    /// Lets the calling thread (or the signal handler it is running) read PerThread code as
    /// data, never write it. Async-signal-safe: no system call, no lock, no allocation. Nothing
    /// to do where reading is never restricted (the default).
    fn allow_thread_code_reads() {}

    /// Whether PerThread memory under `key` is written through a private RW *shadow* of each
    /// region, copied into the executable pages at the end of each write scope by
    /// [`Rights::copy_from_shadow`] (Apple under the `jit-write-allowlist` entitlement); then
    /// [`Rights::grant_thread_write_rights`] is never called. False by default.
    fn shadow_writes(_key: u32) -> bool {
        false
    }

    /// With shadow writes: `Ok` when a scope may open now, so that nothing is written to a
    /// shadow that cannot be copied at its end (Apple: the callbacks must be frozen first under
    /// `jit-write-allowlist-freeze-late`). `Ok` by default.
    fn check_shadow_write(_key: u32) -> Result<()> {
        Ok(())
    }

    /// With shadow writes: copies `[dst, dst + len)` of a registered region
    /// ([`shadow::register`]) from its shadow into its executable pages. On failure the
    /// shadow's range is reset from the executable bytes, so the two never disagree. Refused by
    /// default (never reached: no shadow exists there).
    ///
    /// # Safety
    /// The caller holds the write scope over `[dst, dst + len)` that wrote the shadow, so no
    /// other writer touches that range meanwhile.
    unsafe fn copy_from_shadow(_key: u32, _dst: usize, _len: usize) -> Result<()> {
        Err(Error::Internal("no shadow writes on this platform"))
    }
}

/// Instruction-cache coherence.
pub(crate) trait Icache {
    /// Makes `[ptr, ptr + len)` coherent between data writes and instruction fetch.
    ///
    /// # Safety
    /// The range is mapped and readable.
    unsafe fn clear_cache(ptr: *const u8, len: usize);

    /// Makes every thread of the process discard instructions it may have fetched before the
    /// last [`Icache::clear_cache`].
    fn pipeline_flush_mt() -> Result<()>;
}

/// What happens to mirrors across `fork()`. A platform without `fork()` implements these as
/// no-ops that are never reached.
pub(crate) trait Fork {
    /// Registers `prepare`, `parent` and `child` to run around every `fork()`.
    fn register_atfork(
        prepare: unsafe extern "C" fn(),
        parent: unsafe extern "C" fn(),
        child: unsafe extern "C" fn(),
    ) -> Result<()>;

    /// Before a `fork()` (in the parent): a private copy of the first `used` bytes of the
    /// executable view at `rx`, the child's future code; `None` if it could not be made.
    ///
    /// # Safety
    /// `[rx, rx + used)` is mapped and readable (a mirror view made by this crate).
    unsafe fn snapshot_for_fork(rx: NonNull<u8>, used: usize) -> Option<NonNull<u8>>;

    /// In the parent after a `fork()`: drops a snapshot.
    ///
    /// # Safety
    /// `snapshot` came from `snapshot_for_fork(_, used)` and is not used again.
    unsafe fn discard_snapshot(snapshot: NonNull<u8>, used: usize);

    /// In a `fork()` child (the only thread; system calls and `memcpy` only): replaces the
    /// executable view `[rx, rx + len)` by a private read-execute copy of `snapshot`'s `used`
    /// bytes, the rest inaccessible; without a snapshot the whole view becomes inaccessible.
    /// Returns whether it all worked.
    ///
    /// # Safety
    /// `[rx, rx + len)` is a mapping this crate made; `used <= len`, both page multiples;
    /// `snapshot` came from `snapshot_for_fork(rx, used)`.
    unsafe fn install_snapshot_after_fork(
        snapshot: Option<NonNull<u8>>,
        rx: NonNull<u8>,
        len: usize,
        used: usize,
    ) -> bool;
}

/// The process's memory map.
pub(crate) trait Introspect {
    /// Every mapping of this process.
    fn mappings() -> io::Result<Vec<Mapping>>;

    /// How many mappings this process has.
    fn mapping_count() -> io::Result<usize>;

    /// `(mappings now, limit)` where the system limits the number of mappings per process
    /// (Linux's `vm.max_map_count`), to recognise that limit behind a failed mapping.
    fn mapping_limit() -> Option<(usize, usize)>;

    /// The calling thread's stack as `(lowest usable address, size in bytes)`: what the thread
    /// may grow down into, guard page excluded where the system says so. For a process's main
    /// thread that is what its stack may grow to (Linux: `RLIMIT_STACK`).
    fn thread_stack() -> io::Result<(usize, usize)>;
}

/// Sleeping on a lock word (`sync.rs`'s fork-aware lock).
pub(crate) trait Wait {
    /// Waits while `*word == value`: returns when woken, spuriously, or at once if the value
    /// differs. The caller re-checks.
    fn wait_while_equal(word: &AtomicU32, value: u32);

    /// Wakes one thread waiting in [`Wait::wait_while_equal`] on `word`.
    fn wake_one(word: &AtomicU32);
}

/// What the probe reports.
pub(crate) trait Probe {
    /// Every primitive tried for real on one page, the settings that explain a refusal, and
    /// which strategies can work. A page both writable and executable (what only the Rwx
    /// opt-in uses) is mapped only when `rwx_trial` asks for it; otherwise the Rwx verdict is
    /// [`rwx_not_tried`].
    fn probe_facts(rwx_trial: bool) -> ProbeFacts;
}

/// How a platform gives regions guard pages and places them near an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "each backend constructs one variant (Apple and the unsupported backend the same)"
)]
pub(crate) enum Placement {
    /// Neither: regions get no guard pages and `Config::near` is refused.
    Unsupported,
    /// A fresh mapping is moved into a reservation of `guard + len + guard` bytes made with
    /// [`Place::reserve`] (within `near` by [`near::reserve_near`]) by [`Place::move_mapping`]
    /// (Linux: `mremap`).
    MoveIntoReservation,
    /// The region is made where it goes: [`Commit::reserve_private`] and
    /// [`Commit::reserve_mirror`] honour [`MapOptions::guard`] and [`MapOptions::near`]
    /// themselves, and return views that already have their guard pages (Windows, which cannot
    /// move an allocation or a view).
    AtReservation,
}

/// Where regions go: inaccessible reservations (the guard pages around Pooled chunks and the
/// Arena, and the window of `Config::near`) and moving a fresh mapping into one; and whether
/// executable pages can be guarded by BTI.
pub(crate) trait Place {
    /// How this platform makes guard pages and honours `Config::near`.
    const PLACEMENT: Placement;

    /// Reserves `len` bytes (a multiple of the granularity) of inaccessible address space, at
    /// an address the system picks, or exactly at `at` (a multiple of the granularity);
    /// `Ok(None)` when `at` is not available (taken, or beyond the address space).
    fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>>;

    /// Moves the whole mapping `[from, from + len)` to `to`, replacing what was there; the
    /// mapping keeps its pages, protections and flags. On error nothing has moved. Only
    /// called where [`Place::PLACEMENT`] is [`Placement::MoveIntoReservation`].
    ///
    /// # Safety
    /// The caller owns the mapping at `from` (one whole mapping made by this crate, not yet
    /// known to anyone else) and the reservation `[to, to + len)`.
    unsafe fn move_mapping(from: NonNull<u8>, len: usize, to: NonNull<u8>) -> Result<()>;

    /// The address ranges `[start, end)` taken (mapped or reserved) that overlap `[lo, hi)`:
    /// where [`near`]'s search must not put anything. Linux and Apple read the whole memory
    /// map ([`Introspect::mappings`]); Windows walks `VirtualQuery` over the window only.
    fn busy_ranges(lo: usize, hi: usize) -> io::Result<Vec<(usize, usize)>>;

    /// Removes one view of a mirror (`len` bytes at `view`, as [`Commit::reserve_mirror`] and
    /// the placement made it) together with its `guard` bytes of guard pages on each side
    /// (none when `guard` is 0).
    ///
    /// # Safety
    /// The caller owns the view and its guard pages, and nothing refers to them any more.
    unsafe fn unmap_guarded_view(view: NonNull<u8>, len: usize, guard: usize) -> Result<()>;

    /// `Ok` when executable pages can be mapped with `PROT_BTI` (Linux on AArch64 with
    /// `HWCAP2_BTI`); `Err` says why not.
    fn bti_support() -> std::result::Result<(), String>;
}

/// Windows' Control Flow Guard: which locations of executable memory an indirect call may land
/// on (`Config::cfg_call_targets`). Platforms without CFG implement it with
/// `impl_no_call_targets!`. The decisions are in `crate::call_targets`.
pub(crate) trait CallTargets {
    /// Whether this process enforces Control Flow Guard (read once).
    fn cfg_enforced() -> bool;

    /// Marks the locations `base + offsets[i]` valid (`valid`) or invalid indirect-call
    /// targets. `[base, base + len)` is whole pages of one executable allocation made by this
    /// crate; `offsets` are ascending multiples of 16 below `len`. Called only when
    /// [`CallTargets::cfg_enforced`].
    ///
    /// Safe: it changes the process's CFG bitmap only, never memory contents or protections; a
    /// wrong mark lets an indirect call land where it should not (a weaker mitigation) or makes
    /// CFG terminate the process at a call it should allow, and a range that is not executable
    /// memory of this process is refused by the system with an error.
    fn set_call_targets(
        base: NonNull<u8>,
        len: usize,
        offsets: &[usize],
        valid: bool,
    ) -> Result<()>;
}

// ---------------------------------------------------------------------------------------------
// Refusals.

/// The source of an error made by [`refused`]: the platform refuses something outright.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// "This platform refuses `op`, because `reason`": `Error::Os` with an
/// `io::ErrorKind::Unsupported` source whose message is `reason`. Not a failed call (that keeps
/// its OS error): a refusal of the whole strategy or primitive, which the layer that knows the
/// strategy turns into `Error::Unsupported` (see [`refusal`]).
#[cfg_attr(
    target_os = "linux",
    allow(
        dead_code,
        reason = "Linux refuses PerThread through thread_rights_token's reason only"
    )
)]
pub(crate) fn refused(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Os {
        op,
        source: io::Error::new(io::ErrorKind::Unsupported, Refusal(reason.into())),
    }
}

/// The reason of an error made by [`refused`], `None` for any other error (an OS error of kind
/// `Unsupported`, such as `ENOSYS`, is not a refusal).
pub(crate) fn refusal(e: &Error) -> Option<&str> {
    match e {
        Error::Os { source, .. } => source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Refusal>())
            .map(|r| r.0.as_str()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The functions the rest of the crate calls: forwarders to `Os`.

/// [`Memory::page_size`].
#[inline]
pub(crate) fn page_size() -> usize {
    <Os as Memory>::page_size()
}

/// [`Memory::map_private`].
#[inline]
pub(crate) fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
    <Os as Memory>::map_private(len, prot)
}

/// [`Memory::protect`].
///
/// # Safety
/// As [`Memory::protect`].
#[inline]
pub(crate) unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Memory>::protect(ptr, len, prot) }
}

/// [`Memory::unmap`].
///
/// # Safety
/// As [`Memory::unmap`].
#[inline]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Memory>::unmap(ptr, len) }
}

/// [`Mirror::map_mirror`].
#[cfg_attr(
    not(windows),
    allow(
        dead_code,
        reason = "code regions are reserved (reserve_mirror); only the Windows probe maps a usable mirror through here"
    )
)]
#[inline]
pub(crate) fn map_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
    <Os as Mirror>::map_mirror(len, options)
}

/// [`Mirror::unmap_view`].
///
/// # Safety
/// As [`Mirror::unmap_view`].
#[inline]
pub(crate) unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Mirror>::unmap_view(ptr, len) }
}

/// [`Mirror::mirror_backing`].
#[inline]
pub(crate) fn mirror_backing() -> Option<MirrorBacking> {
    <Os as Mirror>::mirror_backing()
}

/// [`Commit::reserve_private`].
#[inline]
pub(crate) fn reserve_private(len: usize, prot: Prot, options: MapOptions) -> Result<NonNull<u8>> {
    <Os as Commit>::reserve_private(len, prot, options)
}

/// [`Commit::reserve_mirror`].
#[inline]
pub(crate) fn reserve_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
    <Os as Commit>::reserve_mirror(len, options)
}

/// [`Commit::commit`].
///
/// # Safety
/// As [`Commit::commit`].
#[inline]
pub(crate) unsafe fn commit(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Commit>::commit(ptr, len, prot) }
}

/// [`Commit::commit_granule`].
#[inline]
pub(crate) fn commit_granule() -> Option<usize> {
    <Os as Commit>::commit_granule()
}

/// [`Commit::reservation_granularity`].
#[inline]
pub(crate) fn reservation_granularity() -> usize {
    <Os as Commit>::reservation_granularity()
}

/// [`Rights::PER_THREAD_SURVIVES_FORK`].
pub(crate) const PER_THREAD_SURVIVES_FORK: bool = <Os as Rights>::PER_THREAD_SURVIVES_FORK;

/// [`Rights::thread_rights_token`].
#[inline]
pub(crate) fn thread_rights_token() -> std::result::Result<u32, String> {
    <Os as Rights>::thread_rights_token()
}

/// [`Rights::map_per_thread`].
#[inline]
pub(crate) fn map_per_thread(len: usize, key: u32) -> Result<NonNull<u8>> {
    <Os as Rights>::map_per_thread(len, key)
}

/// [`Rights::grant_thread_write_rights`].
///
/// # Safety
/// As [`Rights::grant_thread_write_rights`].
#[inline]
pub(crate) unsafe fn grant_thread_write_rights(key: u32) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Rights>::grant_thread_write_rights(key) }
}

/// [`Rights::withdraw_thread_write_rights`].
///
/// # Safety
/// As [`Rights::withdraw_thread_write_rights`].
#[inline]
pub(crate) unsafe fn withdraw_thread_write_rights(key: u32, saved: u32) {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Rights>::withdraw_thread_write_rights(key, saved) }
}

/// [`Rights::allow_thread_code_reads`].
#[inline]
pub(crate) fn allow_thread_code_reads() {
    <Os as Rights>::allow_thread_code_reads()
}

/// [`Rights::shadow_writes`].
#[inline]
pub(crate) fn shadow_writes(key: u32) -> bool {
    <Os as Rights>::shadow_writes(key)
}

/// [`Rights::check_shadow_write`].
#[inline]
pub(crate) fn check_shadow_write(key: u32) -> Result<()> {
    <Os as Rights>::check_shadow_write(key)
}

/// [`Rights::copy_from_shadow`].
///
/// # Safety
/// As [`Rights::copy_from_shadow`].
#[inline]
pub(crate) unsafe fn copy_from_shadow(key: u32, dst: usize, len: usize) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Rights>::copy_from_shadow(key, dst, len) }
}

/// [`Icache::clear_cache`].
///
/// # Safety
/// As [`Icache::clear_cache`].
#[inline]
pub(crate) unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Icache>::clear_cache(ptr, len) }
}

/// [`Icache::pipeline_flush_mt`].
#[inline]
pub(crate) fn pipeline_flush_mt() -> Result<()> {
    <Os as Icache>::pipeline_flush_mt()
}

/// [`Fork::register_atfork`].
pub(crate) fn register_atfork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> Result<()> {
    <Os as Fork>::register_atfork(prepare, parent, child)
}

/// [`Fork::snapshot_for_fork`].
///
/// # Safety
/// As [`Fork::snapshot_for_fork`].
pub(crate) unsafe fn snapshot_for_fork(rx: NonNull<u8>, used: usize) -> Option<NonNull<u8>> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Fork>::snapshot_for_fork(rx, used) }
}

/// [`Fork::discard_snapshot`].
///
/// # Safety
/// As [`Fork::discard_snapshot`].
pub(crate) unsafe fn discard_snapshot(snapshot: NonNull<u8>, used: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Fork>::discard_snapshot(snapshot, used) }
}

/// [`Fork::install_snapshot_after_fork`].
///
/// # Safety
/// As [`Fork::install_snapshot_after_fork`].
pub(crate) unsafe fn install_snapshot_after_fork(
    snapshot: Option<NonNull<u8>>,
    rx: NonNull<u8>,
    len: usize,
    used: usize,
) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Fork>::install_snapshot_after_fork(snapshot, rx, len, used) }
}

/// [`Introspect::mappings`].
pub(crate) fn mappings() -> io::Result<Vec<Mapping>> {
    <Os as Introspect>::mappings()
}

/// [`Introspect::mapping_count`].
pub(crate) fn mapping_count() -> io::Result<usize> {
    <Os as Introspect>::mapping_count()
}

/// [`Introspect::thread_stack`].
pub(crate) fn thread_stack() -> io::Result<(usize, usize)> {
    <Os as Introspect>::thread_stack()
}

/// [`Introspect::mapping_limit`].
#[allow(
    dead_code,
    reason = "part of the interface; only the POSIX mapping-error path asks for it"
)]
pub(crate) fn mapping_limit() -> Option<(usize, usize)> {
    <Os as Introspect>::mapping_limit()
}

/// [`Wait::wait_while_equal`].
#[inline]
pub(crate) fn wait_while_equal(word: &AtomicU32, value: u32) {
    <Os as Wait>::wait_while_equal(word, value)
}

/// [`Wait::wake_one`].
#[inline]
pub(crate) fn wake_one(word: &AtomicU32) {
    <Os as Wait>::wake_one(word)
}

/// [`Place::PLACEMENT`].
pub(crate) const PLACEMENT: Placement = <Os as Place>::PLACEMENT;

/// [`Place::reserve`].
pub(crate) fn reserve(len: usize, at: Option<usize>) -> Result<Option<NonNull<u8>>> {
    <Os as Place>::reserve(len, at)
}

/// [`Place::move_mapping`].
///
/// # Safety
/// As [`Place::move_mapping`].
pub(crate) unsafe fn move_mapping(from: NonNull<u8>, len: usize, to: NonNull<u8>) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Place>::move_mapping(from, len, to) }
}

/// `[view - guard, view + len + guard)`: a view and its guard pages, as one range.
#[cfg_attr(
    windows,
    allow(
        dead_code,
        reason = "Windows releases a view and its guards one by one"
    )
)]
pub(crate) fn guarded_range(
    view: NonNull<u8>,
    len: usize,
    guard: usize,
) -> Result<(NonNull<u8>, usize)> {
    let total = guard
        .checked_mul(2)
        .and_then(|g| g.checked_add(len))
        .ok_or(Error::TooLarge { len })?;
    if (view.as_ptr() as usize) < guard {
        return Err(Error::Internal("guard pages below address 0"));
    }
    let start = NonNull::new(view.as_ptr().wrapping_sub(guard))
        .ok_or(Error::Internal("guard pages at address 0"))?;
    Ok((start, total))
}

/// [`Place::busy_ranges`].
pub(crate) fn busy_ranges(lo: usize, hi: usize) -> io::Result<Vec<(usize, usize)>> {
    <Os as Place>::busy_ranges(lo, hi)
}

/// [`Place::busy_ranges`] from [`Introspect::mappings`]: every mapping that overlaps
/// `[lo, hi)`.
#[cfg_attr(
    windows,
    allow(
        dead_code,
        reason = "Windows walks VirtualQuery over the window instead"
    )
)]
pub(crate) fn busy_from_mappings(lo: usize, hi: usize) -> io::Result<Vec<(usize, usize)>> {
    Ok(mappings()?
        .iter()
        .filter(|m| m.start < hi && m.end > lo)
        .map(|m| (m.start, m.end))
        .collect())
}

/// [`Place::unmap_guarded_view`].
///
/// # Safety
/// As [`Place::unmap_guarded_view`].
pub(crate) unsafe fn unmap_guarded_view(view: NonNull<u8>, len: usize, guard: usize) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { <Os as Place>::unmap_guarded_view(view, len, guard) }
}

/// [`Place::bti_support`].
pub(crate) fn bti_support() -> std::result::Result<(), String> {
    <Os as Place>::bti_support()
}

/// [`CallTargets::cfg_enforced`].
pub(crate) fn cfg_enforced() -> bool {
    <Os as CallTargets>::cfg_enforced()
}

/// [`CallTargets::set_call_targets`].
pub(crate) fn set_call_targets(
    base: NonNull<u8>,
    len: usize,
    offsets: &[usize],
    valid: bool,
) -> Result<()> {
    <Os as CallTargets>::set_call_targets(base, len, offsets, valid)
}

/// [`Probe::probe_facts`].
pub(crate) fn probe_facts(rwx_trial: bool) -> ProbeFacts {
    <Os as Probe>::probe_facts(rwx_trial)
}

/// A callback for `jitmem::apple::jit_write_with_callback`: `int (*)(void *ctx)`, libpthread's
/// `pthread_jit_write_callback_t`. It runs with the calling thread's `MAP_JIT` pages writable
/// (and not executable) and returns a result code that is passed through unchanged.
///
/// Apple's contract for it (`pthread.h`): assume an attacker controls `ctx`, validate it with
/// as little attackable state as possible, and on bad input trap or return a failure code;
/// never unwind or `longjmp` out of it (a panic inside an `extern "C" fn` aborts, which is
/// fine).
#[cfg(target_vendor = "apple")]
pub type JitWriteCallback = extern "C" fn(ctx: *mut std::ffi::c_void) -> std::ffi::c_int;
