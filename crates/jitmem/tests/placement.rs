//! Placement near an address (`Config::near`), guard pages around Pooled chunks and the Arena
//! (Linux, and Windows: run under Wine), and BTI landing pads (`Config::bti`, Linux AArch64).

mod common;

#[cfg(any(target_os = "linux", windows))]
use common::{child_signal, is_child, run_child};
use jitmem::{Config, Error, JitMemory, Layout, Strategy};

/// Every strategy this machine supports, as `Config`s (Rwx with its opt-in).
#[cfg(any(target_os = "linux", windows))]
fn configs(layout: Layout) -> Vec<(Strategy, Config)> {
    Strategy::CONCRETE
        .into_iter()
        .filter(|s| common::memory(*s, layout).is_some())
        .map(|s| {
            let config = Config::new()
                .strategy(s)
                .layout(layout)
                .ignore_environment();
            let config = if s == Strategy::Rwx {
                // SAFETY: tests only run their own trusted code.
                unsafe { config.allow_rwx_without_wx() }
            } else {
                config
            };
            (s, config)
        })
        .collect()
}

/// Asserts every byte of `block` is within `max` of `target`.
#[cfg(any(target_os = "linux", windows))]
fn assert_in_reach(block: &jitmem::CodeBlock, target: usize, max: usize, what: &str) {
    let first = block.as_ptr() as usize;
    let last = first + block.len() - 1;
    assert!(
        first.abs_diff(target) <= max && last.abs_diff(target) <= max,
        "{what}: block {first:#x}..={last:#x} is beyond {max:#x} of {target:#x}"
    );
}

/// AArch64 `bl` reach, the tighter of the two.
const BL_REACH: usize = 128 << 20;

/// Guard bytes on each side of each view: one unit of reservation (a page on Linux, the 64 KiB
/// allocation granularity on Windows).
#[cfg(any(target_os = "linux", windows))]
fn guard_unit(memory: &JitMemory) -> usize {
    if cfg!(windows) {
        64 << 10
    } else {
        memory.page_size()
    }
}

#[test]
#[cfg(any(target_os = "linux", windows))]
fn near_places_every_block_of_every_layout_within_reach() {
    let target = near_places_every_block_of_every_layout_within_reach as *const () as usize;
    for layout in [
        Layout::Pooled,
        Layout::Arena { size: 32 << 20 },
        Layout::PerAllocation,
    ] {
        for (strategy, config) in configs(layout) {
            let what = format!("{strategy}/{layout}");
            let memory = JitMemory::new(config.near(target, BL_REACH)).unwrap();
            // Pooled: enough to need at least 4 chunks (256 KiB doubling to 16 MiB: 14 blocks of
            // 120,000 bytes fill the first three), also where `scaled` shrinks loops (the PKU VM).
            let (count, len) = match layout {
                Layout::PerAllocation => (20, 100),
                _ => (common::scaled(120).max(20), 120_000),
            };
            let mut blocks = Vec::new();
            for i in 0..count {
                let mut block = memory.allocate(len).unwrap();
                {
                    let mut scope = block.write().unwrap();
                    scope[..16].copy_from_slice(&jitmem::isa::return_constant(i as u32));
                    scope.publish().unwrap();
                }
                assert_in_reach(&block, target, BL_REACH, &what);
                blocks.push(block);
            }
            for (i, block) in blocks.iter().enumerate() {
                // SAFETY: each block holds a complete `extern "C" fn() -> u32`.
                let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
                assert_eq!(f(), i as u32, "{what}");
            }
            let stats = memory.stats();
            if layout == Layout::Pooled {
                assert!(stats.regions >= 4, "{what}: {stats:?}");
            }
            let views = if strategy == Strategy::Mirror { 2 } else { 1 };
            let guards = match layout {
                Layout::PerAllocation => 0,
                _ => stats.regions * views * 2 * guard_unit(&memory),
            };
            assert_eq!(stats.guard_bytes, guards, "{what}: {stats:?}");
        }
    }
}

