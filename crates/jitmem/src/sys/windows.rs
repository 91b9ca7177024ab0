//! Windows: `VirtualAlloc`/`VirtualProtect`/`VirtualFree`, mirrors from a pagefile-backed section
//! mapped twice, `FlushInstructionCache`, `FlushProcessWriteBuffers`, `VirtualQuery`
//! introspection, and the probe.
//!
//! Verified by running the test suite for `x86_64-pc-windows-gnu` **under Wine**, not on
//! Windows itself: what is said here about Windows comes from its documentation, and what was
//! run is what Wine does.
//!
//! - **Granularity.** Pages are 4 KiB, but every `VirtualAlloc` reservation and every view
//!   starts on the 64 KiB allocation granularity. Nothing above this module assumes the two are
//!   equal: regions are page multiples, and a one-page region simply leaves the rest of its
//!   64 KiB of address space unused (PerAllocation pays that in address space, not in memory).
//! - **Whole allocations only.** [`unmap`] is `VirtualFree(MEM_RELEASE)` and [`unmap_view`] is
//!   `UnmapViewOfFile`: both release the whole allocation or view that starts at the address,
//!   whatever the length. Every caller gives back exactly what it mapped (a `Region`, an
//!   `ExecBuffer`, a probe page), never a part of it.
//! - **Commit.** Memory is committed when mapped (`MEM_COMMIT`, and a section without
//!   `SEC_RESERVE`): it counts against the system commit limit at once, though physical pages
//!   are only used when touched. A 512 MiB arena is 512 MiB of commit charge.
//! - **No per-thread write rights.** Windows has no protection keys for user memory and no
//!   per-thread JIT write mode, so PerThread is refused with a reason, like on a CPU without PKU.
//! - **No fork.** Windows has no `fork()`: the fork hooks do nothing and are never reached.
//! - **Arbitrary Code Guard** (`ProcessDynamicCodePolicy`) forbids making any memory executable
//!   after it is mapped, and mapping new executable memory: every strategy fails, and the probe
//!   says so.
//! - **Arena placement.** Mirror arenas are one section mapped twice. `VirtualAlloc2` and
//!   `MapViewOfFile3` placeholders are not used: they matter only to put views at chosen
//!   addresses or grow a reservation in place, which no layout does, and they need
//!   Windows 10 1803.
//!
//! # Safety
//! Functions that map memory are safe: they create new mappings nobody else knows about.
//! Functions that change or remove existing mappings are `unsafe`, and their callers promise
//! that they own the allocation.

use std::ffi::{CStr, c_char, c_void};
use std::io;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Diagnostics::Debug::FlushInstructionCache;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_EXECUTE, FILE_MAP_READ, FILE_MAP_WRITE, MEM_COMMIT, MEM_FREE,
    MEM_IMAGE, MEM_MAPPED, MEM_PRIVATE, MEM_RELEASE, MEM_RESERVE, MEMORY_BASIC_INFORMATION,
    MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile, PAGE_EXECUTE, PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_WRITECOPY, PAGE_NOACCESS, PAGE_PROTECTION_FLAGS,
    PAGE_READONLY, PAGE_READWRITE, PAGE_WRITECOPY, UnmapViewOfFile, VirtualAlloc, VirtualFree,
    VirtualProtect, VirtualQuery,
};
use windows_sys::Win32::System::ProcessStatus::K32GetMappedFileNameW;
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, OSVERSIONINFOW, SYSTEM_INFO};
use windows_sys::Win32::System::SystemServices::{
    PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY, PROCESS_MITIGATION_DYNAMIC_CODE_POLICY,
};
use windows_sys::Win32::System::Threading::{
    FlushProcessWriteBuffers, GetCurrentProcess, GetProcessMitigationPolicy,
    PROCESS_MITIGATION_POLICY, ProcessControlFlowGuardPolicy, ProcessDynamicCodePolicy,
};

use super::{MapOptions, Mapping, MirrorBacking, MirrorViews, ProbeFacts, Prot, error_chain};
use crate::config::Strategy;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// System facts.

