//! A lock the fork handlers can hold across `fork()`: [`RawLock`] and [`ForkMutex`].
//!
//! `std::sync::Mutex` cannot be locked in one function (the atfork `prepare` handler) and
//! unlocked in another (`parent`), nor reset in a child whose other threads vanished while
//! holding it. parking_lot's slow-path unlock may wait on a bucket lock that a vanished thread
//! held. So jitmem's heaps use this small lock: one `AtomicU32` (0 free, 1 held, 2 held with
//! waiters), a futex wait on Linux and a short sleep elsewhere, and a [`RawLock::reset`] for the
//! fork child, where the caller is the only thread.
//!
//! Every `ForkMutex` made by a memory is *tracked* ([`crate::fork::track_lock`]): the atfork
//! `prepare` handler takes all of them (after the registry's own lock), so no other thread is
//! inside a heap at the moment of the fork; `parent` releases them and `child` resets them.
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): the fork-aware lock hands out references to the data it guards.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

/// A mutual-exclusion lock without data and without poisoning.
pub(crate) struct RawLock {
    state: AtomicU32,
}

const FREE: u32 = 0;
const HELD: u32 = 1;
const CONTENDED: u32 = 2;

impl RawLock {
    pub(crate) const fn new() -> Self {
        RawLock {
            state: AtomicU32::new(FREE),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) {
        if self
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..100 {
            if self.state.load(Ordering::Relaxed) == FREE
                && self
                    .state
                    .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            std::hint::spin_loop();
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != FREE {
            crate::sys::wait_while_equal(&self.state, CONTENDED);
        }
    }

    /// Releases the lock; the caller holds it.
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.state.swap(FREE, Ordering::Release) == CONTENDED {
            crate::sys::wake_one(&self.state);
        }
    }

    /// In a fork child only (one thread): makes the lock free whoever held it in the parent.
    pub(crate) fn reset(&self) {
        self.state.store(FREE, Ordering::Relaxed);
    }
}

/// Data behind a [`RawLock`].
pub(crate) struct ForkMutex<T> {
    lock: RawLock,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which holds the lock.
unsafe impl<T: Send> Sync for ForkMutex<T> {}
// SAFETY: moving the mutex moves the data.
unsafe impl<T: Send> Send for ForkMutex<T> {}

impl<T> ForkMutex<T> {
    pub(crate) const fn new(data: T) -> Self {
        ForkMutex {
            lock: RawLock::new(),
            data: UnsafeCell::new(data),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> ForkMutexGuard<'_, T> {
        self.lock.lock();
        ForkMutexGuard { mutex: self }
    }

    /// The lock itself, for the fork registry.
    pub(crate) fn raw(&self) -> &RawLock {
        &self.lock
    }
}

/// Holds a [`ForkMutex`]; unlocks when dropped.
pub(crate) struct ForkMutexGuard<'a, T> {
    mutex: &'a ForkMutex<T>,
}

impl<T> Deref for ForkMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no one else reaches the data.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for ForkMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and &mut self makes this the only reference through the guard.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for ForkMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::ForkMutex;

    #[test]
    fn the_lock_excludes_and_counts_right_under_contention() {
        let counter = ForkMutex::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        *counter.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*counter.lock(), 80_000);
    }

    #[test]
    fn reset_frees_a_lock_held_by_someone_else() {
        let m = ForkMutex::new(1);
        let guard = m.lock();
        std::mem::forget(guard);
        m.raw().reset();
        assert_eq!(*m.lock(), 1);
    }
}