/// A window of 4 MiB (a hole in the middle of a reservation of our own) fills up: every block
/// lies in it, and the chunk that no longer fits is refused with `NoRoomNear`, never placed
/// farther. In a child process, so that no other test's mapping lands in the hole.
#[test]
#[cfg(any(target_os = "linux", windows))]
fn a_full_window_refuses_instead_of_placing_farther() {
    const TEST: &str = "a_full_window_refuses_instead_of_placing_farther";
    if !is_child(TEST) {
        let out = run_child(TEST, &[]);
        let (signal, text) = child_signal(&out);
        assert!(
            out.status.success() && text.contains("child ok"),
            "signal {signal:?}\n{text}"
        );
        return;
    }
    const SPAN: usize = 64 << 20;
    const HOLE: usize = 4 << 20;
    for (strategy, config) in configs(Layout::Pooled) {
        let (span, hole) = hole_in_span(SPAN, HOLE);
        let centre = hole + HOLE / 2;
        let max = HOLE / 2;
        let memory = JitMemory::new(config.near(centre, max)).unwrap();
        let mut blocks = Vec::with_capacity(64);
        let err = loop {
            match memory.allocate(60_000) {
                Ok(block) => {
                    let at = block.as_ptr() as usize;
                    assert!(
                        at >= hole && at + block.len() <= hole + HOLE,
                        "{strategy}: block at {at:#x} outside the hole {hole:#x}+{HOLE:#x}"
                    );
                    blocks.push(block);
                    assert!(
                        blocks.len() < 64,
                        "{strategy}: more blocks than the hole holds"
                    );
                }
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, Error::NoRoomNear { address, max_distance, .. } if address == centre && max_distance == max),
            "{strategy}: {err}"
        );
        assert!(
            err.to_string().contains("never places code farther"),
            "{err}"
        );
        assert!(
            blocks.len() >= 4,
            "{strategy}: only {} blocks",
            blocks.len()
        );
        drop(blocks);
        drop(memory);
        free_span(span, SPAN, hole, HOLE);
        // An Arena larger than the window is refused when the memory is made.
        let arena = Config::new()
            .strategy(strategy)
            .layout(Layout::Arena { size: 2 * HOLE })
            .ignore_environment()
            .near(centre, max);
        let arena = if strategy == Strategy::Rwx {
            // SAFETY: nothing runs here.
            unsafe { arena.allow_rwx_without_wx() }
        } else {
            arena
        };
        let err = JitMemory::new(arena).unwrap_err();
        assert!(matches!(err, Error::NoRoomNear { .. }), "{strategy}: {err}");
    }
    println!("child ok");
}

/// `span` bytes of inaccessible address space of our own with a free `hole` of bytes in the
/// middle (at `span + span_len / 2`): `(span, hole)`.
#[cfg(target_os = "linux")]
fn hole_in_span(span_len: usize, hole_len: usize) -> (usize, usize) {
    // SAFETY: a fresh inaccessible reservation of our own; the middle is given back to make
    // the hole and the rest is unmapped by `free_span`.
    let span = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(span, libc::MAP_FAILED);
    let hole = span as usize + span_len / 2;
    // SAFETY: the middle of our own reservation.
    let rc = unsafe { libc::munmap(hole as *mut libc::c_void, hole_len) };
    assert_eq!(rc, 0);
    (span as usize, hole)
}

/// Gives back what [`hole_in_span`] kept.
#[cfg(target_os = "linux")]
fn free_span(span: usize, span_len: usize, hole: usize, hole_len: usize) {
    // SAFETY: the rest of our own reservation.
    unsafe {
        libc::munmap(span as *mut libc::c_void, span_len / 2);
        libc::munmap(
            (hole + hole_len) as *mut libc::c_void,
            span_len / 2 - hole_len,
        );
    }
}

