//! Apple-only helpers (macOS and iOS): the configurations of seed 000's three iOS JIT modes,
//! whether a debugger has granted JIT, entitlement checks, and allow-listed writes to `MAP_JIT`
//! memory (`pthread_jit_write_with_callback_np`). Signing, entitlements and the run-time
//! fallback to an interpreter are described in `docs/apple.md`.
//!
//! ```no_run
//! # fn main() -> jitmem::Result<()> {
//! use jitmem::apple::{IosMode, ios_mode_config, jit_granted_by_debugger};
//!
//! if !jit_granted_by_debugger() {
//!     // No JIT on this iOS device right now: run the interpreter.
//!     return Ok(());
//! }
//! let txm = false; // the host app decides (seed 000: "Détection TXM (géré par Play!)")
//! let mode = if txm { IosMode::LuckTxm } else { IosMode::LuckNoTxm };
//! let memory = jitmem::JitMemory::new(ios_mode_config(mode))?;
//! # drop(memory); Ok(()) }
//! ```

use std::ffi::{c_int, c_void};

use crate::config::{Config, Layout, Strategy, TxmProtocol};
use crate::error::Result;

/// Seed 000's iOS JIT modes. The host app detects which one applies (iOS version, TXM) and
/// acquires JIT (a debugger attaches); jitmem maps the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IosMode {
    /// iOS before 26: W^X by `mprotect` toggles (Toggle + PerAllocation). Needs JIT granted by
    /// a debugger (`CS_DEBUGGED`, see [`jit_granted_by_debugger`]).
    Legacy,
    /// iOS 26 and later without TXM: an RW mirror of each RX allocation (Mirror +
    /// PerAllocation).
    LuckNoTxm,
    /// iOS 26 and later with TXM: one 512 MiB RX region prepared by the debugger-side script
    /// once and mirrored RW (Mirror + Arena of [`Layout::DEFAULT_ARENA_SIZE`] +
    /// [`TxmProtocol::Auto`]: the legacy scripts' `brk #0x69` on jitmem's region, or StikDebug's
    /// universal script allocating the region itself). Needs the JIT enabler attached while
    /// the arena is made; its prepare step dirties all 512 MiB (see `docs/apple.md`).
    LuckTxm,
}

impl IosMode {
    /// The [`Config`] of this mode (see [`ios_mode_config`]).
    pub fn config(self) -> Config {
        ios_mode_config(self)
    }
}

/// The [`Config`] for one of seed 000's iOS modes: Legacy = Toggle + PerAllocation, LuckNoTXM =
/// Mirror + PerAllocation, LuckTXM = Mirror + 512 MiB Arena + [`Config::txm`]`(Some(`[`TxmProtocol::Auto`]`))`. The
/// strategy and layout are explicit, so `JITMEM_STRATEGY` and `JITMEM_LAYOUT` do not apply.
pub fn ios_mode_config(mode: IosMode) -> Config {
    match mode {
        IosMode::Legacy => Config::new()
            .strategy(Strategy::Toggle)
            .layout(Layout::PerAllocation),
        IosMode::LuckNoTxm => Config::new()
            .strategy(Strategy::Mirror)
            .layout(Layout::PerAllocation),
        IosMode::LuckTxm => Config::new()
            .strategy(Strategy::Mirror)
            .layout(Layout::Arena {
                size: Layout::DEFAULT_ARENA_SIZE,
            })
            .txm(Some(TxmProtocol::Auto)),
    }
}

/// Whether a debugger has granted this process JIT: the `CS_DEBUGGED` code-signing flag
/// (`csops(getpid(), CS_OPS_STATUS)`; the flag is `0x10000000` in XNU's `cs_blobs.h`, "process
/// is currently or has previously been debugged and allowed to run with invalid pages"). On
/// iOS this is what lets an app map executable memory (Legacy and LuckNoTXM). It stays set
/// after the debugger detaches; LuckTXM's handshake needs a debugger attached *now*, see
/// [`debugger_attached`]. False when the flags cannot be read.
#[doc(alias = "csops")]
pub fn jit_granted_by_debugger() -> bool {
    crate::sys::jit_granted_by_debugger()
}

/// Whether a debugger is attached right now (`P_TRACED`, read with `sysctl(KERN_PROC_PID)` as
/// in Apple's Technical Q&A QA1361). False when it cannot be read.
pub fn debugger_attached() -> bool {
    crate::sys::debugger_attached().unwrap_or(false)
}

/// This process's code-signing flags (`csops(getpid(), CS_OPS_STATUS)`): `0x10000` is the
/// hardened runtime (`CS_RUNTIME`), `0x10000000` is `CS_DEBUGGED`.
pub fn code_signing_flags() -> std::io::Result<u32> {
    crate::sys::code_signing_flags()
}

