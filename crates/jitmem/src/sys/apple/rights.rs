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

use std::cell::Cell;
use std::ffi::{CStr, c_int, c_void};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

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

    /// Under the `jit-write-allowlist` entitlement ([`SHADOW_TOKEN`]).
    fn shadow_writes(key: u32) -> bool {
        key == SHADOW_TOKEN
    }

    fn check_shadow_write(_key: u32) -> Result<()> {
        with_callback_ready().map(|_| ())
    }

    /// # Safety
    /// The contract of [`Rights::copy_from_shadow`].
    unsafe fn copy_from_shadow(_key: u32, dst: usize, len: usize) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { copy_from_shadow(dst, len) }
    }
}

/// The token of PerThread with in-place writes (`pthread_jit_write_protect_np`).
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    expect(dead_code, reason = "PerThread is refused off Apple silicon Macs")
)]
const TOGGLE_TOKEN: u32 = 0;
/// Why PerThread is refused under the allow-list before macOS 11.4.
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    expect(dead_code, reason = "PerThread is refused off Apple silicon Macs")
)]
const NO_WITH_CALLBACK: &str = "this process has the com.apple.security.cs.jit-write-allowlist entitlement, and pthread_jit_write_with_callback_np (macOS 11.4+) is not available on this system";
/// The token of PerThread with shadow writes (the `jit-write-allowlist` entitlement).
const SHADOW_TOKEN: u32 = 1;

static KEY: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// PerThread on Apple: whether `MAP_JIT` memory with per-thread write protection works here,
/// decided once per process. The "key" says how writes are made: [`TOGGLE_TOKEN`] in place
/// (the rights belong to the thread, for every `MAP_JIT` page at once), [`SHADOW_TOKEN`]
/// through a shadow copied by jitmem's allow-listed callback (the `jit-write-allowlist`
/// entitlement, which forbids `pthread_jit_write_protect_np`).
///
/// Refused on Intel Macs (`pthread_jit_write_protect_np` is a no-op there: `MAP_JIT` pages are
/// writable and executable for every thread at once, which is not W^X), on iOS (the call is
/// SPI, not available to apps), under the allow-list when jitmem's callback is not listed
/// (`jit_write_allow_callbacks!` was not invoked) or `pthread_jit_write_with_callback_np` is
/// missing (before macOS 11.4), and when a `MAP_JIT` mapping is refused (a hardened-runtime
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
    let (probe, writes) = match apple_policy::per_thread_plan(
        &codesign::has_entitlement(codesign::JIT_WRITE_ALLOWLIST),
        &codesign::has_entitlement(codesign::SINGLE_JIT),
        allow_list_state(),
    ) {
        apple_policy::PerThreadPlan::Refuse(why) => return Err(why),
        apple_policy::PerThreadPlan::Accept { probe, writes } => (probe, writes),
    };
    let token = match writes {
        apple_policy::PerThreadWrites::Toggle => TOGGLE_TOKEN,
        apple_policy::PerThreadWrites::Shadow => {
            if with_callback_fn().is_none() {
                return Err(NO_WITH_CALLBACK.to_owned());
            }
            SHADOW_TOKEN
        }
    };
    // With single-jit, one MAP_JIT region per process: a trial page would use it up (defect 7).
    if probe {
        try_map_jit()?;
    }
    Ok(token)
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
    let f = with_callback_ready()?;
    if IN_WRITE_CALLBACK.get() {
        return Err(refused(
            "pthread_jit_write_with_callback_np",
            "called from inside a write callback of this thread (Apple: it is invalid to call it recursively)",
        ));
    }
    IN_WRITE_CALLBACK.set(true);
    // SAFETY: forwarded from the caller: `ctx` is what `callback` expects, the call is not
    // nested in another callback (nor in one started here: IN_WRITE_CALLBACK), and the thread
    // is in execute mode.
    let rc = unsafe { f(callback, ctx) };
    IN_WRITE_CALLBACK.set(false);
    Ok(rc)
}

/// `pthread_jit_write_with_callback_np`, once the rules allow calling it: under
/// `jit-write-allowlist-freeze-late` only after the callbacks were frozen (defect 4).
fn with_callback_ready() -> Result<WithCallback> {
    static FREEZE_LATE: OnceLock<std::result::Result<bool, String>> = OnceLock::new();
    let freeze_late = FREEZE_LATE
        .get_or_init(|| codesign::has_entitlement(JIT_WRITE_ALLOWLIST_FREEZE_LATE).map_err(|e| e.to_string()))
        .clone()
        .map_err(std::io::Error::other);
    apple_policy::with_callback_decision(&freeze_late, FROZEN.load(Ordering::Acquire))
        .map_err(|why| refused("pthread_jit_write_with_callback_np", why))?;
    with_callback_fn().ok_or_else(|| {
        unavailable(
            "pthread_jit_write_with_callback_np",
            "pthread_jit_write_with_callback_np (macOS 11.4+, iOS 17.4+)",
        )
    })
}

thread_local! {
    /// This thread is inside `pthread_jit_write_with_callback_np` called by jitmem.
    static IN_WRITE_CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// The one copy jitmem's callback may make on this thread now: set by
    /// [`copy_from_shadow`] just before it calls libpthread, taken by the callback.
    static ARMED: Cell<Option<Armed>> = const { Cell::new(None) };
}

/// What [`copy_from_shadow`] passes to jitmem's callback, by address, as `ctx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct CopyJob {
    dst: usize,
    len: usize,
}

/// An armed copy: the `ctx` address the callback must be given, and the job itself (the
/// callback reads the job from here, never through `ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Armed {
    ctx: usize,
    job: CopyJob,
}

