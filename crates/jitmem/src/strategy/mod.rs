//! One module per W^X strategy, each stating its invariants at the top and holding what is
//! specific to it: how its regions are mapped, how a write scope acquires and releases write
//! rights, the granule its blocks are rounded to, whether writes need no rights (so a trap fill
//! is a plain store), and its fork policy. The rest of the crate asks [`Rules`]; it does not
//! `match` on [`Strategy`].
//!
//! | module | strategy |
//! |---|---|
//! | [`toggle`] | `mprotect` flips; each block records its open scopes |
//! | [`mirror`] | an RW and an RX view of the same pages |
//! | [`per_thread`] | per-thread write rights (protection keys, Apple `MAP_JIT`) |
//! | [`rwx`] | no protection (unsafe opt-in) |
//! | [`region`] | the owned mapping every strategy maps |
//!
//! **One dispatch point**: the enum [`Rules`], whose forwarding `match` is written once (the
//! `dispatch!` macro below), over the trait [`StrategyRules`] that every strategy implements
//! (a strategy missing a piece does not compile). An enum rather than `dyn`: `acquire` and
//! `release` sit on the write-scope hot path (no vtable, inlinable). They are given the block's
//! [`OpenScopes`] (its record of the scopes open on it, which only Toggle fills).
//!
//! **Publish** (making written bytes runnable) is the same for every strategy and is not
//! theirs to change: [`crate::icache::publish`], after `release`.
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): changes page protections and owns the mappings (Region) every strategy maps.

mod mirror;
mod per_thread;
pub(crate) mod region;
mod rwx;
mod toggle;

use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::sys;

pub(crate) use region::Region;
pub(crate) use toggle::OpenScopes;

/// The strategy of one memory: the one place that dispatches on it.
pub(crate) enum Rules {
    Toggle(toggle::Toggle),
    Mirror(mirror::Mirror),
    PerThread(per_thread::PerThread),
    Rwx(rwx::Rwx),
}

impl Rules {
    /// Maps a region (see [`StrategyRules::map`]) and commits its first `used` bytes, or its
    /// first commit granule when `used` is 0 (so that a new region proves the strategy's
    /// protection is granted; see [`sys::Commit`]); a platform that refuses the strategy
    /// outright (not a failed call) gives `Error::Unsupported` naming it.
    pub(crate) fn map_region(
        &self,
        len: usize,
        used: usize,
        options: sys::MapOptions,
    ) -> Result<Region> {
        self.map(len, used, options)
            .and_then(|region| {
                region.ensure_committed(used.max(1))?;
                Ok(region)
            })
            .map_err(|e| match sys::refusal(&e) {
                Some(reason) => Error::Unsupported {
                    strategy: self.strategy(),
                    reason: reason.to_owned(),
                    source: None,
                },
                None => e,
            })
    }

    /// The rules of `strategy` (not `Auto`, which the probe resolves first) for regions mapped
    /// with `options`: `bti`, executable pages are mapped with `PROT_BTI` (`Config::bti`);
    /// `cfg_targets_invalid`, their locations are no Control Flow Guard targets until marked.
    pub(crate) fn new(strategy: Strategy, options: &sys::MapOptions) -> Result<Rules> {
        Ok(match strategy {
            Strategy::Toggle => Rules::Toggle(toggle::Toggle::new(
                options.bti,
                options.cfg_targets_invalid,
            )),
            Strategy::Mirror => Rules::Mirror(mirror::Mirror),
            Strategy::PerThread => Rules::PerThread(per_thread::PerThread::new()?),
            Strategy::Rwx => Rules::Rwx(rwx::Rwx),
            Strategy::Auto => return Err(Error::Internal("strategy rules asked for Auto")),
        })
    }
}

/// The rights part of [`StrategyRules`] for a strategy whose writable address is always
/// writable (Mirror's RW view, Rwx's pages): a scope acquires and releases nothing, and a trap
/// fill is a plain store. Spelled out per strategy with this macro, not defaulted in the trait,
/// so that a strategy that needs rights cannot forget them.
macro_rules! always_writable {
    () => {
        fn acquire(
            &self,
            _scopes: &mut $crate::strategy::OpenScopes,
            _start: usize,
            _end: usize,
        ) -> Result<()> {
            Ok(())
        }

        fn release(
            &self,
            _scopes: &mut $crate::strategy::OpenScopes,
            _start: usize,
            _end: usize,
        ) -> Result<()> {
            Ok(())
        }

        fn always_writable(&self) -> bool {
            true
        }
    };
}
use always_writable;

