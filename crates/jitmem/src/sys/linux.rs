//! Linux: `memfd_create` mirrors, protection keys, `membarrier`, `/proc`, and the probe.
//!
//! # Safety
//! Every function here that maps, unmaps or re-protects memory is either safe because it only
//! creates *new* mappings nobody else knows about, or `unsafe` with the caller promising that it
//! owns the range it passes. Each `unsafe {}` block says which system call it makes and why the
//! arguments are valid.

use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

pub(crate) use super::posix::{
    discard_snapshot, install_snapshot_after_fork, map_private, page_size, protect,
    register_atfork, snapshot_for_fork, unmap,
};
use super::posix::{map_error, non_null_map};
use super::{MapOptions, Mapping, MirrorBacking, MirrorViews, ProbeFacts, Prot, error_chain};
use crate::error::{Error, Result};

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

/// Maps `len` bytes twice: an RW view and an RX view of the same pages. Tries `memfd_create`
/// first and falls back to duplicated shared anonymous memory; remembers what worked. The RW
/// view is marked `MADV_DONTFORK` so that a `fork()` child never gets write access.
pub(crate) fn map_mirror(len: usize, _options: MapOptions) -> Result<MirrorViews> {
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
pub(crate) mod inject {
    //! Fault injection for the unit tests of this module (per thread).
    use std::cell::Cell;
    thread_local! {
        pub(crate) static REOPEN_FAILS: Cell<bool> = const { Cell::new(false) };
        pub(crate) static DONTFORK_FAILS: Cell<bool> = const { Cell::new(false) };
    }
}

fn memfd_mirror(len: usize) -> Result<MirrorViews> {
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

fn shared_anon_mirror(len: usize) -> Result<MirrorViews> {
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

/// Sleeps while `*word == value` (`futex(FUTEX_WAIT_PRIVATE)`), or until woken or spuriously.
pub(crate) fn wait_while_equal(word: &std::sync::atomic::AtomicU32, value: u32) {
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

/// Wakes one thread sleeping in [`wait_while_equal`] on `word`.
pub(crate) fn wake_one(word: &std::sync::atomic::AtomicU32) {
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

/// Protection-key memory is private: a fork child has a copy-on-write copy with the same key,
/// and inherits the forking thread's PKRU, so it may keep using PerThread memory.
pub(crate) const PER_THREAD_SURVIVES_FORK: bool = true;

/// The mirror backing in use, once one has been set up.
pub(crate) fn mirror_backing() -> Option<MirrorBacking> {
    match MIRROR_BACKING.load(Ordering::Relaxed) {
        BACKING_MEMFD => Some(MirrorBacking::Memfd),
        BACKING_SHARED_ANON => Some(MirrorBacking::SharedAnonymous),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Protection keys (x86-64).

const PKEY_DISABLE_WRITE: libc::c_long = 2;

static PKEY: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// PerThread on Linux: the process's protection key for code pages, allocated on first use (`pkey_alloc`) and kept
/// for the life of the process (keys are scarce: 15 per process).
#[doc(alias = "pkey_alloc")]
pub(crate) fn per_thread_key() -> std::result::Result<u32, String> {
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
                Some(libc::ENOSPC) => "all protection keys of this process are in use".to_owned(),
                _ => format!("pkey_alloc failed: {err}"),
            });
        }
        u32::try_from(key).map_err(|_| "pkey_alloc returned an invalid key".to_owned())
    })
    .clone()
}

/// Maps fresh private memory readable, writable and executable in the page tables and tags it
/// with `key`, so that writes need the thread's rights for that key.
pub(crate) fn map_per_thread(len: usize, key: u32) -> Result<NonNull<u8>> {
    let ptr = map_private(len, Prot::NONE)?;
    // SAFETY: ptr..ptr+len is the fresh mapping above; pkey_mprotect only changes its rights.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pkey_mprotect,
            ptr.as_ptr(),
            len,
            super::posix::native(Prot::RWX) as libc::c_long,
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

/// Reads this thread's PKRU register.
///
/// # Safety
/// The CPU and kernel support protection keys ([`code_pkey`] returned a key); otherwise the
/// instruction raises #UD.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn read_pkru() -> u32 {
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
/// As [`read_pkru`]; and the caller takes responsibility for the rights it grants.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn write_pkru(value: u32) {
    // SAFETY: WRPKRU with ECX = EDX = 0 writes EAX to PKRU; the caller guarantees OSPKE. Not
    // `nomem`: memory accesses must not move across the change of rights.
    unsafe {
        std::arch::asm!("wrpkru", in("eax") value, in("ecx") 0u32, in("edx") 0u32,
            options(nostack, preserves_flags));
    }
}

#[cfg(target_arch = "x86_64")]
const WRITE_DISABLE: u32 = 0b10;

/// Grants this thread write access to pages under `key` (one `WRPKRU`); returns the key's
/// previous rights for [`per_thread_end`].
///
/// # Safety
/// `key` came from [`per_thread_key`]; the caller pairs this with `per_thread_end` on the same
/// thread.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn per_thread_begin(key: u32) -> u32 {
    let shift = 2 * key;
    // SAFETY: a key exists, so the CPU and kernel support PKRU.
    let pkru = unsafe { read_pkru() };
    // SAFETY: as above; grants read and write access for our key only.
    unsafe { write_pkru(pkru & !(0b11 << shift)) };
    (pkru >> shift) & 0b11
}

/// Withdraws what [`per_thread_begin`] granted: back to the thread's previous rights for `key`,
/// but never with write access.
///
/// # Safety
/// As for `per_thread_begin`, whose return value `saved` is.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn per_thread_end(key: u32, saved: u32) {
    let shift = 2 * key;
    let bits = (saved | WRITE_DISABLE) & 0b11;
    // SAFETY: as in per_thread_begin.
    unsafe {
        let pkru = read_pkru();
        write_pkru((pkru & !(0b11 << shift)) | (bits << shift));
    }
}

