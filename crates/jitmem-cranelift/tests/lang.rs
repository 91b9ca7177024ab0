//! The small language of `common` compiled with cranelift-frontend and run on jitmem's provider
//! under every strategy and layout it supports, against cranelift's own `SystemMemoryProvider`.

mod common;

use std::collections::HashMap;

use cranelift_jit::{JITMemoryKind, JITMemoryProvider, SystemMemoryProvider};
use jitmem::{JitMemory, Layout, Strategy};
use jitmem_cranelift::{Error, JitmemProvider};

const LAYOUTS: [Layout; 3] = [
    Layout::PerAllocation,
    Layout::Pooled,
    Layout::Arena { size: 64 << 20 },
];

/// Memory for `strategy`/`layout`, or None when this machine refuses `strategy` (the probe must
/// agree). `JITMEM_REQUIRE_PKU=1` (CI's emulated-PKU VM) turns a refused PerThread into a
/// failure.
fn memory(strategy: Strategy, layout: Layout) -> Option<JitMemory> {
    match JitMemory::new(common::config(strategy, layout)) {
        Ok(m) => Some(m),
        Err(jitmem::Error::Unsupported { reason, .. }) => {
            assert!(
                strategy != Strategy::PerThread || !jitmem::selftest::pku_required(),
                "JITMEM_REQUIRE_PKU=1 but PerThread/{layout} was refused: {reason}"
            );
            let probe = jitmem_cranelift::probe();
            assert!(
                !probe.allows(strategy),
                "{strategy} refused ({reason}) but the probe allows it"
            );
            eprintln!("{strategy}/{layout}: not available here: {reason}");
            None
        }
        Err(e) => panic!("{strategy}/{layout}: {e}"),
    }
}

#[test]
fn every_in_place_strategy_and_layout_gives_cranelifts_own_results() {
    let expected = common::run_programs(Some(Box::new(SystemMemoryProvider::new())));
    // The default provider (no memory_provider call) agrees too.
    assert_eq!(common::run_programs(None), expected);
    assert_eq!(expected[4], 4181, "fib(19)");
    let mut ran = 0;
    for strategy in [Strategy::Toggle, Strategy::PerThread, Strategy::Rwx] {
        for layout in LAYOUTS {
            let Some(memory) = memory(strategy, layout) else {
                continue;
            };
            let provider = JitmemProvider::new(memory.clone()).unwrap();
            let got = common::run_programs(Some(Box::new(provider)));
            assert_eq!(got, expected, "{strategy}/{layout}");
            let stats = memory.stats();
            assert_eq!(
                stats.live_blocks, 0,
                "{strategy}/{layout}: free_memory freed it all"
            );
            ran += 1;
        }
    }
    // Toggle and Rwx run everywhere; PerThread where the CPU has protection keys.
    assert!(ran >= 6);
}

#[test]
fn the_default_provider_picks_an_in_place_strategy() {
    let provider = JitmemProvider::new_default().unwrap();
    let strategy = provider.memory().strategy();
    assert!(
        matches!(strategy, Strategy::Toggle | Strategy::PerThread),
        "{strategy}"
    );
    assert_eq!(strategy, jitmem_cranelift::probe().pick);
    let expected = common::run_programs(None);
    assert_eq!(common::run_programs(Some(Box::new(provider))), expected);
}

#[test]
fn mirror_is_refused_with_the_reason_and_the_probe_says_why() {
    let probe = jitmem_cranelift::probe();
    let why = probe.refusal(Strategy::Mirror).unwrap();
    assert!(why.contains("at the address it runs"), "{why}");
    assert!(!probe.allows(Strategy::Mirror));
    assert!(
        probe.refusal(Strategy::Rwx).unwrap().contains("opt-in"),
        "{probe}"
    );
    assert!(probe.allows(Strategy::Toggle), "{probe}");
    if let Some(mirror) = memory(Strategy::Mirror, Layout::Pooled) {
        let err = JitmemProvider::new(mirror).unwrap_err();
        assert!(matches!(err, Error::MirrorNotInPlace), "{err}");
    }
    // Asking for it through the environment is refused the same way.
    let text = probe.to_string();
    assert!(text.contains("mirror: not usable"), "{text}");
}

