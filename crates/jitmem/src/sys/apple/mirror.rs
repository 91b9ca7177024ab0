//! Mirrors: an RX anonymous mapping and a read-write view of the same pages made with
//! `mach_vm_remap` (seed 000's LuckNoTXM and LuckTXM, with `mach_vm_remap` in place of the
//! legacy `vm_remap`), with the TXM handshake of `sys::txm` on iOS devices.
//!
//! References: XNU `osfmk/mach/mach_vm.defs` (`mach_vm_remap`: "Map portion of a task's address
//! space", `cur_protection` and `max_protection` are *out* parameters, the new mapping takes the
//! inheritance given; `mach_vm_protect`: "the maximum protection limits the accesses that may be
//! given in the current protection"; `mach_vm_inherit`; `mach_vm_deallocate`), XNU's
//! `osfmk/man/vm_remap.html` ("Map memory objects in one task's address space to that of
//! another task's"; `copy = FALSE` maps the same memory objects rather than a copy of them) and
//! `osfmk/man/vm_inherit.html` (`VM_INHERIT_NONE`: "Provides no access to the region for child
//! tasks").

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use mach2::kern_return::KERN_SUCCESS;
use mach2::traps::mach_task_self;
use mach2::vm_inherit::VM_INHERIT_NONE;
use mach2::vm_prot::{VM_PROT_EXECUTE, VM_PROT_NONE, VM_PROT_READ, VM_PROT_WRITE};
use mach2::vm_statistics::VM_FLAGS_ANYWHERE;
use mach2::vm_types::{mach_vm_address_t, mach_vm_size_t};

use super::Os;
use super::mach::kern_error;
use crate::error::{Error, Result};
use crate::sys::posix::{map_private, non_null_map, unmap};
use crate::sys::{MapOptions, Mirror, MirrorBacking, MirrorViews, Prot, error_chain, refused, txm};

impl Mirror for Os {
    fn map_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
        map_mirror(len, options)
    }

    /// # Safety
    /// The contract of [`Mirror::unmap_view`].
    unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { unmap_view(ptr, len) }
    }

    /// Always `mach_vm_remap` on Apple, once a mirror has been made.
    fn mirror_backing() -> Option<MirrorBacking> {
        MIRROR_MADE
            .load(Ordering::Relaxed)
            .then_some(MirrorBacking::MachRemap)
    }
}

/// Set once a mirror has been made in this process.
static MIRROR_MADE: AtomicBool = AtomicBool::new(false);

