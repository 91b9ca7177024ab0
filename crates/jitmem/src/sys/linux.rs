//! Linux: `mmap`/`mprotect`, `memfd_create` mirrors, protection keys, `membarrier`, `/proc`.
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
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// A set of page protections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prot(u8);

impl Prot {
    pub(crate) const NONE: Prot = Prot(0);
    pub(crate) const RW: Prot = Prot(0b011);
    pub(crate) const RX: Prot = Prot(0b101);
    pub(crate) const RWX: Prot = Prot(0b111);

    fn native(self) -> libc::c_int {
        let mut p = libc::PROT_NONE;
        if self.0 & 0b001 != 0 {
            p |= libc::PROT_READ;
        }
        if self.0 & 0b010 != 0 {
            p |= libc::PROT_WRITE;
        }
        if self.0 & 0b100 != 0 {
            p |= libc::PROT_EXEC;
        }
        p
    }
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
fn map_error(op: &'static str) -> Error {
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ENOMEM) {
        if let (Ok(count), Some(max)) = (mapping_count(), max_map_count()) {
            // The kernel refuses at max_map_count; a split may need two more.
            if count + 3 >= max {
                return Error::MappingLimit { count, max, source };
            }
        }
    }
    Error::Os { op, source }
}

fn non_null_map(ptr: *mut libc::c_void, op: &'static str) -> Result<NonNull<u8>> {
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
            prot.native(),
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
    let rc = unsafe { libc::mprotect(ptr.as_ptr().cast(), len, prot.native()) };
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

/// What holds the pages behind a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorBacking {
    /// A `memfd_create` file, its executable view mapped from a read-only descriptor so that
    /// the executable view can never be made writable.
    Memfd,
    /// Shared anonymous memory duplicated with `mremap(old_size = 0)`: the fallback when
    /// `vm.memfd_noexec` or a policy forbids executable memfds.
    SharedAnonymous,
}