#[test]
fn functions_of_many_modules_share_pages_and_stay_close() {
    // PerThread and Rwx pack functions (Toggle gives each its own pages); Rwx runs everywhere.
    let memory = memory(Strategy::Rwx, Layout::Arena { size: 16 << 20 }).unwrap();
    let page = memory.page_size();
    let mut modules = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..20 {
        let mut m = common::module(Some(Box::new(JitmemProvider::new(memory.clone()).unwrap())));
        let mut ids = HashMap::new();
        common::compile(&mut m, common::PROGRAM_A, &mut ids);
        addrs.push(m.get_finalized_function(ids["fib"]) as usize);
        modules.push(m);
    }
    let lo = *addrs.iter().min().unwrap();
    let hi = *addrs.iter().max().unwrap();
    // 20 modules of six small functions: a few pages, where SystemMemoryProvider maps at least
    // one page per function (120 pages).
    assert!(hi - lo < 20 * page, "spread {:#x}", hi - lo);
    assert!(memory.stats().live_blocks >= 120);
    for m in modules {
        // SAFETY: nothing runs the module's code any more.
        unsafe { m.free_memory() };
    }
    assert_eq!(memory.stats().live_blocks, 0);
}

#[test]
fn free_memory_leaves_traps_where_the_code_was() {
    let memory = memory(Strategy::Toggle, Layout::Pooled).unwrap();
    // A block of our own keeps the chunk mapped after the module's blocks are freed.
    let _keep = memory.allocate(64).unwrap();
    let mut m = common::module(Some(Box::new(JitmemProvider::new(memory.clone()).unwrap())));
    let mut ids = HashMap::new();
    common::compile(&mut m, common::PROGRAM_A, &mut ids);
    let fib = m.get_finalized_function(ids["fib"]);
    // SAFETY: fib is (i64) -> i64, finalized.
    let f = unsafe { std::mem::transmute::<*const u8, extern "C" fn(i64) -> i64>(fib) };
    assert_eq!(f(10), 55);
    let trap = jitmem::isa::TRAP;
    // SAFETY: the module's code is mapped and readable (Toggle code is read-execute).
    let before = unsafe { std::slice::from_raw_parts(fib, trap.len()) }.to_vec();
    assert_ne!(before, trap, "fib does not start with a trap");
    // SAFETY: nothing runs the module's code any more; `f` is not called again.
    unsafe { m.free_memory() };
    // SAFETY: the chunk stays mapped (`_keep` lives in it) and readable: Toggle leaves freed
    // ranges read-execute, filled with traps.
    let after = unsafe { std::slice::from_raw_parts(fib, trap.len()) }.to_vec();
    assert_eq!(
        after, trap,
        "the freed function's first instruction is a trap"
    );
}

#[test]
#[cfg(target_os = "linux")] // reads /proc/self/maps
fn data_objects_are_aligned_and_read_only_data_is_protected_at_finalize() {
    let memory = memory(Strategy::Toggle, Layout::Pooled).unwrap();
    let mut p = JitmemProvider::new(memory).unwrap();
    let w = p.allocate(24, 64, JITMemoryKind::Writable).unwrap();
    assert_eq!(w as usize % 64, 0);
    let r = p.allocate(8, 8, JITMemoryKind::ReadOnly).unwrap();
    // SAFETY: both are fresh allocations of at least 8 bytes, writable until finalize.
    unsafe {
        w.cast::<u64>().write(1);
        r.cast::<u64>().write(2);
    }
    p.finalize(cranelift_jit::BranchProtection::None).unwrap();
    // SAFETY: still mapped and readable after finalize.
    assert_eq!(unsafe { r.cast::<u64>().read() }, 2);
    assert!(
        read_only_in_maps(r as usize),
        "finalize made the read-only data read-only"
    );
    // SAFETY: no pointer into the provider is used after this.
    unsafe { p.free_memory() };
}