/// Maps `len` bytes twice: an RX view (fresh private anonymous memory) and an RW view of the
/// same pages (`mach_vm_remap`, `copy = FALSE`).
///
/// 1. `mmap(PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANON)`: the RX view.
/// 2. With `options.txm` on an iOS device: the TXM handshake (`sys::txm`). The legacy script
///    prepares the RX view of step 1 (`brk #0x69`, x0 = address, x1 = size); the universal
///    script allocates and prepares its own RX region instead (`mov x16, #1; brk #0xf00d`,
///    x0 = 0, x1 = size; the address comes back in x0), which then *is* the RX view: jitmem
///    did not map it and never unmaps it (see [`unmap_view`]).
/// 3. `mach_vm_remap(copy = FALSE, VM_FLAGS_ANYWHERE, VM_INHERIT_NONE)`: the second view. It
///    takes the source's protections (RX now, RWX at most: debugserver's `_M<len>,rx`
///    allocates with the default maximum, and `mmap` gives RWX as maximum).
/// 4. `mach_vm_protect(RW view, VM_PROT_READ | VM_PROT_WRITE)`, and `mach_vm_inherit(RW view,
///    VM_INHERIT_NONE)` again, explicitly: a `fork()` child never gets write access.
/// 5. Without a TXM handshake only: `mach_vm_protect(RX view, set_maximum = TRUE,
///    VM_PROT_READ | VM_PROT_EXECUTE)`, so that no `mprotect` can make the executable view
///    writable. This must come after step 3, or the RW view would inherit the lowered maximum.
///    Not for TXM regions (issue 14, defect 6): a debugger that writes to a page whose maximum
///    lacks write access (a breakpoint, the script preparing again) makes debugserver fall
///    back to `VM_PROT_COPY` (lldb `debugserver/source/MacOSX/MachVMRegion.cpp`,
///    `SetProtections`), and XNU's `vm_map_protect` then gives that page a private copy
///    (`new_max |= VM_PROT_WRITE` for `VM_PROT_COPY`, `osfmk/vm/vm_map.c`): the RX page no
///    longer shares the RW view's page, and code written later never runs. A debugger is
///    attached by design in the TXM case, so the RX view keeps its maximum there; the
///    protection that remains is W^X of the current protections and `VM_INHERIT_NONE`.
///
/// On iOS this works only once JIT has been granted by a debugger (`CS_DEBUGGED`); on macOS
/// only without the hardened runtime, or with `allow-unsigned-executable-memory`.
#[doc(alias = "mach_vm_remap")]
fn map_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
    if let (Some(protocol), true) = (options.txm, txm::TXM_DEVICE) {
        return map_txm_mirror(len, protocol, options.txm_debugger_speaks_protocol);
    }
    let rx = map_private(len, Prot::RX)?;
    match remap_writable(rx, len, true) {
        Ok(rw) => {
            MIRROR_MADE.store(true, Ordering::Relaxed);
            Ok(MirrorViews { rx, rw })
        }
        Err(e) => {
            // SAFETY: rx was mapped above and nothing else knows about it.
            let _ = unsafe { unmap(rx, len) };
            Err(e)
        }
    }
}

/// The real OS answers for the TXM handshake.
struct AppleTxm;

impl txm::TxmHost for AppleTxm {
    fn debugger_attached(&self) -> std::io::Result<bool> {
        super::codesign::debugger_attached()
    }

    fn trap(&self, trap: txm::Trap, x0: u64, x1: u64) -> Option<u64> {
        guarded_trap(trap, x0, x1)
    }

    /// An RX region for the legacy request, below 64 GiB (StikDebug's prepare step writes 9
    /// hex digits of address): where the kernel puts it, else at the first free hint.
    fn map_own(&self, len: u64) -> std::result::Result<u64, String> {
        let first = map_private(len as usize, Prot::RX).map_err(|e| error_chain(&e))?;
        let addr = first.as_ptr() as u64;
        if txm::check_region(addr, len).is_ok() {
            return Ok(addr);
        }
        // SAFETY: the fresh mapping above, unused.
        let _ = unsafe { unmap(first, len as usize) };
        for hint in txm::placement_hints(len) {
            // SAFETY: a hint, not MAP_FIXED: the kernel never replaces an existing mapping and
            // may place the region elsewhere (checked below).
            let ptr = unsafe {
                libc::mmap(
                    hint as usize as *mut libc::c_void,
                    len as usize,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANON,
                    -1,
                    0,
                )
            };
            let Ok(p) = non_null_map(ptr, "mmap(hint below 64 GiB, PROT_READ | PROT_EXEC)") else {
                continue;
            };
            if txm::check_region(p.as_ptr() as u64, len).is_ok() {
                return Ok(p.as_ptr() as u64);
            }
            // SAFETY: the fresh mapping above, unused.
            let _ = unsafe { unmap(p, len as usize) };
        }
        Err(format!(
            "no room for {len:#x} bytes below 64 GiB (StikDebug's prepare step writes page addresses with 9 hex digits): use a smaller arena"
        ))
    }

    fn unmap_own(&self, addr: u64, len: u64) {
        if let Some(p) = NonNull::new(addr as usize as *mut u8) {
            // SAFETY: a region map_own made for this handshake, not prepared, unused.
            let _ = unsafe { unmap(p, len as usize) };
        }
    }
}

/// One trap under the SIGTRAP guard (AArch64 only: iOS devices are AArch64).
#[cfg(target_arch = "aarch64")]
fn guarded_trap(trap: txm::Trap, x0: u64, x1: u64) -> Option<u64> {
    txm::guarded(trap, x0, x1).ok().flatten()
}

