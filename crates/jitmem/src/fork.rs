//! The fork registry (see `fork.md`): every lock a fork child could inherit held, and private
//! copies of Mirror code for the child.
//!
//! Standard atfork discipline. Lock order, the crate's one order:
//!
//! 1. `LOCKS` (the registry of tracked locks);
//! 2. every tracked lock (the heaps': [`crate::sync::ForkMutex`]);
//! 3. `MIRRORS` (the registry of mirrors).
//!
//! Code that takes more than one of them takes them in that order (a heap lock is held while a
//! new chunk's mirror is registered: 2 then 3); nothing takes `LOCKS` while holding a tracked
//! lock. The `prepare` handler takes all of them, so at the fork no other thread is inside a
//! heap or a registry; it snapshots each mirror and records the snapshot's length once.
//! `parent` discards the snapshots and releases everything; `child`, the only thread, installs
//! and publishes each snapshot and resets every lock. (Toggle's write scopes take no lock: each
//! block records its own open scopes.)
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): the atfork handlers run while every lock is held (or in the only thread of a child) and touch registries and mirror views directly.

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use crate::error::Result;
use crate::sync::RawLock;

/// A mirror's executable view, as the fork handler needs it.
pub(crate) struct MirrorRecord {
    pub(crate) rx: NonNull<u8>,
    pub(crate) len: usize,
    /// Page-rounded high-water mark of bytes ever handed out: what the child must copy.
    pub(crate) used: AtomicUsize,
    /// The private copy taken by the atfork `prepare` handler (0: none) and its length, read
    /// once there and used by `parent` and `child` (another thread may raise `used` between
    /// the handlers; the snapshot's length must not follow it).
    snapshot: AtomicUsize,
    snapshot_len: AtomicUsize,
    /// Index in the registry (kept up to date under the registry lock), for O(1) removal.
    slot: AtomicUsize,
}

impl MirrorRecord {
    pub(crate) fn new(rx: NonNull<u8>, len: usize, used: usize) -> Self {
        MirrorRecord {
            rx,
            len,
            used: AtomicUsize::new(used),
            snapshot: AtomicUsize::new(0),
            snapshot_len: AtomicUsize::new(0),
            slot: AtomicUsize::new(usize::MAX),
        }
    }

    fn used_pages(&self) -> usize {
        let page = crate::sys::page_size();
        let used = self.used.load(Ordering::Relaxed);
        used.div_ceil(page).saturating_mul(page).min(self.len)
    }
}

// SAFETY: the record only holds an address and atomics; the memory it names is only touched by
// the fork handlers, while every thread that could change it is excluded (prepare holds the
// locks) or gone (child).
unsafe impl Send for MirrorRecord {}
// SAFETY: as above.
unsafe impl Sync for MirrorRecord {}

/// A list behind a [`RawLock`], which the fork handlers hold across the fork.
struct Registry<T> {
    lock: RawLock,
    entries: UnsafeCell<Vec<T>>,
}

// SAFETY: `entries` is only accessed while `lock` is held (or, in the child handler, by the
// only thread, which inherited it held).
unsafe impl<T: Send> Sync for Registry<T> {}

