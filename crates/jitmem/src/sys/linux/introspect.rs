//! The memory map: `/proc/self/maps` and `vm.max_map_count`.

use std::io;

use super::Os;
use crate::sys::{Introspect, Mapping};

impl Introspect for Os {
    /// Reads `/proc/self/maps`.
    fn mappings() -> io::Result<Vec<Mapping>> {
        let text = std::fs::read_to_string("/proc/self/maps")?;
        Ok(text.lines().filter_map(parse_mapping).collect())
    }

    /// Lines of `/proc/self/maps`.
    fn mapping_count() -> io::Result<usize> {
        mapping_count()
    }

    /// `(mappings now, vm.max_map_count)`, to recognise the mapping limit behind an `ENOMEM`.
    fn mapping_limit() -> Option<(usize, usize)> {
        Some((mapping_count().ok()?, max_map_count()?))
    }

    /// `pthread_getattr_np` + `pthread_attr_getstack`. glibc reports a created thread's stack
    /// without its guard page, and the main thread's as what `RLIMIT_STACK` lets it grow to
    /// (bounded by the mapping below it).
    fn thread_stack() -> io::Result<(usize, usize)> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: pthread_getattr_np initialises `attr` for the calling thread; it is destroyed
        // below on every path once initialised.
        let rc = unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: `attr` was initialised by pthread_getattr_np; the out-pointers are locals.
        let rc = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) };
        // SAFETY: `attr` was initialised above and is not used after this.
        unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok((addr as usize, size))
    }
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
pub(super) fn mapping_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    Ok(text.lines().count())
}

/// A `/proc/sys` setting, trimmed.
pub(super) fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `vm.max_map_count`.
pub(super) fn max_map_count() -> Option<usize> {
    read_sysctl("/proc/sys/vm/max_map_count")?.parse().ok()
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
}
