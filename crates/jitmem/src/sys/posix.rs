//! POSIX primitives shared by Linux and Apple: `mmap`, `mprotect`, `munmap`, `sysconf`, and the
//! fork hooks (`pthread_atfork`, private snapshots of shared code).
//!
//! # Safety
//! Functions that map memory are safe: they create new mappings nobody else knows about.
//! Functions that change or remove existing mappings are `unsafe`, and their callers promise
//! that they own the range.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Prot;
use crate::error::{Error, Result};

pub(crate) fn native(prot: Prot) -> libc::c_int {
    let mut p = libc::PROT_NONE;
    if prot.read() {
        p |= libc::PROT_READ;
    }
    if prot.write() {
        p |= libc::PROT_WRITE;
    }
    if prot.exec() {
        p |= libc::PROT_EXEC;
    }
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    if prot.bti() {
        p |= libc::PROT_BTI;
    }
    p
}

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The page size of this process (`sysconf(_SC_PAGESIZE)`), read once.
#[doc(alias = "sysconf")]
pub(crate) fn page_size() -> usize {
    let cached = PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = usize::try_from(raw)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096);
    PAGE_SIZE.store(size, Ordering::Relaxed);
    size
}

/// Turns a failed mapping call into an error, recognising the mapping-count limit.
pub(crate) fn map_error(op: &'static str) -> Error {
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ENOMEM) {
        if let Some((count, max)) = super::mapping_limit() {
            // The kernel refuses at max_map_count; a split may need two more.
            if count + 3 >= max {
                return Error::MappingLimit { count, max, source };
            }
        }
    }
    Error::Os { op, source }
}

pub(crate) fn non_null_map(ptr: *mut libc::c_void, op: &'static str) -> Result<NonNull<u8>> {
    if ptr == libc::MAP_FAILED {
        return Err(map_error(op));
    }
    NonNull::new(ptr.cast::<u8>()).ok_or(Error::Internal("mmap returned a null address"))
}

/// Maps `len` bytes of fresh private anonymous memory with `prot` (`mmap(MAP_PRIVATE |
/// MAP_ANONYMOUS | MAP_NORESERVE)`): physical pages are used only when touched.
#[doc(alias = "mmap")]
pub(crate) fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
    // SAFETY: a new anonymous mapping at an address the kernel picks touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            native(prot),
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    non_null_map(ptr, "mmap(MAP_PRIVATE | MAP_ANONYMOUS)")
}

/// Changes the protection of `[ptr, ptr + len)` (`mprotect`).
///
/// # Safety
/// The caller owns the range (it was mapped by this crate and is still mapped) and nothing
/// relies on the old protection (no other thread runs code there when execute is removed).
#[doc(alias = "mprotect")]
pub(crate) unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
    // SAFETY: the caller owns the page-aligned range; mprotect does not move memory.
    let rc = unsafe { libc::mprotect(ptr.as_ptr().cast(), len, native(prot)) };
    if rc != 0 {
        return Err(map_error("mprotect"));
    }
    Ok(())
}

/// Unmaps `[ptr, ptr + len)` (`munmap`).
///
/// # Safety
/// The caller owns the range and nothing refers to it any more.
#[doc(alias = "munmap")]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
    // SAFETY: the caller owns the mapping and gives it up.
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    if rc != 0 {
        return Err(Error::last_os("munmap"));
    }
    Ok(())
}

/// Before a `fork()` (atfork `prepare`, in the parent): copies the first `used` bytes of the
/// executable view at `rx` into a fresh private mapping, the child's future code. Taking the copy
/// before the fork means no write the parent makes after `fork()` returns can reach it.
///
/// # Safety
/// `[rx, rx + used)` is mapped and readable (a mirror view made by this crate).
pub(crate) unsafe fn snapshot_for_fork(rx: NonNull<u8>, used: usize) -> Option<NonNull<u8>> {
    if used == 0 {
        return None;
    }
    // SAFETY: a new private anonymous mapping.
    let copy = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            used,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if copy == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: both ranges are mapped for `used` bytes and do not overlap (copy is fresh).
    unsafe { std::ptr::copy_nonoverlapping(rx.as_ptr(), copy.cast::<u8>(), used) };
    NonNull::new(copy.cast::<u8>())
}

/// In the parent after a `fork()`: drops a snapshot made by [`snapshot_for_fork`].
///
/// # Safety
/// `snapshot` came from `snapshot_for_fork(_, used)` and is not used again.
pub(crate) unsafe fn discard_snapshot(snapshot: NonNull<u8>, used: usize) {
    // SAFETY: forwarded from the caller.
    let _ = unsafe { unmap(snapshot, used) };
}

