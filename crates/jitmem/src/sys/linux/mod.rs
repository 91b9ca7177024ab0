//! Linux on x86-64 and AArch64: `memfd_create` mirrors, protection keys, `membarrier`, `/proc`,
//! and the probe. The POSIX primitives (`mmap`, `mprotect`, `munmap`, `sysconf`,
//! `pthread_atfork` and the fork snapshots of mirrors) are shared with Apple (`super::posix`).
//!
//! # Safety
//! Every function here that maps, unmaps or re-protects memory is either safe because it only
//! creates *new* mappings nobody else knows about, or `unsafe` with the caller promising that it
//! owns the range it passes. Each `unsafe {}` block says which system call it makes and why the
//! arguments are valid.

mod fork;
mod icache;
mod introspect;
mod memory;
mod mirror;
mod place;
mod probe;
mod rights;
mod wait;

/// Linux, implementing every concern of the platform interface (one file each).
pub(crate) struct Os;

impl super::Platform for Os {}

// No Control Flow Guard here: every address of executable memory is callable.
crate::sys::impl_no_call_targets!();

// Mappings are usable as mapped: nothing to commit.
impl crate::sys::Commit for Os {}
