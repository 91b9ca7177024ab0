//! The life of a function in every strategy x layout, nesting, panics, shrinking and bad input.

mod common;

use common::{all_memories, call, function, memory, patch};
use jitmem::{Config, Error, JitMemory, Layout, Strategy};

#[test]
fn real_code_runs_in_every_strategy_and_layout() {
    let memories = all_memories();
    assert!(
        memories.len() >= 9,
        "Toggle, Mirror and Rwx must work here in all layouts"
    );
    for memory in &memories {
        let mut blocks: Vec<_> = (0..50).map(|i| function(memory, i)).collect();
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(call(b), i as u32, "{memory:?}");
        }
        for (i, b) in blocks.iter_mut().enumerate() {
            patch(b, 1000 + i as u32, i % 2 == 0);
        }
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(call(b), 1000 + i as u32, "{memory:?}");
        }
        assert_eq!(memory.stats().live_blocks, 50);
        drop(blocks);
        let stats = memory.stats();
        assert_eq!(
            (stats.live_blocks, stats.live_bytes, stats.open_pages),
            (0, 0, 0),
            "{memory:?}"
        );
    }
}

#[test]
fn blocks_are_aligned_and_inside_the_arena() {
    for strategy in [Strategy::Toggle, Strategy::Mirror] {
        let memory = memory(strategy, Layout::Arena { size: 1 << 20 }).unwrap();
        let page = memory.page_size();
        let mut blocks = Vec::new();
        let mut align = 1;
        while align <= page {
            let b = memory.allocate_aligned(100, align).unwrap();
            assert_eq!(b.as_ptr() as usize % align.max(16), 0);
            // Toggle blocks own whole pages (a write scope flips pages; no neighbour may lose
            // execute rights); other strategies round to 16 bytes.
            let expected = if strategy == Strategy::Toggle {
                page
            } else {
                112
            };
            assert_eq!(b.len(), expected);
            blocks.push(b);
            align *= 2;
        }
        let lo = blocks.iter().map(|b| b.as_ptr() as usize).min().unwrap();
        let hi = blocks.iter().map(|b| b.addr_range().end).max().unwrap();
        assert!(hi - lo <= 1 << 20, "all blocks lie in the one arena");
    }
}

#[test]
fn nested_scopes_on_one_page_flip_once_and_restore_execute() {
    for layout in common::LAYOUTS {
        let memory = memory(Strategy::Toggle, layout).unwrap();
        let mut a = function(&memory, 1);
        let b = function(&memory, 2);
        let page = memory.page_size();
        assert_ne!(
            a.as_ptr() as usize / page,
            b.as_ptr() as usize / page,
            "Toggle blocks never share a page"
        );
        let at = jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
        // Two scopes on one block cannot be had through the safe API (each borrows the block
        // mutably), so the nesting counter is exercised through the raw pair the C ABI uses.
        // SAFETY: the range lies in `a`; each begin is matched by one end below, same thread.
        unsafe {
            a.begin_write_raw(at..at + 4)
                .unwrap()
                .cast::<u32>()
                .write_unaligned(10)
        };
        assert_eq!(memory.stats().open_pages, 1);
        // SAFETY: as above (the inner scope).
        unsafe {
            a.begin_write_raw(at..at + 4)
                .unwrap()
                .cast::<u32>()
                .write_unaligned(20)
        };
        assert_eq!(memory.stats().open_pages, 1, "one page, opened once");
        // SAFETY: ends the inner raw scope opened above, same range, same thread.
        unsafe { a.end_write_raw(at..at + 4, false).unwrap() };
        // The outer scope still holds the page writable.
        assert_eq!(memory.stats().open_pages, 1);
        // SAFETY: ends the outer raw scope.
        unsafe { a.end_write_raw(at..at + 4, false).unwrap() };
        assert_eq!(memory.stats().open_pages, 0);
        assert_eq!((call(&a), call(&b)), (20, 2));
    }
}