#[cfg(not(target_arch = "aarch64"))]
fn guarded_trap(_trap: txm::Trap, _x0: u64, _x1: u64) -> Option<u64> {
    None
}

/// [`map_mirror`] with the TXM handshake.
fn map_txm_mirror(
    len: usize,
    protocol: crate::sys::TxmProtocol,
    app_states_debugger: bool,
) -> Result<MirrorViews> {
    let prepared = txm::handshake(
        &AppleTxm,
        protocol,
        len as u64,
        app_states_debugger,
        &txm::DETECTED,
        txm::DETACHED.load(Ordering::Acquire),
    )
    .map_err(|why| refused("the TXM handshake", why))?;
    txm::remember(&txm::DETECTED, prepared.protocol);
    let (addr, own) = match prepared.region {
        txm::Region::Own(a) => (a, true),
        txm::Region::Debugger(a) => (a, false),
    };
    let rx = NonNull::new(addr as usize as *mut u8)
        .ok_or(Error::Internal("the TXM handshake returned a null region"))?;
    match remap_writable(rx, len, false) {
        Ok(rw) => {
            if !own {
                // jitmem did not map it: unmap_view leaves it mapped.
                txm::DEBUGGER_REGIONS.insert(rx.as_ptr() as usize, len);
            }
            MIRROR_MADE.store(true, Ordering::Relaxed);
            Ok(MirrorViews { rx, rw })
        }
        Err(e) => {
            if own {
                // SAFETY: our own region from the handshake; nothing else knows about it.
                let _ = unsafe { unmap(rx, len) };
            }
            Err(e)
        }
    }
}

/// Steps 3 to 5 of [`map_mirror`]: returns the RW view of the RX region `rx`; lowers the RX
/// view's maximum protection when `lower_rx_max` (not for TXM regions).
fn remap_writable(rx: NonNull<u8>, len: usize, lower_rx_max: bool) -> Result<NonNull<u8>> {
    // SAFETY: mach_task_self reads the task's own port name.
    let task = unsafe { mach_task_self() };
    let size = len as mach_vm_size_t;
    let source = rx.as_ptr() as mach_vm_address_t;
    let mut target: mach_vm_address_t = 0;
    let mut cur_protection = VM_PROT_NONE;
    let mut max_protection = VM_PROT_NONE;
    // SAFETY: maps a new range (VM_FLAGS_ANYWHERE: the kernel picks a free address, nothing
    // existing is replaced) sharing the pages of the RX region `rx` (ours, or the one the
    // debugger allocated for us); every out-parameter is a valid local.
    let kr = unsafe {
        mach2::vm::mach_vm_remap(
            task,
            &mut target,
            size,
            0,
            VM_FLAGS_ANYWHERE,
            task,
            source,
            0, // copy = FALSE: share the pages
            &mut cur_protection,
            &mut max_protection,
            VM_INHERIT_NONE,
        )
    };
    if kr != KERN_SUCCESS {
        return Err(kern_error(
            "mach_vm_remap(copy = FALSE) of the executable view",
            kr,
        ));
    }
    let rw = NonNull::new(target as usize as *mut u8)
        .ok_or(Error::Internal("mach_vm_remap returned a null address"))?;
    if let Err(e) = protect_views(task, source, target, size, lower_rx_max) {
        // SAFETY: the view made above; nothing else knows about it.
        unsafe { mach2::vm::mach_vm_deallocate(task, target, size) };
        return Err(e);
    }
    Ok(rw)
}