/// Whether this process's signature grants the boolean entitlement `key`, for example
/// `"com.apple.security.cs.allow-jit"` (read with `csops(CS_OPS_ENTITLEMENTS_BLOB)`; an
/// unsigned or ad-hoc signed process without entitlements has none).
pub fn has_entitlement(key: &str) -> std::io::Result<bool> {
    crate::sys::has_entitlement(key)
}

/// Tells StikDebug's universal script to detach (its command 0: `mov x16, #0; brk #0xf00d`),
/// once the app has made every TXM arena it needs. Only on an iOS device, after a universal
/// handshake in this process (a [`TxmProtocol::Auto`] that detected it, or
/// [`TxmProtocol::Universal`]), with a debugger attached (`P_TRACED`; a failed check refuses
/// unless `app_states_debugger`). Afterwards jitmem never traps again: after the debugger
/// detached, any `brk` kills the process with `SIGTRAP`, so new TXM arenas are refused. The
/// legacy scripts have no detach command.
pub fn txm_detach(app_states_debugger: bool) -> Result<()> {
    crate::sys::txm_detach(app_states_debugger)
}

/// The TXM protocol spoken in this process so far: what [`TxmProtocol::Auto`] detected, or the
/// explicit protocol of the last handshake; `None` before any handshake (and off iOS devices).
pub fn txm_protocol() -> Option<TxmProtocol> {
    crate::sys::txm_protocol()
}

pub use crate::sys::JitWriteCallback;

/// Runs `callback(ctx)` with write access to `MAP_JIT` memory through
/// `pthread_jit_write_with_callback_np`, and returns its result.
///
/// **When to use it.** On macOS (11.4+; and iOS 17.4+ in BrowserEngineKit processes), for an
/// app signed with the `com.apple.security.cs.jit-write-allowlist` entitlement (plus
/// `com.apple.security.cs.allow-jit`). That entitlement makes the kernel-backed write window
/// open only for the callbacks listed at build time with [`jit_write_allow_callbacks!`](crate::jit_write_allow_callbacks)
/// (`PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP`), so an attacker who can call functions cannot make
/// `MAP_JIT` memory writable through any other path. It also forbids
/// `pthread_jit_write_protect_np`, so jitmem's PerThread strategy then writes a private RW
/// shadow and copies each write scope into the `MAP_JIT` pages with its own allow-listed
/// callback, which the macro always lists (see `docs/apple.md`); use this function for
/// `MAP_JIT` memory you map and write yourself. Without the
/// entitlement the call simply toggles around the callback, unchecked (libpthread's
/// documented adoption path), and where `pthread_jit_write_protect_supported_np` is false
/// (Intel) it just calls the callback.
///
/// Errors: [`Error::Os`](crate::Error::Os) with `ErrorKind::Unsupported` when the system has
/// no `pthread_jit_write_with_callback_np` (it is looked up at run time).
///
/// # Safety
/// - `ctx` is what `callback` expects (the callback is the one that dereferences it);
/// - this is not called from inside a write callback (Apple: "invalid to call it recursively");
/// - the calling thread is in execute mode: not inside a jitmem PerThread write scope of the
///   in-place kind (without the allow-list), since the call ends by switching the thread to
///   execute mode whatever it was before;
/// - with the allow-list entitlement, `callback` is in this image's allow-list, or libpthread
///   terminates the process.
///
/// ```no_run
/// use std::ffi::{c_int, c_void};
///
/// #[repr(C)]
/// struct CopyJob { dst: *mut u8, src: *const u8, len: usize }
///
/// extern "C" fn copy_code(ctx: *mut c_void) -> c_int {
///     // A real callback validates `dst..dst + len` against its own code region first.
///     let Some(c) = (unsafe { (ctx as *const CopyJob).as_ref() }) else { return -1 };
///     unsafe { std::ptr::copy_nonoverlapping(c.src, c.dst, c.len) };
///     0
/// }
/// jitmem::jit_write_allow_callbacks!(copy_code);
///
/// # fn write(dst: *mut u8, code: &[u8]) -> jitmem::Result<()> {
/// let mut job = CopyJob { dst, src: code.as_ptr(), len: code.len() };
/// // SAFETY: `job` is the CopyJob that copy_code expects; not nested; not inside a write scope.
/// let rc = unsafe {
///     jitmem::apple::jit_write_with_callback(copy_code, (&raw mut job).cast())?
/// };
/// assert_eq!(rc, 0);
/// // SAFETY: the range was just written.
/// unsafe { jitmem::icache::clear_cache(dst, code.len()) };
/// # Ok(()) }
/// ```
#[doc(alias = "pthread_jit_write_with_callback_np")]
pub unsafe fn jit_write_with_callback(
    callback: JitWriteCallback,
    ctx: *mut c_void,
) -> Result<c_int> {
    // SAFETY: forwarded from the caller.
    unsafe { crate::sys::jit_write_with_callback(callback, ctx) }
}

