//! `MAP_JIT` memory and per-thread write protection: PerThread on Apple silicon Macs
//! (`pthread_jit_write_protect_np`), and the allow-listed writes of
//! `pthread_jit_write_with_callback_np`.
//!
//! References: Apple, "Porting just-in-time compilers to Apple silicon" (map with `MAP_JIT`,
//! toggle with `pthread_jit_write_protect_np`, then `sys_icache_invalidate`); the
//! `pthread_jit_write_protect_np(3)` man page (libpthread-454); libpthread's `pthread.h`
//! (`pthread_jit_write_protect_np` and `pthread_jit_write_protect_supported_np`: macOS 11.0,
//! unavailable on iOS; `pthread_jit_write_with_callback_np`: macOS 11.4;
//! `pthread_jit_write_freeze_callbacks_np`: macOS 12.1).

use std::ffi::{CStr, c_int, c_void};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Os;
use super::codesign::{self, JIT_WRITE_ALLOWLIST_FREEZE_LATE};
use crate::error::{Error, Result};
#[cfg(target_os = "macos")]
use crate::sys::error_chain;
use crate::sys::posix::non_null_map;
#[cfg(target_os = "macos")]
use crate::sys::posix::{page_size, unmap};
use crate::sys::{JitWriteCallback, Rights, apple_policy, refused};

impl Rights for Os {
    /// `MAP_JIT` memory across `fork()` is not documented by Apple (XNU treats JIT regions
    /// specially, and the child's per-thread JIT write state is not specified), so jitmem does
    /// not let a fork child use PerThread memory made before the fork: `Error::ForkedChild`,
    /// and dropping it in the child leaves the mapping alone.
    const PER_THREAD_SURVIVES_FORK: bool = false;

    fn thread_rights_token() -> std::result::Result<u32, String> {
        thread_rights_token()
    }

    fn map_per_thread(len: usize, key: u32) -> Result<NonNull<u8>> {
        map_per_thread(len, key)
    }

    /// `pthread_jit_write_protect_np(0)` on Apple silicon Macs.
    ///
    /// # Safety
    /// The contract of [`Rights::grant_thread_write_rights`]; and no `MAP_JIT` code runs on this thread
    /// until [`Rights::withdraw_thread_write_rights`].
    #[inline]
    unsafe fn grant_thread_write_rights(key: u32) -> u32 {
        // SAFETY: forwarded from the caller.
        unsafe { grant_thread_write_rights(key) }
    }

    /// `pthread_jit_write_protect_np(1)` on Apple silicon Macs.
    ///
    /// # Safety
    /// The contract of [`Rights::withdraw_thread_write_rights`].
    #[inline]
    unsafe fn withdraw_thread_write_rights(key: u32, saved: u32) {
        // SAFETY: forwarded from the caller.
        unsafe { withdraw_thread_write_rights(key, saved) }
    }
}

static KEY: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// PerThread on Apple: whether `MAP_JIT` memory with per-thread write protection works here,
/// decided once per process. The "key" is meaningless on Apple (0): the rights belong to the
/// thread, for every `MAP_JIT` page at once.
///
/// Refused on Intel Macs (`pthread_jit_write_protect_np` is a no-op there: `MAP_JIT` pages are
/// writable and executable for every thread at once, which is not W^X), on iOS (the call is
/// SPI, not available to apps), when the process has the `jit-write-allowlist` entitlement
/// (which forbids the call), and when a `MAP_JIT` mapping is refused (a hardened-runtime
/// process without `com.apple.security.cs.allow-jit`).
fn thread_rights_token() -> std::result::Result<u32, String> {
    KEY.get_or_init(per_thread_support).clone()
}

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
fn per_thread_support() -> std::result::Result<u32, String> {
    // SAFETY: a query without arguments or preconditions.
    if unsafe { libc::pthread_jit_write_protect_supported_np() } == 0 {
        return Err(
            "pthread_jit_write_protect_supported_np says this system has no per-thread JIT write protection"
                .to_owned(),
        );
    }
    match apple_policy::per_thread_plan(
        &codesign::has_entitlement(codesign::JIT_WRITE_ALLOWLIST),
        &codesign::has_entitlement(codesign::SINGLE_JIT),
    ) {
        apple_policy::PerThreadPlan::Refuse(why) => Err(why),
        // One MAP_JIT region per process: a trial page would use it up (defect 7).
        apple_policy::PerThreadPlan::NoProbe => Ok(0),
        apple_policy::PerThreadPlan::Probe => {
            try_map_jit()?;
            Ok(0)
        }
    }
}

#[cfg(all(target_os = "macos", not(target_arch = "aarch64")))]
fn per_thread_support() -> std::result::Result<u32, String> {
    let map_jit = match try_map_jit() {
        Ok(()) => "MAP_JIT mappings work here, but ".to_owned(),
        Err(e) => format!("{e}; and "),
    };
    Err(format!(
        "{map_jit}pthread_jit_write_protect_np exists on Apple silicon (arm64) only: on an Intel Mac MAP_JIT pages are writable and executable for every thread at once, which is not W^X (Mirror or Toggle are used instead)"
    ))
}

