//! Reading this process's memory map, to check the W^X invariant and count mappings (Linux:
//! `/proc/self/maps`; Windows: a `VirtualQuery` walk; Apple: a `mach_vm_region` walk), and the
//! calling thread's stack, which a JIT needs to bound the native stack its code may use.

use std::io;

pub use crate::sys::Mapping;

/// Every mapping of this process.
pub fn mappings() -> io::Result<Vec<Mapping>> {
    crate::sys::mappings()
}

/// How many mappings this process has.
pub fn mapping_count() -> io::Result<usize> {
    crate::sys::mapping_count()
}

/// Every mapping that is writable and executable at once.
pub fn writable_executable_mappings() -> io::Result<Vec<Mapping>> {
    Ok(mappings()?
        .into_iter()
        .filter(Mapping::is_writable_and_executable)
        .collect())
}

/// The mapping that contains `addr`, if any.
pub fn mapping_at(addr: usize) -> io::Result<Option<Mapping>> {
    Ok(mappings()?
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end))
}

/// The calling thread's stack: the addresses it may grow down into (Linux:
/// `pthread_getattr_np`, the main thread's as far as `RLIMIT_STACK` lets it grow; Apple:
/// `pthread_get_stackaddr_np`/`pthread_get_stacksize_np`; Windows:
/// `GetCurrentThreadStackLimits`). A JIT that checks its stack pointer against a limit computes
/// it from this, and a host decides from it whether code may run on the calling thread or
/// needs a thread with a larger stack.
///
/// ```
/// let stack = jitmem::introspect::thread_stack()?;
/// let here = &stack as *const _ as usize;
/// assert!(stack.contains(&here));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn thread_stack() -> io::Result<std::ops::Range<usize>> {
    let (low, size) = crate::sys::thread_stack()?;
    let end = low
        .checked_add(size)
        .ok_or_else(|| io::Error::other("the thread's stack wraps around the address space"))?;
    Ok(low..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread made with a known stack size reports a stack of about that size that holds its
    /// own locals.
    #[test]
    #[cfg_attr(
        not(any(target_os = "linux", target_vendor = "apple", windows)),
        ignore = "the thread's stack is not read on this target"
    )]
    fn thread_stack_holds_the_threads_locals_and_has_its_size() {
        const SIZE: usize = 3 << 20;
        let seen = std::thread::Builder::new()
            .stack_size(SIZE)
            .spawn(|| {
                let local = 0u8;
                let here = std::hint::black_box(&local) as *const u8 as usize;
                (thread_stack(), here)
            })
            .expect("spawn a thread")
            .join()
            .expect("join it");
        let (stack, here) = seen;
        let stack = stack.expect("the thread's stack");
        assert!(stack.contains(&here), "{stack:x?} does not hold {here:#x}");
        let len = stack.end - stack.start;
        assert!(
            (SIZE..=2 * SIZE).contains(&len),
            "a thread made with a {SIZE}-byte stack reports {len} bytes"
        );
    }
}