/// What `GetSystemInfo` says, read once.
struct System {
    page: usize,
    granularity: usize,
    lowest: usize,
    highest: usize,
}

fn system() -> &'static System {
    static SYSTEM: OnceLock<System> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let mut info = SYSTEM_INFO::default();
        // SAFETY: info is a valid, writable SYSTEM_INFO; GetSystemInfo cannot fail.
        unsafe { GetSystemInfo(&mut info) };
        let power_of_two = |v: u32, fallback: usize| {
            usize::try_from(v)
                .ok()
                .filter(|v| v.is_power_of_two())
                .unwrap_or(fallback)
        };
        System {
            page: power_of_two(info.dwPageSize, 4096),
            granularity: power_of_two(info.dwAllocationGranularity, 64 << 10),
            lowest: info.lpMinimumApplicationAddress as usize,
            highest: info.lpMaximumApplicationAddress as usize,
        }
    })
}

/// The page size (`GetSystemInfo().dwPageSize`, 4 KiB on x86-64 and AArch64), read once.
#[doc(alias = "GetSystemInfo")]
pub(crate) fn page_size() -> usize {
    system().page
}

/// The allocation granularity (`dwAllocationGranularity`, 64 KiB): where every reservation and
/// every view starts. Larger than the page size; nothing may assume they are equal.
pub(crate) fn allocation_granularity() -> usize {
    system().granularity
}

/// The `PAGE_*` constant for `prot`.
fn native(prot: Prot) -> PAGE_PROTECTION_FLAGS {
    match prot {
        Prot::NONE => PAGE_NOACCESS,
        Prot::RW => PAGE_READWRITE,
        Prot::RX => PAGE_EXECUTE_READ,
        Prot::RWX => PAGE_EXECUTE_READWRITE,
        // Only the four protections above exist; any other keeps write and execute as asked.
        other => match (other.write(), other.exec()) {
            (true, true) => PAGE_EXECUTE_READWRITE,
            (true, false) => PAGE_READWRITE,
            (false, true) => PAGE_EXECUTE_READ,
            (false, false) => PAGE_READONLY,
        },
    }
}

fn os_error(op: &'static str) -> Error {
    Error::last_os(op)
}

// ---------------------------------------------------------------------------------------------
// Private memory: Toggle, Rwx, ExecBuffer.

/// Reserves and commits `len` bytes (a page multiple) of fresh private memory with `prot`
/// (`VirtualAlloc(MEM_RESERVE | MEM_COMMIT)`). The reservation starts on the allocation
/// granularity; physical pages are used only when touched.
#[doc(alias = "VirtualAlloc")]
pub(crate) fn map_private(len: usize, prot: Prot) -> Result<NonNull<u8>> {
    // SAFETY: a new allocation at an address the system picks touches no existing memory.
    let ptr = unsafe {
        VirtualAlloc(
            std::ptr::null(),
            len,
            MEM_RESERVE | MEM_COMMIT,
            native(prot),
        )
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| os_error("VirtualAlloc(MEM_RESERVE | MEM_COMMIT)"))
}

/// Changes the protection of `[ptr, ptr + len)` (`VirtualProtect`). The range lies inside one
/// allocation (a region of this crate).
///
/// # Safety
/// The caller owns the range (it was mapped by this crate and is still mapped) and nothing
/// relies on the old protection (no other thread runs code there when execute is removed).
#[doc(alias = "VirtualProtect")]
pub(crate) unsafe fn protect(ptr: NonNull<u8>, len: usize, prot: Prot) -> Result<()> {
    let mut old: PAGE_PROTECTION_FLAGS = 0;
    // SAFETY: the caller owns the page-aligned range; `old` is a valid out-parameter.
    let ok = unsafe { VirtualProtect(ptr.as_ptr().cast(), len, native(prot), &mut old) };
    if ok == 0 {
        return Err(os_error("VirtualProtect"));
    }
    Ok(())
}