impl<T> Registry<T> {
    const fn new() -> Self {
        Registry {
            lock: RawLock::new(),
            entries: UnsafeCell::new(Vec::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        self.lock.lock();
        // SAFETY: we hold the lock, so no one else accesses entries.
        let r = f(unsafe { &mut *self.entries.get() });
        self.lock.unlock();
        r
    }

    /// The entries, for the fork handlers.
    ///
    /// # Safety
    /// The caller holds `lock` (prepare/parent) or is the only thread of a fork child whose
    /// parent held it.
    unsafe fn entries(&self) -> &Vec<T> {
        // SAFETY: per the caller, no one else accesses entries now.
        unsafe { &*self.entries.get() }
    }
}

/// A tracked lock: the address of a [`RawLock`] inside a live heap, which unregisters it (with
/// [`untrack_lock`]) before the lock is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
struct LockRef(NonNull<RawLock>);

// SAFETY: a RawLock is Sync; the registry only uses the pointer while the lock is alive (it is
// untracked before its owner drops it).
unsafe impl Send for LockRef {}

static LOCKS: Registry<LockRef> = Registry::new();
static MIRRORS: Registry<Arc<MirrorRecord>> = Registry::new();

static GENERATION: AtomicU64 = AtomicU64::new(0);
static HANDLERS: Once = Once::new();
static HANDLERS_OK: AtomicBool = AtomicBool::new(false);

/// Before the fork, in the parent: take every lock in the crate's order, then a private
/// snapshot of each mirror's used bytes, which becomes the child's code.
unsafe extern "C" fn prepare() {
    LOCKS.lock.lock();
    // SAFETY: we hold LOCKS.
    for lock in unsafe { LOCKS.entries() } {
        // SAFETY: tracked locks are alive until untracked, which needs LOCKS (held).
        unsafe { lock.0.as_ref() }.lock();
    }
    MIRRORS.lock.lock();
    // SAFETY: we hold MIRRORS.
    for record in unsafe { MIRRORS.entries() } {
        // Every heap lock is held: no thread can hand out more of this mirror now.
        let len = record.used_pages();
        // SAFETY: every registered record names a live mirror view made by this crate, readable
        // for `len` bytes (a view a fork child could not replace has `used` 0).
        let snapshot = unsafe { crate::sys::snapshot_for_fork(record.rx, len) };
        record.snapshot_len.store(len, Ordering::Relaxed);
        record.snapshot.store(
            snapshot.map_or(0, |p| p.as_ptr() as usize),
            Ordering::Relaxed,
        );
    }
}

fn take_snapshot(record: &MirrorRecord) -> Option<NonNull<u8>> {
    NonNull::new(record.snapshot.swap(0, Ordering::Relaxed) as *mut u8)
}

/// After the fork, in the parent: drop the snapshots and release every lock.
unsafe extern "C" fn parent() {
    // SAFETY: prepare() took MIRRORS.
    for record in unsafe { MIRRORS.entries() } {
        if let Some(snapshot) = take_snapshot(record) {
            let len = record.snapshot_len.load(Ordering::Relaxed);
            // SAFETY: made by prepare() with this length, unused since.
            unsafe { crate::sys::discard_snapshot(snapshot, len) };
        }
    }
    MIRRORS.lock.unlock();
    // SAFETY: prepare() took LOCKS.
    for lock in unsafe { LOCKS.entries() } {
        // SAFETY: alive (untracking needs LOCKS); prepare() locked it.
        unsafe { lock.0.as_ref() }.unlock();
    }
    LOCKS.lock.unlock();
}

/// After the fork, in the child (the only thread): put each snapshot in place of its shared
/// view, publish it, and reset every lock.
unsafe extern "C" fn child() {
    // SAFETY: prepare() took MIRRORS in the parent; the child inherited it held.
    for record in unsafe { MIRRORS.entries() } {
        let snapshot = take_snapshot(record);
        let len = record.snapshot_len.load(Ordering::Relaxed);
        // SAFETY: the record names a live mirror view; the snapshot was made for it with len.
        let installed = unsafe {
            crate::sys::install_snapshot_after_fork(snapshot, record.rx, record.len, len)
        };
        if !installed {
            // The view was made inaccessible: a later fork of this child must not copy it.
            record.used.store(0, Ordering::Relaxed);
        }
        if installed && len > 0 {
            // The child's code was just copied into fresh pages: publish it (AArch64 and Apple
            // need the cache maintenance).
            // SAFETY: [rx, rx + len) was mapped readable by the install.
            unsafe { crate::icache::publish(record.rx.as_ptr(), len) };
        }
    }
    GENERATION.fetch_add(1, Ordering::SeqCst);
    MIRRORS.lock.reset();
    // SAFETY: the only thread; LOCKS was inherited held.
    for lock in unsafe { LOCKS.entries() } {
        // SAFETY: alive in the child's copy of memory.
        unsafe { lock.0.as_ref() }.reset();
    }
    LOCKS.lock.reset();
}

/// Installs the atfork handlers (once per process). Every `Core` calls it, so the fork
/// generation counts every fork made while jitmem memory exists.
pub(crate) fn ensure_handlers() -> Result<()> {
    HANDLERS.call_once(|| {
        if crate::sys::register_atfork(prepare, parent, child).is_ok() {
            HANDLERS_OK.store(true, Ordering::SeqCst);
        }
    });
    if HANDLERS_OK.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(crate::Error::Internal(
            "pthread_atfork refused our fork handlers",
        ))
    }
}

/// Registers a mirror so that a fork child gets a private copy of it.
pub(crate) fn register(record: Arc<MirrorRecord>) -> Result<()> {
    ensure_handlers()?;
    MIRRORS.with(|entries| {
        record.slot.store(entries.len(), Ordering::Relaxed);
        entries.push(record);
    });
    Ok(())
}

/// Removes a mirror from the registry (before it is unmapped).
pub(crate) fn unregister(record: &Arc<MirrorRecord>) {
    MIRRORS.with(|entries| {
        let i = record.slot.load(Ordering::Relaxed);
        if entries.get(i).is_some_and(|e| Arc::ptr_eq(e, record)) {
            entries.swap_remove(i);
            if let Some(moved) = entries.get(i) {
                moved.slot.store(i, Ordering::Relaxed);
            }
        }
    });
}

/// Tracks `lock` so that a fork waits until no thread holds it and the child gets it free.
///
/// # Safety
/// `lock` stays at its address until [`untrack_lock`] is called for it (its owner calls that in
/// `Drop`, before the lock goes away). Its owner never calls `track_lock` while holding a
/// tracked lock.
pub(crate) unsafe fn track_lock(lock: &RawLock) -> Result<()> {
    ensure_handlers()?;
    LOCKS.with(|entries| entries.push(LockRef(NonNull::from(lock))));
    Ok(())
}

/// Stops tracking `lock` (O(tracked locks): one per heap alive).
pub(crate) fn untrack_lock(lock: &RawLock) {
    let target = LockRef(NonNull::from(lock));
    LOCKS.with(|entries| {
        if let Some(i) = entries.iter().position(|e| *e == target) {
            entries.swap_remove(i);
        }
    });
}

/// How many forks this process is removed from the one that started it (0 in the original
/// process), counting the forks made since jitmem's handlers were installed (by the first
/// `JitMemory`).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}