/// Toggle, raw scopes (the C ABI's pair) nested on *overlapping* ranges of one block, ended out
/// of order: opening flips only the pages no open scope holds, closing flips back only the pages
/// no scope still open holds, and the count of open pages follows.
#[test]
fn nested_raw_scopes_on_overlapping_ranges_flip_only_unheld_pages() {
    for layout in common::LAYOUTS {
        let memory = memory(Strategy::Toggle, layout).unwrap();
        let page = memory.page_size();
        let mut block = memory.allocate(3 * page).unwrap();
        {
            let mut scope = block.write().unwrap();
            scope[..16].copy_from_slice(&jitmem::isa::return_constant(1));
            scope[2 * page..2 * page + 16].copy_from_slice(&jitmem::isa::return_constant(2));
            scope.publish().unwrap();
        }
        let base = block.as_ptr() as usize;
        let perms = |block: &jitmem::CodeBlock| -> Vec<String> {
            assert_eq!(block.as_ptr() as usize, base);
            (0..3)
                .map(|i| {
                    let m = jitmem::introspect::mapping_at(base + i * page)
                        .unwrap()
                        .unwrap();
                    m.perms[..3].to_owned()
                })
                .collect()
        };
        let at = 2 * page + jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
        let (a, b, c) = (0..2 * page, page + 8..3 * page, at..at + 4);
        // SAFETY: every range lies in the block; each begin is matched by one end below, on
        // this thread, before the block is dropped; the one write stays inside its range.
        unsafe {
            block.begin_write_raw(a.clone()).unwrap();
            assert_eq!(perms(&block), ["rw-", "rw-", "r-x"], "{layout}: a");
            assert_eq!(memory.stats().open_pages, 2);
            block.begin_write_raw(b.clone()).unwrap();
            assert_eq!(perms(&block), ["rw-", "rw-", "rw-"], "{layout}: a, b");
            assert_eq!(memory.stats().open_pages, 3);
            let rw = block.begin_write_raw(c.clone()).unwrap();
            rw.cast::<u32>().write_unaligned(7);
            assert_eq!(
                memory.stats().open_pages,
                3,
                "{layout}: c's page is open already"
            );
            block.end_write_raw(a, false).unwrap();
            assert_eq!(perms(&block), ["r-x", "rw-", "rw-"], "{layout}: b, c");
            assert_eq!(memory.stats().open_pages, 2);
            block.end_write_raw(c, false).unwrap();
            assert_eq!(perms(&block), ["r-x", "rw-", "rw-"], "{layout}: b");
            block.end_write_raw(b, false).unwrap();
        }
        assert_eq!(perms(&block), ["r-x", "r-x", "r-x"], "{layout}: none");
        assert_eq!(memory.stats().open_pages, 0);
        assert_eq!(call(&block), 1);
        // SAFETY: the function written at the third page.
        let f: extern "C" fn() -> u32 = unsafe { block.entry(2 * page).unwrap() };
        assert_eq!(f(), 7);
        drop(block);
        assert_eq!(memory.stats().live_blocks, 0, "{layout}: freed, not leaked");
    }
}

#[test]
fn a_panic_inside_a_write_scope_leaves_code_runnable() {
    for memory in all_memories() {
        let mut block = function(&memory, 5);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut scope = block.write_range(4..8).unwrap();
            scope.copy_from_slice(&6u32.to_le_bytes());
            panic!("codegen failed halfway");
        }));
        assert!(result.is_err());
        assert_eq!(memory.stats().open_pages, 0, "{memory:?}");
        assert_eq!(
            call(&block),
            6,
            "{memory:?}: the scope's drop published what was written"
        );
        // And the memory is still usable.
        patch(&mut block, 7, false);
        assert_eq!(call(&block), 7);
    }
}

#[test]
fn an_early_error_return_restores_execute_rights() {
    fn codegen(block: &mut jitmem::CodeBlock) -> Result<(), String> {
        let at = jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
        let mut scope = block.write_range(at..at + 4).map_err(|e| e.to_string())?;
        scope.copy_from_slice(&4u32.to_le_bytes());
        Err("the JIT gave up")?;
        scope.publish().map_err(|e| e.to_string())
    }
    for memory in all_memories() {
        let mut block = function(&memory, 3);
        assert!(codegen(&mut block).is_err());
        assert_eq!(memory.stats().open_pages, 0);
        assert_eq!(
            call(&block),
            4,
            "{memory:?}: the dropped scope restored execute rights"
        );
    }
}