/// Releases the private allocation that starts at `ptr` (`VirtualFree(MEM_RELEASE)`). Windows
/// releases whole allocations only: `len` is what the caller mapped, and is not passed on.
///
/// # Safety
/// `ptr` is the start of an allocation made by [`map_private`] of `len` bytes, which the caller
/// owns, and nothing refers to it any more.
#[doc(alias = "VirtualFree")]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> Result<()> {
    let _ = len;
    // SAFETY: the caller owns the whole allocation and gives it up; MEM_RELEASE needs size 0.
    let ok = unsafe { VirtualFree(ptr.as_ptr().cast(), 0, MEM_RELEASE) };
    if ok == 0 {
        return Err(os_error("VirtualFree(MEM_RELEASE)"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mirrors: one pagefile-backed section, two views.

static MIRROR_MADE: AtomicBool = AtomicBool::new(false);

/// A section handle, closed on drop. The views keep the section alive after it is closed.
struct Section(HANDLE);

impl Drop for Section {
    fn drop(&mut self) {
        // SAFETY: we own the handle and close it once.
        unsafe { CloseHandle(self.0) };
    }
}

/// Maps `len` bytes twice: a pagefile-backed section (`CreateFileMappingW(INVALID_HANDLE_VALUE,
/// PAGE_EXECUTE_READWRITE)`), viewed once with `FILE_MAP_WRITE` (read-write) and once with
/// `FILE_MAP_READ | FILE_MAP_EXECUTE` (read-execute). The executable view is mapped without
/// write access, so `VirtualProtect` cannot make it writable. The section handle is closed
/// before returning: the views hold the section, and no handle is left for anyone to map it
/// again or for a child process to inherit.
#[doc(alias = "CreateFileMappingW")]
#[doc(alias = "MapViewOfFile")]
pub(crate) fn map_mirror(len: usize, _options: MapOptions) -> Result<MirrorViews> {
    let size = u64::try_from(len).map_err(|_| Error::TooLarge { len })?;
    // SAFETY: an unnamed section backed by the paging file, with default security; the size is
    // split into its high and low halves as the API wants.
    let handle = unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            std::ptr::null(),
            PAGE_EXECUTE_READWRITE,
            (size >> 32) as u32,
            size as u32,
            std::ptr::null(),
        )
    };
    if handle.is_null() {
        return Err(os_error("CreateFileMappingW(PAGE_EXECUTE_READWRITE)"));
    }
    let section = Section(handle);
    let rw = map_view(
        &section,
        FILE_MAP_WRITE,
        len,
        "MapViewOfFile(FILE_MAP_WRITE)",
    )?;
    let rx = match map_view(
        &section,
        FILE_MAP_READ | FILE_MAP_EXECUTE,
        len,
        "MapViewOfFile(FILE_MAP_READ | FILE_MAP_EXECUTE)",
    ) {
        Ok(rx) => rx,
        Err(e) => {
            // SAFETY: rw was mapped just above and is not shared with anyone.
            let _ = unsafe { unmap_view(rw, len) };
            return Err(e);
        }
    };
    drop(section);
    MIRROR_MADE.store(true, Ordering::Relaxed);
    Ok(MirrorViews { rx, rw })
}

fn map_view(section: &Section, access: u32, len: usize, op: &'static str) -> Result<NonNull<u8>> {
    // SAFETY: a new view of our own section, at an address the system picks.
    let view = unsafe { MapViewOfFile(section.0, access, 0, 0, len) };
    NonNull::new(view.Value.cast::<u8>()).ok_or_else(|| os_error(op))
}

/// Removes one view of a mirror (`UnmapViewOfFile`): the whole view that starts at `ptr`.
///
/// # Safety
/// `ptr` is a view made by [`map_mirror`] of `len` bytes, which the caller owns, and nothing
/// refers to it any more.
#[doc(alias = "UnmapViewOfFile")]
pub(crate) unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
    let _ = len;
    let view = MEMORY_MAPPED_VIEW_ADDRESS {
        Value: ptr.as_ptr().cast(),
    };
    // SAFETY: the caller owns the view and gives it up.
    let ok = unsafe { UnmapViewOfFile(view) };
    if ok == 0 {
        return Err(os_error("UnmapViewOfFile"));
    }
    Ok(())
}

