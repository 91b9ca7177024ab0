//! **Rwx**: read-write-execute with no protection. Only with the unsafe opt-in
//! `Config::allow_rwx_without_wx`; never chosen by `Auto`.
//!
//! Invariants:
//! - **Who may write**: anyone, always.
//! - **Who may run, and when**: every thread, always.
//! - **A neighbour during a write scope or a free**: unaffected.
//! - **A forked child**: a copy-on-write copy; it keeps using the memory.

use super::{Region, StrategyRules};
use crate::config::Strategy;
use crate::error::Result;
use crate::sys::{self, Prot};

pub(crate) struct Rwx;

impl StrategyRules for Rwx {
    fn strategy(&self) -> Strategy {
        Strategy::Rwx
    }

    fn map(&self, len: usize, _used: usize, options: sys::MapOptions) -> Result<Region> {
        let prot = Prot::RWX
            .with_bti(options.bti)
            .with_targets_invalid(options.cfg_targets_invalid);
        let ptr = sys::reserve_private(len, prot, options)?;
        let ptr = super::region::place_private(ptr, len, options)?;
        Ok(Region::reserved_private(ptr, len, prot, true).guarded(options.guard))
    }

    fn granule(&self, _page: usize, min: usize) -> usize {
        min
    }

    super::always_writable!();

    fn child_keeps_memory(&self) -> bool {
        true
    }
}
