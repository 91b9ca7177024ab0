//! **Mirror**: two views of the same physical pages, one read-write and one read-execute.
//! Permissions never change after set-up.
//!
//! Invariants:
//! - **Who may write**: any thread holding a write scope, through the RW view only (the RX view
//!   can never be made writable: Linux maps it from a read-only memfd descriptor, Apple lowers
//!   its maximum protection, Windows maps it without write access).
//! - **Who may run, and when**: every thread, always, through the RX view.
//! - **A neighbour during a write scope or a free**: unaffected (nothing changes protection).
//! - **A forked child**: the RW view is not inherited (`MADV_DONTFORK`, checked); the fork
//!   handlers give the child a private, published copy of the code in use, taken before the
//!   fork. The child runs its code; allocating, writing and shrinking give
//!   `Error::ForkedChild`; freeing only does the bookkeeping. A block another thread was
//!   writing at the fork may be half-written in the child's copy: the child must not run it.

use std::sync::Arc;

use super::{Region, StrategyRules};
use crate::config::Strategy;
use crate::error::Result;
use crate::fork::{self, MirrorRecord};
use crate::sys;

pub(crate) struct Mirror;

impl StrategyRules for Mirror {
    fn strategy(&self) -> Strategy {
        Strategy::Mirror
    }

    fn map(&self, len: usize, used: usize, options: sys::MapOptions) -> Result<Region> {
        let views = sys::reserve_mirror(len, options)?;
        let views = super::region::place_mirror(views, len, options)?;
        let record = Arc::new(MirrorRecord::new(views.rx, len, used));
        // Built before registering so that a failure to register unmaps both views.
        let rx = sys::Prot::RX.with_targets_invalid(options.cfg_targets_invalid);
        let region = Region::mirror(views, len, rx, Arc::clone(&record)).guarded(options.guard);
        fork::register(record)?;
        Ok(region)
    }

    fn granule(&self, _page: usize, min: usize) -> usize {
        min
    }

    super::always_writable!();

    fn child_keeps_memory(&self) -> bool {
        false
    }
}
