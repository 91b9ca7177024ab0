//! The seed 000 API in a fork child: a Mirror mode's writable alias is not the child's
//! (`MADV_DONTFORK`), so `AllocateWritableRegionAndGetDiff` must fail with
//! `JITMEM_STATUS_FORKED_CHILD` instead of handing out the old writable address, while the
//! child can still run the code it has. One test in this binary, so no other thread holds the
//! CodeGen lock at the fork.

#![cfg(unix)]

use jitmem_capi::*;

#[test]
fn a_mirror_fork_child_gets_no_writable_alias() {
    for mode in [JitmemJitType::LuckNoTxm, JitmemJitType::LuckTxm] {
        assert_eq!(jitmem_codegen_set_jit_type(mode as u32), JitmemStatus::Ok);
        let p = jitmem_codegen_allocate(4096);
        assert!(!p.is_null());
        let diff = jitmem_codegen_writable_diff(p, 16);
        assert_ne!(diff, isize::MIN);
        let code = jitmem::isa::return_constant(5);
        // SAFETY: [p + diff, + 16) is the allocation's writable alias.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>().offset(diff), 16) };
        assert_eq!(
            jitmem_codegen_free_writable_region(p, 16, diff),
            JitmemStatus::Ok
        );
        // SAFETY: the allocation holds a published `extern "C" fn() -> u32`.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(p) };
        assert_eq!(f(), 5);
        // SAFETY: the child only calls the C API and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let refused = jitmem_codegen_writable_diff(p, 16) == isize::MIN;
            let runs = f() == 5;
            // The child can free what it inherited (bookkeeping only: it has no alias).
            let freed = jitmem_codegen_free(p, 4096) == JitmemStatus::Ok;
            // SAFETY: leaves at once.
            unsafe {
                libc::_exit(if !freed {
                    3
                } else if refused && runs {
                    0
                } else {
                    1 + refused as i32
                })
            };
        }
        let mut status = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{mode:?}: child status {status:#x} (exit 1: got a writable alias; 2: old code broken; 3: free refused)"
        );
        assert_eq!(jitmem_codegen_free(p, 4096), JitmemStatus::Ok);
    }
}
