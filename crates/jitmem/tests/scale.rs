//! Many functions: 100,000 live in Pooled and Arena; PerAllocation Mirror stops at the mapping
//! limit with a clear error (Linux; on Windows, PerAllocation blocks are single pages on the
//! allocation granularity); the mapping count returns to its baseline after everything drops.
//! Each runs alone in a child process so that no other test's mappings interfere.

mod common;

use common::{call, child_signal, function, is_child, memory, run_child};
use jitmem::{Layout, Strategy, introspect};

fn in_child(name: &str, body: impl FnOnce()) {
    if is_child(name) {
        body();
        println!("child ok");
        return;
    }
    let out = run_child(name, &[]);
    let (_, text) = child_signal(&out);
    assert!(out.status.success() && text.contains("child ok"), "{text}");
}

#[test]
fn a_hundred_thousand_live_functions() {
    in_child("a_hundred_thousand_live_functions", || {
        for strategy in [Strategy::Mirror, Strategy::Toggle, Strategy::PerThread] {
            for layout in [Layout::Pooled, Layout::Arena { size: 64 << 20 }] {
                let Some(memory) = memory(strategy, layout) else {
                    continue;
                };
                // Toggle blocks own a page each (so a write scope never stops a neighbour):
                // 10,000 of them fill 40 MiB, which the 64 MiB arena holds.
                let count = if strategy == Strategy::Toggle {
                    10_000
                } else {
                    100_000
                };
                let count = common::scaled(count);
                let blocks: Vec<_> = (0..count as u32).map(|i| function(&memory, i)).collect();
                for i in (0..count).step_by(997) {
                    assert_eq!(call(&blocks[i]), i as u32);
                }
                let stats = memory.stats();
                assert_eq!(stats.live_blocks, count);
                assert!(stats.regions <= 8, "{strategy}/{layout}: {stats:?}");
            }
        }
    });
}

/// False under qemu-user, whose guest mappings do not map one to one onto host VMAs, so the
/// kernel's `vm.max_map_count` is not reached the same way: the mapping-limit tests check a
/// kernel property.
#[cfg(target_os = "linux")]
fn mapping_limit_reachable() -> bool {
    let native = std::env::var_os("JITMEM_UNDER_QEMU").is_none();
    if !native {
        eprintln!("note: mapping-limit test skipped under qemu-user");
    }
    native
}

/// Linux only: the limit is `vm.max_map_count`. Windows has no limit on the number of mappings.
#[cfg(target_os = "linux")]
#[test]
fn per_allocation_mirror_hits_the_mapping_limit_with_a_clear_error() {
    if !mapping_limit_reachable() {
        return;
    }
    in_child(
        "per_allocation_mirror_hits_the_mapping_limit_with_a_clear_error",
        || {
            let memory = memory(Strategy::Mirror, Layout::PerAllocation).unwrap();
            let mut blocks = Vec::new();
            let err = loop {
                match memory.allocate(16) {
                    Ok(b) => blocks.push(b),
                    Err(e) => break e,
                }
                assert!(blocks.len() < 200_000, "no mapping limit was reached");
            };
            assert!(matches!(err, jitmem::Error::MappingLimit { .. }), "{err}");
            assert!(err.to_string().contains("vm.max_map_count"), "{err}");
            let n = blocks.len();
            blocks.truncate(n - 100);
            // Live code still runs, and freed room can be used again.
            let b = function(&memory, 5);
            assert_eq!(call(&b), 5);
        },
    );
}