/// Copies `[dst, dst + len)` of a registered PerThread region from its shadow into its
/// `MAP_JIT` pages, inside `pthread_jit_write_with_callback_np` with jitmem's allow-listed
/// callback ([`copy_callback`]). On failure resets the shadow's range from the code, so that
/// the shadow never holds bytes the code does not.
///
/// # Safety
/// The caller holds the write scope over the range that wrote the shadow.
unsafe fn copy_from_shadow(dst: usize, len: usize) -> Result<()> {
    let job = CopyJob { dst, len };
    let ctx = (&raw const job).cast_mut().cast::<c_void>();
    ARMED.set(Some(Armed {
        ctx: ctx as usize,
        job,
    }));
    let callback: JitWriteCallback = crate::apple::jitmem_pthread_jit_copy_callback;
    // SAFETY: `ctx` is the CopyJob jitmem's callback expects (it only compares its address
    // with the armed job); the call is not nested (refused inside a callback); the thread is in
    // execute mode (shadow writes never call pthread_jit_write_protect_np); the callback is in
    // the allow-list (checked when PerThread was accepted: allow_list_state).
    let result = unsafe { jit_write_with_callback(callback, ctx) };
    ARMED.set(None);
    let failure = match result {
        Ok(0) => return Ok(()),
        Ok(COPY_NOT_ARMED) => Error::Internal("jitmem's copy callback ran without an armed copy"),
        Ok(_) => Error::Internal(
            "jitmem's copy callback refused the destination (not in a live PerThread region)",
        ),
        Err(e) => e,
    };
    let _ = crate::sys::shadow::with_source(dst, len, |src| {
        // SAFETY: `src..src + len` is the registered shadow of `dst..dst + len` (the registry's
        // read lock keeps both mapped); the code is readable in execute mode, the shadow is
        // plain RW memory this thread's scope owns; they never overlap (registration refuses it).
        unsafe { std::ptr::copy_nonoverlapping(dst as *const u8, src as *mut u8, len) }
    });
    Err(failure)
}

/// The callback's answers: 0 copied.
const COPY_NOT_ARMED: c_int = -1;
const COPY_BAD_RANGE: c_int = -2;

/// The body of `jitmem::apple::jitmem_pthread_jit_copy_callback`, which runs inside
/// `pthread_jit_write_with_callback_np` with this thread's `MAP_JIT` pages writable. Apple's
/// contract (`pthread.h`): assume `ctx` is attacker-controlled and validate it with as little
/// attackable state as possible. This copies only if [`copy_from_shadow`] armed a copy on this
/// thread with this very `ctx` (an attacker calling libpthread with the callback directly finds
/// nothing armed), and only into a live registered region from its own shadow at the same
/// offset (`sys::shadow::resolve`): `ctx` is never dereferenced.
pub(crate) fn copy_callback(ctx: *mut c_void) -> c_int {
    let armed = ARMED.try_with(Cell::take).ok().flatten();
    let Some(Armed { job, .. }) = armed.filter(|armed| armed.ctx == ctx as usize) else {
        return COPY_NOT_ARMED;
    };
    crate::sys::shadow::with_source(job.dst, job.len, |src| {
        // SAFETY: [src, src + len) is the registered shadow of [dst, dst + len), a live
        // PerThread region (the read lock keeps both mapped); the MAP_JIT pages are writable
        // for this thread inside the callback; the two never overlap.
        unsafe { copy(src as *const u8, job.dst as *mut u8, job.len) };
        0
    })
    .unwrap_or(COPY_BAD_RANGE)
}

/// Copies `len` bytes; 1, 2, 4 or 8 bytes aligned to their size as one single-copy-atomic
/// store (release order), so that `patch_live` through a shadow keeps its promise.
///
/// # Safety
/// `src` is readable and `dst` writable for `len` bytes, not overlapping.
unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    let aligned = (dst as usize) % len.max(1) == 0 && (src as usize) % len.max(1) == 0;
    // SAFETY: as the caller promises; the atomics are used only at their alignment.
    unsafe {
        match len {
            1 => AtomicU8::from_ptr(dst).store(src.read(), Ordering::Release),
            2 if aligned => {
                AtomicU16::from_ptr(dst.cast()).store(src.cast::<u16>().read(), Ordering::Release);
            }
            4 if aligned => {
                AtomicU32::from_ptr(dst.cast()).store(src.cast::<u32>().read(), Ordering::Release);
            }
            8 if aligned => {
                AtomicU64::from_ptr(dst.cast()).store(src.cast::<u64>().read(), Ordering::Release);
            }
            _ => std::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The registered allow-list (jit_write_allow_callbacks!'s constructor).

/// The list `jit_write_allow_callbacks!` declared, registered by its `__DATA,__mod_init_func`
/// constructor when the image loaded; the first registration wins.
static ALLOW_LIST: OnceLock<&'static [Option<JitWriteCallback>]> = OnceLock::new();

/// Registers the image's allow-list (called by `jit_write_allow_callbacks!`'s constructor).
pub(crate) fn register_allow_list(list: &'static [Option<JitWriteCallback>]) {
    let _ = ALLOW_LIST.set(list);
}

/// Whether jitmem's copy callback is in the registered list, before its NULL.
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    expect(dead_code, reason = "PerThread is refused off Apple silicon Macs")
)]
fn allow_list_state() -> apple_policy::AllowListState {
    let Some(list) = ALLOW_LIST.get() else {
        return apple_policy::AllowListState::NotRegistered;
    };
    let ours = crate::apple::jitmem_pthread_jit_copy_callback as JitWriteCallback as usize;
    if apple_policy::allow_list_has(list.iter().map(|c| c.map(|f| f as usize)), ours) {
        apple_policy::AllowListState::Listed
    } else {
        apple_policy::AllowListState::Missing
    }
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
