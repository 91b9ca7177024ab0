//! [`JitMemory`]: the allocator of code blocks, for one strategy and one layout. A thin facade:
//! it resolves the configuration (environment, `Auto` through the probe), checks requests, and
//! asks the calling thread's [`Shard`] of the heap for ranges.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::block::CodeBlock;
use crate::config::{BTI_ENV, Choice, Config, LAYOUT_ENV, Layout, STRATEGY_ENV, Strategy};
use crate::error::{Error, Result};
use crate::heap::{Core, FIRST_CHUNK, Shard, Stats, round_up};
use crate::probe;
use crate::strategy::StrategyRules;
use crate::sys;

/// Executable memory for one JIT: hands out [`CodeBlock`]s.
///
/// Cheap to clone (a reference count); `Send + Sync`. Any thread may allocate, write, publish,
/// run and free blocks at the same time as the others, in every strategy and layout: a write
/// scope or a free never stops another thread running a *different* block. The one restriction
/// is Toggle's: a block whose write scope is open must not run meanwhile (its pages are not
/// executable then; see [`CodeBlock::entry`]). Blocks keep the memory alive, so a `JitMemory`
/// may be dropped before its blocks. Across `fork()`, see [`fork_safety`](crate::fork_safety).
///
/// ```
/// # fn main() -> jitmem::Result<()> {
/// use jitmem::{Config, JitMemory};
/// let memory = JitMemory::new(Config::new())?;
/// let mut block = memory.allocate(16)?;
/// {
///     let mut scope = block.write()?;
///     scope[..16].copy_from_slice(&jitmem::isa::return_constant(42));
///     scope.publish()?;
/// }
/// // SAFETY: the block holds a complete `extern "C" fn() -> u32`.
/// let f: extern "C" fn() -> u32 = unsafe { block.entry(0)? };
/// assert_eq!(f(), 42);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JitMemory {
    core: Arc<Core>,
    /// One heap per shard. Pooled memory has one shard per core (up to 8): each thread
    /// allocates from the shard of its slot (round-robin), so up to that many threads do not
    /// share a lock or a chunk. Arena and PerAllocation have one.
    shards: Arc<[Arc<Shard>]>,
}

/// Up to this many Pooled shards.
const MAX_SHARDS: usize = 8;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot: threads are spread over the shards round-robin.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

impl JitMemory {
    /// Creates code memory as `config` says. With `Strategy::Auto` the [probe](crate::probe)
    /// picks (once per process); an explicit strategy the platform refuses gives
    /// [`Error::Unsupported`] with the reason. Pooled and Arena map their first region now
    /// (system calls); PerAllocation maps and unmaps one trial page.
    pub fn new(config: Config) -> Result<JitMemory> {
        let config = with_environment(&config)?;
        let page = sys::page_size();
        if !config.default_align.is_power_of_two() || config.default_align > page {
            return Err(Error::BadAlignment {
                align: config.default_align,
                page_size: page,
            });
        }
        let choice = resolve(&config)?;
        let strategy = choice.strategy;
        if strategy == Strategy::Rwx && !config.rwx_opt_in {
            return Err(Error::RwxNotOptedIn);
        }
        if config.bti {
            sys::bti_support().map_err(|reason| Error::FeatureUnsupported {
                feature: "BTI landing-pad protection (Config::bti)",
                reason,
            })?;
        }
        if config.near.is_some() && sys::PLACEMENT == sys::Placement::Unsupported {
            return Err(Error::FeatureUnsupported {
                feature: "placement near an address (Config::near)",
                reason: "implemented on Linux and Windows only: this platform's regions cannot be placed at a chosen address".to_owned(),
            });
        }
        // The first region proves the strategy works: any refusal there is "unsupported".
        let unsupported = |e: Error| unsupported(strategy, e);
        // Guard pages around each Pooled chunk and the Arena (both views of a mirror), where
        // regions can be placed (Linux, Windows); PerAllocation blocks have none. One unit of
        // reservation each side: a page on Linux, the 64 KiB allocation granularity on Windows
        // (nothing smaller can be reserved there).
        let guard = match choice.layout {
            Layout::Pooled | Layout::Arena { .. }
                if sys::PLACEMENT != sys::Placement::Unsupported =>
            {
                sys::reservation_granularity().max(page)
            }
            _ => 0,
        };
        let options = sys::MapOptions {
            txm: config.txm,
            txm_debugger_speaks_protocol: config.txm_debugger_speaks_protocol,
            guard,
            near: config.near.map(|(address, max_distance)| sys::Near {
                address,
                max_distance,
            }),
            bti: config.bti,
            cfg_targets_invalid: crate::call_targets::targets_invalid(
                config.cfg_call_targets,
                sys::cfg_enforced(),
            ),
        };
        let core = Core::new(choice, options, config.default_align)?;
        let shards: Vec<Arc<Shard>> = match core.layout {
            Layout::PerAllocation => {
                drop(
                    core.rules
                        .map_region(page, page, options)
                        .map_err(unsupported)?,
                );
                vec![Shard::new(&core, None)?]
            }
            Layout::Arena { size } => {
                // The whole reservation: Windows reserves 64 KiB units, elsewhere pages.
                let unit = sys::reservation_granularity().max(page);
                let size = round_up(size.max(1), unit).ok_or(Error::TooLarge { len: size })?;
                vec![Shard::new(&core, Some((Some(size), 0))).map_err(unsupported)?]
            }
            Layout::Pooled => {
                let first = FIRST_CHUNK.max(page);
                let count = std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .clamp(1, MAX_SHARDS);
                // The first shard maps its first chunk now, which also proves the strategy
                // works; the others map theirs when a thread first allocates from them.
                let mut shards =
                    vec![Shard::new(&core, Some((Some(first), first * 2))).map_err(unsupported)?];
                for _ in 1..count {
                    shards.push(Shard::new(&core, Some((None, first)))?);
                }
                shards
            }
        };
        Ok(JitMemory {
            core,
            shards: shards.into(),
        })
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.core.strategy()
    }

