//! Fork safety of mirrors: POSIX `pthread_atfork` and private snapshots of shared code.

use super::Os;

crate::sys::posix::impl_fork!();
