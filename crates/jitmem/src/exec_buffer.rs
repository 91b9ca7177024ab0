//! [`ExecBuffer`]: seed 001's one-shot object. One owned, page-rounded buffer: write it, make it
//! executable, make it writable again. For JITs that emit one function at a time and do not need
//! an allocator; everyone else wants [`JitMemory`](crate::JitMemory).
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): seed 001's buffer maps, protects and unmaps its own pages and hands out entry points.

use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::fn_ptr::FnPtr;
use crate::icache;
use crate::sys::{self, Prot};

/// One page-rounded mapping that is either writable (RW) or executable (RX), never both.
/// Freed when dropped. Moving it moves ownership (the Rust form of the seed's move semantics).
///
/// ```
/// # fn main() -> jitmem::Result<()> {
/// let mut buffer = jitmem::ExecBuffer::new(6)?;
/// assert_eq!(buffer.len(), jitmem::page_size());
/// buffer.as_mut_slice()?[..16].copy_from_slice(&jitmem::isa::return_constant(42));
/// buffer.make_executable()?;
/// // SAFETY: the buffer holds a complete `extern "C" fn() -> u32`.
/// let f: extern "C" fn() -> u32 = unsafe { buffer.entry(0)? };
/// assert_eq!(f(), 42);
/// buffer.make_writable()?; // patch, then make_executable again
/// # Ok(()) }
/// ```
pub struct ExecBuffer {
    ptr: NonNull<u8>,
    len: usize,
    executable: bool,
}

// SAFETY: the buffer owns its mapping exclusively.
unsafe impl Send for ExecBuffer {}
// SAFETY: &ExecBuffer only reads the address, length and state.
unsafe impl Sync for ExecBuffer {}

/// The page size of this process.
pub fn page_size() -> usize {
    sys::page_size()
}

/// `size` rounded up to a whole number of pages; an error for 0 or on overflow.
pub fn round_to_page(size: usize) -> Result<usize> {
    if size == 0 {
        return Err(Error::ZeroLength);
    }
    crate::heap::round_up(size, page_size())
        .filter(|n| *n <= isize::MAX as usize)
        .ok_or(Error::TooLarge { len: size })
}

impl ExecBuffer {
    /// Maps `size` bytes rounded up to pages, readable and writable (one `mmap`).
    pub fn new(size: usize) -> Result<ExecBuffer> {
        let len = round_to_page(size)?;
        let ptr = sys::map_private(len, Prot::RW)?;
        Ok(ExecBuffer {
            ptr,
            len,
            executable: false,
        })
    }

    /// Size in bytes (a page multiple).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the buffer is executable (else writable).
    pub fn is_executable(&self) -> bool {
        self.executable
    }

    /// The buffer's address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The bytes, for writing. [`Error::WrongState`] while executable.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        if self.executable {
            return Err(Error::WrongState(
                "the buffer is executable: call make_writable before writing",
            ));
        }
        // SAFETY: the mapping is ours, RW, `len` bytes, and &mut self makes the slice unique.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// Makes the buffer read-execute and coherent for instruction fetch (`mprotect`). Does
    /// nothing if it already is.
    pub fn make_executable(&mut self) -> Result<()> {
        if self.executable {
            return Ok(());
        }
        // SAFETY: our own mapping; no code runs from it while it is writable.
        unsafe { sys::protect(self.ptr, self.len, Prot::RX)? };
        // SAFETY: mapped and readable.
        unsafe { icache::publish(self.ptr.as_ptr(), self.len) };
        self.executable = true;
        Ok(())
    }

    /// Makes the buffer read-write again (`mprotect`); its code must not run meanwhile. Does
    /// nothing if it already is.
    pub fn make_writable(&mut self) -> Result<()> {
        if !self.executable {
            return Ok(());
        }
        // SAFETY: our own mapping; &mut self means no entry pointer is being created now, and
        // the caller's contract for entry() says calls end before the buffer changes.
        unsafe { sys::protect(self.ptr, self.len, Prot::RW)? };
        self.executable = false;
        Ok(())
    }

    /// A function pointer to the code at `offset`. [`Error::WrongState`] while writable.
    ///
    /// # Safety
    /// As [`CodeBlock::entry`](crate::CodeBlock::entry); and the buffer must stay executable
    /// (no `make_writable`) while the pointer is in use.
    pub unsafe fn entry<F: FnPtr>(&self, offset: usize) -> Result<F> {
        if !self.executable {
            return Err(Error::WrongState(
                "the buffer is writable: call make_executable first",
            ));
        }
        // SAFETY: forwarded from the caller; the buffer is executable (checked).
        unsafe { crate::fn_ptr::entry_at(self.ptr, self.len, offset) }
    }
}

impl Drop for ExecBuffer {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        let _ = unsafe { sys::unmap(self.ptr, self.len) };
    }
}

impl std::fmt::Debug for ExecBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecBuffer")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("executable", &self.executable)
            .finish()
    }
}
