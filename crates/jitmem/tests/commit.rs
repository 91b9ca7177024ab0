//! Reservations and commit on demand: what `Stats::reserved_bytes` counts (the system's
//! reservation unit, every view), and on Windows that only the parts of a region blocks were
//! handed out from are committed (`VirtualQuery` shows the rest as `MEM_RESERVE`).

mod common;

use common::{call, function, memory};
use jitmem::{Layout, Strategy};

/// The unit the system reserves address space in: Windows' 64 KiB allocation granularity
/// (`GetSystemInfo().dwAllocationGranularity` on x86-64 and AArch64), the page elsewhere.
fn reservation_unit() -> usize {
    if cfg!(windows) {
        64 << 10
    } else {
        jitmem::page_size()
    }
}

#[test]
fn per_allocation_reports_the_real_reservation() {
    let page = jitmem::page_size();
    let unit = reservation_unit();
    for (strategy, views) in [(Strategy::Toggle, 1), (Strategy::Mirror, 2)] {
        let m = memory(strategy, Layout::PerAllocation).expect("Toggle and Mirror work here");
        let blocks: Vec<_> = (0..3).map(|i| function(&m, i)).collect();
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(call(b), i as u32);
        }
        let s = m.stats();
        assert_eq!(s.live_bytes, 3 * page, "{strategy}");
        assert_eq!(
            s.reserved_bytes,
            3 * views * page.div_ceil(unit) * unit,
            "{strategy}: each function reserves its length rounded up to {unit} bytes, per view"
        );
        drop(blocks);
        assert_eq!(m.stats().reserved_bytes, 0, "{strategy}");
    }
}

#[test]
fn pooled_mirror_counts_both_views() {
    let m = memory(Strategy::Mirror, Layout::Arena { size: 1 << 20 }).expect("Mirror works here");
    assert_eq!(m.stats().reserved_bytes, 2 << 20);
    let m = memory(Strategy::Toggle, Layout::Arena { size: 1 << 20 }).expect("Toggle works here");
    assert_eq!(m.stats().reserved_bytes, 1 << 20);
}

/// An arena is reserved whole and committed as blocks are handed out, in 64 KiB steps: after
/// one small block, the arena's first 64 KiB are committed (executable), the rest is reserved
/// (`---`, `MEM_RESERVE`: no commit charge). A block far into the arena commits up to its end.
#[cfg(windows)]
#[test]
fn an_arena_is_committed_as_it_is_used() {
    use jitmem::introspect;
    const ARENA: usize = 64 << 20;
    const STEP: usize = 64 << 10;
    for strategy in [Strategy::Toggle, Strategy::Mirror, Strategy::Rwx] {
        let m = memory(strategy, Layout::Arena { size: ARENA }).expect("works under Windows");
        let first = function(&m, 7);
        assert_eq!(call(&first), 7);
        let base = first.as_ptr() as usize;
        let state = |addr: usize| {
            introspect::mapping_at(addr)
                .unwrap()
                .unwrap_or_else(|| panic!("{strategy}: nothing mapped at {addr:#x}"))
        };
        let committed = state(base);
        assert_eq!(
            committed.start, base,
            "{strategy}: the first block starts the arena"
        );
        assert_eq!(
            committed.end - committed.start,
            STEP,
            "{strategy}: only the first 64 KiB are committed: {committed:?}"
        );
        assert!(committed.perms.contains('x'), "{committed:?}");
        let rest = state(base + STEP);
        assert!(
            rest.perms.starts_with("---"),
            "{strategy}: the untouched arena is reserved, not committed: {rest:?}"
        );
        // Toggle and Rwx: the arena and its trailing guard (64 KiB, never committed) are one
        // reservation, so the reserved run goes on past the arena; a Mirror view ends there.
        let guard = if strategy == Strategy::Mirror {
            0
        } else {
            STEP
        };
        assert_eq!(rest.end, base + ARENA + guard, "{strategy}: {rest:?}");
        // A block of 1 MiB commits up to its end (rounded up to 64 KiB), and runs.
        let mut big = m.allocate(1 << 20).unwrap();
        {
            let mut scope = big.write().unwrap();
            scope[..16].copy_from_slice(&jitmem::isa::return_constant(9));
            scope.publish().unwrap();
        }
        assert_eq!(call(&big), 9);
        let end = big.as_ptr() as usize + big.len();
        let now = state(base);
        assert!(
            now.end >= end && now.end < end + STEP,
            "{strategy}: {now:?}"
        );
        assert!(state(now.end).perms.starts_with("---"), "{strategy}");
        // Freed ranges stay committed and are reused.
        drop(big);
        let again = function(&m, 11);
        assert_eq!(call(&again), 11);
    }
}
