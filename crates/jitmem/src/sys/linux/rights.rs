//! Per-thread write rights: protection keys (`pkey_alloc`, `pkey_mprotect`, `RDPKRU`/`WRPKRU`),
//! on x86-64 only.
//!
//! **Read rights.** A key's rights live in each thread's PKRU register. `pkey_alloc` sets them
//! for the calling thread only; a new thread copies its creator's PKRU; every other thread, and
//! every signal handler, holds the kernel's default for the key: *access disabled*
//! (`init_pkru_value`, arch/x86/mm/pkeys.c). Keys do not govern instruction fetch, so such a
//! thread runs PerThread code until the code reads its own bytes as data (a RIP-relative
//! constant, a fault handler decoding the faulting instruction) and then dies of `SIGSEGV`
//! (`SEGV_PKUERR`). Seen in CI's emulated-PKU VM (`tests/per_thread_rights.rs`). Three
//! measures, from the widest:
//! 1. The key is allocated when the program is loaded (an `.init_array` constructor, before
//!    `main` and before any thread a Rust program starts), with reads allowed and writes
//!    denied, so every thread created afterwards inherits those rights. `JITMEM_PKEY_AT_LOAD=0`
//!    leaves it to the first PerThread memory (keys are scarce: 15 per process).
//! 2. A write scope's end leaves the thread with reads allowed, whatever it held before.
//! 3. [`crate::allow_code_reads`] (and [`CodeBlock::entry`](crate::CodeBlock::entry) for
//!    PerThread blocks) grants reads to the calling thread or signal handler.

use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::Os;
use crate::error::Result;
use crate::sys::posix::{self, map_error, map_private, unmap};
use crate::sys::{Prot, Rights};

impl Rights for Os {
    /// Protection-key memory is private: a fork child has a copy-on-write copy with the same
    /// key, and inherits the forking thread's PKRU, so it may keep using PerThread memory.
    const PER_THREAD_SURVIVES_FORK: bool = true;

    /// The process's protection key for code pages, allocated on first use (`pkey_alloc`) and
    /// kept for the life of the process (keys are scarce: 15 per process).
    #[doc(alias = "pkey_alloc")]
    fn thread_rights_token() -> std::result::Result<u32, String> {
        thread_rights_token()
    }

    /// Maps fresh private memory readable, writable and executable in the page tables and tags
    /// it with `key` (`pkey_mprotect`), so that writes need the thread's rights for that key.
    fn map_per_thread(len: usize, key: u32) -> Result<NonNull<u8>> {
        map_per_thread(len, key)
    }

    /// One `WRPKRU` granting write access to pages under `key`; returns the key's previous
    /// rights.
    ///
    /// # Safety
    /// The contract of [`Rights::grant_thread_write_rights`].
    #[inline]
    unsafe fn grant_thread_write_rights(key: u32) -> u32 {
        // SAFETY: forwarded from the caller.
        unsafe { pkru::begin(key) }
    }

    /// Back to the thread's previous rights for `key`, but never with write access.
    ///
    /// # Safety
    /// The contract of [`Rights::withdraw_thread_write_rights`].
    #[inline]
    unsafe fn withdraw_thread_write_rights(key: u32, saved: u32) {
        // SAFETY: forwarded from the caller.
        unsafe { pkru::end(key, saved) }
    }

    /// Clears the access-disable bit of the process's key in this thread's PKRU (a `RDPKRU`,
    /// and a `WRPKRU` only when it was set); nothing before the key exists.
    #[inline]
    fn allow_thread_code_reads() {
        let key = READ_KEY.load(Ordering::Acquire);
        if key != NO_KEY {
            // SAFETY: a key exists, so the CPU and kernel support PKRU; only the access-disable
            // bit of our own key is cleared (write-disable is kept).
            unsafe { pkru::allow_reads(key) }
        }
    }
}

const PKEY_DISABLE_WRITE: libc::c_long = 2;

static PKEY: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// No key (yet): the value of [`READ_KEY`] and [`LOAD_KEY`] before one exists.
const NO_KEY: u32 = u32::MAX;

/// The process's key once [`thread_rights_token`] has it: read by
/// [`Rights::allow_thread_code_reads`], which must not touch [`PKEY`] in a signal handler.
static READ_KEY: AtomicU32 = AtomicU32::new(NO_KEY);

