//! The memory map: `mach_vm_region`.

use std::io;

use mach2::kern_return::{KERN_INVALID_ADDRESS, KERN_NO_SPACE, KERN_SUCCESS};
use mach2::port::{MACH_PORT_NULL, mach_port_t};
use mach2::traps::mach_task_self;
use mach2::vm_prot::{VM_PROT_EXECUTE, VM_PROT_READ, VM_PROT_WRITE};
use mach2::vm_region::{VM_REGION_BASIC_INFO_64, vm_region_basic_info_64};
use mach2::vm_types::{mach_vm_address_t, mach_vm_size_t};

use super::Os;
use super::mach::kern_io_error;
use crate::sys::{Introspect, Mapping};

impl Introspect for Os {
    fn mappings() -> io::Result<Vec<Mapping>> {
        mappings()
    }

    fn mapping_count() -> io::Result<usize> {
        mapping_count()
    }

    /// Darwin has no per-process mapping-count limit like Linux's `vm.max_map_count`: an
    /// `ENOMEM` from `mmap` is address space or memory, never a mapping limit.
    fn mapping_limit() -> Option<(usize, usize)> {
        None
    }

    /// `pthread_get_stackaddr_np` (the stack's *top*, its highest address) and
    /// `pthread_get_stacksize_np` (libpthread reports the main thread's size from
    /// `RLIMIT_STACK`).
    fn thread_stack() -> io::Result<(usize, usize)> {
        // SAFETY: both read the calling thread's own pthread record.
        let (top, size) = unsafe {
            let me = libc::pthread_self();
            (
                libc::pthread_get_stackaddr_np(me) as usize,
                libc::pthread_get_stacksize_np(me),
            )
        };
        let low = top.checked_sub(size).ok_or_else(|| {
            io::Error::other(format!(
                "pthread_get_stackaddr_np gave {top:#x}, below the stack size {size:#x}"
            ))
        })?;
        Ok((low, size))
    }
}

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
fn mappings() -> io::Result<Vec<Mapping>> {
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
fn mapping_count() -> io::Result<usize> {
    let mut count = 0;
    walk_regions(|_, _, _| count += 1)?;
    Ok(count)
}
