//! Create + call + free of a 256-byte function through seed 000's CodeGen API in each mode,
//! next to a plain `mmap(RWX)` + write + call + `munmap` (what a JIT without W^X pays) and
//! `mmap(RW)` + write + `mprotect(RX)` + call + `munmap` (the cheapest W^X), in one run: `cargo bench -p jitmem-capi --bench codegen_modes`. Prints microseconds per function
//! (the median of 5 rounds of `JITMEM_BENCH_ITERS` functions, 20,000 by default).
//! `JITMEM_BENCH_ONLY=LuckNoTXM` (a mode's name, or `mmap`) runs one line only, for profiling.

use std::ffi::c_void;
use std::time::Instant;

use jitmem_capi::*;

const SIZE: usize = 256;

fn rounds(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn call(p: *const c_void) -> u32 {
    // SAFETY: every caller wrote and published a `return_constant` function at p.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(p) };
    f()
}

/// One function through the CodeGen API: allocate, diff, write (Legacy: inside the write
/// toggle), FreeWritableRegion (publishes), call, free.
fn codegen_once(legacy: bool, code: &[u8]) {
    let p = jitmem_codegen_allocate(SIZE);
    assert!(!p.is_null());
    let diff = jitmem_codegen_writable_diff(p, SIZE);
    assert_ne!(diff, isize::MIN);
    if legacy {
        assert_eq!(jitmem_codegen_write_enable(p), JitmemStatus::Ok);
    }
    // SAFETY: [p + diff, + code.len()) is the writable view of a live SIZE-byte allocation
    // (diff checked for SIZE bytes); in Legacy it is writable inside the toggle.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>().offset(diff), code.len())
    };
    if legacy {
        assert_eq!(jitmem_codegen_write_disable(p), JitmemStatus::Ok);
    }
    assert_eq!(
        jitmem_codegen_free_writable_region(p, SIZE, diff),
        JitmemStatus::Ok
    );
    assert_eq!(call(p), 9);
    assert_eq!(jitmem_codegen_free(p, SIZE), JitmemStatus::Ok);
}

/// A plain mapping: `wx` false: `mmap(RWX)`, write, call, `munmap` (no W^X); `wx` true: the
/// cheapest W^X, `mmap(RW)`, write, `mprotect(RX)`, call, `munmap`.
#[cfg(unix)]
fn plain_mmap_once(code: &[u8], wx: bool) {
    let rx = libc::PROT_READ | libc::PROT_EXEC;
    let prot = if wx {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        rx | libc::PROT_WRITE
    };
    // SAFETY: a fresh anonymous mapping; written while writable, run once executable, unmapped
    // here only. RWX when !wx on purpose: the baseline without W^X.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), code.len());
        if wx {
            assert_eq!(libc::mprotect(p, SIZE, rx), 0);
        }
        jitmem::icache::publish(p.cast::<u8>(), code.len());
        assert_eq!(call(p), 9);
        libc::munmap(p, SIZE);
    }
}

fn main() {
    let iters = std::env::var("JITMEM_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000usize);
    let only = std::env::var("JITMEM_BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.starts_with(o));
    let code = jitmem::isa::return_constant(9);
    println!("create + call + free of {SIZE} B, us per function (median of 5 x {iters}):");
    for (name, mode) in [
        ("Legacy", JitmemJitType::Legacy),
        ("LuckNoTXM", JitmemJitType::LuckNoTxm),
        ("LuckTXM", JitmemJitType::LuckTxm),
    ] {
        if !wanted(name) {
            continue;
        }
        assert_eq!(jitmem_codegen_set_jit_type(mode as u32), JitmemStatus::Ok);
        let legacy = mode == JitmemJitType::Legacy;
        let us = rounds(iters, || codegen_once(legacy, &code));
        println!("  {name:<12} {us:8.2}");
    }
    #[cfg(unix)]
    if wanted("mmap") {
        let us = rounds(iters, || plain_mmap_once(&code, false));
        println!("  {:<12} {us:8.2}", "mmap(RWX)");
        let us = rounds(iters, || plain_mmap_once(&code, true));
        println!(
            "  {:<12} {us:8.2}   (mmap RW, mprotect RX, munmap)",
            "mmap(W^X)"
        );
    }
}
