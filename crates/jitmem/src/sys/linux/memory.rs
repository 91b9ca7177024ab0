//! Private memory: POSIX `mmap`, `mprotect`, `munmap`, `sysconf`.

use super::Os;

crate::sys::posix::impl_memory!();
