//! Mach calls: errors, the cross-thread pipeline flush, and the memory map (`mach_vm_region`).

use std::io;

use mach2::kern_return::{
    KERN_FAILURE, KERN_INSUFFICIENT_BUFFER_SIZE, KERN_INVALID_ADDRESS, KERN_INVALID_ARGUMENT,
    KERN_NO_ACCESS, KERN_NO_SPACE, KERN_PROTECTION_FAILURE, KERN_RESOURCE_SHORTAGE, KERN_SUCCESS,
    KERN_TERMINATED, kern_return_t,
};
use mach2::mach_types::{thread_act_array_t, thread_act_t};
use mach2::message::{MACH_SEND_INVALID_DEST, mach_msg_type_number_t};
use mach2::port::{MACH_PORT_NULL, mach_port_t};
use mach2::traps::mach_task_self;
use mach2::vm_prot::{VM_PROT_EXECUTE, VM_PROT_READ, VM_PROT_WRITE};
use mach2::vm_region::{VM_REGION_BASIC_INFO_64, vm_region_basic_info_64};
use mach2::vm_types::{mach_vm_address_t, mach_vm_size_t};

use super::super::Mapping;
use crate::error::{Error, Result};

/// A `kern_return_t` as an `io::Error` (Mach calls do not set `errno`).
pub(super) fn kern_io_error(kr: kern_return_t) -> io::Error {
    let (kind, what) = match kr {
        KERN_INVALID_ADDRESS => (io::ErrorKind::InvalidInput, "KERN_INVALID_ADDRESS"),
        KERN_PROTECTION_FAILURE => (
            io::ErrorKind::PermissionDenied,
            "KERN_PROTECTION_FAILURE (beyond the maximum protection, or refused by code signing)",
        ),
        KERN_NO_SPACE => (io::ErrorKind::OutOfMemory, "KERN_NO_SPACE"),
        KERN_INVALID_ARGUMENT => (io::ErrorKind::InvalidInput, "KERN_INVALID_ARGUMENT"),
        KERN_FAILURE => (io::ErrorKind::Other, "KERN_FAILURE"),
        KERN_RESOURCE_SHORTAGE => (io::ErrorKind::OutOfMemory, "KERN_RESOURCE_SHORTAGE"),
        KERN_NO_ACCESS => (io::ErrorKind::PermissionDenied, "KERN_NO_ACCESS"),
        _ => (io::ErrorKind::Other, "Mach error"),
    };
    io::Error::new(kind, format!("kern_return_t {kr:#x}: {what}"))
}

