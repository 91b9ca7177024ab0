//! Mirrors: an RX anonymous mapping and a read-write view of the same pages made with
//! `mach_vm_remap` (seed 000's LuckNoTXM and LuckTXM, with `mach_vm_remap` in place of the
//! legacy `vm_remap`), and the TXM handshake.
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
use crate::sys::posix::{map_private, unmap};
use crate::sys::{MapOptions, Mirror, MirrorBacking, MirrorViews, Prot, error_chain};

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
/// 2. With `options.txm_handshake` on an iOS device: `brk #0x69` with x0 = address, x1 = size,
///    so that the attached debugger registers the region with TXM (seed 000's LuckTXM).
/// 3. `mach_vm_remap(copy = FALSE, VM_FLAGS_ANYWHERE, VM_INHERIT_NONE)`: the second view. It
///    takes the source's protections (RX now, RWX at most).
/// 4. `mach_vm_protect(RW view, VM_PROT_READ | VM_PROT_WRITE)`, and `mach_vm_inherit(RW view,
///    VM_INHERIT_NONE)` again, explicitly: a `fork()` child never gets write access.
/// 5. `mach_vm_protect(RX view, set_maximum = TRUE, VM_PROT_READ | VM_PROT_EXECUTE)`: from now
///    on no `mprotect` can make the executable view writable. This must come after step 3, or
///    the RW view would inherit the lowered maximum.
///
/// On iOS this works only once JIT has been granted by a debugger (`CS_DEBUGGED`); on macOS
/// only without the hardened runtime, or with `allow-unsigned-executable-memory`.
#[doc(alias = "mach_vm_remap")]
fn map_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
    let rx = map_private(len, Prot::RX)?;
    match remap_writable(rx, len, options) {
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

/// Steps 2 to 5 of [`map_mirror`]: returns the RW view of the fresh RX mapping `rx`.
fn remap_writable(rx: NonNull<u8>, len: usize, options: MapOptions) -> Result<NonNull<u8>> {
    if options.txm_handshake {
        txm::announce(rx, len)?;
    }
    // SAFETY: mach_task_self reads the task's own port name.
    let task = unsafe { mach_task_self() };
    let size = len as mach_vm_size_t;
    let source = rx.as_ptr() as mach_vm_address_t;
    let mut target: mach_vm_address_t = 0;
    let mut cur_protection = VM_PROT_NONE;
    let mut max_protection = VM_PROT_NONE;
    // SAFETY: maps a new range (VM_FLAGS_ANYWHERE: the kernel picks a free address, nothing
    // existing is replaced) sharing the pages of our own fresh mapping `rx`; every
    // out-parameter is a valid local.
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
    if let Err(e) = protect_views(task, source, target, size) {
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

/// Seed 000's TXM handshake.
mod txm {
    use std::ptr::NonNull;

    use crate::error::Result;

    /// Announces `[rx, rx + len)` to the attached debugger: `brk #0x69` with x0 = address and
    /// x1 = size, exactly as seed 000's LuckTXM (`mov x0, rx; mov x1, size; brk #0x69`). The
    /// debugger (the host app's JIT enabler) catches the breakpoint, registers the region with
    /// the Trusted Execution Monitor and resumes after the instruction. Without a debugger the
    /// breakpoint kills the process with `SIGTRAP`, so a process that is not being traced gets
    /// an error instead.
    #[cfg(all(target_os = "ios", target_arch = "aarch64", not(target_abi = "sim")))]
    pub(super) fn announce(rx: NonNull<u8>, len: usize) -> Result<()> {
        if let Ok(false) = super::super::codesign::debugger_attached() {
            // A refusal: `Region::map` makes it `Error::Unsupported` for the Mirror strategy.
            return Err(crate::sys::refused(
                "the TXM handshake (brk #0x69)",
                "the TXM handshake (brk #0x69) needs an attached debugger, and none is attached (P_TRACED is clear): it would die of SIGTRAP. Attach the JIT enabler first, or turn Config::txm_handshake off on devices without TXM",
            ));
        }
        // SAFETY: `brk #0x69` traps to the attached debugger (checked above), which reads x0 and
        // x1 and resumes at the next instruction. The instruction itself touches no memory of
        // ours; x0 and x1 are declared clobbered because the debugger may change them, and the
        // asm is not `nomem`, so no memory access moves across the handshake.
        unsafe {
            std::arch::asm!(
                "brk #0x69",
                inout("x0") rx.as_ptr() => _,
                inout("x1") len => _,
                options(nostack),
            );
        }
        Ok(())
    }

    /// Not an iOS device: the handshake is ignored (`MapOptions::txm_handshake`).
    #[cfg(not(all(target_os = "ios", target_arch = "aarch64", not(target_abi = "sim"))))]
    pub(super) fn announce(_rx: NonNull<u8>, _len: usize) -> Result<()> {
        Ok(())
    }
}
