//! Live patching: `patch_live` (one atomic store, no system call) relinks code another thread is
//! running, in every strategy that lets code run while written; its ISA rules refuse what is not
//! safe; `LivePatches` pays one pipeline flush per batch.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{call, function, in_child_per_pair, memory};
use jitmem::{CodeBlock, Error, Layout, LivePatches, Strategy, icache, isa};

/// A 32-byte function whose first instruction jumps to one of two tails, returning 1 or 2, and
/// where the jump's patchable bytes are (offset, bytes for 1, bytes for 2).
#[cfg(target_arch = "x86_64")]
fn selector() -> (Vec<u8>, usize, [u8; 4], [u8; 4]) {
    let mut code = vec![0xCC; 32];
    code[..3].copy_from_slice(&[0x90, 0x90, 0x90]);
    code[3] = 0xE9; // jmp rel32, the displacement at offset 4 (aligned), relative to 8
    code[8..14].copy_from_slice(&[0xB8, 1, 0, 0, 0, 0xC3]); // mov eax, 1; ret
    code[16..22].copy_from_slice(&[0xB8, 2, 0, 0, 0, 0xC3]); // mov eax, 2; ret
    let (to1, to2) = (0i32.to_le_bytes(), 8i32.to_le_bytes());
    code[4..8].copy_from_slice(&to1);
    (code, 4, to1, to2)
}

#[cfg(target_arch = "aarch64")]
fn selector() -> (Vec<u8>, usize, [u8; 4], [u8; 4]) {
    let words: [u32; 8] = [
        0x1400_0002, // b #8
        0xD43E_0000, // brk #0xF000 (jitmem's trap; Windows on ARM64's breakpoint)
        0x5280_0020, // mov w0, #1
        0xD65F_03C0, // ret
        0x5280_0040, // mov w0, #2
        0xD65F_03C0, // ret
        0xD43E_0000,
        0xD43E_0000,
    ];
    let code = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    (
        code,
        0,
        0x1400_0002u32.to_le_bytes(),
        0x1400_0004u32.to_le_bytes(),
    )
}

fn selector_block(memory: &jitmem::JitMemory) -> CodeBlock {
    let (code, ..) = selector();
    let mut block = memory.allocate(code.len()).unwrap();
    block.patch(0, &code).unwrap();
    block
}

/// qemu-user (how CI runs AArch64) finds code changes by write-protecting the guest pages it
/// translated, so it never sees a store through Mirror's other view, and it ignores `ic ivau`:
/// there, a relinked *instruction* written through an alias keeps running as translated (real
/// AArch64 cores obey the cache maintenance). Literal data and x86-64 are unaffected.
fn alias_hidden_from_emulator(block: &CodeBlock) -> bool {
    cfg!(target_arch = "aarch64")
        && block.writable_offset() != 0
        && std::env::var_os("JITMEM_UNDER_QEMU").is_some()
}

fn is_not_live_patchable(r: jitmem::Result<()>) -> bool {
    matches!(r, Err(Error::NotLivePatchable { .. }))
}

#[test]
fn patch_live_relinks_code_another_thread_is_running() {
    let ran = in_child_per_pair(
        "patch_live_relinks_code_another_thread_is_running",
        |memory| {
            let (_, at, to1, to2) = selector();
            let mut block = selector_block(&memory);
            assert_eq!(block.patches_live(), memory.strategy() != Strategy::Toggle);
            if memory.strategy() == Strategy::Toggle {
                assert!(is_not_live_patchable(block.patch_live(at, &to2)));
                return;
            }
            // SAFETY: the block holds a complete selector function; it outlives the thread.
            let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
            assert_eq!(f(), 1);
            let stop = AtomicBool::new(false);
            let seen = [AtomicU64::new(0), AtomicU64::new(0)];
            let flushes = icache::pipeline_flush_count();
            let publishes = icache::publish_count();
            let patches = common::scaled(if cfg!(target_arch = "aarch64") {
                2_000
            } else {
                20_000
            });
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        match f() {
                            1 => seen[0].fetch_add(1, Ordering::Relaxed),
                            2 => seen[1].fetch_add(1, Ordering::Relaxed),
                            other => panic!("the selector returned {other}"),
                        };
                    }
                });
                for i in 0..patches {
                    let to = if i % 2 == 0 { &to2 } else { &to1 };
                    block.patch_live(at, to).unwrap();
                }
                // Leave it returning 2 and wait (bounded) until the runner sees it.
                block.patch_live(at, &to2).unwrap();
                if alias_hidden_from_emulator(&block) {
                    eprintln!(
                        "note: qemu-user does not see instructions patched through Mirror's view"
                    );
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                let before = seen[1].load(Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(10);
                while seen[1].load(Ordering::Relaxed) == before {
                    assert!(Instant::now() < deadline, "the runner never saw the patch");
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::Relaxed);
            });
            assert!(alias_hidden_from_emulator(&block) || f() == 2);
            assert_eq!(
                icache::pipeline_flush_count(),
                flushes,
                "patch_live made a pipeline flush (a system call)"
            );
            assert_eq!(
                icache::publish_count(),
                publishes + patches as u64 + 1,
                "each live patch goes through icache::publish"
            );
        },
    );
    if let Some(ran) = ran {
        assert!(ran.len() >= 6, "only {ran:?} ran");
    }
}

