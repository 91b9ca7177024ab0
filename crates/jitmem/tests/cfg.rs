//! Windows' Control Flow Guard: `Config::cfg_call_targets` and
//! `CodeBlock::allow_indirect_calls`.
//!
//! Run natively (Linux) and for `x86_64-pc-windows-gnu` under Wine. Neither enforces CFG (Wine
//! has none; the test binary is not built with `/guard:cf`), so what runs here is the "CFG off"
//! path: `Explicit` memory is made and runs like any other, and `allow_indirect_calls` checks
//! its offsets and marks nothing. The enforced path (`PAGE_TARGETS_INVALID`,
//! `SetProcessValidCallTargets`) needs Windows 10 and a host built with CFG, and was never run.

mod common;

use jitmem::{CfgCallTargets, Config, Error, JitMemory, Layout, Strategy};

/// The strategies Windows offers (PerThread is refused there), on every layout; elsewhere the
/// same ones, which every platform here supports.
fn configs() -> Vec<(Strategy, Layout)> {
    let mut all = Vec::new();
    for strategy in [Strategy::Toggle, Strategy::Mirror, Strategy::Rwx] {
        for layout in [
            Layout::PerAllocation,
            Layout::Pooled,
            Layout::Arena { size: 4 << 20 },
        ] {
            all.push((strategy, layout));
        }
    }
    all
}

fn explicit(strategy: Strategy, layout: Layout) -> JitMemory {
    let config = Config::new()
        .strategy(strategy)
        .layout(layout)
        .cfg_call_targets(CfgCallTargets::Explicit)
        .ignore_environment();
    assert_eq!(
        config.requested_cfg_call_targets(),
        CfgCallTargets::Explicit
    );
    let config = if strategy == Strategy::Rwx {
        // SAFETY: the test runs only its own trusted code.
        unsafe { config.allow_rwx_without_wx() }
    } else {
        config
    };
    JitMemory::new(config).unwrap_or_else(|e| panic!("{strategy}/{layout}: {e}"))
}

/// Whether this test process is expected to enforce CFG: never here (see the module's docs);
/// `JITMEM_EXPECT_CFG=1` says otherwise for a run on Windows with a CFG-enabled build.
fn expect_cfg() -> bool {
    cfg!(windows) && std::env::var_os("JITMEM_EXPECT_CFG").is_some()
}

#[test]
fn the_default_is_all_valid() {
    assert_eq!(
        Config::new().requested_cfg_call_targets(),
        CfgCallTargets::AllValid
    );
    let m = common::memory(Strategy::Toggle, Layout::Pooled).expect("Toggle works here");
    assert!(
        !m.cfg_targets_enforced(),
        "AllValid never makes targets explicit"
    );
    let block = common::function(&m, 7);
    // A checked no-op: every location is a valid target already.
    block.allow_indirect_calls(&[0]).unwrap();
    assert!(matches!(
        block.allow_indirect_calls(&[block.len()]),
        Err(Error::BadCallTarget { .. })
    ));
    assert_eq!(common::call(&block), 7);
}

/// `Explicit` memory allocates, runs, patches, shrinks and frees in every strategy and layout;
/// `allow_indirect_calls` accepts entry points and refuses what CFG could not mark, and the
/// code still runs after it (where CFG is off the marks are a no-op).
#[test]
fn explicit_memory_runs_and_marks_entry_points() {
    for (strategy, layout) in configs() {
        let m = explicit(strategy, layout);
        assert_eq!(
            m.cfg_targets_enforced(),
            expect_cfg(),
            "{strategy}/{layout}: CFG is off here, so Explicit changes nothing"
        );
        let mut blocks = Vec::new();
        for value in 0..4 {
            let mut block = m.allocate(64).unwrap();
            {
                let mut scope = block.write().unwrap();
                scope[..16].copy_from_slice(&jitmem::isa::return_constant(value));
                scope[16..32].copy_from_slice(&jitmem::isa::return_constant(value + 100));
                scope.publish().unwrap();
            }
            // Two entry points, out of order and repeated: accepted.
            block
                .allow_indirect_calls(&[16, 0, 16])
                .unwrap_or_else(|e| panic!("{strategy}/{layout}: {e}"));
            assert_eq!(common::call(&block), value, "{strategy}/{layout}");
            // SAFETY: offset 16 holds a return_constant function.
            let second: extern "C" fn() -> u32 = unsafe { block.entry(16).unwrap() };
            assert_eq!(second(), value + 100, "{strategy}/{layout}");
            blocks.push(block);
        }
        // A write scope keeps the marks (Toggle flips back with PAGE_TARGETS_NO_UPDATE when
        // CFG is enforced): the patched code runs.
        common::patch(&mut blocks[0], 41, false);
        assert_eq!(common::call(&blocks[0]), 41, "{strategy}/{layout}");
        // Refused: outside the block, and an address that is not a multiple of 16.
        let b = &blocks[1];
        let err = b.allow_indirect_calls(&[0, b.len()]).unwrap_err();
        assert!(
            matches!(err, Error::BadCallTarget { offset, .. } if offset == b.len()),
            "{strategy}/{layout}: {err}"
        );
        let err = b.allow_indirect_calls(&[8]).unwrap_err();
        assert!(
            matches!(err, Error::BadCallTarget { offset: 8, .. }),
            "{strategy}/{layout}: {err}"
        );
        assert!(err.to_string().contains("16"), "{err}");
        // Shrinking withdraws the tail's marks (a no-op here), then frees it.
        blocks[2].shrink(16).unwrap();
        assert_eq!(common::call(&blocks[2]), 2, "{strategy}/{layout}");
        // Freed ranges (marks withdrawn) come back and run new code.
        drop(blocks);
        let again = common::function(&m, 9);
        again.allow_indirect_calls(&[0]).unwrap();
        assert_eq!(common::call(&again), 9, "{strategy}/{layout}");
    }
}
