//! Mirrors: an executable `memfd_create` file mapped twice, its RX view from a read-only
//! descriptor; the fallback is shared anonymous memory duplicated by `mremap(old_size = 0)`.
//! The RW view is `MADV_DONTFORK`.

use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use super::Os;
use crate::error::{Error, Result};
use crate::sys::posix::{non_null_map, protect, unmap};
use crate::sys::{MapOptions, Mirror, MirrorBacking, MirrorViews, Prot};

impl Mirror for Os {
    /// Tries `memfd_create` first and falls back to duplicated shared anonymous memory;
    /// remembers what worked. The RW view is marked `MADV_DONTFORK` so that a `fork()` child
    /// never gets write access.
    fn map_mirror(len: usize, _options: MapOptions) -> Result<MirrorViews> {
        map_mirror(len)
    }

    /// `munmap`.
    ///
    /// # Safety
    /// The contract of [`Mirror::unmap_view`].
    unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { unmap(ptr, len) }
    }

    fn mirror_backing() -> Option<MirrorBacking> {
        match MIRROR_BACKING.load(Ordering::Relaxed) {
            BACKING_MEMFD => Some(MirrorBacking::Memfd),
            BACKING_SHARED_ANON => Some(MirrorBacking::SharedAnonymous),
            _ => None,
        }
    }
}

const BACKING_UNKNOWN: u8 = 0;
const BACKING_MEMFD: u8 = 1;
const BACKING_SHARED_ANON: u8 = 2;
static MIRROR_BACKING: AtomicU8 = AtomicU8::new(BACKING_UNKNOWN);

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

/// [`Mirror::map_mirror`]: the backing that worked last, else memfd, then shared anonymous.
fn map_mirror(len: usize) -> Result<MirrorViews> {
    match MIRROR_BACKING.load(Ordering::Relaxed) {
        BACKING_MEMFD => return memfd_mirror(len),
        BACKING_SHARED_ANON => return shared_anon_mirror(len),
        _ => {}
    }
    match memfd_mirror(len) {
        Ok(views) => {
            MIRROR_BACKING.store(BACKING_MEMFD, Ordering::Relaxed);
            Ok(views)
        }
        Err(memfd_error) => match shared_anon_mirror(len) {
            Ok(views) => {
                MIRROR_BACKING.store(BACKING_SHARED_ANON, Ordering::Relaxed);
                Ok(views)
            }
            Err(_) => Err(memfd_error),
        },
    }
}

fn memfd_create_exec() -> Result<Fd> {
    let name = c"jitmem-code";
    // SAFETY: name is a valid NUL-terminated string; memfd_create returns a new descriptor.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 6.3 do not know MFD_EXEC (every memfd is executable there).
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    }
    if fd < 0 {
        return Err(Error::last_os("memfd_create(MFD_CLOEXEC | MFD_EXEC)"));
    }
    Ok(Fd(fd))
}

/// Re-opens a memfd read-only through `/proc/self/fd`, so that a mapping made from it can never
/// be given write permission (the kernel clears `VM_MAYWRITE`).
/// Without it the memfd backing is refused (never an RX view from the writable descriptor).
fn reopen_read_only(fd: &Fd) -> Result<Fd> {
    let path = format!("/proc/self/fd/{}\0", fd.0);
    let path = CStr::from_bytes_with_nul(path.as_bytes())
        .map_err(|_| Error::Internal("a descriptor path with a NUL"))?;
    #[cfg(test)]
    if inject::REOPEN_FAILS.get() {
        return Err(Error::Os {
            op: "open(/proc/self/fd/N, O_RDONLY) (injected)",
            source: io::Error::from_raw_os_error(libc::EACCES),
        });
    }
    // SAFETY: path is a valid C string; open returns a new descriptor or -1.
    let ro = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if ro < 0 {
        return Err(Error::last_os(
            "open(/proc/self/fd/N, O_RDONLY): the executable view needs a read-only descriptor",
        ));
    }
    Ok(Fd(ro))
}

/// Marks a mirror's RW view `MADV_DONTFORK`, so that a `fork()` child never has it; on failure
/// unmaps both views and refuses the mirror (a child able to write the parent's code is not a
/// mirror we hand out).
fn dont_fork_rw(views: MirrorViews, len: usize) -> Result<MirrorViews> {
    // SAFETY: rw is our own mapping; MADV_DONTFORK only changes what a child inherits.
    let rc = unsafe { libc::madvise(views.rw.as_ptr().cast(), len, libc::MADV_DONTFORK) };
    #[cfg(test)]
    let rc = if inject::DONTFORK_FAILS.get() { -1 } else { rc };
    if rc != 0 {
        let e = Error::last_os("madvise(MADV_DONTFORK) on the writable view");
        // SAFETY: both views were created by our caller and are ours alone.
        unsafe {
            let _ = unmap(views.rx, len);
            let _ = unmap(views.rw, len);
        }
        return Err(e);
    }
    Ok(views)
}

#[cfg(test)]
mod inject {
    //! Fault injection for the unit tests of this module (per thread).
    use std::cell::Cell;
    thread_local! {
        pub(crate) static REOPEN_FAILS: Cell<bool> = const { Cell::new(false) };
        pub(crate) static DONTFORK_FAILS: Cell<bool> = const { Cell::new(false) };
    }
}