#[cfg(target_os = "linux")]
/// Whether /proc/self/maps shows the mapping containing `addr` as `r--`.
fn read_only_in_maps(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let (range, rest) = l.split_once(' ').unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        (a..b).contains(&addr) && rest.starts_with("r--")
    })
}

#[test]
#[cfg(target_os = "linux")] // reads /proc/self/maps
fn code_is_writable_until_finalize_and_executable_after_it_never_both() {
    // Toggle: between allocate and finalize the pages are read-write, after it read-execute.
    let memory = memory(Strategy::Toggle, Layout::Pooled).unwrap();
    let mut p = JitmemProvider::new(memory).unwrap();
    let code = p.allocate(32, 16, JITMemoryKind::Executable).unwrap() as usize;
    let perms = |addr: usize| -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (a..b).contains(&addr).then(|| rest[..3].to_owned())
            })
            .unwrap()
    };
    assert_eq!(perms(code), "rw-");
    p.finalize(cranelift_jit::BranchProtection::None).unwrap();
    assert_eq!(perms(code), "r-x");
    // SAFETY: nothing runs the code.
    unsafe { p.free_memory() };
}

#[test]
fn finalize_publishes_every_block_and_flushes_every_pipeline_once() {
    let memory = memory(Strategy::Toggle, Layout::Pooled).unwrap();
    let mut p = JitmemProvider::new(memory).unwrap();
    for _ in 0..3 {
        p.allocate(40, 16, JITMemoryKind::Executable).unwrap();
    }
    // Both counters are per thread, so other tests do not disturb them.
    let publishes = jitmem::icache::publish_count();
    let flushes = jitmem::icache::pipeline_flush_count();
    p.finalize(cranelift_jit::BranchProtection::None).unwrap();
    assert_eq!(jitmem::icache::publish_count(), publishes + 3);
    assert_eq!(jitmem::icache::pipeline_flush_count(), flushes + 1);
    // SAFETY: nothing runs the (empty) code.
    unsafe { p.free_memory() };
}

/// AArch64 Linux with BTI (CI: qemu-user `-cpu max`, `JITMEM_REQUIRE_BTI=1`): cranelift's code
/// with landing pads (`use_bti`) in jitmem memory mapped `PROT_BTI` gives cranelift's own
/// results, and code without landing pads is refused at finalize instead of faulting at its
/// first indirect call. Elsewhere the memory is refused and the test says so.
#[test]
fn bti_memory_runs_code_with_landing_pads_and_refuses_code_without() {
    let config = |strategy| {
        common::config(strategy, Layout::Pooled)
            .ignore_environment()
            .bti(true)
    };
    let memory = match JitMemory::new(config(Strategy::Toggle)) {
        Ok(memory) => memory,
        Err(e @ jitmem::Error::FeatureUnsupported { .. }) => {
            assert!(
                std::env::var("JITMEM_REQUIRE_BTI").map_or(true, |v| v != "1"),
                "JITMEM_REQUIRE_BTI=1 but BTI memory was refused: {e}"
            );
            eprintln!("BTI is not available here: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(memory.bti());
    let expected = common::run_programs(Some(Box::new(SystemMemoryProvider::new())));
    let provider = JitmemProvider::new(memory.clone()).unwrap();
    let got = common::run_programs_with_isa(Some(Box::new(provider)), common::isa_with_bti());
    assert_eq!(
        got, expected,
        "toggle/pooled with PROT_BTI and landing pads"
    );
    // Without landing pads, finalize refuses.
    let provider = JitmemProvider::new(memory).unwrap();
    let mut module = common::module(Some(Box::new(provider)));
    let refused = common::try_compile(&mut module, common::PROGRAM_A);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("no BTI landing pads")),
        "{refused:?}"
    );
}
