//! The fork registry: gives a fork child private copies of Mirror code (see `fork.md`).

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use crate::error::Result;

/// A mirror's executable view, as the fork handler needs it.
pub(crate) struct MirrorRecord {
    pub(crate) rx: NonNull<u8>,
    pub(crate) len: usize,
    /// Page-rounded high-water mark of bytes ever handed out: what the child must copy.
    pub(crate) used: AtomicUsize,
    /// The private copy taken by the atfork `prepare` handler (0: none).
    snapshot: AtomicUsize,
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
            slot: AtomicUsize::new(usize::MAX),
        }
    }
}

// SAFETY: the record only holds an address and atomics; the memory it names is only touched by
// the fork child handler, when a single thread exists.
unsafe impl Send for MirrorRecord {}
// SAFETY: as above.
unsafe impl Sync for MirrorRecord {}

/// The registry of mirrors, behind a spin lock that the atfork `prepare` handler takes so that
/// no other thread holds it at the moment of the fork.
struct Registry {
    locked: AtomicBool,
    entries: UnsafeCell<Vec<Arc<MirrorRecord>>>,
}

// SAFETY: `entries` is only accessed while `locked` is held.
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry {
    locked: AtomicBool::new(false),
    entries: UnsafeCell::new(Vec::new()),
};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static HANDLERS: Once = Once::new();
static HANDLERS_OK: AtomicBool = AtomicBool::new(false);

impl Registry {
    fn lock(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }

    fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<Arc<MirrorRecord>>) -> R) -> R {
        self.lock();
        // SAFETY: we hold the lock, so no one else accesses entries.
        let r = f(unsafe { &mut *self.entries.get() });
        self.unlock();
        r
    }
}

impl MirrorRecord {
    fn used_pages(&self) -> usize {
        let page = crate::sys::page_size();
        let used = self.used.load(Ordering::Relaxed);
        used.div_ceil(page).saturating_mul(page).min(self.len)
    }
}

/// Before the fork, in the parent: take the lock (so no thread holds it at the fork) and a
/// private snapshot of each mirror's used bytes, which becomes the child's code.
unsafe extern "C" fn prepare() {
    REGISTRY.lock();
    // SAFETY: we hold the lock.
    let entries = unsafe { &*REGISTRY.entries.get() };
    for record in entries {
        // SAFETY: every registered record names a live mirror view made by this crate.
        let snapshot = unsafe { crate::sys::snapshot_for_fork(record.rx, record.used_pages()) };
        record.snapshot.store(
            snapshot.map_or(0, |p| p.as_ptr() as usize),
            Ordering::Relaxed,
        );
    }
}

fn take_snapshot(record: &MirrorRecord) -> Option<NonNull<u8>> {
    NonNull::new(record.snapshot.swap(0, Ordering::Relaxed) as *mut u8)
}

/// After the fork, in the parent: drop the snapshots and release the lock.
unsafe extern "C" fn parent() {
    // SAFETY: prepare() took the lock.
    let entries = unsafe { &*REGISTRY.entries.get() };
    for record in entries {
        if let Some(snapshot) = take_snapshot(record) {
            // SAFETY: made by prepare() for this record's used size, unused since.
            unsafe { crate::sys::discard_snapshot(snapshot, record.used_pages()) };
        }
    }
    REGISTRY.unlock();
}

/// After the fork, in the child (the only thread): put each snapshot in place of its shared view.
unsafe extern "C" fn child() {
    // SAFETY: prepare() took the lock in the parent; the child inherited it held.
    let entries = unsafe { &*REGISTRY.entries.get() };
    for record in entries {
        let snapshot = take_snapshot(record);
        // SAFETY: the record names a live mirror view; the snapshot was made for it.
        unsafe {
            crate::sys::install_snapshot_after_fork(
                snapshot,
                record.rx,
                record.len,
                record.used_pages(),
            )
        };
    }
    GENERATION.fetch_add(1, Ordering::SeqCst);
    REGISTRY.unlock();
}

/// Installs the atfork handlers (once per process).
fn ensure_handlers() -> Result<()> {
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
    REGISTRY.with(|entries| {
        record.slot.store(entries.len(), Ordering::Relaxed);
        entries.push(record);
    });
    Ok(())
}

/// Removes a mirror from the registry (before it is unmapped).
pub(crate) fn unregister(record: &Arc<MirrorRecord>) {
    REGISTRY.with(|entries| {
        let i = record.slot.load(Ordering::Relaxed);
        if entries.get(i).is_some_and(|e| Arc::ptr_eq(e, record)) {
            entries.swap_remove(i);
            if let Some(moved) = entries.get(i) {
                moved.slot.store(i, Ordering::Relaxed);
            }
        }
    });
}

/// How many forks this process is removed from the one that started it (0 in the original
/// process). Memory made in an earlier generation has lost its writable mirror views.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}
