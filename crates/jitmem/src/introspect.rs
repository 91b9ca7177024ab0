//! Reading this process's memory map, to check the W^X invariant and count mappings (Linux:
//! `/proc/self/maps`; Windows: a `VirtualQuery` walk; Apple: a `mach_vm_region` walk).

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
