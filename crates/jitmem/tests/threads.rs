//! Many threads at once: allocating, writing, publishing, calling and freeing; and one thread
//! patching a function while another calls it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{all_memories, call, function, memory, patch};
use jitmem::{Layout, Strategy};

/// Toggle is included only with PerAllocation: with shared pages, a write scope makes its page
/// non-executable, so another thread running a neighbour on that page faults (documented on
/// `Strategy::Toggle`).
#[test]
fn two_threads_allocate_write_publish_call_and_free() {
    let memories = all_memories()
        .into_iter()
        .filter(|m| m.strategy() != Strategy::Toggle || m.layout() == Layout::PerAllocation);
    for memory in memories {
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let memory = &memory;
                s.spawn(move || {
                    let mut live = Vec::new();
                    for i in 0..2000u32 {
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
