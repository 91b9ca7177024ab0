//! LuckTXM sub-allocates its 512 MiB arena at 16 bytes: at least 3 million 100-byte functions
//! fit (whole pages would hold 131,072). Its own test binary: the CodeGen mode is process-wide.

use std::ffi::c_void;

use jitmem_capi::*;

fn last_error() -> String {
    // SAFETY: jitmem_last_error returns a NUL-terminated string valid until the next call.
    unsafe { std::ffi::CStr::from_ptr(jitmem_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn luck_txm_holds_three_million_100_byte_functions() {
    const COUNT: usize = 3_000_000;
    const SIZE: usize = 100;
    assert_eq!(
        jitmem_codegen_set_jit_type(JitmemJitType::LuckTxm as u32),
        JitmemStatus::Ok
    );
    let mut live: Vec<*mut c_void> = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let p = jitmem_codegen_allocate(SIZE);
        assert!(!p.is_null(), "allocation {i} failed: {}", last_error());
        live.push(p);
    }
    let (lo, hi) = live.iter().fold((usize::MAX, 0), |(lo, hi), p| {
        (lo.min(*p as usize), hi.max(*p as usize))
    });
    assert!(
        hi + SIZE - lo <= 512 << 20,
        "the functions span {} bytes",
        hi + SIZE - lo
    );
    // The last one is usable: write, publish, run.
    let p = live[COUNT - 1];
    let diff = jitmem_codegen_writable_diff(p, SIZE);
    assert_ne!(diff, isize::MIN, "{}", last_error());
    let code = jitmem::isa::return_constant(7);
    // SAFETY: [p + diff, p + diff + code.len()) is the writable view of a live 100-byte
    // allocation (checked by writable_diff); code.len() <= 100.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            p.cast::<u8>().wrapping_offset(diff),
            code.len(),
        );
    }
    assert_eq!(
        jitmem_codegen_free_writable_region(p, SIZE, diff),
        JitmemStatus::Ok,
        "{}",
        last_error()
    );
    // SAFETY: a return_constant function was written and published at p.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(p) };
    assert_eq!(f(), 7);
    for p in live {
        assert_eq!(
            jitmem_codegen_free(p, SIZE),
            JitmemStatus::Ok,
            "{}",
            last_error()
        );
    }
    assert_eq!(
        jitmem_codegen_set_jit_type(JitmemJitType::Legacy as u32),
        JitmemStatus::Ok,
        "everything was freed"
    );
}