/// Windows releases whole reservations only: room for `span_len` bytes is found, given back,
/// and reserved again as two reservations around the hole (in a child process: nothing else
/// maps meanwhile).
#[cfg(windows)]
fn hole_in_span(span_len: usize, hole_len: usize) -> (usize, usize) {
    use windows_sys::Win32::System::Memory::{
        MEM_RELEASE, MEM_RESERVE, PAGE_NOACCESS, VirtualAlloc, VirtualFree,
    };
    // SAFETY: a fresh reservation of our own, given back at once.
    let span = unsafe { VirtualAlloc(std::ptr::null(), span_len, MEM_RESERVE, PAGE_NOACCESS) };
    assert!(!span.is_null());
    // SAFETY: our own reservation.
    assert_ne!(unsafe { VirtualFree(span, 0, MEM_RELEASE) }, 0);
    let span = span as usize;
    let hole = span + span_len / 2;
    for (at, len) in [
        (span, span_len / 2),
        (hole + hole_len, span_len / 2 - hole_len),
    ] {
        // SAFETY: a new reservation at free room; released by `free_span`.
        let got = unsafe { VirtualAlloc(at as *const _, len, MEM_RESERVE, PAGE_NOACCESS) };
        assert_eq!(got as usize, at, "could not reserve around the hole");
    }
    (span, hole)
}

/// Gives back what [`hole_in_span`] kept.
#[cfg(windows)]
fn free_span(span: usize, _span_len: usize, hole: usize, hole_len: usize) {
    use windows_sys::Win32::System::Memory::{MEM_RELEASE, VirtualFree};
    for at in [span, hole + hole_len] {
        // SAFETY: our own reservations.
        assert_ne!(unsafe { VirtualFree(at as *mut _, 0, MEM_RELEASE) }, 0);
    }
}

/// Writes one byte just past (or just before) a whole Pooled chunk or Arena through the
/// writable view: it must fault, whatever the strategy.
#[cfg(any(target_os = "linux", windows))]
fn write_beside_a_whole_region(memory: JitMemory, before: bool) {
    let len = match memory.layout() {
        Layout::Arena { size } => size,
        // The first chunk of the calling thread's heap (the first thread of the child).
        _ => 256 << 10,
    };
    let mut block = memory.allocate(len).unwrap();
    assert_eq!(
        memory.stats().free_bytes,
        0,
        "the block is not a whole region: {:?}",
        memory.stats()
    );
    let mut scope = block.write().unwrap();
    let start = scope.as_mut_ptr();
    // SAFETY: deliberately not: one byte beside the region, on a guard page, must fault.
    unsafe {
        let at = if before {
            start.wrapping_sub(1)
        } else {
            start.wrapping_add(len)
        };
        at.write_volatile(0xAA);
    }
}

/// Guard pages: a write one byte past a whole Pooled chunk or Arena, through the writable
/// view, faults (Linux and Windows: the platforms that make guard pages).
#[test]
#[cfg(any(target_os = "linux", windows))]
fn writing_one_byte_past_a_chunk_faults() {
    common::fault_per_pair(
        "writing_one_byte_past_a_chunk_faults",
        |_, layout| (layout != Layout::PerAllocation).then_some(common::ACCESS_FAULT),
        |memory| write_beside_a_whole_region(memory, false),
    );
}

/// Guard pages: a write one byte before a whole Pooled chunk or Arena faults too.
#[test]
#[cfg(any(target_os = "linux", windows))]
fn writing_one_byte_before_a_chunk_faults() {
    common::fault_per_pair(
        "writing_one_byte_before_a_chunk_faults",
        |_, layout| (layout != Layout::PerAllocation).then_some(common::ACCESS_FAULT),
        |memory| write_beside_a_whole_region(memory, true),
    );
}

/// Where regions cannot be placed (Apple), `near` is refused with a reason and no guard pages
/// are counted.
#[test]
#[cfg(not(any(target_os = "linux", windows)))]
fn near_is_refused_where_regions_cannot_be_placed() {
    let err = JitMemory::new(Config::new().near(0x1000_0000, BL_REACH)).unwrap_err();
    assert!(matches!(err, Error::FeatureUnsupported { .. }), "{err}");
    if let Some(memory) = common::memory(Strategy::Toggle, Layout::Pooled) {
        assert_eq!(memory.stats().guard_bytes, 0);
    }
}

