//! Many cranelift-jit modules on jitmem's provider, freed and made again: the memory goes back
//! to the OS (the process's mapping count returns to its baseline). One test in this binary, so
//! no other test thread maps or unmaps meanwhile. Linux only (it reads /proc/self/maps).

#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;

use jitmem::{Config, JitMemory, Layout, Strategy};
use jitmem_cranelift::JitmemProvider;

/// The process's mappings as the kernel counts them (what `vm.max_map_count` limits; adjacent
/// anonymous mappings with the same protection merge into one), and the bytes of anonymous
/// executable mappings (our code: no file, `x` in the permissions).
fn mappings() -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut exec = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (a, b) = fields[0].split_once('-').unwrap();
        let len = usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap();
        let anonymous = fields.len() < 6 || !fields[5].starts_with('/');
        let special = fields.len() >= 6 && fields[5].starts_with('[');
        if anonymous && !special && fields[1].contains('x') {
            exec += len;
        }
    }
    (maps.lines().count(), exec)
}

/// Makes `count` live modules, each with a provider on a clone of `memory`, runs them, then
/// frees them all. Returns [`mappings`] while they were alive.
fn cycle(memory: &JitMemory, count: usize) -> (usize, usize) {
    let mut modules = Vec::new();
    for i in 0..count {
        let provider = JitmemProvider::new(memory.clone()).unwrap();
        let mut m = common::module(Some(Box::new(provider)));
        let mut ids = HashMap::new();
        common::compile(&mut m, common::PROGRAM_A, &mut ids);
        let ptr = m.get_finalized_function(ids["sum_to"]);
        // SAFETY: sum_to is (i64) -> i64, finalized.
        let f = unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(ptr) };
        let n = i as i64;
        assert_eq!(f(n), n * (n + 1) / 2);
        modules.push(m);
    }
    let alive = mappings();
    for m in modules {
        // SAFETY: nothing runs the module's code any more.
        unsafe { m.free_memory() };
    }
    alive
}

#[test]
fn many_modules_freed_and_recreated_return_their_memory() {
    for (strategy, layout) in [
        (Strategy::Toggle, Layout::PerAllocation),
        (Strategy::Toggle, Layout::Pooled),
    ] {
        let config = Config::new()
            .strategy(strategy)
            .layout(layout)
            .ignore_environment();
        // Warm-up: the allocator's and cranelift's own first-use mappings are not ours.
        {
            let memory = JitMemory::new(config.clone()).unwrap();
            cycle(&memory, 4);
        }
        let baseline = mappings();
        let memory = JitMemory::new(config).unwrap();
        let mut peak = (0, 0);
        for round in 0..5 {
            let alive = cycle(&memory, 60);
            peak = (peak.0.max(alive.0), peak.1.max(alive.1));
            assert_eq!(
                memory.stats().live_blocks,
                0,
                "{strategy}/{layout} round {round}"
            );
        }
        drop(memory);
        let after = mappings();
        // The test can fail: 60 live modules of six functions hold at least a page each (Toggle
        // blocks own whole pages) of executable memory.
        let page = jitmem::page_size();
        assert!(
            peak.1 >= baseline.1 + 60 * 6 * page,
            "{strategy}/{layout}: live modules hold too little code? peak {peak:?}, baseline {baseline:?}"
        );
        assert_eq!(
            after, baseline,
            "{strategy}/{layout}: (mappings, executable bytes) after freeing every module and the memory (peak {peak:?})"
        );
        eprintln!(
            "{strategy}/{layout}: (mappings, executable bytes) baseline {baseline:?}, peak {peak:?}, after {after:?}"
        );
    }
    // The control: modules dropped without `free_memory` keep their code (on purpose, as
    // cranelift's providers do), and the measurement sees it.
    let before = mappings();
    let memory = JitMemory::new(
        Config::new()
            .strategy(Strategy::Toggle)
            .layout(Layout::PerAllocation)
            .ignore_environment(),
    )
    .unwrap();
    for _ in 0..5 {
        let mut m = common::module(Some(Box::new(JitmemProvider::new(memory.clone()).unwrap())));
        let mut ids = HashMap::new();
        common::compile(&mut m, common::PROGRAM_A, &mut ids);
        drop(m);
    }
    drop(memory);
    let leaked = mappings();
    assert!(
        leaked.1 >= before.1 + 5 * 6 * jitmem::page_size(),
        "dropped modules keep their code: before {before:?}, after {leaked:?}"
    );
}