    /// The layout in use.
    pub fn layout(&self) -> Layout {
        self.core.layout
    }

    /// Whether indirect calls into this memory's code are checked against explicit targets:
    /// [`CfgCallTargets::Explicit`](crate::CfgCallTargets::Explicit) was asked for and the
    /// process enforces Windows' Control Flow Guard, so that only the locations marked with
    /// [`CodeBlock::allow_indirect_calls`] may be called through a pointer. `false` elsewhere
    /// (every location is callable, and `allow_indirect_calls` is a checked no-op).
    pub fn cfg_targets_enforced(&self) -> bool {
        self.core.options.cfg_targets_invalid
    }

    /// The strategy and layout in use, and why.
    pub fn choice(&self) -> &Choice {
        &self.core.choice
    }

    /// Allocates a block of `len` bytes at the default alignment (16 bytes unless configured).
    /// Pooled and Arena: a range this thread freed of the same rounded size (up to 1 KiB) comes
    /// back from the thread's cache with no lock; otherwise a lock and O(1) bookkeeping (plus a
    /// new chunk's `mmap` when the pool is full). PerAllocation: a mapping (2-6 system calls).
    pub fn allocate(&self, len: usize) -> Result<CodeBlock> {
        self.allocate_aligned(len, self.core.default_align)
    }

    /// Allocates a block of `len` bytes whose executable address is a multiple of `align` (a
    /// power of two up to the page size).
    pub fn allocate_aligned(&self, len: usize, align: usize) -> Result<CodeBlock> {
        let core = &self.core;
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        // No mapping can be larger than isize::MAX bytes.
        if len > isize::MAX as usize {
            return Err(Error::TooLarge { len });
        }
        if !align.is_power_of_two() || align > core.page {
            return Err(Error::BadAlignment {
                align,
                page_size: core.page,
            });
        }
        core.check_usable()?;
        let shard = self.shard();
        let cached = round_up(len, core.granule)
            .and_then(|rounded| crate::thread_cache::take(shard, rounded, align));
        let allocation = match cached {
            Some(allocation) => allocation,
            None => shard.allocate(len, align)?,
        };
        Ok(CodeBlock::new(Arc::clone(shard), allocation))
    }

    /// The shard of the calling thread.
    fn shard(&self) -> &Arc<Shard> {
        let i = if self.shards.len() == 1 {
            0
        } else {
            SLOT.with(|slot| *slot) % self.shards.len()
        };
        // In range: shards is never empty (new makes at least one).
        &self.shards[i]
    }

    /// Counters: live blocks and bytes, reserved bytes, regions (over all shards).
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            open_pages: self.core.rules.open_pages(),
            ..Stats::default()
        };
        for shard in self.shards.iter() {
            shard.add_stats(&mut stats);
        }
        stats
    }

    /// Whether executable views are mapped with `PROT_BTI` ([`Config::bti`], or `JITMEM_BTI=1`):
    /// code written here must start every indirect-branch target with a `bti` landing pad.
    pub fn bti(&self) -> bool {
        self.core.options.bti
    }

    /// The page size this memory works with.
    pub fn page_size(&self) -> usize {
        self.core.page
    }
}