/// The key allocated at load time by [`allocate_key_at_load`], or `NO_KEY` (not tried, or
/// failed: [`thread_rights_token`] then tries again and says why it failed).
static LOAD_KEY: AtomicU32 = AtomicU32::new(NO_KEY);

/// Runs when the program (or the library holding jitmem) is loaded, before `main`: see the
/// module docs. Only a system call and atomics: no allocation, no std runtime.
extern "C" fn allocate_key_at_load() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    // SAFETY: getenv with a NUL-terminated name; no other thread exists yet in a program being
    // loaded, and the result is only compared, not kept.
    let opt_out = unsafe {
        let value = libc::getenv(c"JITMEM_PKEY_AT_LOAD".as_ptr());
        !value.is_null() && *value == b'0' as libc::c_char
    };
    if opt_out {
        return;
    }
    // SAFETY: as in thread_rights_token.
    let key =
        unsafe { libc::syscall(libc::SYS_pkey_alloc, 0 as libc::c_long, PKEY_DISABLE_WRITE) };
    if let Ok(key) = u32::try_from(key) {
        LOAD_KEY.store(key, Ordering::Release);
    }
}

/// [`allocate_key_at_load`] in `.init_array`, which the linker keeps (`KEEP` in its default
/// script) whenever this object file is linked; [`thread_rights_token`] refers to it so that it
/// is linked wherever PerThread can be used.
#[used]
#[unsafe(link_section = ".init_array")]
static ALLOCATE_KEY_AT_LOAD: extern "C" fn() = allocate_key_at_load;

/// [`Rights::thread_rights_token`]: the key allocated at load time, else `pkey_alloc` now, once.
fn thread_rights_token() -> std::result::Result<u32, String> {
    let token = PKEY.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") {
            return Err("protection keys are supported on x86-64 only".to_owned());
        }
        std::hint::black_box(&ALLOCATE_KEY_AT_LOAD);
        let loaded = LOAD_KEY.load(Ordering::Acquire);
        if loaded != NO_KEY {
            return Ok(loaded);
        }
        // SAFETY: pkey_alloc has no memory-safety preconditions; it sets this thread's rights
        // for the new key to "write disabled".
        let key =
            unsafe { libc::syscall(libc::SYS_pkey_alloc, 0 as libc::c_long, PKEY_DISABLE_WRITE) };
        if key < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOSYS) => "the kernel has no pkey_alloc system call".to_owned(),
                Some(libc::EINVAL) => {
                    "the CPU or kernel does not support protection keys (no PKU/OSPKE)".to_owned()
                }
                // Some kernels answer ENOSPC, not EINVAL, when the CPU has no PKU: ask the CPU.
                Some(libc::ENOSPC) if !cpu_has_pku() => {
                    "the CPU does not support protection keys (no pku flag in /proc/cpuinfo)"
                        .to_owned()
                }
                Some(libc::ENOSPC) => "all protection keys of this process are in use".to_owned(),
                _ => format!("pkey_alloc failed: {err}"),
            });
        }
        u32::try_from(key).map_err(|_| "pkey_alloc returned an invalid key".to_owned())
    });
    if let Ok(key) = token {
        READ_KEY.store(*key, Ordering::Release);
    }
    token.clone()
}

/// [`Rights::map_per_thread`]: `mmap(PROT_NONE)`, then `pkey_mprotect(RWX, key)`.
fn map_per_thread(len: usize, key: u32) -> Result<NonNull<u8>> {
    let ptr = map_private(len, Prot::NONE)?;
    // SAFETY: ptr..ptr+len is the fresh mapping above; pkey_mprotect only changes its rights.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pkey_mprotect,
            ptr.as_ptr(),
            len,
            posix::native(Prot::RWX) as libc::c_long,
            key as libc::c_long,
        )
    };
    if rc != 0 {
        let err = map_error("pkey_mprotect(PROT_READ | PROT_WRITE | PROT_EXEC)");
        // SAFETY: the fresh mapping above, unused.
        let _ = unsafe { unmap(ptr, len) };
        return Err(err);
    }
    Ok(ptr)
}