/// A failed Mach call as the crate's error.
pub(super) fn kern_error(op: &'static str, kr: kern_return_t) -> Error {
    Error::Os {
        op,
        source: kern_io_error(kr),
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-thread pipeline flush.

/// The register state `thread_get_state` reads to stop a thread (its general registers).
#[cfg(target_arch = "aarch64")]
mod state {
    pub(super) type ThreadState = mach2::structs::arm_thread_state64_t;
    pub(super) fn flavor() -> mach2::thread_status::thread_state_flavor_t {
        mach2::thread_status::ARM_THREAD_STATE64
    }
}

/// The register state `thread_get_state` reads to stop a thread (its general registers).
#[cfg(target_arch = "x86_64")]
mod state {
    pub(super) type ThreadState = mach2::structs::x86_thread_state64_t;
    pub(super) fn flavor() -> mach2::thread_status::thread_state_flavor_t {
        mach2::thread_status::x86_THREAD_STATE64
    }
}

/// Makes every other thread of the process pass through the kernel before it runs more user
/// code, which discards instructions it fetched before the last `clear_cache`.
///
/// Darwin has no `membarrier` and no `FlushProcessWriteBuffers`. The best available is what
/// .NET's `minipal_memory_barrier_process_wide` does on Apple platforms
/// (`src/native/minipal/memorybarrierprocesswide.c`): list the task's threads
/// (`task_threads`) and read each one's registers. To read a thread's registers XNU must stop
/// it (`thread_get_state` holds the thread and waits until it is off its CPU, interrupting it
/// if it is running), and the thread resumes user code with an exception return, which is a
/// context-synchronising event on AArch64 (Arm ARM, "Context synchronization event") and
/// serialising on x86-64. .NET uses `thread_get_register_pointer_values`, a libsyscall wrapper
/// of `thread_get_state` available from macOS 10.14 / iOS 12; calling `thread_get_state`
/// directly needs no version check. The `mprotect`-a-helper-page trick that Linux runtimes use
/// as a fallback is not used: it relies on TLB-shootdown IPIs that XNU does not promise, and
/// nothing of the kind may ever touch `MAP_JIT` pages. WebKit and V8 do not need this on
/// Darwin (they never patch code another thread may be executing without their own
/// synchronisation), so there is nothing better to copy.
///
/// Cost: two Mach messages per thread and a stop of each running thread: tens of microseconds
/// per thread, much more than Linux's `membarrier`. Under Rosetta 2 (an x86-64 build on Apple
/// silicon) reading translated threads' state can be slow: prefer publishing without
/// `publish_live` there when no other thread runs the patched code.
///
/// A thread that exits meanwhile is skipped; any other failure to stop a thread is returned as
/// an error (that thread may still run stale instructions).
#[doc(alias = "thread_get_state")]
pub(crate) fn pipeline_flush_mt() -> Result<()> {
    // SAFETY: mach_task_self reads the task's own port name; no preconditions.
    let task = unsafe { mach_task_self() };
    let mut threads: thread_act_array_t = std::ptr::null_mut();
    let mut count: mach_msg_type_number_t = 0;
    // SAFETY: both out-parameters are valid; on success the kernel gives us `count` send rights
    // in an array it allocated in our address space, both released below.
    let kr = unsafe { mach2::task::task_threads(task, &mut threads, &mut count) };
    if kr != KERN_SUCCESS {
        return Err(kern_error("task_threads", kr));
    }
    // SAFETY: returns a send right to the calling thread, released below.
    let this_thread = unsafe { mach2::mach_init::mach_thread_self() };
    let mut first_failure = KERN_SUCCESS;
    for i in 0..count as usize {
        // SAFETY: `threads` holds `count` thread ports (task_threads succeeded).
        let thread: thread_act_t = unsafe { *threads.add(i) };
        if thread != this_thread {
            let mut registers = state::ThreadState::default();
            let mut words = state::ThreadState::count();
            // SAFETY: `registers` is a writable thread-state buffer of `words` 32-bit words for
            // this flavor; the kernel writes at most that many.
            let kr = unsafe {
                mach2::thread_act::thread_get_state(
                    thread,
                    state::flavor(),
                    (&raw mut registers).cast(),
                    &mut words,
                )
            };
            let thread_gone = kr == KERN_TERMINATED || kr == MACH_SEND_INVALID_DEST;
            if kr != KERN_SUCCESS && !thread_gone && first_failure == KERN_SUCCESS {
                first_failure = kr;
            }
        }
        // SAFETY: releases the send right task_threads gave us for this thread.
        unsafe { mach2::mach_port::mach_port_deallocate(task, thread) };
    }
    // SAFETY: releases the right mach_thread_self gave us.
    unsafe { mach2::mach_port::mach_port_deallocate(task, this_thread) };
    if !threads.is_null() {
        let bytes = count as usize * size_of::<thread_act_t>();
        // SAFETY: the array task_threads allocated in our address space, no longer used.
        unsafe { mach2::vm::mach_vm_deallocate(task, threads as mach_vm_address_t, bytes as u64) };
    }
    // This thread left the kernel just now (context synchronising); make it explicit anyway.
    #[cfg(target_arch = "aarch64")]
    // SAFETY: an instruction barrier has no memory-safety preconditions.
    unsafe {
        std::arch::asm!("isb", options(nostack, preserves_flags))
    };
    if first_failure != KERN_SUCCESS {
        if first_failure == KERN_INSUFFICIENT_BUFFER_SIZE {
            return Err(Error::Internal(
                "thread_get_state: thread-state buffer too small",
            ));
        }
        return Err(kern_error(
            "thread_get_state (stopping a thread to flush its pipeline)",
            first_failure,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The memory map.

/// Calls `f(start, end, info)` for every region of this task, lowest first
/// (`mach_vm_region(VM_REGION_BASIC_INFO_64)`: "If the specified address is not allocated, the
/// next highest address range is described. If no addresses beyond the one specified are
/// allocated, the call returns KERN_NO_SPACE" per `mach_vm.defs`; XNU returns
/// `KERN_INVALID_ADDRESS` in that case, and both end the walk). The shared cache appears as a
/// few large submap regions.
fn walk_regions(mut f: impl FnMut(u64, u64, &vm_region_basic_info_64)) -> io::Result<()> {
    // SAFETY: mach_task_self reads the task's own port name.
    let task = unsafe { mach_task_self() };
    let mut address: mach_vm_address_t = 0;
    loop {
        let mut size: mach_vm_size_t = 0;
        // SAFETY: plain old data that the kernel fills in.
        let mut info: vm_region_basic_info_64 = unsafe { std::mem::zeroed() };
        let mut words = vm_region_basic_info_64::count();
        let mut object_name: mach_port_t = MACH_PORT_NULL;
        // SAFETY: every out-parameter is valid and `info` has room for `words` 32-bit words.
        let kr = unsafe {
            mach2::vm::mach_vm_region(
                task,
                &mut address,
                &mut size,
                VM_REGION_BASIC_INFO_64,
                (&raw mut info).cast(),
                &mut words,
                &mut object_name,
            )
        };
        if kr == KERN_INVALID_ADDRESS || kr == KERN_NO_SPACE {
            return Ok(());
        }
        if kr != KERN_SUCCESS {
            return Err(kern_io_error(kr));
        }
        if object_name != MACH_PORT_NULL {
            // SAFETY: a send right the call gave us (always null on current kernels).
            unsafe { mach2::mach_port::mach_port_deallocate(task, object_name) };
        }
        let end = address.saturating_add(size);
        f(address, end, &info);
        if end <= address {
            return Ok(());
        }
        address = end;
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// `rwxp` / `r-xs`, as in `/proc/self/maps`: current protection, then shared or private.
fn perms(info: &vm_region_basic_info_64) -> String {
    let (prot, shared) = (info.protection, info.shared);
    let bit = |mask, c| if prot & mask != 0 { c } else { '-' };
    [
        bit(VM_PROT_READ, 'r'),
        bit(VM_PROT_WRITE, 'w'),
        bit(VM_PROT_EXECUTE, 'x'),
        if shared != 0 { 's' } else { 'p' },
    ]
    .into_iter()
    .collect()
}

/// The file a region maps, if any (`proc_regionfilename`, macOS only: libproc is off limits to
/// iOS apps).
#[cfg(target_os = "macos")]
fn region_name(address: u64) -> String {
    let mut buf = [0u8; 1024];
    // SAFETY: getpid has no preconditions; `buf` is writable for its length, which is passed.
    let n = unsafe {
        libc::proc_regionfilename(
            libc::getpid(),
            address,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
        )
    };
    let n = usize::try_from(n).unwrap_or(0).min(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(not(target_os = "macos"))]
fn region_name(_address: u64) -> String {
    String::new()
}

/// Every region of this task (`mach_vm_region`), with its current protection.
#[doc(alias = "mach_vm_region")]
pub(crate) fn mappings() -> io::Result<Vec<Mapping>> {
    let mut out = Vec::new();
    walk_regions(|start, end, info| {
        out.push(Mapping {
            start: to_usize(start),
            end: to_usize(end),
            perms: perms(info),
            name: region_name(start),
        });
    })?;
    Ok(out)
}

/// Number of regions of this task.
pub(crate) fn mapping_count() -> io::Result<usize> {
    let mut count = 0;
    walk_regions(|_, _, _| count += 1)?;
    Ok(count)
}

/// Darwin has no per-process mapping-count limit like Linux's `vm.max_map_count`: an `ENOMEM`
/// from `mmap` is address space or memory, never a mapping limit.
pub(crate) fn mapping_limit() -> Option<(usize, usize)> {
    None
}
