//! Sleeping on a lock word: a short sleep (jitmem uses no futex-like wait on Apple; the lock
//! that calls this spins first, and contention on a heap is brief).

use std::sync::atomic::{AtomicU32, Ordering};

use super::Os;
use crate::sys::Wait;

impl Wait for Os {
    /// Sleeps 20 µs if `*word == value`.
    fn wait_while_equal(word: &AtomicU32, value: u32) {
        if word.load(Ordering::Relaxed) == value {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }

    /// Nothing to wake: [`Wait::wait_while_equal`] polls.
    fn wake_one(_word: &AtomicU32) {}
}
