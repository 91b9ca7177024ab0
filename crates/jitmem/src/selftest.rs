//! The whole life of a function in every strategy x layout this machine allows: allocate, write
//! real machine code that returns a value, publish, call, patch, call again, free; with the W^X
//! invariant checked from the process's memory map along the way. `jitmem selftest` prints it.
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): calls the code it wrote (a code-entry point).

use crate::config::{Config, Layout, Strategy};
use crate::error::Error;
use crate::introspect;
use crate::isa;
use crate::memory::JitMemory;
use crate::probe::Probe;

/// The result of one strategy x layout pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step worked and every check held.
    Pass,
    /// The probe says this strategy cannot work here, and it indeed refused.
    Unavailable(String),
    /// Something that should work did not.
    Fail(String),
}

/// One row of the self-test.
#[derive(Clone, Debug)]
pub struct Row {
    /// The strategy.
    pub strategy: Strategy,
    /// The layout.
    pub layout: Layout,
    /// What happened.
    pub outcome: Outcome,
}

/// The layouts the self-test runs (the arena is 64 MiB to keep it quick).
pub const LAYOUTS: [Layout; 3] = [
    Layout::PerAllocation,
    Layout::Pooled,
    Layout::Arena { size: 64 << 20 },
];

/// The environment variable that makes a refused `PerThread` a failure instead of "unavailable"
/// (set where protection keys must work: the emulated PKU machine in CI). Honoured by
/// [`run`] and by jitmem's tests.
pub const REQUIRE_PKU_ENV: &str = "JITMEM_REQUIRE_PKU";

/// True when [`REQUIRE_PKU_ENV`] is set to `1`.
pub fn pku_required() -> bool {
    std::env::var(REQUIRE_PKU_ENV).is_ok_and(|v| v == "1")
}

/// Runs the self-test for every W^X strategy (not `Rwx`, which gives W^X up) and every layout.
/// With `JITMEM_REQUIRE_PKU=1`, a `PerThread` the machine refuses is a failure.
pub fn run() -> Vec<Row> {
    let probe = Probe::run();
    let require_pku = pku_required();
    let mut rows = Vec::new();
    for strategy in [Strategy::Toggle, Strategy::Mirror, Strategy::PerThread] {
        for layout in LAYOUTS {
            let outcome = match life_of_a_function(strategy, layout) {
                Ok(()) => Outcome::Pass,
                Err(e) if strategy == Strategy::PerThread && require_pku => {
                    Outcome::Fail(format!("{REQUIRE_PKU_ENV}=1 but PerThread failed: {e}"))
                }
                Err(e) if !probe.allows(strategy) => Outcome::Unavailable(e),
                Err(e) => Outcome::Fail(e),
            };
            rows.push(Row {
                strategy,
                layout,
                outcome,
            });
        }
    }
    rows
}

/// Checks that neither the executable nor the writable address of a block is in a mapping that
/// is writable and executable at once (skipped for PerThread, whose pages are RWX in the page
/// tables by design and protected per thread).
fn check_wx(strategy: Strategy, addrs: [usize; 2], when: &str) -> Result<(), String> {
    if strategy == Strategy::PerThread {
        return Ok(());
    }
    for addr in addrs {
        match introspect::mapping_at(addr) {
            Ok(Some(m)) if m.is_writable_and_executable() => {
                return Err(format!(
                    "W^X broken {when}: {:#x}-{:#x} is {}",
                    m.start, m.end, m.perms
                ));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("{addr:#x} is not mapped {when}")),
            Err(e) => return Err(format!("cannot read the memory map: {e}")),
        }
    }
    Ok(())
}

fn life_of_a_function(strategy: Strategy, layout: Layout) -> Result<(), String> {
    let text = |e: Error| crate::sys::error_chain(&e);
    let memory = JitMemory::new(
        Config::new()
            .strategy(strategy)
            .layout(layout)
            .ignore_environment(),
    )
    .map_err(text)?;
    let mut block = memory.allocate(64).map_err(text)?;
    let rx = block.as_ptr() as usize;
    check_wx(strategy, [rx, rx], "after allocation")?;
    {
        let mut scope = block.write().map_err(text)?;
        let rw = scope.as_ptr() as usize;
        scope[..16].copy_from_slice(&isa::return_constant(0x1234_5678));
        check_wx(strategy, [rx, rw], "inside a write scope")?;
        scope.publish().map_err(text)?;
        check_wx(strategy, [rx, rw], "after publish")?;
    }
    // SAFETY: the block holds a complete `extern "C" fn() -> u32` (isa::return_constant).
    let f: extern "C" fn() -> u32 = unsafe { block.entry(0) }.map_err(text)?;
    if f() != 0x1234_5678 {
        return Err("the published function returned a wrong value".to_owned());
    }
    {
        let at = isa::RETURN_CONSTANT_PATCH_OFFSET;
        let mut scope = block.write_range(at..at + 4).map_err(text)?;
        scope.copy_from_slice(&0x0BAD_CAFEu32.to_le_bytes());
        scope.publish_live().map_err(text)?;
    }
    if f() != 0x0BAD_CAFE {
        return Err("the patched function returned a wrong value".to_owned());
    }
    let stats = memory.stats();
    if stats.live_blocks != 1 {
        return Err(format!(
            "stats say {} live blocks, expected 1",
            stats.live_blocks
        ));
    }
    drop(block);
    let stats = memory.stats();
    if stats.live_blocks != 0 || stats.live_bytes != 0 || stats.open_pages != 0 {
        return Err(format!("stats after free are not zero: {stats:?}"));
    }
    Ok(())
}
