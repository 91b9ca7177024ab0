//! The memory map: `VirtualQuery` over the address space.

use std::ffi::c_void;
use std::io;

use windows_sys::Win32::System::Memory::{
    MEM_FREE, MEM_IMAGE, MEM_MAPPED, MEM_PRIVATE, MEM_RESERVE, MEMORY_BASIC_INFORMATION,
    PAGE_EXECUTE, PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_WRITECOPY, PAGE_READONLY,
    PAGE_READWRITE, PAGE_WRITECOPY, VirtualQuery,
};
use windows_sys::Win32::System::ProcessStatus::K32GetMappedFileNameW;
use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetCurrentThreadStackLimits};

use super::{Os, system};
use crate::sys::{Introspect, Mapping};

impl Introspect for Os {
    /// Every region of this process that is reserved or committed, as [`Mapping`]s.
    fn mappings() -> io::Result<Vec<Mapping>> {
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
    fn mapping_count() -> io::Result<usize> {
        let mut count = 0;
        for_each_region(|_| count += 1)?;
        Ok(count)
    }

    /// Windows has no limit on the number of mappings (only on address space and commit).
    fn mapping_limit() -> Option<(usize, usize)> {
        None
    }

    /// `GetCurrentThreadStackLimits`: the thread's whole reserved stack (Windows commits it as
    /// the guard page is touched).
    fn thread_stack() -> io::Result<(usize, usize)> {
        let (mut low, mut high) = (0usize, 0usize);
        // SAFETY: writes the calling thread's limits into two locals.
        unsafe { GetCurrentThreadStackLimits(&mut low, &mut high) };
        if high <= low {
            return Err(io::Error::other(format!(
                "GetCurrentThreadStackLimits gave an empty stack ({low:#x}..{high:#x})"
            )));
        }
        Ok((low, high - low))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Prot, map_private, page_size, protect, unmap};
    use windows_sys::Win32::System::Memory::MEM_COMMIT;

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
        let maps = Os::mappings().unwrap();
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
        // Other tests of this binary map and unmap on other threads: the two counts agree on
        // one of a few back-to-back tries.
        assert!(
            (0..20).any(|_| Os::mapping_count().unwrap() == Os::mappings().unwrap().len()),
            "mapping_count disagrees with mappings()"
        );
        // SAFETY: test-owned allocation.
        unsafe { unmap(ptr, 2 * page).unwrap() };
    }
}
