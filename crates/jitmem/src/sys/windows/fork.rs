//! fork: Windows has none. The hooks do nothing and are never reached.

use super::Os;

crate::sys::impl_no_fork!("Windows has no `fork()`, so the handlers could never run");