#[cfg(not(target_os = "macos"))]
fn per_thread_support() -> std::result::Result<u32, String> {
    Err("pthread_jit_write_protect_np is not available to iOS apps (it is SPI there): use Mirror (seed 000's LuckNoTXM and LuckTXM) or Toggle (Legacy), see jitmem::apple::ios_mode_config".to_owned())
}

/// Maps and unmaps one `MAP_JIT` page, explaining a refusal.
#[cfg(target_os = "macos")]
fn try_map_jit() -> std::result::Result<(), String> {
    let page = page_size();
    match map_jit(page) {
        Ok(ptr) => {
            // SAFETY: the fresh mapping above, unused.
            let _ = unsafe { unmap(ptr, page) };
            Ok(())
        }
        Err(e) => {
            let mut text = error_chain(&e);
            if codesign::code_signing_flags().is_ok_and(|f| f & codesign::CS_RUNTIME != 0) {
                text.push_str(" (hardened runtime: MAP_JIT needs the com.apple.security.cs.allow-jit entitlement, see docs/apple.md)");
            }
            Err(text)
        }
    }
}

/// `mmap(NULL, len, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANON | MAP_JIT)`, as
/// in Apple's porting guide. The kernel grants read-write-execute because of `MAP_JIT`; each
/// thread then sees the pages either writable or executable.
fn map_jit(len: usize) -> Result<NonNull<u8>> {
    // SAFETY: a new anonymous mapping at an address the kernel picks touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANON | libc::MAP_JIT,
            -1,
            0,
        )
    };
    non_null_map(
        ptr,
        "mmap(PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANON | MAP_JIT)",
    )
}

/// Maps fresh `MAP_JIT` memory for PerThread. Never `mprotect` it (see the module docs of
/// `sys::apple`): its state is per thread, changed by [`grant_thread_write_rights`] and
/// [`withdraw_thread_write_rights`] only.
#[doc(alias = "MAP_JIT")]
fn map_per_thread(len: usize, _key: u32) -> Result<NonNull<u8>> {
    map_jit(len)
}

/// What [`grant_thread_write_rights`] reports as the thread's previous mode: execute (write-protected),
/// the mode every thread starts in. The real previous mode cannot be read (there is no getter);
/// `rights.rs` calls `grant_thread_write_rights` only for a thread's outermost scope.
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    expect(dead_code, reason = "PerThread is refused off Apple silicon Macs")
)]
const EXECUTE_MODE: u32 = 1;

/// Switches the calling thread to write mode for every `MAP_JIT` page of the process
/// (`pthread_jit_write_protect_np(0)`): writable, not executable, for this thread only. Returns
/// the mode the thread is assumed to have been in ([`EXECUTE_MODE`]).
///
/// # Safety
/// `key` came from [`thread_rights_token`]; the caller pairs this with [`withdraw_thread_write_rights`] on the same
/// thread and runs no `MAP_JIT` code on this thread in between.
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
#[doc(alias = "pthread_jit_write_protect_np")]
#[inline]
unsafe fn grant_thread_write_rights(_key: u32) -> u32 {
    // SAFETY: thread_rights_token succeeded, so the call is supported and allowed in this process;
    // it changes this thread's view of MAP_JIT pages only.
    unsafe { libc::pthread_jit_write_protect_np(0) };
    EXECUTE_MODE
}

/// Switches the calling thread back to execute mode (`pthread_jit_write_protect_np(1)`), always:
/// write access is never left behind.
///
/// # Safety
/// As for [`grant_thread_write_rights`], whose return value `_saved` is.
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
#[inline]
unsafe fn withdraw_thread_write_rights(_key: u32, _saved: u32) {
    // SAFETY: as in grant_thread_write_rights.
    unsafe { libc::pthread_jit_write_protect_np(1) };
}

/// Never reached off Apple silicon Macs: [`thread_rights_token`] refuses, so no
/// `Rights::ProtectionKey` exists to call it.
///
/// # Safety
/// Never called: there is no key.
#[cfg(not(all(target_os = "macos", target_arch = "aarch64")))]
unsafe fn grant_thread_write_rights(_key: u32) -> u32 {
    0
}

/// See [`grant_thread_write_rights`].
///
/// # Safety
/// Never called: there is no key.
#[cfg(not(all(target_os = "macos", target_arch = "aarch64")))]
unsafe fn withdraw_thread_write_rights(_key: u32, _saved: u32) {}

// ---------------------------------------------------------------------------------------------
// pthread_jit_write_with_callback_np: resolved at run time, because it is missing before macOS
// 11.4 (aarch64-apple-darwin builds run from 11.0) and on iOS before 17.4, and `libc` declares it
// for macOS only.