/// No protection keys off x86-64: [`per_thread_key`] refuses, so this is never reached.
///
/// # Safety
/// Never called: there is no key.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn per_thread_begin(_key: u32) -> u32 {
    0
}

/// See [`per_thread_begin`].
///
/// # Safety
/// Never called: there is no key.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn per_thread_end(_key: u32, _saved: u32) {}

/// Removes one view of a mirror (`munmap`).
///
/// # Safety
/// As [`unmap`].
pub(crate) unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { unmap(ptr, len) }
}

/// Makes `[ptr, ptr + len)` coherent for instruction fetch: the ISA's sequence (Linux has no
/// system call for it on x86-64 or AArch64).
///
/// # Safety
/// The range is mapped and readable.
#[inline]
pub(crate) unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { crate::icache::isa_clear_cache(ptr, len) }
}

// ---------------------------------------------------------------------------------------------
// membarrier: cross-thread instruction pipeline flush.

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 6;

static MEMBARRIER: OnceLock<std::result::Result<(), i32>> = OnceLock::new();

/// Makes every thread of the process execute a core-serialising instruction before it runs
/// further user code (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`), registering the
/// process once first. Costs an IPI to each CPU running one of our threads.
#[doc(alias = "membarrier")]
pub(crate) fn pipeline_flush_mt() -> Result<()> {
    let registered = MEMBARRIER.get_or_init(|| {
        // SAFETY: membarrier registration has no memory-safety preconditions.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                0 as libc::c_long,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOSYS))
        }
    });
    if let Err(code) = registered {
        return Err(Error::Os {
            op: "membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)",
            source: io::Error::from_raw_os_error(*code),
        });
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
            0 as libc::c_long,
        )
    };
    if rc != 0 {
        return Err(Error::last_os("membarrier(PRIVATE_EXPEDITED_SYNC_CORE)"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /proc introspection.

/// Reads `/proc/self/maps`.
pub(crate) fn mappings() -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    Ok(text.lines().filter_map(parse_mapping).collect())
}

fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?.to_owned();
    let name = fields.nth(3).unwrap_or("").to_owned();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        perms,
        name,
    })
}

/// Number of mappings of this process.
pub(crate) fn mapping_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    Ok(text.lines().count())
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `(mappings now, vm.max_map_count)`, to recognise the mapping limit behind an `ENOMEM`.
pub(crate) fn mapping_limit() -> Option<(usize, usize)> {
    Some((mapping_count().ok()?, max_map_count()?))
}

/// `vm.max_map_count`.
fn max_map_count() -> Option<usize> {
    read_sysctl("/proc/sys/vm/max_map_count")?.parse().ok()
}

/// `vm.memfd_noexec` (0: allowed, 1: noexec by default, 2: exec refused), on kernels >= 6.3.
fn memfd_noexec() -> Option<u32> {
    read_sysctl("/proc/sys/vm/memfd_noexec")?.parse().ok()
}

/// The kernel's name and release (`uname`).
fn kernel_version() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_owned();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} ({})",
        field(&uts.sysname),
        field(&uts.release),
        field(&uts.machine)
    )
}

