//! Private memory: POSIX `mmap`, `mprotect`, `munmap`, `sysconf` (never `MAP_JIT`: see `rights.rs`).

use super::Os;

crate::sys::posix::impl_memory!();