type WithCallback = unsafe extern "C" fn(callback: JitWriteCallback, ctx: *mut c_void) -> c_int;
type FreezeCallbacks = unsafe extern "C" fn();

/// Looks `name` up in the process's images (`dlsym(RTLD_DEFAULT)`).
fn lookup(name: &CStr) -> Option<NonNull<c_void>> {
    // SAFETY: RTLD_DEFAULT with a NUL-terminated name; dlsym only reads them.
    NonNull::new(unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) })
}

fn with_callback_fn() -> Option<WithCallback> {
    static FN: OnceLock<Option<WithCallback>> = OnceLock::new();
    *FN.get_or_init(|| {
        let symbol = lookup(c"pthread_jit_write_with_callback_np")?;
        // SAFETY: the symbol is libpthread's `int pthread_jit_write_with_callback_np(
        // pthread_jit_write_callback_t, void *)`, whose ABI `WithCallback` spells out.
        Some(unsafe { std::mem::transmute::<*mut c_void, WithCallback>(symbol.as_ptr()) })
    })
}

fn freeze_fn() -> Option<FreezeCallbacks> {
    static FN: OnceLock<Option<FreezeCallbacks>> = OnceLock::new();
    *FN.get_or_init(|| {
        let symbol = lookup(c"pthread_jit_write_freeze_callbacks_np")?;
        // SAFETY: the symbol is libpthread's `void pthread_jit_write_freeze_callbacks_np(void)`.
        Some(unsafe { std::mem::transmute::<*mut c_void, FreezeCallbacks>(symbol.as_ptr()) })
    })
}

fn unavailable(op: &'static str, what: &str) -> Error {
    refused(op, format!("{what} is not available on this system"))
}

/// `pthread_jit_write_with_callback_np(callback, ctx)`: the thread's `MAP_JIT` pages become
/// writable, `callback(ctx)` runs, they become executable again; returns what the callback
/// returned.
///
/// # Safety
/// As `jitmem::apple::jit_write_with_callback`: `ctx` is what `callback` expects, the call is
/// not nested in another callback, the thread is in execute mode, and with the allow-list
/// entitlement `callback` is allow-listed.
#[doc(alias = "pthread_jit_write_with_callback_np")]
pub(crate) unsafe fn jit_write_with_callback(
    callback: JitWriteCallback,
    ctx: *mut c_void,
) -> Result<c_int> {
    static FREEZE_LATE: OnceLock<std::result::Result<bool, String>> = OnceLock::new();
    let freeze_late = FREEZE_LATE
        .get_or_init(|| codesign::has_entitlement(JIT_WRITE_ALLOWLIST_FREEZE_LATE).map_err(|e| e.to_string()))
        .clone()
        .map_err(std::io::Error::other);
    apple_policy::with_callback_decision(&freeze_late, FROZEN.load(Ordering::Acquire))
        .map_err(|why| refused("pthread_jit_write_with_callback_np", why))?;
    let f = with_callback_fn().ok_or_else(|| {
        unavailable(
            "pthread_jit_write_with_callback_np",
            "pthread_jit_write_with_callback_np (macOS 11.4+, iOS 17.4+)",
        )
    })?;
    // SAFETY: forwarded from the caller: `ctx` is what `callback` expects, the call is not
    // nested in another callback, and the thread is in execute mode.
    Ok(unsafe { f(callback, ctx) })
}

/// `pthread_jit_write_freeze_callbacks_np()`, after checking the entitlement that makes it
/// legal.
#[doc(alias = "pthread_jit_write_freeze_callbacks_np")]
pub(crate) fn freeze_jit_write_callbacks() -> Result<()> {
    // Call-once guard (defect 4): claimed before the call, so that two threads cannot both
    // make it; given back only when jitmem refused without calling.
    if FROZEN.swap(true, Ordering::AcqRel) {
        return Err(Error::WrongState(
            "pthread_jit_write_freeze_callbacks_np was already called in this process (libpthread terminates the process on a second call)",
        ));
    }
    let refuse = |why: String| {
        FROZEN.store(false, Ordering::Release);
        Err(refused("pthread_jit_write_freeze_callbacks_np", why))
    };
    if let Err(why) = apple_policy::freeze_decision(
        false,
        &codesign::has_entitlement(codesign::JIT_WRITE_ALLOWLIST),
        &codesign::has_entitlement(JIT_WRITE_ALLOWLIST_FREEZE_LATE),
    ) {
        return refuse(why);
    }
    let Some(f) = freeze_fn() else {
        return refuse(
            "pthread_jit_write_freeze_callbacks_np (macOS 12.1+) is not available on this system"
                .to_owned(),
        );
    };
    // SAFETY: no arguments; both entitlements that make the call legal are present, and
    // FROZEN guarantees this is the process's only call.
    unsafe { f() };
    Ok(())
}

/// Set once `pthread_jit_write_freeze_callbacks_np` was called (or is being called).
static FROZEN: AtomicBool = AtomicBool::new(false);
