//! The per-thread cache of freed ranges (`thread_cache`): a model test of random allocation,
//! write, call and free sequences with the cache on the path, and its promises: reused ranges
//! are trap-filled, stats count cached blocks as free, a thread's exit gives its ranges back, and
//! another thread's cache never keeps a dropped memory mapped.

mod common;

use common::{call, function, memory};
use jitmem::{CodeBlock, JitMemory, Layout, Stats, Strategy, introspect, isa};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

/// Every strategy with the sub-allocated layouts (the ones a thread cache serves), as
/// available here (PerThread in the emulated-PKU VM), Toggle included when `with_toggle` (its
/// page-sized blocks are never cached, but go through the same paths).
fn sub_allocated(with_toggle: bool) -> Vec<JitMemory> {
    let mut out = Vec::new();
    for strategy in Strategy::CONCRETE {
        if strategy == Strategy::Toggle && !with_toggle {
            continue;
        }
        for layout in [Layout::Pooled, Layout::Arena { size: 16 << 20 }] {
            out.extend(memory(strategy, layout));
        }
    }
    out
}

fn cached_layouts() -> Vec<JitMemory> {
    sub_allocated(false)
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize),
    Free(usize),
    Call(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..1400).prop_map(Op::Alloc),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Call),
    ]
}

/// Live blocks never overlap; stats agree with the model.
fn check(memory: &JitMemory, live: &[(CodeBlock, u32)]) {
    let mut ranges: Vec<_> = live.iter().map(|(b, _)| b.addr_range()).collect();
    ranges.sort_by_key(|r| r.start);
    for w in ranges.windows(2) {
        assert!(w[0].end <= w[1].start, "overlap: {:?} {:?}", w[0], w[1]);
    }
    let stats: Stats = memory.stats();
    assert_eq!(stats.live_blocks, live.len(), "{stats:?}");
    let bytes: usize = live.iter().map(|(b, _)| b.len()).sum();
    assert_eq!(stats.live_bytes, bytes, "{stats:?}");
    assert!(stats.cached_blocks <= 32 * 8, "{stats:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_sequences_through_the_cache(ops in prop::collection::vec(op(), 1..200)) {
        for memory in sub_allocated(true) {
            let mut live: Vec<(CodeBlock, u32)> = Vec::new();
            let mut next = 0u32;
            for op in &ops {
                match *op {
                    Op::Alloc(len) => {
                        let mut block = memory.allocate(len.max(16)).unwrap();
                        next += 1;
                        // A reused range comes back trap-filled (never used memory is zero):
                        // nothing of a past life runs. Read inside a write scope: PerThread
                        // code pages may not be readable outside one on a thread older than
                        // the protection key.
                        let mut scope = block.write().unwrap();
                        assert!(scope
                            .chunks(isa::TRAP.len())
                            .all(|c| c == isa::TRAP || c.iter().all(|b| *b == 0)));
                        scope[..16].copy_from_slice(&isa::return_constant(next));
                        scope.publish().unwrap();
                        live.push((block, next));
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let i = i % live.len();
                        drop(live.swap_remove(i));
                    }
                    Op::Call(i) if !live.is_empty() => {
                        let (block, value) = &live[i % live.len()];
                        assert_eq!(call(block), *value);
                    }
                    _ => {}
                }
                check(&memory, &live);
            }
            for (block, value) in &live {
                assert_eq!(call(block), *value);
            }
            drop(live);
            let stats = memory.stats();
            assert_eq!((stats.live_blocks, stats.live_bytes), (0, 0), "{stats:?}");
        }
    }
}

#[test]
fn a_freed_range_is_reused_by_the_same_thread_and_counted_free() {
    for memory in cached_layouts() {
        let block = function(&memory, 1);
        let addr = block.as_ptr();
        let before = memory.stats();
        drop(block);
        let after = memory.stats();
        assert_eq!(after.live_blocks, before.live_blocks - 1);
        assert_eq!(after.cached_blocks, before.cached_blocks + 1);
        assert_eq!(after.free_bytes, before.free_bytes + 16);
        let again = function(&memory, 2);
        assert_eq!(again.as_ptr(), addr, "the cached range was not reused");
        assert_eq!(call(&again), 2);
        assert_eq!(memory.stats().cached_blocks, before.cached_blocks);
    }
}

#[test]
fn large_blocks_and_per_allocation_bypass_the_cache() {
    let pooled = memory(Strategy::Mirror, Layout::Pooled).unwrap();
    drop(pooled.allocate(4096).unwrap());
    assert_eq!(pooled.stats().cached_blocks, 0);
    let per = memory(Strategy::Mirror, Layout::PerAllocation).unwrap();
    drop(function(&per, 1));
    let stats = per.stats();
    assert_eq!(
        (stats.cached_blocks, stats.live_blocks, stats.regions),
        (0, 0, 0)
    );
}

#[test]
fn a_thread_gives_its_cache_back_when_it_exits() {
    for memory in cached_layouts() {
        let m = memory.clone();
        std::thread::spawn(move || {
            let blocks: Vec<_> = (0..40).map(|i| function(&m, i)).collect();
            drop(blocks);
            assert_eq!(
                m.stats().cached_blocks,
                32,
                "a thread keeps at most 32 per heap"
            );
            // Keep `m` alive past the thread's cache: the exit flushes, not the drop.
            std::mem::forget(m);
        })
        .join()
        .unwrap();
        let stats = memory.stats();
        assert_eq!(
            (stats.cached_blocks, stats.live_blocks),
            (0, 0),
            "{stats:?}"
        );
    }
}

#[test]
fn dropping_a_memory_flushes_this_threads_cache() {
    let memory = memory(Strategy::Mirror, Layout::Pooled).unwrap();
    let probe = memory.clone();
    drop(function(&memory, 1));
    assert_eq!(probe.stats().cached_blocks, 1);
    drop(memory);
    assert_eq!(probe.stats().cached_blocks, 0);
}

#[test]
fn another_threads_cache_does_not_keep_a_dropped_memory_mapped() {
    // In a child process: no other test's thread may map something at the freed address.
    const TEST: &str = "another_threads_cache_does_not_keep_a_dropped_memory_mapped";
    if !common::is_child(TEST) {
        let out = common::run_child(TEST, &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("child ok"),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let memory = memory(Strategy::Mirror, Layout::Arena { size: 1 << 20 }).unwrap();
    let (to_thread, from_main) = std::sync::mpsc::channel::<CodeBlock>();
    let (done, freed) = std::sync::mpsc::channel::<()>();
    let (finish, wait) = std::sync::mpsc::channel::<()>();
    let block = function(&memory, 1);
    let addr = block.as_ptr() as usize;
    let worker = std::thread::spawn(move || {
        // This thread frees the block: its cache keeps the range, and stays alive meanwhile.
        drop(from_main.recv().unwrap());
        done.send(()).unwrap();
        wait.recv().unwrap();
    });
    to_thread.send(block).unwrap();
    freed.recv().unwrap();
    assert_eq!(memory.stats().cached_blocks, 1);
    assert!(introspect::mapping_at(addr).unwrap().is_some());
    drop(memory);
    assert!(
        introspect::mapping_at(addr).unwrap().is_none(),
        "a cached range kept the arena mapped after its memory and blocks were dropped"
    );
    finish.send(()).unwrap();
    worker.join().unwrap();
    println!("child ok");
}