impl Drop for JitMemory {
    /// Gives back what this thread's cache holds of the memory's heaps (other threads give
    /// theirs back when they exit; see `thread_cache`).
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            crate::thread_cache::flush(shard);
        }
    }
}

impl std::fmt::Debug for JitMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitMemory")
            .field("strategy", &self.strategy())
            .field("layout", &self.core.layout)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A failure of the first region of a memory of `strategy` (which proves the strategy works) as
/// `Error::Unsupported`, keeping the OS error, when there is one, as the source with its raw
/// code (not flattened into the reason); `Unsupported` and `MappingLimit` pass through.
fn unsupported(strategy: Strategy, e: Error) -> Error {
    match e {
        e @ (Error::Unsupported { .. } | Error::MappingLimit { .. } | Error::NoRoomNear { .. }) => {
            e
        }
        Error::Os { op, source } => Error::Unsupported {
            strategy,
            reason: format!("{op} failed"),
            source: Some(source),
        },
        e => Error::Unsupported {
            strategy,
            reason: sys::error_chain(&e),
            source: None,
        },
    }
}

/// Resolves the environment: `JITMEM_STRATEGY` when the strategy is `Auto`, `JITMEM_LAYOUT`
/// when no layout was set, `JITMEM_BTI` (unless the configuration ignores the environment).
fn with_environment(config: &Config) -> Result<Config> {
    let mut config = config.clone();
    if !config.use_environment {
        return Ok(config);
    }
    if config.strategy == Strategy::Auto {
        if let Ok(value) = std::env::var(STRATEGY_ENV) {
            let parsed = Strategy::from_name(&value).filter(|s| *s != Strategy::Rwx);
            config.strategy = parsed.ok_or(Error::BadEnvironment {
                var: STRATEGY_ENV,
                value,
                reason: "expected auto, toggle, mirror or perthread (rwx can only be enabled in code)",
            })?;
        }
    }
    if let Ok(value) = std::env::var(BTI_ENV) {
        config.bti |= match value.trim() {
            "1" => true,
            "0" | "" => false,
            _ => {
                return Err(Error::BadEnvironment {
                    var: BTI_ENV,
                    value,
                    reason: "expected 1 (map code with PROT_BTI) or 0",
                });
            }
        };
    }
    if config.layout.is_none() {
        if let Ok(value) = std::env::var(LAYOUT_ENV) {
            config.layout = Some(Layout::from_name(&value).ok_or(Error::BadEnvironment {
                var: LAYOUT_ENV,
                value,
                reason: "expected per-allocation, pooled, arena or arena:SIZE (e.g. arena:64m)",
            })?);
        }
    }
    Ok(config)
}

/// Resolves `Auto` through the probe and picks the default layout.
fn resolve(config: &Config) -> Result<Choice> {
    let mut choice = match config.strategy {
        Strategy::Auto => probe::auto_choice().map_err(|reason| Error::Unsupported {
            strategy: Strategy::Auto,
            reason,
            source: None,
        })?,
        strategy => Choice {
            strategy,
            layout: Layout::Pooled,
            reason: "asked for by the configuration".to_owned(),
        },
    };
    if let Some(layout) = config.layout {
        choice.layout = layout;
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed system call behind the first region keeps its OS error as the source, with the
    /// raw code (e.g. Windows' `ERROR_DYNAMIC_CODE_BLOCKED`, 1655), instead of a flattened
    /// string.
    #[test]
    fn first_region_failures_keep_the_os_error() {
        let os = Error::Os {
            op: "VirtualAlloc(MEM_COMMIT)",
            source: std::io::Error::from_raw_os_error(1655),
        };
        let e = unsupported(Strategy::Toggle, os);
        assert!(matches!(
            e,
            Error::Unsupported {
                strategy: Strategy::Toggle,
                ..
            }
        ));
        let source = std::error::Error::source(&e).expect("the OS error is the source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the source is a std::io::Error");
        assert_eq!(io.raw_os_error(), Some(1655));
        assert!(
            e.to_string().contains("VirtualAlloc(MEM_COMMIT) failed"),
            "{e}"
        );
        // Errors that are not OS errors keep their words and have no source.
        let e = unsupported(Strategy::Mirror, Error::Internal("x"));
        assert!(std::error::Error::source(&e).is_none());
    }
}