/// Linux: a Toggle write scope whose `mprotect` fails (here: splitting the chunk's mapping would
/// pass `vm.max_map_count`) is an error that undoes itself: the block stays executable, no page
/// counts as open, the block is not taken for one with a leaked scope, and once mappings are
/// freed the same patch works.
#[cfg(target_os = "linux")]
#[test]
fn a_toggle_scope_whose_mprotect_fails_leaves_the_block_as_it_was() {
    if !mapping_limit_reachable() {
        return;
    }
    in_child(
        "a_toggle_scope_whose_mprotect_fails_leaves_the_block_as_it_was",
        || {
            let memory = memory(Strategy::Toggle, Layout::Pooled).unwrap();
            let _before = function(&memory, 1);
            let mut block = function(&memory, 2);
            let _after = function(&memory, 3);
            let page = memory.page_size();
            // Fill the mapping count: single pages, alternately readable and not, so that
            // neighbours never merge.
            let mut fillers = Vec::with_capacity(1 << 20);
            loop {
                let prot = if fillers.len() % 2 == 0 {
                    libc::PROT_READ
                } else {
                    libc::PROT_NONE
                };
                // SAFETY: a fresh anonymous page at an address the kernel picks.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        page,
                        prot,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    break;
                }
                fillers.push(p as usize);
                assert!(fillers.len() < 1 << 20, "no mapping limit was reached");
            }
            let at = jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
            let err = block.write_range(at..at + 4).map(drop).unwrap_err();
            assert!(matches!(err, jitmem::Error::MappingLimit { .. }), "{err}");
            assert_eq!(memory.stats().open_pages, 0);
            assert_eq!(call(&block), 2);
            for p in fillers.drain(..64) {
                // SAFETY: a page mapped above and never used.
                assert_eq!(unsafe { libc::munmap(p as *mut libc::c_void, page) }, 0);
            }
            let m = introspect::mapping_at(block.as_ptr() as usize)
                .unwrap()
                .unwrap();
            assert!(m.perms.starts_with("r-x"), "{m:?}");
            common::patch(&mut block, 4, false);
            assert_eq!(call(&block), 4);
            assert_eq!(memory.stats().open_pages, 0);
            drop(block);
            assert_eq!(memory.stats().live_blocks, 2, "freed, not leaked");
            for p in fillers {
                // SAFETY: as above.
                unsafe { libc::munmap(p as *mut libc::c_void, page) };
            }
        },
    );
}

#[test]
fn everything_dropped_means_mappings_back_to_baseline_and_zero_stats() {
    in_child(
        "everything_dropped_means_mappings_back_to_baseline_and_zero_stats",
        || {
            // Warm up what the process maps once (probe, pkey, membarrier registration).
            drop(common::all_memories());
            let baseline = introspect::mapping_count().unwrap();
            for memory in common::all_memories() {
                let mut blocks: Vec<_> = (0..300u32).map(|i| function(&memory, i)).collect();
                for b in blocks.iter_mut().step_by(3) {
                    b.shrink(16).unwrap();
                }
                blocks.truncate(100);
                let probe = memory.clone();
                drop(memory);
                drop(blocks);
                let stats = probe.stats();
                assert_eq!((stats.live_blocks, stats.live_bytes), (0, 0), "{probe:?}");
            }
            assert_eq!(introspect::mapping_count().unwrap(), baseline);
        },
    );
}

/// Windows (run under Wine in CI, not on Windows): the counterpart of the mapping-limit test,
/// where the limit is address space instead. A PerAllocation block is one page of memory, while
/// its reservation (or view) starts on the 64 KiB allocation granularity; freeing a block gives
/// its whole allocation back.
#[cfg(windows)]
#[test]
fn per_allocation_blocks_are_one_page_on_the_allocation_granularity() {
    in_child(
        "per_allocation_blocks_are_one_page_on_the_allocation_granularity",
        || {
            const GRANULARITY: usize = 64 << 10;
            for strategy in [Strategy::Toggle, Strategy::Mirror] {
                let memory = memory(strategy, Layout::PerAllocation).unwrap();
                let page = memory.page_size();
                // Warm up the heap for the block list, then count.
                let warm_up: Vec<_> = (0..1000u32).map(|i| function(&memory, i)).collect();
                drop(warm_up);
                let baseline = introspect::mapping_count().unwrap();
                let blocks: Vec<_> = (0..1000u32).map(|i| function(&memory, i)).collect();
                let maps = introspect::mappings().unwrap();
                for (i, block) in blocks.iter().enumerate() {
                    let rx = block.as_ptr() as usize;
                    assert_eq!(block.len(), page, "{strategy}");
                    assert_eq!(rx % GRANULARITY, 0, "{strategy}: {rx:#x}");
                    let m = maps.iter().find(|m| m.start == rx).unwrap();
                    assert_eq!(m.end - m.start, page, "{strategy}: {m:?}");
                    assert!(m.perms.starts_with("r-x"), "{strategy}: {m:?}");
                    assert_eq!(call(block), i as u32);
                }
                let views = if strategy == Strategy::Mirror { 2 } else { 1 };
                assert_eq!(
                    introspect::mapping_count().unwrap(),
                    baseline + views * blocks.len(),
                    "{strategy}: one region per view of each block"
                );
                drop(blocks);
                assert_eq!(introspect::mapping_count().unwrap(), baseline, "{strategy}");
            }
        },
    );
}
