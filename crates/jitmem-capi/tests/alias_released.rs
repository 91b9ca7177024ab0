//! LuckNoTXM's writable alias exists only between `AllocateWritableRegionAndGetDiff` and
//! `FreeWritableRegion`: a store through `ptr + diff` after `FreeWritableRegion` faults (the
//! seed unmapped its alias there). Each case runs in a child process (this test binary run
//! again with `JITMEM_ALIAS_CHILD` set), since the expected outcome is a SIGSEGV; a fork child
//! would not do, as a Mirror alias is not inherited across fork at all.

#![cfg(unix)]

use std::process::Command;

use jitmem_capi::*;

const SIZE: usize = 256;

/// The child's body: `case` says when to store through the alias.
fn child(case: &str) -> ! {
    assert_eq!(
        jitmem_codegen_set_jit_type(JitmemJitType::LuckNoTxm as u32),
        JitmemStatus::Ok
    );
    let p = jitmem_codegen_allocate(SIZE);
    assert!(!p.is_null());
    let diff = jitmem_codegen_writable_diff(p, SIZE);
    assert_ne!(diff, isize::MIN);
    let rw = p.cast::<u8>().wrapping_offset(diff);
    let code = jitmem::isa::return_constant(4);
    // SAFETY: inside the window: [rw, rw + code.len()) is the allocation's writable alias.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), rw, code.len()) };
    assert_eq!(
        jitmem_codegen_free_writable_region(p, SIZE, diff),
        JitmemStatus::Ok
    );
    // SAFETY: the allocation holds a published `extern "C" fn() -> u32`.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(p) };
    assert_eq!(f(), 4);
    match case {
        // A second window: writable again.
        "reopened" => {
            let again = jitmem_codegen_writable_diff(p, SIZE);
            assert_eq!(again, diff);
            // SAFETY: inside a window again.
            unsafe { rw.write_volatile(0xC3) };
            assert_eq!(
                jitmem_codegen_free_writable_region(p, SIZE, diff),
                JitmemStatus::Ok
            );
            assert_eq!(jitmem_codegen_free(p, SIZE), JitmemStatus::Ok);
            std::process::exit(0);
        }
        _ => {
            // SAFETY: none: the window is closed, and this store must fault (the parent checks
            // that the child died of SIGSEGV or SIGBUS). The address is mapped PROT_NONE.
            unsafe { rw.write_volatile(0xC3) };
            std::process::exit(3);
        }
    }
}

fn run_child(case: &str) -> std::process::ExitStatus {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "--exact",
            "store_through_released_alias_faults",
            "--nocapture",
        ])
        .env("JITMEM_ALIAS_CHILD", case)
        .output()
        .unwrap()
        .status
}

#[test]
fn store_through_released_alias_faults() {
    if let Ok(case) = std::env::var("JITMEM_ALIAS_CHILD") {
        child(&case);
    }
    use std::os::unix::process::ExitStatusExt;
    let reopened = run_child("reopened");
    assert!(
        reopened.success(),
        "a reopened window is writable: {reopened:?}"
    );
    let after = run_child("after");
    assert!(
        matches!(after.signal(), Some(libc::SIGSEGV | libc::SIGBUS)),
        "a store through the alias after FreeWritableRegion must fault: {after:?}"
    );
}
