//! Mirrors: one pagefile-backed section (`CreateFileMappingW`), two views (`MapViewOfFile`).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_EXECUTE, FILE_MAP_READ, FILE_MAP_TARGETS_INVALID, FILE_MAP_WRITE,
    MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile, PAGE_EXECUTE_READWRITE, SEC_RESERVE,
    UnmapViewOfFile,
};

use super::{Os, os_error};
use crate::error::{Error, Result};
use crate::sys::{MapOptions, Mirror, MirrorBacking, MirrorViews, Near, Place};

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

    /// Always a file mapping here, once a mirror has been made.
    fn mirror_backing() -> Option<MirrorBacking> {
        MIRROR_MADE
            .load(Ordering::Relaxed)
            .then_some(MirrorBacking::FileMapping)
    }
}

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
fn map_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
    map_section_twice(len, options, 0)
}

/// [`map_mirror`] of a section created with `SEC_RESERVE`: both views are reserved, and each page
/// is usable through a view once committed there (`VirtualAlloc(MEM_COMMIT)` on that view; see
/// `memory.rs`'s `Commit`). CreateFileMappingW's documentation: "SEC_RESERVE: If the file
/// mapping object is backed by the operating system paging file (...), specifies that when a
/// view of the file is mapped into a process address space, the entire range of pages is
/// reserved for later use by the process rather than committed."
#[doc(alias = "SEC_RESERVE")]
pub(super) fn reserve_mirror(len: usize, options: MapOptions) -> Result<MirrorViews> {
    map_section_twice(len, options, SEC_RESERVE)
}

/// The two views of a new pagefile-backed section of `len` bytes, created with `attributes`
/// (0: `SEC_COMMIT`, the default; or `SEC_RESERVE`).
///
/// With `options.cfg_targets_invalid` (explicit Control Flow Guard targets) the executable view
/// is mapped with `FILE_MAP_TARGETS_INVALID`: "Sets all the locations in the mapped file as
/// invalid targets for CFG. This flag is similar to PAGE_TARGETS_INVALID. Use this flag in
/// combination with the execute access right FILE_MAP_EXECUTE"
/// (<https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-mapviewoffilefromapp>);
/// its pages are then committed with `PAGE_TARGETS_INVALID` as well (`memory.rs`'s `commit`).
fn map_section_twice(len: usize, options: MapOptions, attributes: u32) -> Result<MirrorViews> {
    let targets = if options.cfg_targets_invalid {
        FILE_MAP_TARGETS_INVALID
    } else {
        0
    };
    let size = u64::try_from(len).map_err(|_| Error::TooLarge { len })?;
    // SAFETY: an unnamed section backed by the paging file, with default security; the size is
    // split into its high and low halves as the API wants.
    let handle = unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            std::ptr::null(),
            PAGE_EXECUTE_READWRITE | attributes,
            (size >> 32) as u32,
            size as u32,
            std::ptr::null(),
        )
    };
    if handle.is_null() {
        return Err(os_error("CreateFileMappingW(PAGE_EXECUTE_READWRITE)"));
    }
    let section = Section(handle);
    // Guard pages around both views, the executable one near `Config::near` (place.rs).
    let rw = map_view(
        &section,
        FILE_MAP_WRITE,
        len,
        "MapViewOfFile(FILE_MAP_WRITE)",
        (options.guard, None),
    )?;
    let rx = match map_view(
        &section,
        FILE_MAP_READ | FILE_MAP_EXECUTE | targets,
        len,
        "MapViewOfFile(FILE_MAP_READ | FILE_MAP_EXECUTE)",
        (options.guard, options.near),
    ) {
        Ok(rx) => rx,
        Err(e) => {
            // SAFETY: rw (and its guards) was mapped just above and is not shared with anyone.
            let _ = unsafe { <Os as Place>::unmap_guarded_view(rw, len, options.guard) };
            return Err(e);
        }
    };
    drop(section);
    MIRROR_MADE.store(true, Ordering::Relaxed);
    Ok(MirrorViews { rx, rw })
}

/// A view of `section`; with `(guard, near)` other than `(0, None)`, placed with guard pages
/// and near an address by `place.rs`.
fn map_view(
    section: &Section,
    access: u32,
    len: usize,
    op: &'static str,
    (guard, near): (usize, Option<Near>),
) -> Result<NonNull<u8>> {
    if guard > 0 || near.is_some() {
        return super::place::map_view_placed(section.0, access, len, guard, near, op);
    }
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
unsafe fn unmap_view(ptr: NonNull<u8>, len: usize) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Prot, mappings, page_size, protect};

    #[test]
    fn mirror_views_share_pages_and_the_rx_view_cannot_become_writable() {
        let page = page_size();
        let views = map_mirror(page, MapOptions::default()).unwrap();
        assert_eq!(
            <Os as Mirror>::mirror_backing(),
            Some(MirrorBacking::FileMapping)
        );
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
}
