//! Many threads at once: allocating, writing, publishing, calling and freeing; and one thread
//! patching a function while another calls it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{
    LAYOUTS, all_memories, call, child_signal, function, in_child_per_pair, is_child, memory,
    patch, run_child, scaled,
};
use jitmem::{Layout, Strategy, introspect};

/// Every strategy x layout the API accepts, none excluded.
#[test]
fn two_threads_allocate_write_publish_call_and_free() {
    let memories = all_memories();
    for memory in memories {
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let memory = &memory;
                s.spawn(move || {
                    let mut live = Vec::new();
                    for i in 0..scaled(2000) as u32 {
                        let value = t * 1_000_000 + i;
                        let b = function(memory, value);
                        assert_eq!(call(&b), value);
                        live.push((b, value));
                        if live.len() > 50 {
                            let (b, v) = live.swap_remove((i as usize * 7) % live.len());
                            assert_eq!(call(&b), v);
                        }
                    }
                    for (b, v) in &live {
                        assert_eq!(call(b), *v);
                    }
                });
            }
        });
        assert_eq!(memory.stats().live_blocks, 0, "{memory:?}");
    }
}

#[test]
fn patching_a_function_while_another_thread_calls_it() {
    for strategy in [Strategy::Mirror, Strategy::PerThread, Strategy::Rwx] {
        for layout in [Layout::Pooled, Layout::Arena { size: 1 << 20 }] {
            let Some(memory) = memory(strategy, layout) else {
                continue;
            };
            let mut block = function(&memory, 0);
            let f: extern "C" fn() -> u32 = {
                // SAFETY: a return_constant function, alive until the threads end.
                unsafe { block.entry(0).unwrap() }
            };
            let stop = AtomicBool::new(false);
            let calls = AtomicU64::new(0);
            std::thread::scope(|s| {
                let caller = s.spawn(|| {
                    let mut last = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let v = f();
                        assert!(v < 20_000, "torn or garbage result {v:#x}");
                        assert!(v >= last, "went back from {last} to {v}");
                        last = v;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
                while calls.load(Ordering::Relaxed) == 0 {
                    std::hint::spin_loop();
                }
                for v in 1..20_000u32 {
                    patch(&mut block, v, v % 64 == 0);
                }
                stop.store(true, Ordering::Relaxed);
                caller.join().unwrap();
            });
            assert!(
                calls.load(Ordering::Relaxed) > 1000,
                "the caller ran while patches landed"
            );
            assert_eq!(call(&block), 19_999);
        }
    }
}

/// A write scope or a free on one block never stops another thread running a *neighbour*
/// block of the same memory: thread A calls a published block in a loop while thread B
/// allocates, writes, publishes, patches and frees other blocks. Each pair runs in its own
/// child process, since the failure is a fault (Toggle with shared pages made every block on a
/// page being written non-executable).
#[test]
fn a_neighbour_keeps_running_while_other_blocks_are_written_and_freed() {
    let Some(ran) = in_child_per_pair(
        "a_neighbour_keeps_running_while_other_blocks_are_written_and_freed",
        |memory| {
            let neighbour = function(&memory, 7);
            let stop = AtomicBool::new(false);
            let calls = AtomicU64::new(0);
            std::thread::scope(|s| {
                let runner = s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        assert_eq!(call(&neighbour), 7);
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
                while calls.load(Ordering::Relaxed) == 0 {
                    std::hint::spin_loop();
                }
                let mut live = Vec::new();
                for i in 0..scaled(3000) as u32 {
                    let mut b = function(&memory, i);
                    patch(&mut b, i + 1, false);
                    assert_eq!(call(&b), i + 1);
                    live.push(b);
                    if live.len() > 8 {
                        live.swap_remove(i as usize % live.len());
                    }
                }
                drop(live);
                stop.store(true, Ordering::Relaxed);
                runner.join().unwrap();
            });
            assert!(calls.load(Ordering::Relaxed) > 0);
        },
    ) else {
        return;
    };
    assert!(ran.iter().any(|p| p == "toggle/pooled"), "{ran:?}");
}

/// Toggle: two threads patch blocks of their own at the same time (their scopes share no lock
/// and no table, and each flips only its own block's pages) while a third reads the process's
/// memory map over and over: no mapping is ever writable and executable, every patch lands, and
/// no page is left open. In a child process, whose map holds no other test's memory; every
/// layout.
#[test]
fn toggle_scopes_on_different_blocks_at_once_keep_wx() {
    const NAME: &str = "toggle_scopes_on_different_blocks_at_once_keep_wx";
    if is_child(NAME) {
        for layout in LAYOUTS {
            let memory = memory(Strategy::Toggle, layout).unwrap();
            let stop = AtomicBool::new(false);
            let checks = AtomicU64::new(0);
            std::thread::scope(|s| {
                let checker = s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let wx = introspect::writable_executable_mappings().unwrap();
                        assert!(wx.is_empty(), "{layout}: {wx:?}");
                        checks.fetch_add(1, Ordering::Relaxed);
                    }
                });
                let writers: Vec<_> = (0..2u32)
                    .map(|t| {
                        let (memory, checks) = (&memory, &checks);
                        s.spawn(move || {
                            let mut blocks: Vec<_> =
                                (0..4).map(|k| function(memory, t * 10 + k)).collect();
                            while checks.load(Ordering::Relaxed) == 0 {
                                std::hint::spin_loop();
                            }
                            for i in 0..scaled(4000) as u32 {
                                let b = &mut blocks[i as usize % 4];
                                let value = (t + 1) * 1_000_000 + i;
                                patch(b, value, false);
                                assert_eq!(call(b), value, "{layout}");
                            }
                        })
                    })
                    .collect();
                for writer in writers {
                    if let Err(panic) = writer.join() {
                        stop.store(true, Ordering::Relaxed);
                        std::panic::resume_unwind(panic);
                    }
                }
                stop.store(true, Ordering::Relaxed);
                checker.join().unwrap();
            });
            assert!(checks.load(Ordering::Relaxed) > 1, "{layout}");
            assert_eq!(memory.stats().open_pages, 0, "{layout}");
        }
        println!("child ok");
        return;
    }
    let out = run_child(NAME, &[]);
    let (signal, text) = child_signal(&out);
    assert!(
        out.status.success() && text.contains("child ok"),
        "signal {signal:?}\n{text}"
    );
}