#[test]
fn shrink_returns_the_tail() {
    for memory in all_memories() {
        let mut block = memory.allocate(4096).unwrap();
        let before = memory.stats().live_bytes;
        {
            let mut scope = block.write().unwrap();
            scope[..16].copy_from_slice(&jitmem::isa::return_constant(9));
            scope.publish().unwrap();
        }
        block.shrink(20).unwrap();
        assert_eq!(call(&block), 9);
        if memory.layout() != Layout::PerAllocation {
            // Toggle blocks own whole pages: a shrink keeps the first page.
            let kept = if memory.strategy() == Strategy::Toggle {
                memory.page_size()
            } else {
                32
            };
            assert_eq!(block.len(), kept, "{memory:?}");
            assert_eq!(memory.stats().live_bytes, before - (4096 - kept.min(4096)));
        }
        assert!(matches!(block.shrink(0), Err(Error::BadShrink { .. })));
        assert!(matches!(
            block.shrink(1 << 20),
            Err(Error::BadShrink { .. })
        ));
        assert!(matches!(
            block.write_range(0..block.len() + 1),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            block.write_range(5..5),
            Err(Error::OutOfRange { .. })
        ));
        // A range that starts inside and ends past the block is refused (a scope must never
        // reach the next block).
        let len = block.len();
        for range in [len / 2..len + 16, len - 1..len + 1, 0..usize::MAX] {
            assert!(
                matches!(
                    block.write_range(range.clone()),
                    Err(Error::OutOfRange { .. })
                ),
                "{memory:?} {range:?}"
            );
        }
        assert!(block.write_range(len - 1..len).is_ok());
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    for memory in all_memories() {
        let page = memory.page_size();
        assert!(matches!(memory.allocate(0), Err(Error::ZeroLength)));
        for len in [usize::MAX, usize::MAX - 10, usize::MAX / 2 + 1] {
            let e = memory.allocate(len).unwrap_err();
            assert!(
                matches!(e, Error::TooLarge { .. }),
                "{memory:?} len {len}: {e}"
            );
        }
        for align in [0, 3, 24, page * 2] {
            assert!(matches!(
                memory.allocate_aligned(8, align),
                Err(Error::BadAlignment { .. })
            ));
        }
        // Nothing leaked by the failures.
        assert_eq!(memory.stats().live_blocks, 0);
        let block = function(&memory, 1);
        assert_eq!(call(&block), 1);
        // (A non-function type such as `u16` does not compile: see jitmem::FnPtr's doctest.)
        // SAFETY: as above: the offset check must refuse.
        assert!(unsafe { block.entry::<extern "C" fn()>(block.len()) }.is_err());
    }
}

#[test]
fn an_exhausted_arena_is_an_error_and_live_code_keeps_running() {
    for strategy in [Strategy::Toggle, Strategy::Mirror] {
        let memory = memory(strategy, Layout::Arena { size: 64 << 10 }).unwrap();
        let keep = function(&memory, 77);
        let mut blocks = Vec::new();
        let err = loop {
            match memory.allocate(1000) {
                Ok(b) => blocks.push(b),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, Error::Exhausted { arena: 65536, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("arena exhausted"));
        assert_eq!(call(&keep), 77);
        blocks.clear();
        assert!(
            memory.allocate(1000).is_ok(),
            "space is reusable after frees"
        );
    }
}

#[test]
fn rwx_needs_the_unsafe_opt_in() {
    let config = Config::new().strategy(Strategy::Rwx).ignore_environment();
    assert!(matches!(JitMemory::new(config), Err(Error::RwxNotOptedIn)));
}

#[test]
fn bad_configurations_get_clear_errors() {
    let e = JitMemory::new(Config::new().default_align(3)).unwrap_err();
    assert!(matches!(e, Error::BadAlignment { align: 3, .. }));
    let e = JitMemory::new(
        Config::new()
            .strategy(Strategy::Toggle)
            .layout(Layout::Arena { size: usize::MAX })
            .ignore_environment(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
}

#[test]
fn auto_picks_a_strategy_and_says_why() {
    let memory = JitMemory::new(Config::new().ignore_environment()).unwrap();
    assert_ne!(memory.strategy(), Strategy::Rwx);
    assert_ne!(memory.strategy(), Strategy::Auto);
    assert!(!memory.choice().reason.is_empty());
    assert!(jitmem::probe::jit_available());
}

#[test]
fn environment_forces_the_strategy() {
    if common::is_child("environment_forces_the_strategy") {
        let memory = JitMemory::new(Config::new()).unwrap();
        println!(
            "strategy={} layout={}",
            memory.strategy(),
            memory.layout().name()
        );
        // An explicit Auto in code is resolved by the environment too.
        let auto = JitMemory::new(Config::new().strategy(Strategy::Auto)).unwrap();
        assert_eq!(auto.strategy(), Strategy::Toggle);
        // An explicit strategy in code is not overridden.
        let mirror = JitMemory::new(Config::new().strategy(Strategy::Mirror)).unwrap();
        assert_eq!(mirror.strategy(), Strategy::Mirror);
        return;
    }
    let out = common::run_child(
        "environment_forces_the_strategy",
        &[("JITMEM_STRATEGY", "toggle"), ("JITMEM_LAYOUT", "arena:1m")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("strategy=toggle layout=arena"), "{text}");
    let out = common::run_child(
        "environment_forces_the_strategy",
        &[("JITMEM_STRATEGY", "rwx")],
    );
    assert!(
        !out.status.success(),
        "rwx cannot be forced from the environment"
    );
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JITMEM_STRATEGY"), "{err}");
}

#[test]
fn exec_buffer_is_seed_001s_object() {
    use jitmem::ExecBuffer;
    assert!(matches!(ExecBuffer::new(0), Err(Error::ZeroLength)));
    assert!(matches!(
        ExecBuffer::new(usize::MAX),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(jitmem::round_to_page(1).unwrap(), jitmem::page_size());
    assert_eq!(
        jitmem::round_to_page(jitmem::page_size() + 1).unwrap(),
        2 * jitmem::page_size()
    );
    let mut buf = ExecBuffer::new(6).unwrap();
    assert!(!buf.is_executable());
    // SAFETY: not called: must be refused while writable.
    let refused = unsafe { buf.entry::<extern "C" fn() -> u32>(0) };
    assert!(matches!(refused, Err(Error::WrongState(_))));
    buf.as_mut_slice().unwrap()[..16].copy_from_slice(&jitmem::isa::return_constant(42));
    buf.make_executable().unwrap();
    buf.make_executable().unwrap();
    assert!(buf.is_executable());
    assert!(matches!(buf.as_mut_slice(), Err(Error::WrongState(_))));
    // SAFETY: a complete return_constant function.
    let f: extern "C" fn() -> u32 = unsafe { buf.entry(0).unwrap() };
    assert_eq!(f(), 42);
    buf.make_writable().unwrap();
    jitmem::isa::patch_return_constant(buf.as_mut_slice().unwrap(), 43);
    buf.make_executable().unwrap();
    // SAFETY: as above.
    let f: extern "C" fn() -> u32 = unsafe { buf.entry(0).unwrap() };
    assert_eq!(f(), 43);
    let moved = buf;
    assert_eq!(moved.len(), jitmem::page_size());
}

/// `publish` goes through the one publish path; `publish_live` also flushes every thread's
/// pipeline (membarrier); the raw C-ABI pair does the same; a trap fill on free publishes.
#[test]
fn publish_and_publish_live_do_what_they_say() {
    use jitmem::icache::{pipeline_flush_count, publish_count};
    for memory in all_memories() {
        let mut block = function(&memory, 1);
        let at = jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
        let (p0, f0) = (publish_count(), pipeline_flush_count());
        patch(&mut block, 2, false);
        assert_eq!(
            publish_count(),
            p0 + 1,
            "{memory:?}: publish publishes once"
        );
        assert_eq!(
            pipeline_flush_count(),
            f0,
            "{memory:?}: publish does not flush pipelines"
        );
        patch(&mut block, 3, true);
        assert_eq!(publish_count(), p0 + 2, "{memory:?}");
        assert_eq!(
            pipeline_flush_count(),
            f0 + 1,
            "{memory:?}: publish_live flushes"
        );
        // SAFETY: one begin, one end, same range, same thread.
        unsafe {
            block
                .begin_write_raw(at..at + 4)
                .unwrap()
                .cast::<u32>()
                .write_unaligned(4);
            block.end_write_raw(at..at + 4, true).unwrap();
        }
        assert_eq!((publish_count(), pipeline_flush_count()), (p0 + 3, f0 + 2));
        assert_eq!(call(&block), 4);
        // Dropping a scope without publishing still publishes (an early return, a panic).
        drop(block.write_range(at..at + 4).unwrap());
        assert_eq!(publish_count(), p0 + 4, "{memory:?}");
        drop(block);
        if memory.layout() != Layout::PerAllocation {
            assert_eq!(
                publish_count(),
                p0 + 5,
                "{memory:?}: the trap fill is published"
            );
        }
    }
}

/// Forgetting a write scope (safe code) must not break other blocks: with Toggle its pages stay
/// open, so the block is leaked on drop rather than reused or unmapped, and `shrink` refuses to
/// give back an open tail. Each pair in a child process (the failure was a fault).
#[test]
fn a_forgotten_scope_never_breaks_another_block() {
    let Some(ran) =
        common::in_child_per_pair("a_forgotten_scope_never_breaks_another_block", |memory| {
            let page = memory.page_size();
            let mut a = function(&memory, 1);
            std::mem::forget(a.write_range(0..16).unwrap());
            drop(a);
            let mut tail = memory.allocate(2 * page).unwrap();
            std::mem::forget(tail.write_range(page..page + 16).unwrap());
            let shrunk = tail.shrink(16);
            if memory.strategy() == Strategy::Toggle {
                assert!(
                    matches!(shrunk, Err(Error::WrongState(_))),
                    "{memory:?}: {shrunk:?}"
                );
            } else {
                shrunk.unwrap();
            }
            // New blocks, possibly where the forgotten ones were, write, publish and run.
            let blocks: Vec<_> = (0..64).map(|i| function(&memory, i)).collect();
            for (i, b) in blocks.iter().enumerate() {
                assert_eq!(call(b), i as u32, "{memory:?}");
            }
        })
    else {
        return;
    };
    assert!(ran.iter().any(|p| p == "toggle/pooled"), "{ran:?}");
}