/// The PKRU register (x86-64).
#[cfg(target_arch = "x86_64")]
mod pkru {
    const WRITE_DISABLE: u32 = 0b10;

    /// Reads this thread's PKRU register.
    ///
    /// # Safety
    /// The CPU and kernel support protection keys (`thread_rights_token` returned a key); otherwise
    /// the instruction raises #UD.
    #[inline]
    unsafe fn read() -> u32 {
        let value: u32;
        // SAFETY: RDPKRU with ECX = 0 reads PKRU into EAX and clears EDX; the caller guarantees
        // OSPKE is enabled.
        unsafe {
            std::arch::asm!("rdpkru", in("ecx") 0u32, out("eax") value, out("edx") _,
                options(nostack, preserves_flags));
        }
        value
    }

    /// Writes this thread's PKRU register.
    ///
    /// # Safety
    /// As [`read`]; and the caller takes responsibility for the rights it grants.
    #[inline]
    unsafe fn write(value: u32) {
        // SAFETY: WRPKRU with ECX = EDX = 0 writes EAX to PKRU; the caller guarantees OSPKE. Not
        // `nomem`: memory accesses must not move across the change of rights.
        unsafe {
            std::arch::asm!("wrpkru", in("eax") value, in("ecx") 0u32, in("edx") 0u32,
                options(nostack, preserves_flags));
        }
    }

    /// Grants this thread write access to pages under `key` (one `WRPKRU`); returns the key's
    /// previous rights for [`end`].
    ///
    /// # Safety
    /// `key` came from `thread_rights_token`; the caller pairs this with `end` on the same thread.
    #[inline]
    pub(super) unsafe fn begin(key: u32) -> u32 {
        let shift = 2 * key;
        // SAFETY: a key exists, so the CPU and kernel support PKRU.
        let pkru = unsafe { read() };
        // SAFETY: as above; grants read and write access for our key only.
        unsafe { write(pkru & !(0b11 << shift)) };
        (pkru >> shift) & 0b11
    }

    /// Withdraws what [`begin`] granted: the thread keeps read access (see the module docs:
    /// a thread that had none may still run code that reads itself) and never keeps write access.
    ///
    /// # Safety
    /// As for `begin`, whose return value `saved` is.
    #[inline]
    pub(super) unsafe fn end(key: u32, _saved: u32) {
        let shift = 2 * key;
        let bits = WRITE_DISABLE;
        // SAFETY: as in begin.
        unsafe {
            let pkru = read();
            write((pkru & !(0b11 << shift)) | (bits << shift));
        }
    }

    /// Clears `key`'s access-disable bit in this thread's PKRU (writes stay as they were): one
    /// `RDPKRU`, and a `WRPKRU` only when the bit was set. Async-signal-safe.
    ///
    /// # Safety
    /// `key` came from `thread_rights_token`.
    #[inline]
    pub(super) unsafe fn allow_reads(key: u32) {
        const ACCESS_DISABLE: u32 = 0b01;
        let shift = 2 * key;
        // SAFETY: a key exists, so the CPU and kernel support PKRU.
        let pkru = unsafe { read() };
        if pkru & (ACCESS_DISABLE << shift) != 0 {
            // SAFETY: as above; grants reads, never writes, for our key only.
            unsafe { write(pkru & !(ACCESS_DISABLE << shift)) };
        }
    }
}

/// No protection keys off x86-64: `thread_rights_token` refuses, so these are never reached.
#[cfg(not(target_arch = "x86_64"))]
mod pkru {
    /// Never called: there is no key.
    ///
    /// # Safety
    /// Never called: there is no key.
    pub(super) unsafe fn begin(_key: u32) -> u32 {
        0
    }

    /// Never called: there is no key.
    ///
    /// # Safety
    /// Never called: there is no key.
    pub(super) unsafe fn end(_key: u32, _saved: u32) {}

    /// Never called: there is no key.
    ///
    /// # Safety
    /// Never called: there is no key.
    pub(super) unsafe fn allow_reads(_key: u32) {}
}

/// True when `/proc/cpuinfo` lists the `pku` flag (x86-64's protection keys; false elsewhere or
/// when the file cannot be read).
fn cpu_has_pku() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|flag| flag == "pku"))
    })
}