/// In a `fork()` child: replaces the shared executable view `[rx, rx + len)` by a private copy
/// of the `snapshot` of its first `used` bytes (the rest stays reserved and inaccessible), so
/// that the parent's later writes and frees never change the child's code. Runs in the atfork
/// child handler, where only this thread exists: system calls and `memcpy` only. Without a snapshot (it could not
/// be made) the whole view becomes inaccessible: a fault, never code the parent may rewrite.
///
/// # Safety
/// `[rx, rx + len)` is a mapping this crate made; `used <= len`, both page multiples;
/// `snapshot` came from `snapshot_for_fork(rx, used)`.
pub(crate) unsafe fn install_snapshot_after_fork(
    snapshot: Option<NonNull<u8>>,
    rx: NonNull<u8>,
    len: usize,
    used: usize,
) -> bool {
    let mut ok = used == 0 || snapshot.is_some();
    if let Some(copy) = snapshot {
        // SAFETY: replaces [rx, rx + used) of our own view by fresh private memory...
        let fresh = unsafe {
            libc::mmap(
                rx.as_ptr().cast(),
                used,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        ok = fresh != libc::MAP_FAILED;
        if ok {
            // SAFETY: ...fills it from the snapshot (both `used` bytes, distinct mappings)...
            unsafe { std::ptr::copy_nonoverlapping(copy.as_ptr(), rx.as_ptr(), used) };
            // SAFETY: ...and makes it read-execute.
            ok = unsafe {
                libc::mprotect(rx.as_ptr().cast(), used, libc::PROT_READ | libc::PROT_EXEC)
            } == 0;
        }
        // SAFETY: the child's inherited copy of the snapshot is no longer needed.
        unsafe { libc::munmap(copy.as_ptr().cast(), used) };
    }
    if ok && used < len {
        // SAFETY: replaces the unused tail of our own reservation with inaccessible memory.
        let tail = unsafe {
            libc::mmap(
                rx.as_ptr().add(used).cast(),
                len - used,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        ok = tail != libc::MAP_FAILED;
    }
    if !ok {
        // SAFETY: our own mapping.
        unsafe { libc::mprotect(rx.as_ptr().cast(), len, libc::PROT_NONE) };
    }
    ok
}

/// Registers `prepare`, `parent` and `child` to run around every `fork()` (`pthread_atfork`).
pub(crate) fn register_atfork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> Result<()> {
    // SAFETY: the handlers are plain extern "C" functions that live for the whole program.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        return Err(Error::Os {
            op: "pthread_atfork",
            source: io::Error::from_raw_os_error(rc),
        });
    }
    Ok(())
}

/// `impl Memory for Os` and `impl Fork for Os` of a POSIX backend (Linux, Apple): the
/// functions above, once. Each backend's `memory.rs` and `fork.rs` invoke the matching macro.
macro_rules! impl_memory {
    () => {
        impl $crate::sys::Memory for Os {
            #[inline]
            fn page_size() -> usize {
                $crate::sys::posix::page_size()
            }

            fn map_private(
                len: usize,
                prot: $crate::sys::Prot,
            ) -> $crate::error::Result<std::ptr::NonNull<u8>> {
                $crate::sys::posix::map_private(len, prot)
            }

            /// `mprotect`.
            ///
            /// # Safety
            /// The contract of [`Memory::protect`]($crate::sys::Memory::protect).
            unsafe fn protect(
                ptr: std::ptr::NonNull<u8>,
                len: usize,
                prot: $crate::sys::Prot,
            ) -> $crate::error::Result<()> {
                // SAFETY: forwarded from the caller.
                unsafe { $crate::sys::posix::protect(ptr, len, prot) }
            }

            /// `munmap`.
            ///
            /// # Safety
            /// The contract of [`Memory::unmap`]($crate::sys::Memory::unmap).
            unsafe fn unmap(ptr: std::ptr::NonNull<u8>, len: usize) -> $crate::error::Result<()> {
                // SAFETY: forwarded from the caller.
                unsafe { $crate::sys::posix::unmap(ptr, len) }
            }
        }
    };
}
pub(crate) use impl_memory;

/// See [`impl_memory`]: the POSIX fork hooks (`pthread_atfork`, private snapshots).
macro_rules! impl_fork {
    () => {
        impl $crate::sys::Fork for Os {
            fn register_atfork(
                prepare: unsafe extern "C" fn(),
                parent: unsafe extern "C" fn(),
                child: unsafe extern "C" fn(),
            ) -> $crate::error::Result<()> {
                $crate::sys::posix::register_atfork(prepare, parent, child)
            }

            /// # Safety
            /// The contract of [`Fork::snapshot_for_fork`]($crate::sys::Fork::snapshot_for_fork).
            unsafe fn snapshot_for_fork(
                rx: std::ptr::NonNull<u8>,
                used: usize,
            ) -> Option<std::ptr::NonNull<u8>> {
                // SAFETY: forwarded from the caller.
                unsafe { $crate::sys::posix::snapshot_for_fork(rx, used) }
            }

            /// # Safety
            /// The contract of [`Fork::discard_snapshot`]($crate::sys::Fork::discard_snapshot).
            unsafe fn discard_snapshot(snapshot: std::ptr::NonNull<u8>, used: usize) {
                // SAFETY: forwarded from the caller.
                unsafe { $crate::sys::posix::discard_snapshot(snapshot, used) }
            }

            /// # Safety
            /// The contract of
            /// [`Fork::install_snapshot_after_fork`]($crate::sys::Fork::install_snapshot_after_fork).
            unsafe fn install_snapshot_after_fork(
                snapshot: Option<std::ptr::NonNull<u8>>,
                rx: std::ptr::NonNull<u8>,
                len: usize,
                used: usize,
            ) -> bool {
                // SAFETY: forwarded from the caller.
                unsafe { $crate::sys::posix::install_snapshot_after_fork(snapshot, rx, len, used) }
            }
        }
    };
}
pub(crate) use impl_fork;