#[test]
fn patch_live_refuses_what_the_isa_does_not_make_safe() {
    let Some(memory) = memory(Strategy::Mirror, Layout::Pooled) else {
        return;
    };
    let (_, at, _, to2) = selector();
    let mut block = selector_block(&memory);
    // Outside the block, and a range that overflows.
    assert!(matches!(
        block.patch_live(block.len() - 2, &to2),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        block.patch_live(usize::MAX, &to2),
        Err(Error::OutOfRange { .. })
    ));
    // Misaligned and odd lengths.
    assert!(is_not_live_patchable(block.patch_live(at + 1, &to2)));
    assert!(is_not_live_patchable(block.patch_live(at, &[0; 3])));
    if cfg!(target_arch = "aarch64") {
        // `ret` (offset 12) is not among the concurrently modifiable instructions, neither as
        // the old nor as the new one; a 1-byte patch is not an instruction.
        assert!(is_not_live_patchable(block.patch_live(12, &to2)));
        assert!(is_not_live_patchable(
            block.patch_live(at, &0xD65F_03C0u32.to_le_bytes())
        ));
        assert!(is_not_live_patchable(block.patch_live(at, &[0])));
    }
    // Nothing was written by a refusal: the function still returns 1.
    assert_eq!(call_selector(&block), 1);
    block.patch_live(at, &to2).unwrap();
    assert!(alias_hidden_from_emulator(&block) || call_selector(&block) == 2);
}

fn call_selector(block: &CodeBlock) -> u32 {
    // SAFETY: the block holds a complete selector function.
    let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
    f()
}

#[test]
fn patch_live_data_replaces_an_aligned_word() {
    for memory in common::all_memories() {
        let mut block = function(&memory, 7);
        let at = isa::RETURN_CONSTANT_PATCH_OFFSET;
        if memory.strategy() == Strategy::Toggle {
            assert!(is_not_live_patchable(
                block.patch_live_data(at, &9u32.to_le_bytes())
            ));
            continue;
        }
        block.patch_live_data(at, &9u32.to_le_bytes()).unwrap();
        assert_eq!(call(&block), 9, "{memory:?}");
        assert!(is_not_live_patchable(
            block.patch_live_data(at + 2, &[0; 4])
        ));
        assert!(is_not_live_patchable(block.patch_live_data(at, &[0; 2])));
        assert!(is_not_live_patchable(block.patch_live_data(at, &[0; 8])));
        assert_eq!(call(&block), 9);
    }
}

#[test]
fn a_batch_of_live_patches_pays_one_pipeline_flush() {
    for memory in common::all_memories() {
        let mut blocks: Vec<CodeBlock> = (0..5).map(|i| function(&memory, i)).collect();
        let at = isa::RETURN_CONSTANT_PATCH_OFFSET;
        let before = icache::pipeline_flush_count();
        let mut batch = LivePatches::new();
        if memory.strategy() == Strategy::Toggle {
            assert!(is_not_live_patchable(batch.patch(
                &mut blocks[0],
                at,
                &[0; 4]
            )));
            assert_eq!(batch.pending(), 0);
            batch.publish().unwrap();
            assert_eq!(icache::pipeline_flush_count(), before);
            continue;
        }
        for (i, block) in blocks.iter_mut().enumerate() {
            batch
                .patch(block, at, &(100 + i as u32).to_le_bytes())
                .unwrap();
        }
        assert_eq!(batch.pending(), 5);
        assert_eq!(
            icache::pipeline_flush_count(),
            before,
            "no flush before publish"
        );
        batch.publish().unwrap();
        assert_eq!(icache::pipeline_flush_count(), before + 1, "{memory:?}");
        for (i, block) in blocks.iter().enumerate() {
            assert_eq!(call(block), 100 + i as u32);
        }
        // An empty batch flushes nothing; an unpublished one flushes when dropped.
        LivePatches::new().publish().unwrap();
        assert_eq!(icache::pipeline_flush_count(), before + 1);
        {
            let mut dropped = LivePatches::new();
            dropped.patch(&mut blocks[0], at, &[1, 0, 0, 0]).unwrap();
        }
        assert_eq!(icache::pipeline_flush_count(), before + 2);
        assert_eq!(call(&blocks[0]), 1);
        // Errors leave the batch as it was.
        let mut batch = LivePatches::new();
        assert!(batch.patch(&mut blocks[0], 4096, &[0; 4]).is_err());
        assert_eq!(batch.pending(), 0);
        batch.publish().unwrap();
    }
}
