//! Per-thread write rights: protection keys (`pkey_alloc`, `pkey_mprotect`, `RDPKRU`/`WRPKRU`),
//! on x86-64 only.

use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;

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
}

const PKEY_DISABLE_WRITE: libc::c_long = 2;

static PKEY: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// [`Rights::thread_rights_token`]: `pkey_alloc`, once.
fn thread_rights_token() -> std::result::Result<u32, String> {
    PKEY.get_or_init(|| {
        if !cfg!(target_arch = "x86_64") {
            return Err("protection keys are supported on x86-64 only".to_owned());
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
    })
    .clone()
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

    /// Withdraws what [`begin`] granted: back to the thread's previous rights for `key`, but
    /// never with write access.
    ///
    /// # Safety
    /// As for `begin`, whose return value `saved` is.
    #[inline]
    pub(super) unsafe fn end(key: u32, saved: u32) {
        let shift = 2 * key;
        let bits = (saved | WRITE_DISABLE) & 0b11;
        // SAFETY: as in begin.
        unsafe {
            let pkru = read();
            write((pkru & !(0b11 << shift)) | (bits << shift));
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