/// The two views of a mirror.
pub(crate) struct MirrorViews {
    pub(crate) rx: NonNull<u8>,
    pub(crate) rw: NonNull<u8>,
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

/// Maps `len` bytes twice: an RW view and an RX view of the same pages. Tries `memfd_create`
/// first and falls back to duplicated shared anonymous memory; remembers what worked. The RW
/// view is marked `MADV_DONTFORK` so that a `fork()` child never gets write access.
pub(crate) fn map_mirror(len: usize) -> Result<MirrorViews> {
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
fn reopen_read_only(fd: &Fd) -> Option<Fd> {
    let path = format!("/proc/self/fd/{}\0", fd.0);
    let path = CStr::from_bytes_with_nul(path.as_bytes()).ok()?;
    // SAFETY: path is a valid C string; open returns a new descriptor or -1.
    let ro = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    (ro >= 0).then_some(Fd(ro))
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
    let exec_fd = reopen_read_only(&fd);
    let exec_source = exec_fd.as_ref().map_or(fd.0, |f| f.0);
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
    // SAFETY: rw is our own mapping; MADV_DONTFORK only changes what a child inherits.
    unsafe { libc::madvise(rw.as_ptr().cast(), len, libc::MADV_DONTFORK) };
    Ok(MirrorViews { rx, rw })
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
    // SAFETY: rw is our own mapping; MADV_DONTFORK only changes what a child inherits.
    unsafe { libc::madvise(rw.as_ptr().cast(), len, libc::MADV_DONTFORK) };
    Ok(MirrorViews { rx, rw })
}

/// The mirror backing in use, once one has been set up.
pub(crate) fn mirror_backing() -> Option<MirrorBacking> {
    match MIRROR_BACKING.load(Ordering::Relaxed) {
        BACKING_MEMFD => Some(MirrorBacking::Memfd),
        BACKING_SHARED_ANON => Some(MirrorBacking::SharedAnonymous),
        _ => None,
    }
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

/// In a `fork()` child: replaces the shared executable view `[rx, rx + len)` by the private
/// `snapshot` of its first `used` bytes (the rest stays reserved and inaccessible), so that the
/// parent's later writes and frees never change the child's code. Runs in the atfork child
/// handler, where only this thread exists: system calls only. Without a snapshot (it could not
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
        let copy = copy.as_ptr().cast::<libc::c_void>();
        // SAFETY: copy is the child's inherited snapshot mapping.
        ok = unsafe { libc::mprotect(copy, used, libc::PROT_READ | libc::PROT_EXEC) } == 0;
        // SAFETY: moves our private copy over the shared view, replacing it atomically.
        ok = ok
            && unsafe {
                libc::mremap(
                    copy,
                    used,
                    used,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    rx.as_ptr().cast::<libc::c_void>(),
                )
            } != libc::MAP_FAILED;
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

// ---------------------------------------------------------------------------------------------
// Protection keys (x86-64).

const PKEY_DISABLE_WRITE: libc::c_long = 2;

static PKEY: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// The process's protection key for code pages, allocated on first use (`pkey_alloc`) and kept
/// for the life of the process (keys are scarce: 15 per process).
#[doc(alias = "pkey_alloc")]
pub(crate) fn code_pkey() -> std::result::Result<u32, String> {
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
pub(crate) fn map_pkey(len: usize, key: u32) -> Result<NonNull<u8>> {
    let ptr = map_private(len, Prot::NONE)?;
    // SAFETY: ptr..ptr+len is the fresh mapping above; pkey_mprotect only changes its rights.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pkey_mprotect,
            ptr.as_ptr(),
            len,
            Prot::RWX.native() as libc::c_long,
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
pub(crate) unsafe fn read_pkru() -> u32 {
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
pub(crate) unsafe fn write_pkru(value: u32) {
    // SAFETY: WRPKRU with ECX = EDX = 0 writes EAX to PKRU; the caller guarantees OSPKE. Not
    // `nomem`: memory accesses must not move across the change of rights.
    unsafe {
        std::arch::asm!("wrpkru", in("eax") value, in("ecx") 0u32, in("edx") 0u32,
            options(nostack, preserves_flags));
    }
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
pub(crate) fn membarrier_sync_core() -> Result<()> {
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

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// The permission string, e.g. `r-xs`.
    pub perms: String,
    /// The path or pseudo-name, possibly empty.
    pub name: String,
}

impl Mapping {
    /// Writable and executable at once.
    pub fn is_writable_and_executable(&self) -> bool {
        let p = self.perms.as_bytes();
        p.get(1) == Some(&b'w') && p.get(2) == Some(&b'x')
    }
}

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

/// `vm.max_map_count`.
pub(crate) fn max_map_count() -> Option<usize> {
    read_sysctl("/proc/sys/vm/max_map_count")?.parse().ok()
}

/// `vm.memfd_noexec` (0: allowed, 1: noexec by default, 2: exec refused), on kernels >= 6.3.
pub(crate) fn memfd_noexec() -> Option<u32> {
    read_sysctl("/proc/sys/vm/memfd_noexec")?.parse().ok()
}

/// The kernel's name and release (`uname`).
pub(crate) fn kernel_version() -> String {
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
pub(crate) fn security_policies() -> Vec<(&'static str, String)> {
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

/// Tries to map a small anonymous region read-write-execute.
pub(crate) fn try_rwx() -> std::result::Result<(), String> {
    let page = page_size();
    let ptr = map_private(page, Prot::RWX).map_err(|e| error_chain(&e))?;
    // SAFETY: the fresh mapping above.
    let _ = unsafe { unmap(ptr, page) };
    Ok(())
}

/// Tries to map a page read-write, then make it read-execute.
pub(crate) fn try_mprotect_exec() -> std::result::Result<(), String> {
    let page = page_size();
    let ptr = map_private(page, Prot::RW).map_err(|e| error_chain(&e))?;
    // SAFETY: the fresh mapping above.
    let result = unsafe { protect(ptr, page, Prot::RX) }.map_err(|e| error_chain(&e));
    // SAFETY: the fresh mapping above.
    let _ = unsafe { unmap(ptr, page) };
    result
}

/// Tries each mirror backing on one page: `(memfd, shared anonymous)`.
pub(crate) fn try_mirrors() -> [std::result::Result<(), String>; 2] {
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

/// An error with its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
        for views in [
            memfd_mirror(page).unwrap(),
            shared_anon_mirror(page).unwrap(),
        ] {
            // SAFETY: test-owned views of one page each.
            unsafe {
                views.rw.as_ptr().write_volatile(0xAB);
                assert_eq!(views.rx.as_ptr().read_volatile(), 0xAB);
                unmap(views.rx, page).unwrap();
                unmap(views.rw, page).unwrap();
            }
        }
    }
}