/// Steps 4 and 5 of [`map_mirror`].
fn protect_views(
    task: mach2::port::mach_port_t,
    rx: mach_vm_address_t,
    rw: mach_vm_address_t,
    size: mach_vm_size_t,
    lower_rx_max: bool,
) -> Result<()> {
    // SAFETY: `rw` is the view just made by mach_vm_remap; only its current protection changes.
    let kr = unsafe { mach2::vm::mach_vm_protect(task, rw, size, 0, VM_PROT_READ | VM_PROT_WRITE) };
    if kr != KERN_SUCCESS {
        return Err(kern_error(
            "mach_vm_protect(writable view, VM_PROT_READ | VM_PROT_WRITE)",
            kr,
        ));
    }
    // SAFETY: as above; only what a fork child inherits changes.
    let kr = unsafe { mach2::vm::mach_vm_inherit(task, rw, size, VM_INHERIT_NONE) };
    if kr != KERN_SUCCESS {
        return Err(kern_error(
            "mach_vm_inherit(writable view, VM_INHERIT_NONE)",
            kr,
        ));
    }
    if !lower_rx_max {
        return Ok(());
    }
    // SAFETY: `rx` is our own fresh executable view; lowering its maximum protection only
    // removes rights it does not use (its current protection is already RX).
    let kr =
        unsafe { mach2::vm::mach_vm_protect(task, rx, size, 1, VM_PROT_READ | VM_PROT_EXECUTE) };
    if kr != KERN_SUCCESS {
        return Err(kern_error(
            "mach_vm_protect(executable view, set_maximum = TRUE, VM_PROT_READ | VM_PROT_EXECUTE)",
            kr,
        ));
    }
    Ok(())
}

/// Removes one view of a mirror (`mach_vm_deallocate`). Either view may come here: the RX view
/// was made by `mmap` and the RW view by `mach_vm_remap`, and XNU's `munmap` is itself a
/// `mach_vm_deallocate` of the range, so one call fits both. (In a fork child the RX view is the
/// snapshot the atfork handler mapped, and the RW view is never passed: it was not inherited.)
///
/// # Safety
/// The caller owns the view and nothing refers to it any more.
#[doc(alias = "mach_vm_deallocate")]
unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
    if txm::DEBUGGER_REGIONS.release(ptr.as_ptr() as usize, len) {
        // The universal script's region: the debugger allocated it (`_M<len>,rx`) and
        // prepared it for TXM; jitmem leaves it mapped (its pages stay as they are, and
        // nothing in this process uses them any more).
        return Ok(());
    }
    // SAFETY: mach_task_self reads the task's own port name.
    let task = unsafe { mach_task_self() };
    // SAFETY: the caller owns the range and gives it up.
    let kr = unsafe {
        mach2::vm::mach_vm_deallocate(task, ptr.as_ptr() as mach_vm_address_t, len as u64)
    };
    if kr != KERN_SUCCESS {
        return Err(kern_error("mach_vm_deallocate (mirror view)", kr));
    }
    Ok(())
}

/// A one-page mirror for the probe, made and removed (no TXM handshake: it never touches the
/// pages, neither writing nor executing).
pub(super) fn try_mirror(page: usize) -> std::result::Result<(), String> {
    let views = map_mirror(page, MapOptions::default()).map_err(|e| error_chain(&e))?;
    // SAFETY: the fresh views above, unused.
    let _ = unsafe { unmap_view(views.rw, page) };
    // SAFETY: as above.
    let _ = unsafe { unmap_view(views.rx, page) };
    Ok(())
}

/// Universal command 0 (`mov x16, #0; brk #0xf00d`): tells StikDebug's universal script to
/// detach. Only on an iOS device, after a universal handshake in this process, with a
/// debugger attached; afterwards jitmem never traps again (any `brk` would kill the process).
pub(crate) fn txm_detach(app_states_debugger: bool) -> Result<()> {
    if !txm::TXM_DEVICE {
        return Err(refused(
            "universal detach (brk #0xf00d, x16 = 0)",
            "the TXM protocols exist on iOS devices only",
        ));
    }
    txm::detach(
        &AppleTxm,
        app_states_debugger,
        &txm::DETECTED,
        &txm::DETACHED,
    )
    .map_err(|why| refused("universal detach (brk #0xf00d, x16 = 0)", why))
}

/// The TXM protocol spoken (or detected by `Auto`) in this process, if any.
pub(crate) fn txm_protocol() -> Option<crate::sys::TxmProtocol> {
    txm::detected_protocol()
}