/// The mirror backing in use, once one has been set up: always a file mapping here.
pub(crate) fn mirror_backing() -> Option<MirrorBacking> {
    MIRROR_MADE
        .load(Ordering::Relaxed)
        .then_some(MirrorBacking::FileMapping)
}

// ---------------------------------------------------------------------------------------------
// PerThread: not on Windows.

const NO_PER_THREAD: &str = "Windows has no per-thread write rights for memory pages (no protection keys for user memory, no per-thread JIT write mode); use Mirror";

/// PerThread on Windows: refused, always, with the reason.
pub(crate) fn per_thread_key() -> std::result::Result<u32, String> {
    Err(NO_PER_THREAD.to_owned())
}

/// Never reached ([`per_thread_key`] refuses, so no PerThread memory is made); refuses too.
pub(crate) fn map_per_thread(_len: usize, _key: u32) -> Result<NonNull<u8>> {
    Err(Error::Unsupported {
        strategy: Strategy::PerThread,
        reason: NO_PER_THREAD.to_owned(),
    })
}

/// Does nothing: there are no per-thread rights to grant.
///
/// # Safety
/// Never called: [`per_thread_key`] gives no key.
pub(crate) unsafe fn per_thread_begin(_key: u32) -> u32 {
    0
}

/// Does nothing: see [`per_thread_begin`].
///
/// # Safety
/// Never called: [`per_thread_key`] gives no key.
pub(crate) unsafe fn per_thread_end(_key: u32, _saved: u32) {}

// ---------------------------------------------------------------------------------------------
// Instruction-cache coherence.

/// Makes `[ptr, ptr + len)` coherent for instruction fetch (`FlushInstructionCache` on the
/// current process), which Windows documents as required after writing code.
///
/// # Safety
/// The range is mapped and readable.
#[doc(alias = "FlushInstructionCache")]
#[inline]
pub(crate) unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: the pseudo-handle of our own process and a range the caller says is mapped.
    // FlushInstructionCache only fails for a bad process handle, which this is not.
    unsafe { FlushInstructionCache(GetCurrentProcess(), ptr.cast(), len) };
}