pub(super) fn memfd_mirror(len: usize) -> Result<MirrorViews> {
    let fd = memfd_create_exec()?;
    let size = libc::off_t::try_from(len).map_err(|_| Error::TooLarge { len })?;
    // SAFETY: fd is our memfd; ftruncate sets its size.
    if unsafe { libc::ftruncate(fd.0, size) } != 0 {
        return Err(Error::last_os("ftruncate(memfd)"));
    }
    // SAFETY: a new shared mapping of our own memfd.
    let rw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            fd.0,
            0,
        )
    };
    let rw = non_null_map(rw, "mmap(memfd, PROT_READ | PROT_WRITE)")?;
    let exec_fd = match reopen_read_only(&fd) {
        Ok(f) => f,
        Err(e) => {
            // SAFETY: rw was mapped just above and is not shared with anyone.
            let _ = unsafe { unmap(rw, len) };
            return Err(e);
        }
    };
    let exec_source = exec_fd.0;
    // SAFETY: a new shared mapping of our own memfd.
    let rx = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_SHARED,
            exec_source,
            0,
        )
    };
    let rx = match non_null_map(rx, "mmap(memfd, PROT_READ | PROT_EXEC)") {
        Ok(rx) => rx,
        Err(e) => {
            // SAFETY: rw was mapped just above and is not shared with anyone.
            let _ = unsafe { unmap(rw, len) };
            return Err(e);
        }
    };
    dont_fork_rw(MirrorViews { rx, rw }, len)
}

pub(super) fn shared_anon_mirror(len: usize) -> Result<MirrorViews> {
    // SAFETY: a new shared anonymous mapping.
    let rw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    let rw = non_null_map(rw, "mmap(MAP_SHARED | MAP_ANONYMOUS)")?;
    // SAFETY: mremap with old_size 0 on a shared mapping creates a second mapping of the same
    // pages at a new address; rw stays valid.
    let rx = unsafe { libc::mremap(rw.as_ptr().cast(), 0, len, libc::MREMAP_MAYMOVE) };
    let rx = match non_null_map(rx, "mremap(old_size = 0)") {
        Ok(rx) => rx,
        Err(e) => {
            // SAFETY: rw was mapped above and is ours alone.
            let _ = unsafe { unmap(rw, len) };
            return Err(e);
        }
    };
    // SAFETY: rx is the mapping created just above.
    if let Err(e) = unsafe { protect(rx, len, Prot::RX) } {
        // SAFETY: both views were created above and are ours alone.
        let _ = unsafe { unmap(rx, len) };
        // SAFETY: as above.
        let _ = unsafe { unmap(rw, len) };
        return Err(e);
    }
    dont_fork_rw(MirrorViews { rx, rw }, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mapping_count;
    use crate::sys::posix::page_size;

    #[test]
    fn memfd_rx_view_cannot_become_writable() {
        let page = page_size();
        let views = memfd_mirror(page).unwrap();
        // SAFETY: test-owned fresh views.
        let err = unsafe { protect(views.rx, page, Prot::RW) };
        assert!(
            err.is_err(),
            "the executable view must never be made writable"
        );
        // SAFETY: test-owned fresh views.
        unsafe {
            unmap(views.rx, page).unwrap();
            unmap(views.rw, page).unwrap();
        }
    }

    #[test]
    fn mirror_views_share_pages() {
        let page = page_size();
        let mut all = vec![memfd_mirror(page).unwrap()];
        match shared_anon_mirror(page) {
            Ok(views) => all.push(views),
            // qemu-user cannot emulate mremap(old_size = 0); CI says when it runs under qemu.
            Err(e) if std::env::var_os("JITMEM_UNDER_QEMU").is_some() => {
                eprintln!("note: shared-anonymous mirror not tested under qemu-user: {e}");
            }
            Err(e) => panic!("shared-anonymous mirror: {e}"),
        }
        for views in all {
            // SAFETY: test-owned views of one page each.
            unsafe {
                views.rw.as_ptr().write_volatile(0xAB);
                assert_eq!(views.rx.as_ptr().read_volatile(), 0xAB);
                unmap(views.rx, page).unwrap();
                unmap(views.rw, page).unwrap();
            }
        }
    }

    /// The memfd backing is refused, never weakened, when the read-only reopen fails; a mirror
    /// whose writable view cannot be kept from fork children is refused (both views unmapped).
    #[test]
    fn mirrors_are_refused_rather_than_weakened() {
        let page = page_size();
        // qemu-user does not map guest mappings 1:1 to host ones: count natively only. Other
        // tests of this binary map and unmap on other threads, so a leak is what shows on
        // every one of a few tries (their mappings come and go; a leaked one stays).
        let exact = std::env::var_os("JITMEM_UNDER_QEMU").is_none();
        let leaves_nothing_mapped = |make: fn(usize) -> Result<MirrorViews>, needle: &str| {
            (0..20).any(|_| {
                let before = mapping_count().unwrap();
                let e = make(page).err().expect("refused");
                assert!(e.to_string().contains(needle), "{e}");
                mapping_count().unwrap() == before
            })
        };
        inject::REOPEN_FAILS.set(true);
        assert!(
            leaves_nothing_mapped(memfd_mirror, "O_RDONLY") || !exact,
            "nothing left mapped"
        );
        inject::REOPEN_FAILS.set(false);

        inject::DONTFORK_FAILS.set(true);
        let mut makers: Vec<fn(usize) -> Result<MirrorViews>> = vec![memfd_mirror];
        if exact {
            makers.push(shared_anon_mirror);
        }
        for make in makers {
            assert!(
                leaves_nothing_mapped(make, "MADV_DONTFORK") || !exact,
                "both views unmapped"
            );
        }
        inject::DONTFORK_FAILS.set(false);
        let views = memfd_mirror(page).unwrap();
        // SAFETY: test-owned fresh views.
        unsafe {
            unmap(views.rx, page).unwrap();
            unmap(views.rw, page).unwrap();
        }
    }
}