/// BTI is refused with a reason where there is none (x86-64, Apple, Windows).
#[test]
#[cfg(not(all(target_os = "linux", target_arch = "aarch64")))]
fn bti_is_refused_without_bti() {
    let err = JitMemory::new(Config::new().bti(true)).unwrap_err();
    assert!(
        matches!(err, Error::FeatureUnsupported { .. }) && err.to_string().contains("BTI"),
        "{err}"
    );
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
mod bti {
    use super::*;

    /// `JITMEM_REQUIRE_BTI=1` (CI's qemu step, run with `-cpu max`) turns a missing BTI into a
    /// failure; elsewhere (an AArch64 CPU without BTI) the tests say they skipped.
    fn required() -> bool {
        std::env::var("JITMEM_REQUIRE_BTI").is_ok_and(|v| v == "1")
    }

    /// `mov w0, #1; ret` at 0 (no landing pad), `bti c; mov w0, #2; ret` at 16.
    fn code() -> [u8; 32] {
        let words: [u32; 8] = [
            0x5280_0020, // mov w0, #1
            0xd65f_03c0, // ret
            0xd503_201f, // nop
            0xd503_201f, // nop
            0xd503_245f, // bti c
            0x5280_0040, // mov w0, #2
            0xd65f_03c0, // ret
            0xd503_201f, // nop
        ];
        let mut out = [0; 32];
        for (i, w) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Memory with BTI for `strategy`, or None (skipped) where this CPU has none.
    fn bti_memory(strategy: Strategy) -> Option<JitMemory> {
        let config = Config::new()
            .strategy(strategy)
            .layout(Layout::Pooled)
            .ignore_environment()
            .bti(true);
        let config = if strategy == Strategy::Rwx {
            // SAFETY: tests only run their own trusted code.
            unsafe { config.allow_rwx_without_wx() }
        } else {
            config
        };
        match JitMemory::new(config) {
            Ok(m) => Some(m),
            Err(Error::FeatureUnsupported { reason, .. }) if !required() => {
                eprintln!(
                    "note: BTI tests skipped (set JITMEM_REQUIRE_BTI=1 where BTI exists, e.g. qemu-aarch64 -cpu max): {reason}"
                );
                None
            }
            Err(e) => panic!("{strategy} with BTI: {e}"),
        }
    }

    /// `blr` to a `bti c` works; `blr` to an instruction that is not a landing pad dies of
    /// `SIGILL` (in a child process), for Toggle, Mirror and Rwx.
    #[test]
    fn an_indirect_branch_must_land_on_a_landing_pad() {
        const TEST: &str = "bti::an_indirect_branch_must_land_on_a_landing_pad";
        let strategies = [Strategy::Toggle, Strategy::Mirror, Strategy::Rwx];
        if is_child(TEST) {
            let strategy =
                Strategy::from_name(&std::env::var("JITMEM_TEST_STRATEGY").unwrap()).unwrap();
            let memory = bti_memory(strategy).unwrap();
            let mut block = memory.allocate(32).unwrap();
            {
                let mut scope = block.write().unwrap();
                scope[..32].copy_from_slice(&code());
                scope.publish().unwrap();
            }
            // SAFETY: offset 16 holds `bti c; mov w0, #2; ret`.
            let pad: extern "C" fn() -> u32 = unsafe { block.entry(16).unwrap() };
            assert_eq!(std::hint::black_box(pad)(), 2);
            // SAFETY: deliberately not a landing pad: the call (a `blr`) must fault.
            let bare: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
            println!("no fault: returned {}", std::hint::black_box(bare)());
            return;
        }
        if strategies.iter().all(|s| bti_memory(*s).is_none()) {
            return;
        }
        for strategy in strategies {
            let out = run_child(TEST, &[("JITMEM_TEST_STRATEGY", strategy.name())]);
            let (signal, text) = child_signal(&out);
            assert_eq!(signal, Some(libc::SIGILL), "{strategy}: {text}");
        }
    }
}