/// Declares [`StrategyRules`] and its forwarding impl for [`Rules`] from one list, so that the
/// trait and the dispatch cannot drift apart. A method is declared with `;` or with a default
/// body.
macro_rules! strategy_rules {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty
        $(= $default:block)?;)*) => {
        /// What every strategy decides for itself.
        pub(crate) trait StrategyRules {
            $(strategy_rules!(@decl $(#[$doc])* fn $name(&self $(, $arg: $ty)*) -> $ret
                $(= $default)?);)*
        }

        impl StrategyRules for Rules {
            $(
                #[inline]
                fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Rules::Toggle(s) => s.$name($($arg),*),
                        Rules::Mirror(s) => s.$name($($arg),*),
                        Rules::PerThread(s) => s.$name($($arg),*),
                        Rules::Rwx(s) => s.$name($($arg),*),
                    }
                }
            )*
        }
    };
    (@decl $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty) => {
        $(#[$doc])* fn $name(&self $(, $arg: $ty)*) -> $ret;
    };
    (@decl $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty
        = $default:block) => {
        $(#[$doc])* fn $name(&self $(, $arg: $ty)*) -> $ret $default
    };
}

strategy_rules! {
    /// The strategy this is.
    fn strategy(&self) -> Strategy;

    /// Maps a region of `len` bytes (a page multiple) for this strategy; `used` is how much of
    /// it counts as handed out from the start (the whole of it for a PerAllocation block).
    fn map(&self, len: usize, used: usize, options: sys::MapOptions) -> Result<Region>;

    /// Every block is a multiple of this many bytes and at least this aligned (`page`: the
    /// page size; `min`: the allocator's smallest granule).
    fn granule(&self, page: usize, min: usize) -> usize;

    /// Grants the calling thread write access to the executable range `[start, end)`
    /// (`start < end`, inside one live block, whose record of open scopes is `scopes`: the
    /// caller holds the block mutably).
    fn acquire(&self, scopes: &mut OpenScopes, start: usize, end: usize) -> Result<()>;

    /// Withdraws what [`acquire`](Self::acquire) granted for the same range of the same block.
    fn release(&self, scopes: &mut OpenScopes, start: usize, end: usize) -> Result<()>;

    /// True when the writable address is always writable (no scope needed): a trap fill is a
    /// plain store, then a publish.
    fn always_writable(&self) -> bool;

    /// Whether a fork child may keep using memory of this strategy made before the fork.
    fn child_keeps_memory(&self) -> bool;

    /// Pages currently open for writing (Toggle), for stats.
    fn open_pages(&self) -> usize = { 0 };

    /// True when other threads may keep running a block's code while it is being written
    /// (everything but Toggle, whose written pages are not executable), so that
    /// [`CodeBlock::patch_live`](crate::CodeBlock::patch_live) can be offered.
    fn runs_while_written(&self) -> bool = { true };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fork policy, per strategy (`fork.md`): private mappings survive, Mirror's writable
    /// views and Apple's MAP_JIT memory do not.
    #[test]
    fn fork_policy_per_strategy() {
        for (s, keeps) in [
            (Strategy::Toggle, true),
            (Strategy::Rwx, true),
            (Strategy::Mirror, false),
        ] {
            let rules = Rules::new(s, &sys::MapOptions::default()).unwrap();
            assert_eq!(rules.child_keeps_memory(), keeps, "{s}");
            assert_eq!(rules.strategy(), s);
        }
        assert_eq!(
            per_thread::CHILD_KEEPS_MEMORY,
            !cfg!(target_vendor = "apple"),
            "Linux pkeys survive fork, Apple MAP_JIT does not"
        );
    }

    /// Toggle blocks own whole pages; the others use the allocator's granule.
    #[test]
    fn granules() {
        let toggle = Rules::new(Strategy::Toggle, &sys::MapOptions::default()).unwrap();
        assert_eq!(toggle.granule(4096, 16), 4096);
        let mirror = Rules::new(Strategy::Mirror, &sys::MapOptions::default()).unwrap();
        assert_eq!(mirror.granule(4096, 16), 16);
        assert!(Rules::new(Strategy::Auto, &sys::MapOptions::default()).is_err());
    }
}