/// Facts about the security policies that can forbid JIT, in words.
fn security_policies() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match read_sysctl("/sys/fs/selinux/enforce") {
        Some(v) if v == "1" => {
            out.push(("SELinux", "enforcing (execmem may be denied)".to_owned()))
        }
        Some(_) => out.push(("SELinux", "permissive".to_owned())),
        None => out.push(("SELinux", "not active".to_owned())),
    }
    let pax = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("PaX:"))
                .map(|l| l.to_owned())
        });
    out.push(("PaX", pax.unwrap_or_else(|| "not present".to_owned())));
    let shm_noexec = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
                .map(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .unwrap_or("")
                        .split(',')
                        .any(|o| o == "noexec")
                })
        });
    out.push((
        "/dev/shm",
        match shm_noexec {
            Some(true) => {
                "mounted noexec (memfd is unaffected; shm_open-based mirrors would fail)".to_owned()
            }
            Some(false) => "mounted exec".to_owned(),
            None => "not mounted".to_owned(),
        },
    ));
    out
}

/// Tries each mirror backing on one page: `(memfd, shared anonymous)`.
fn try_mirrors() -> [std::result::Result<(), String>; 2] {
    let page = page_size();
    let attempt = |f: fn(usize) -> Result<MirrorViews>| {
        let views = f(page).map_err(|e| error_chain(&e))?;
        // SAFETY: the fresh views above.
        let _ = unsafe { unmap(views.rx, page) };
        // SAFETY: as above.
        let _ = unsafe { unmap(views.rw, page) };
        Ok(())
    };
    [attempt(memfd_mirror), attempt(shared_anon_mirror)]
}

/// What the probe needs from Linux: every primitive tried for real on one page, and the
/// settings that explain a refusal.
pub(crate) fn probe_facts() -> ProbeFacts {
    let rwx = super::try_map(Prot::RWX, None);
    let mprotect_exec = super::try_map(Prot::RW, Some(Prot::RX));
    let [memfd, shared_anon] = try_mirrors();
    let pkey = per_thread_key().map(|_| ());
    let membarrier = pipeline_flush_mt().map_err(|e| error_chain(&e));
    let mirror = match (&memfd, &shared_anon) {
        (Ok(()), _) | (_, Ok(())) => Ok(()),
        (Err(a), Err(b)) => Err(format!("memfd: {a}; shared anonymous: {b}")),
    };
    let per_thread = match (&pkey, &rwx) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!(
            "pages must be mapped RWX under a key, and RWX is refused: {e}"
        )),
    };
    let opt = |v: Option<usize>| v.map_or("unknown".to_owned(), |v| v.to_string());
    let mut facts = vec![
        ("vm.max_map_count", opt(max_map_count())),
        ("mappings now", opt(mapping_count().ok())),
        (
            "vm.memfd_noexec",
            memfd_noexec().map_or("absent (kernel < 6.3)".to_owned(), |v| {
                format!(
                    "{v} ({})",
                    match v {
                        0 => "executable memfds allowed",
                        1 => "memfds are noexec unless MFD_EXEC",
                        _ => "executable memfds refused",
                    }
                )
            }),
        ),
    ];
    facts.extend(security_policies());
    ProbeFacts {
        system: kernel_version(),
        facts,
        checks: vec![
            ("RWX anonymous mapping", rwx.clone()),
            ("mprotect RW -> RX", mprotect_exec.clone()),
            ("memfd mirror (exec)", memfd),
            ("shared-anonymous mirror", shared_anon),
            ("protection keys", pkey),
            ("membarrier SYNC_CORE", membarrier),
        ],
        toggle: mprotect_exec,
        mirror,
        per_thread,
        rwx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = parse_mapping("7f00-7f10 rwxp 00000000 00:00 0   [anon:x]").unwrap();
        assert_eq!((m.start, m.end), (0x7f00, 0x7f10));
        assert!(m.is_writable_and_executable());
        let m =
            parse_mapping("1000-2000 r-xs 00000000 00:01 5 /memfd:jitmem-code (deleted)").unwrap();
        assert!(!m.is_writable_and_executable());
        assert_eq!(m.name, "/memfd:jitmem-code");
        assert!(parse_mapping("garbage").is_none());
    }

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
        let count = || mapping_count().unwrap();
        // qemu-user does not map guest mappings 1:1 to host ones: count natively only.
        let exact = std::env::var_os("JITMEM_UNDER_QEMU").is_none();
        inject::REOPEN_FAILS.set(true);
        let before = count();
        let e = memfd_mirror(page).err().expect("refused");
        assert!(e.to_string().contains("O_RDONLY"), "{e}");
        assert!(!exact || count() == before, "nothing left mapped");
        inject::REOPEN_FAILS.set(false);

        inject::DONTFORK_FAILS.set(true);
        let mut makers: Vec<fn(usize) -> Result<MirrorViews>> = vec![memfd_mirror];
        if std::env::var_os("JITMEM_UNDER_QEMU").is_none() {
            makers.push(shared_anon_mirror);
        }
        for make in makers {
            let before = count();
            let e = make(page).err().expect("refused");
            assert!(e.to_string().contains("MADV_DONTFORK"), "{e}");
            assert!(!exact || count() == before, "both views unmapped");
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
