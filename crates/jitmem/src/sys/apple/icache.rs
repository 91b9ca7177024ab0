//! Instruction-cache coherence: `sys_icache_invalidate`, and a pipeline flush of every other
//! thread through `thread_get_state`.

use mach2::kern_return::{KERN_INSUFFICIENT_BUFFER_SIZE, KERN_SUCCESS, KERN_TERMINATED};
use mach2::mach_types::{thread_act_array_t, thread_act_t};
use mach2::message::{MACH_SEND_INVALID_DEST, mach_msg_type_number_t};
use mach2::traps::mach_task_self;
use mach2::vm_types::mach_vm_address_t;

use super::Os;
use super::mach::kern_error;
use crate::error::{Error, Result};
use crate::sys::Icache;

impl Icache for Os {
    /// # Safety
    /// The contract of [`Icache::clear_cache`].
    #[inline]
    unsafe fn clear_cache(ptr: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { clear_cache(ptr, len) }
    }

    fn pipeline_flush_mt() -> Result<()> {
        pipeline_flush_mt()
    }
}

unsafe extern "C" {
    /// `void sys_icache_invalidate(void *start, size_t len);` from `<libkern/OSCacheControl.h>`
    /// (libSystem): "prepares memory for execution, typically by invalidating the instruction
    /// cache for the indicated range. This should be called after writing machine instructions
    /// to memory, and before executing them. On IA32 processors this function is a NOP"
    /// (`cache(3)`, and the porting guide's last step). The `libc` crate does not declare it.
    fn sys_icache_invalidate(start: *mut libc::c_void, len: libc::size_t);
}

/// Makes `[ptr, ptr + len)` coherent for instruction fetch: `sys_icache_invalidate`, Apple's
/// supported routine (on Apple silicon it cleans the data cache and invalidates the instruction
/// cache by address for every core; on Intel it does nothing, the caches are coherent).
///
/// Call it after the thread is back in execute mode (the porting guide's order:
/// `pthread_jit_write_protect_np(1)`, then `sys_icache_invalidate`), which is what a scope's
/// `publish` does: rights are withdrawn first, then the cache is made coherent.
///
/// # Safety
/// The range is mapped and readable.
#[doc(alias = "sys_icache_invalidate")]
#[inline]
unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: the caller guarantees the range is mapped; the routine only performs cache
    // maintenance on it (it takes a `void *` but does not write through it).
    unsafe { sys_icache_invalidate(ptr.cast_mut().cast(), len) };
}

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
fn pipeline_flush_mt() -> Result<()> {
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
