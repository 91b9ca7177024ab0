//! Sleeping on a lock word: `futex`.

use std::sync::atomic::AtomicU32;

use super::Os;
use crate::sys::Wait;

impl Wait for Os {
    /// `futex(FUTEX_WAIT_PRIVATE)`.
    fn wait_while_equal(word: &AtomicU32, value: u32) {
        // SAFETY: the futex word is a live, aligned u32 for the duration of the call; FUTEX_WAIT
        // only reads it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                value,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }

    /// `futex(FUTEX_WAKE_PRIVATE, 1)`.
    fn wake_one(word: &AtomicU32) {
        // SAFETY: FUTEX_WAKE on a live, aligned u32 touches no memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            )
        };
    }
}
