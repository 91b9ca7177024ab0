//! Status codes, the thread-local last error message, and the guard that keeps Rust panics from
//! crossing the C boundary.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a jitmem C call returns. `JITMEM_STATUS_OK` is 0; every other value comes with a message
/// from `jitmem_last_error()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitmemStatus {
    /// Success.
    Ok = 0,
    /// An argument is invalid: a NULL pointer, an unknown enum value, a bad range.
    InvalidArgument = 1,
    /// A length of zero.
    ZeroLength = 2,
    /// A length too large to map.
    TooLarge = 3,
    /// An alignment that is zero, not a power of two, or above the page size.
    BadAlignment = 4,
    /// The arena is full; live code is unaffected.
    Exhausted = 5,
    /// The strategy cannot work in this process.
    Unsupported = 6,
    /// A pointer that is not (or no longer) a live allocation of this memory: a foreign pointer
    /// or a double free.
    UnknownPointer = 7,
    /// A size that differs from the allocation's.
    SizeMismatch = 8,
    /// Write scopes that do not balance: an end without a begin, a free with a scope open, an end
    /// on another thread than its begin.
    Unbalanced = 9,
    /// The call needs a state the library is not in (e.g. changing the JIT type while
    /// allocations are live).
    WrongState = 10,
    /// A system call failed, or the process reached its mapping limit.
    Os = 11,
    /// The process is a fork() child of the one that made this memory.
    ForkedChild = 12,
    /// A bug in jitmem (including a Rust panic caught at the boundary).
    Internal = 13,
    /// The CodeGen mirror modes (LuckNoTXM, LuckTXM) make nothing writable in place: code is
    /// written through `ptr + jitmem_codegen_writable_diff(ptr, size)`. What
    /// `jitmem_codegen_write_enable` returns there.
    WriteThroughDiff = 14,
}

/// An error on its way to C: a status and a message.
#[derive(Debug)]
pub(crate) struct CError {
    pub(crate) status: JitmemStatus,
    pub(crate) message: String,
}

impl CError {
    pub(crate) fn new(status: JitmemStatus, message: impl Into<String>) -> Self {
        CError {
            status,
            message: message.into(),
        }
    }
}

impl From<jitmem::Error> for CError {
    fn from(e: jitmem::Error) -> Self {
        use jitmem::Error as E;
        let status = match &e {
            E::ZeroLength => JitmemStatus::ZeroLength,
            E::TooLarge { .. } => JitmemStatus::TooLarge,
            E::BadAlignment { .. } => JitmemStatus::BadAlignment,
            E::Exhausted { .. } => JitmemStatus::Exhausted,
            E::Unsupported { .. } | E::RwxNotOptedIn => JitmemStatus::Unsupported,
            E::BadEnvironment { .. } | E::OutOfRange { .. } | E::BadShrink { .. } => {
                JitmemStatus::InvalidArgument
            }
            E::MappingLimit { .. } | E::Os { .. } => JitmemStatus::Os,
            E::WrongState(_) | E::Poisoned(_) => JitmemStatus::WrongState,
            E::ForkedChild { .. } => JitmemStatus::ForkedChild,
            _ => JitmemStatus::Internal,
        };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        CError { status, message }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs `body`, turning its error or panic into a status and the thread's last error message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), CError>) -> JitmemStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            JitmemStatus::Ok
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            set_last_error(&format!(
                "internal error: a panic inside jitmem was stopped at the C boundary: {what}"
            ));
            JitmemStatus::Internal
        }
    }
}

/// The message of the last failed jitmem call on this thread ("" after a success).
///
/// Lifetime: the pointer is valid only until the next jitmem call on this thread other than
/// `jitmem_last_error` / `jitmem_last_error_copy` (every other call rewrites the message, on
/// success too), and never after the thread exits. Copy it before calling jitmem again, or use
/// `jitmem_last_error_copy`.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Copies this thread's last error message into `buf` (`len` bytes), always NUL-terminated
/// when `len > 0` and truncated if it does not fit, and returns the message's length (without
/// the NUL), as `snprintf` does: a result `>= len` means the copy was truncated, and
/// `result + 1` bytes hold the whole message. `buf` may be NULL when `len` is 0 (to ask for the
/// length). Does not change the message.
///
/// # Safety
/// `buf` is NULL with `len == 0`, or points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jitmem_last_error_copy(buf: *mut c_char, len: usize) -> usize {
    LAST_ERROR.with(|e| {
        let message = e.borrow();
        let bytes = message.as_bytes();
        if !buf.is_null() && len > 0 {
            let n = bytes.len().min(len - 1);
            // SAFETY: buf points to len writable bytes (the caller's contract) and n + 1 <= len;
            // the message is a separate allocation, so the ranges do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, n);
                *buf.add(n) = 0;
            }
        }
        bytes.len()
    })
}

/// Self-check of the panic guard: runs a Rust panic inside jitmem and returns what a C caller
/// sees (`JITMEM_STATUS_INTERNAL`, with the panic's message in `jitmem_last_error()`), proving
/// that no panic unwinds into C.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_check_panic_guard() -> JitmemStatus {
    guard(|| {
        #[expect(
            clippy::panic,
            reason = "the point of this function is a panic at the boundary"
        )]
        {
            panic!("deliberate panic to test the boundary")
        }
    })
}

/// Lets the calling thread, or the signal handler it is running, read JIT code as data (never
/// write it): `jitmem::allow_code_reads`. Call it in a signal handler that reads JIT code (a
/// fault handler decoding the faulting instruction) or runs code that reads its own bytes
/// (constant pools), and on a thread older than the library that runs such code without calling
/// jitmem. Only Linux PerThread (protection keys) restricts reads; elsewhere it does nothing.
/// Async-signal-safe: no system call, lock or allocation.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_allow_code_reads() {
    jitmem::allow_code_reads();
}
