//! The platform layer: the one place that names operating systems. Every platform module offers
//! the same functions; everything above speaks in strategies, layouts and ranges.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
#[cfg(target_os = "linux")]
pub use linux::{Mapping, MirrorBacking};

#[cfg(not(target_os = "linux"))]
compile_error!("jitmem supports Linux in this version; macOS, iOS and Windows come next");