/// Makes every thread of the process discard instructions it may have fetched before the last
/// [`clear_cache`] (`FlushProcessWriteBuffers`).
///
/// What Windows documents is a process-wide memory barrier: the write queue of every processor
/// running a thread of this process is flushed. What it does to get there is an
/// inter-processor interrupt to each of those processors, and returning from an interrupt is
/// serialising on x86-64 (`IRET`) and a context synchronisation event on AArch64 (`ERET`): each
/// thread refetches its instructions, as with Linux's `membarrier(SYNC_CORE)`. That second part
/// follows from the implementation, not from a documented contract; it is what other JITs on
/// Windows rely on as well. Under Wine it is `membarrier` or an equivalent on the Linux host.
#[doc(alias = "FlushProcessWriteBuffers")]
pub(crate) fn pipeline_flush_mt() -> Result<()> {
    // SAFETY: no arguments, no preconditions.
    unsafe { FlushProcessWriteBuffers() };
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// fork: Windows has none.

/// No `fork()`, so nothing is lost across one.
pub(crate) const PER_THREAD_SURVIVES_FORK: bool = true;

/// Does nothing and succeeds: Windows has no `fork()`, so the handlers could never run.
pub(crate) fn register_atfork(
    _prepare: unsafe extern "C" fn(),
    _parent: unsafe extern "C" fn(),
    _child: unsafe extern "C" fn(),
) -> Result<()> {
    Ok(())
}

/// Never called (no `fork()`, so no atfork handler runs): makes no snapshot.
///
/// # Safety
/// None needed: it touches no memory.
pub(crate) unsafe fn snapshot_for_fork(_rx: NonNull<u8>, _used: usize) -> Option<NonNull<u8>> {
    None
}

/// Never called (no `fork()`): does nothing.
///
/// # Safety
/// None needed: it touches no memory.
pub(crate) unsafe fn discard_snapshot(_snapshot: NonNull<u8>, _used: usize) {}

/// Never called (no `fork()`): does nothing and reports failure.
///
/// # Safety
/// None needed: it touches no memory.
pub(crate) unsafe fn install_snapshot_after_fork(
    _snapshot: Option<NonNull<u8>>,
    _rx: NonNull<u8>,
    _len: usize,
    _used: usize,
) -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// Introspection: VirtualQuery over the address space.

/// Calls `f` with every region of the address space that is not free (`VirtualQuery` from the
/// lowest to the highest application address). A region is a run of pages of one allocation
/// with the same state, protection and type.
fn for_each_region(mut f: impl FnMut(&MEMORY_BASIC_INFORMATION)) -> io::Result<()> {
    let sys = system();
    let mut addr = sys.lowest;
    let mut seen = false;
    while addr <= sys.highest {
        let mut info = MEMORY_BASIC_INFORMATION::default();
        // SAFETY: VirtualQuery only reads the process's address-space bookkeeping and writes
        // `info`, whose size we pass.
        let n = unsafe {
            VirtualQuery(
                addr as *const c_void,
                &mut info,
                size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        if n == 0 {
            if seen {
                break;
            }
            return Err(io::Error::last_os_error());
        }
        seen = true;
        if info.State != MEM_FREE {
            f(&info);
        }
        let next = (info.BaseAddress as usize).saturating_add(info.RegionSize);
        if next <= addr {
            break;
        }
        addr = next;
    }
    Ok(())
}

/// The `/proc/self/maps`-style permission string of a region: read, write, execute, then `p`
/// (private memory), `s` (a view of a section) or `i` (an executable image). Copy-on-write
/// pages count as writable; reserved pages as inaccessible.
fn perms(state: u32, protect: u32, kind: u32) -> String {
    let rwx = if state == MEM_RESERVE {
        "---"
    } else {
        // The low byte is the access; PAGE_GUARD, PAGE_NOCACHE... are modifiers above it.
        match protect & 0xFF {
            PAGE_READONLY => "r--",
            PAGE_READWRITE | PAGE_WRITECOPY => "rw-",
            PAGE_EXECUTE => "--x",
            PAGE_EXECUTE_READ => "r-x",
            PAGE_EXECUTE_READWRITE | PAGE_EXECUTE_WRITECOPY => "rwx",
            _ => "---",
        }
    };
    let kind = match kind {
        MEM_MAPPED => 's',
        MEM_IMAGE => 'i',
        MEM_PRIVATE => 'p',
        _ => '-',
    };
    format!("{rwx}{kind}")
}

/// The file behind a view or an image (`GetMappedFileNameW`, an NT path), `[section]` for a
/// view of a pagefile-backed section, empty for private memory.
fn region_name(info: &MEMORY_BASIC_INFORMATION) -> String {
    if info.Type != MEM_MAPPED && info.Type != MEM_IMAGE {
        return String::new();
    }
    let mut buf = [0u16; 1024];
    // SAFETY: our own process's pseudo-handle, an address of a mapped region, and a buffer of
    // the length we pass.
    let n = unsafe {
        K32GetMappedFileNameW(
            GetCurrentProcess(),
            info.BaseAddress,
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
    };
    match buf.get(..n as usize) {
        Some(name) if n > 0 => String::from_utf16_lossy(name),
        _ => "[section]".to_owned(),
    }
}

/// Every region of this process that is reserved or committed, as [`Mapping`]s.
pub(crate) fn mappings() -> io::Result<Vec<Mapping>> {
    let mut out = Vec::new();
    // The name belongs to the allocation (an image has one region per section): ask once.
    let mut last: Option<(usize, String)> = None;
    for_each_region(|info| {
        let base = info.AllocationBase as usize;
        let name = match &last {
            Some((b, name)) if *b == base => name.clone(),
            _ => {
                let name = region_name(info);
                last = Some((base, name.clone()));
                name
            }
        };
        let start = info.BaseAddress as usize;
        out.push(Mapping {
            start,
            end: start.saturating_add(info.RegionSize),
            perms: perms(info.State, info.Protect, info.Type),
            name,
        });
    })?;
    Ok(out)
}

/// Number of regions of this process that are reserved or committed.
pub(crate) fn mapping_count() -> io::Result<usize> {
    let mut count = 0;
    for_each_region(|_| count += 1)?;
    Ok(count)
}

/// Windows has no limit on the number of mappings (only on address space and commit).
#[allow(
    dead_code,
    reason = "part of the platform interface; only the POSIX mapping-error path asks for it"
)]
pub(crate) fn mapping_limit() -> Option<(usize, usize)> {
    None
}

// ---------------------------------------------------------------------------------------------
// The probe.

/// The Windows version from `RtlGetVersion` (which, unlike `GetVersionExW`, does not depend on
/// the program's manifest).
fn windows_version() -> Option<(u32, u32, u32)> {
    let mut info = OSVERSIONINFOW {
        dwOSVersionInfoSize: size_of::<OSVERSIONINFOW>() as u32,
        ..Default::default()
    };
    // SAFETY: info is a valid OSVERSIONINFOW with its size set.
    let status = unsafe { RtlGetVersion(&mut info) };
    (status == 0).then_some((info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber))
}

/// Wine's version when this process runs under Wine (its `ntdll` exports `wine_get_version`).
fn wine_version() -> Option<String> {
    // SAFETY: GetModuleHandleW with a valid wide string; ntdll is loaded in every process.
    let ntdll = unsafe { GetModuleHandleW(windows_sys::w!("ntdll.dll")) };
    if ntdll.is_null() {
        return None;
    }
    // SAFETY: a loaded module and a valid C string.
    let proc = unsafe { GetProcAddress(ntdll, windows_sys::s!("wine_get_version")) }?;
    // SAFETY: Wine declares `const char *wine_get_version(void)`; on x86-64 and AArch64 the
    // "system" and "C" conventions are the same.
    let get: unsafe extern "C" fn() -> *const c_char = unsafe { std::mem::transmute(proc) };
    // SAFETY: calling it as declared.
    let text = unsafe { get() };
    if text.is_null() {
        return None;
    }
    // SAFETY: Wine returns a static NUL-terminated string.
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Reads a process mitigation policy of this process into `T` (a `PROCESS_MITIGATION_*_POLICY`,
/// which is one `u32` of flags).
fn mitigation_flags<T: Default>(policy: PROCESS_MITIGATION_POLICY) -> io::Result<T> {
    let mut value = T::default();
    // SAFETY: our own process's pseudo-handle and a writable buffer of the size we pass; T is
    // the structure this policy fills.
    let ok = unsafe {
        GetProcessMitigationPolicy(
            GetCurrentProcess(),
            policy,
            (&mut value as *mut T).cast(),
            size_of::<T>(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Arbitrary Code Guard: `Ok(true)` when `ProhibitDynamicCode` is set for this process.
fn arbitrary_code_guard() -> io::Result<(bool, String)> {
    let policy: PROCESS_MITIGATION_DYNAMIC_CODE_POLICY =
        mitigation_flags(ProcessDynamicCodePolicy)?;
    // SAFETY: both union members are a u32 of flags.
    let flags = unsafe { policy.Anonymous.Flags };
    let prohibit = flags & 0b0001 != 0;
    let thread_opt_out = flags & 0b0010 != 0;
    let audit = flags & 0b1000 != 0;
    let text = match (prohibit, audit) {
        (true, _) => format!(
            "on (ProhibitDynamicCode): no memory can become executable after it is mapped, so no strategy can work{}",
            if thread_opt_out {
                "; threads may opt out (AllowThreadOptOut)"
            } else {
                ""
            }
        ),
        (false, true) => "audit only: dynamic code is allowed and logged".to_owned(),
        (false, false) => "off: dynamic code is allowed".to_owned(),
    };
    Ok((prohibit, text))
}

/// Control Flow Guard, in words.
fn control_flow_guard() -> String {
    match mitigation_flags::<PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY>(
        ProcessControlFlowGuardPolicy,
    ) {
        Err(e) => format!("unknown ({e})"),
        Ok(policy) => {
            // SAFETY: both union members are a u32 of flags.
            let flags = unsafe { policy.Anonymous.Flags };
            if flags & 1 != 0 {
                "on: executable pages made by VirtualAlloc, VirtualProtect and MapViewOfFile are valid call targets as a whole".to_owned()
            } else {
                "off".to_owned()
            }
        }
    }
}

/// Tries a one-page mirror, and that a byte written through the RW view reads back through the
/// RX view.
fn try_mirror() -> std::result::Result<(), String> {
    let page = page_size();
    let views = map_mirror(page, MapOptions::default()).map_err(|e| error_chain(&e))?;
    // SAFETY: both views are one fresh page of the same section.
    let shared = unsafe {
        views.rw.as_ptr().write_volatile(0xC3);
        views.rx.as_ptr().read_volatile() == 0xC3
    };
    // SAFETY: the fresh views above.
    let _ = unsafe { unmap_view(views.rx, page) };
    // SAFETY: as above.
    let _ = unsafe { unmap_view(views.rw, page) };
    if shared {
        Ok(())
    } else {
        Err("the two views of one section do not show the same bytes".to_owned())
    }
}

/// What the probe needs from Windows: every primitive tried for real on one page, and the
/// policies that explain a refusal.
pub(crate) fn probe_facts() -> ProbeFacts {
    let acg = arbitrary_code_guard();
    let acg_on = matches!(acg, Ok((true, _)));
    let because = |r: std::result::Result<(), String>| {
        r.map_err(|e| {
            if acg_on {
                format!("Arbitrary Code Guard forbids dynamic code in this process: {e}")
            } else {
                e
            }
        })
    };
    let rwx = because(super::try_map(Prot::RWX, None));
    let protect_exec = because(super::try_map(Prot::RW, Some(Prot::RX)));
    let mirror = because(try_mirror());
    let per_thread = per_thread_key().map(|_| ());
    let wine = wine_version();
    let arch = std::env::consts::ARCH;
    let version = windows_version().map_or_else(
        || format!("Windows, version unknown ({arch})"),
        |(major, minor, build)| format!("Windows {major}.{minor} build {build} ({arch})"),
    );
    let system = match &wine {
        Some(w) => format!("Wine {w}, reporting {version}"),
        None => version,
    };
    let mut facts = vec![
        (
            "allocation granularity",
            format!(
                "{} bytes (every reservation and view starts on it; pages are {} bytes)",
                allocation_granularity(),
                page_size()
            ),
        ),
        (
            "mappings now",
            mapping_count().map_or("unknown".to_owned(), |n| {
                format!("{n} regions (no mapping limit on Windows)")
            }),
        ),
        (
            "Arbitrary Code Guard",
            match acg {
                Ok((_, text)) => text,
                Err(e) => format!("unknown (GetProcessMitigationPolicy failed: {e})"),
            },
        ),
        ("Control Flow Guard", control_flow_guard()),
    ];
    if let Some(w) = wine {
        facts.push((
            "Wine",
            format!("{w}: this is Wine, not Windows; the checks say what Wine does"),
        ));
    }
    ProbeFacts {
        system,
        facts,
        checks: vec![
            ("VirtualAlloc RWX", rwx.clone()),
            ("VirtualProtect RW -> RX", protect_exec.clone()),
            ("file-mapping mirror", mirror.clone()),
            ("per-thread write rights", per_thread.clone()),
            (
                "FlushProcessWriteBuffers",
                pipeline_flush_mt().map_err(|e| error_chain(&e)),
            ),
        ],
        toggle: protect_exec,
        mirror,
        per_thread,
        rwx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularity_is_not_the_page_size() {
        assert_eq!(page_size(), 4096);
        assert!(allocation_granularity().is_power_of_two());
        assert!(allocation_granularity() >= page_size());
    }

    #[test]
    fn perms_follow_the_page_protection() {
        assert_eq!(perms(MEM_COMMIT, PAGE_EXECUTE_READ, MEM_PRIVATE), "r-xp");
        assert_eq!(perms(MEM_COMMIT, PAGE_READWRITE, MEM_MAPPED), "rw-s");
        assert_eq!(perms(MEM_COMMIT, PAGE_EXECUTE_WRITECOPY, MEM_IMAGE), "rwxi");
        assert_eq!(perms(MEM_RESERVE, 0, MEM_PRIVATE), "---p");
        // PAGE_GUARD (0x100) is a modifier.
        assert_eq!(
            perms(MEM_COMMIT, PAGE_READWRITE | 0x100, MEM_PRIVATE),
            "rw-p"
        );
        let m = Mapping {
            start: 0,
            end: 1,
            perms: perms(MEM_COMMIT, PAGE_EXECUTE_READWRITE, MEM_PRIVATE),
            name: String::new(),
        };
        assert!(m.is_writable_and_executable());
    }

    #[test]
    fn regions_are_found_with_their_protection() {
        let page = page_size();
        let ptr = map_private(2 * page, Prot::RW).unwrap();
        // SAFETY: test-owned fresh allocation.
        unsafe { protect(ptr, page, Prot::RX).unwrap() };
        let maps = mappings().unwrap();
        let at = |addr: usize| {
            maps.iter()
                .find(|m| m.start <= addr && addr < m.end)
                .unwrap()
        };
        let base = ptr.as_ptr() as usize;
        assert_eq!(at(base).perms, "r-xp");
        assert_eq!(at(base + page).perms, "rw-p");
        assert!(
            maps.iter().any(|m| m.perms.ends_with('i')),
            "images are listed"
        );
        assert_eq!(mapping_count().unwrap(), maps.len());
        // SAFETY: test-owned allocation.
        unsafe { unmap(ptr, 2 * page).unwrap() };
    }

    #[test]
    fn mirror_views_share_pages_and_the_rx_view_cannot_become_writable() {
        let page = page_size();
        let views = map_mirror(page, MapOptions::default()).unwrap();
        assert_eq!(mirror_backing(), Some(MirrorBacking::FileMapping));
        let maps = mappings().unwrap();
        let at = |addr: usize| {
            maps.iter()
                .find(|m| m.start <= addr && addr < m.end)
                .unwrap()
        };
        assert_eq!(at(views.rx.as_ptr() as usize).perms, "r-xs");
        assert_eq!(at(views.rw.as_ptr() as usize).perms, "rw-s");
        // SAFETY: test-owned views of one page each.
        unsafe {
            views.rw.as_ptr().write_volatile(0xAB);
            assert_eq!(views.rx.as_ptr().read_volatile(), 0xAB);
            assert!(
                protect(views.rx, page, Prot::RW).is_err(),
                "the executable view must never be made writable"
            );
            assert!(protect(views.rx, page, Prot::RWX).is_err());
            unmap_view(views.rx, page).unwrap();
            unmap_view(views.rw, page).unwrap();
        }
    }

    #[test]
    fn the_probe_reports_windows_facts() {
        let facts = probe_facts();
        assert!(facts.system.contains("Windows"), "{}", facts.system);
        assert!(
            facts.toggle.is_ok() && facts.mirror.is_ok(),
            "{:?}",
            facts.checks
        );
        assert!(facts.per_thread.is_err());
        assert!(
            facts
                .facts
                .iter()
                .any(|(k, _)| *k == "Arbitrary Code Guard")
        );
    }
}
