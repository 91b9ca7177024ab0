//! The platform layer: the one place that names operating systems.
//!
//! Every platform module offers the same functions, and everything above speaks in strategies,
//! layouts and ranges:
//!
//! | function | what it does |
//! |---|---|
//! | `page_size` | the page size |
//! | `map_private`, `protect`, `unmap` | private memory for Toggle and Rwx, and `ExecBuffer` |
//! | `map_mirror`, `unmap_view`, `mirror_backing` | two views of the same pages (Mirror) |
//! | `per_thread_key`, `map_per_thread`, `per_thread_begin`, `per_thread_end` | per-thread write rights (PerThread) |
//! | `clear_cache`, `pipeline_flush_mt` | instruction-cache coherence |
//! | `register_atfork`, `snapshot_for_fork`, `install_snapshot_after_fork`, `discard_snapshot` | fork safety of mirrors |
//! | `mappings`, `mapping_count`, `mapping_limit` | introspection |
//! | `probe_facts` | what the probe reports |
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): the platform layer: system calls on memory the crate owns.

mod common;
pub(crate) use common::*;
pub use common::{Mapping, MirrorBacking};

#[cfg(unix)]
mod posix;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

#[cfg(target_vendor = "apple")]
mod apple;
#[cfg(target_vendor = "apple")]
pub(crate) use apple::*;

#[cfg(not(any(target_os = "linux", windows, target_vendor = "apple")))]
compile_error!("jitmem supports Linux, Windows, macOS and iOS");