/// `pthread_jit_write_freeze_callbacks_np` (macOS 12.1+): with the
/// `com.apple.security.cs.jit-write-allowlist-freeze-late` entitlement, callbacks of libraries
/// loaded with `dlopen` join the allow-list until this is called, exactly once, after the last
/// such library is loaded and before the first [`jit_write_with_callback`] (which refuses
/// until then in such a process). libpthread terminates the process on a second call, on a
/// call without `jit-write-allowlist-freeze-late`, and on a call without
/// `com.apple.security.cs.jit-write-allowlist`; this checks all three first (a call-once
/// guard and both entitlements; an unreadable entitlement counts as absent) and returns an
/// error instead: [`Error::WrongState`](crate::Error::WrongState) for a second call, an
/// [`Error::Os`](crate::Error::Os) refusal otherwise.
#[doc(alias = "pthread_jit_write_freeze_callbacks_np")]
pub fn freeze_jit_write_callbacks() -> Result<()> {
    crate::sys::freeze_jit_write_callbacks()
}

/// jitmem's own allow-listed callback: PerThread's shadow copy under the
/// `com.apple.security.cs.jit-write-allowlist` entitlement (see the PerThread docs in
/// `docs/apple.md`). [`jit_write_allow_callbacks!`](crate::jit_write_allow_callbacks) always
/// lists it; do not call it or list it yourself. It validates its context: it copies only a
/// copy jitmem armed on this thread for this very `ctx`, only into a live `MAP_JIT` region
/// jitmem mapped, and only from that region's own shadow at the same offset; anything else
/// returns a negative code and writes nothing. Unmangled (one symbol, one address, whatever
/// crate takes it) and never inlined, so that the address in the list is the one jitmem
/// passes to `pthread_jit_write_with_callback_np`.
#[doc(hidden)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn jitmem_pthread_jit_copy_callback(ctx: *mut c_void) -> c_int {
    crate::sys::copy_callback(ctx)
}

/// Called by [`jit_write_allow_callbacks!`](crate::jit_write_allow_callbacks)'s load-time
/// constructor with the image's list, so that PerThread can check that jitmem's callback is
/// listed. Not for direct use.
#[doc(hidden)]
pub fn __register_jit_write_allow_list(list: &'static [Option<JitWriteCallback>]) {
    crate::sys::register_allow_list(list)
}

// `jit_write_allow_callbacks!` lives in its own file so that CI can compile the very same
// macro into a small object for aarch64-apple-darwin and inspect its section
// (ci/apple/allowlist-object).
include!("jit_write_allow_callbacks.rs");

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn first(_ctx: *mut c_void) -> c_int {
        1
    }

    extern "C" fn second(_ctx: *mut c_void) -> c_int {
        2
    }

    jit_write_allow_callbacks!(first, second);

    #[test]
    fn allow_list_ends_with_jitmems_callback_then_null() {
        let list = &JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP;
        assert_eq!(list.len(), 4);
        let addr = |i: usize| list[i].map(|f| f as usize);
        assert_eq!(addr(0), Some(first as JitWriteCallback as usize));
        assert_eq!(addr(1), Some(second as JitWriteCallback as usize));
        assert_eq!(
            addr(2),
            Some(jitmem_pthread_jit_copy_callback as JitWriteCallback as usize)
        );
        assert!(list[3].is_none());
    }

    #[test]
    fn modes_map_to_seed_000() {
        let legacy = ios_mode_config(IosMode::Legacy);
        assert_eq!(legacy.requested_strategy(), Strategy::Toggle);
        assert_eq!(legacy.layout, Some(Layout::PerAllocation));
        assert_eq!(legacy.txm, None);
        let txm = IosMode::LuckTxm.config();
        assert_eq!(txm.requested_strategy(), Strategy::Mirror);
        assert_eq!(
            txm.layout,
            Some(Layout::Arena {
                size: Layout::DEFAULT_ARENA_SIZE
            })
        );
        assert_eq!(txm.txm, Some(TxmProtocol::Auto));
        let no_txm = IosMode::LuckNoTxm.config();
        assert_eq!(no_txm.layout, Some(Layout::PerAllocation));
        assert_eq!(no_txm.txm, None);
    }
}
