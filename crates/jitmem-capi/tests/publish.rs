//! Every C path that makes written code runnable goes through `jitmem::icache::publish`: the
//! seed 000 API in its three modes (`jitmem_codegen_write_disable`,
//! `jitmem_codegen_free_writable_region`, `jitmem_codegen_flush_instruction_cache`) and the
//! plain API (`jitmem_write_end`). `publish_count()` is per thread, and every call below is made
//! on the test's own thread. The CodeGen state is global (one mode at a time): the tests that
//! touch it hold `CODEGEN`.

use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard, PoisonError};

use jitmem::icache::publish_count;
use jitmem_capi::*;

static CODEGEN: Mutex<()> = Mutex::new(());

fn codegen_lock() -> MutexGuard<'static, ()> {
    CODEGEN.lock().unwrap_or_else(PoisonError::into_inner)
}

fn last_error() -> String {
    // SAFETY: jitmem_last_error returns a NUL-terminated string valid until the next call.
    unsafe { std::ffi::CStr::from_ptr(jitmem_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn ok(status: JitmemStatus) {
    assert_eq!(status, JitmemStatus::Ok, "{}", last_error());
}

/// Runs `f` and returns how many publishes this thread did meanwhile.
fn publishes(f: impl FnOnce()) -> u64 {
    let before = publish_count();
    f();
    publish_count() - before
}

fn call(code: *const c_void) -> u32 {
    // SAFETY: the caller wrote and published a `return_constant` function at `code`.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(code) };
    f()
}

/// The seed's flows in `mode`: each call that makes code runnable publishes at least once.
fn codegen_paths_publish(mode: JitmemJitType) {
    let _g = codegen_lock();
    ok(jitmem_codegen_set_jit_type(mode as u32));
    const SIZE: usize = 4096;
    let p = jitmem_codegen_allocate(SIZE);
    assert!(!p.is_null(), "{}", last_error());
    // Frees the allocation if an assertion fails, so that the next test can change the mode.
    struct Freed(*mut c_void);
    impl Drop for Freed {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = jitmem_codegen_free(self.0, SIZE);
            }
        }
    }
    let _freed = Freed(p);
    let diff = jitmem_codegen_writable_diff(p, SIZE);
    assert_ne!(diff, isize::MIN, "{}", last_error());
    let rw = p.cast::<u8>().wrapping_offset(diff);
    let write = |value: u32| {
        let code = jitmem::isa::return_constant(value);
        // SAFETY: [rw, rw + code.len()) is the writable view of the allocation (diff checked
        // for SIZE bytes); in Legacy it is writable inside the enable/disable pair around it.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), rw, code.len()) };
    };

    // JITPageWriteEnableExecuteDisable makes the code writable in place only in Legacy; the
    // mirror modes say to write through the diff.
    let enable = || {
        let status = jitmem_codegen_write_enable(p);
        if mode == JitmemJitType::Legacy {
            ok(status);
        } else {
            assert_eq!(status, JitmemStatus::WriteThroughDiff, "{mode:?}");
            assert!(last_error().contains("AllocateWritableRegionAndGetDiff"));
        }
    };

    // JITPageWriteEnableExecuteDisable / JITPageWriteDisableExecuteEnable.
    enable();
    write(1);
    let n = publishes(|| ok(jitmem_codegen_write_disable(p)));
    assert!(n >= 1, "{mode:?}: write_disable published {n} times");
    assert_eq!(call(p), 1);

    // Write through the diff, then FreeWritableRegion (the seed's order), then run.
    enable();
    write(2);
    ok(jitmem_codegen_write_disable(p));
    let n = publishes(|| ok(jitmem_codegen_free_writable_region(p, SIZE, diff)));
    assert!(n >= 1, "{mode:?}: free_writable_region published {n} times");
    assert_eq!(call(p), 2);

    // FlushInstructionCache over the written range.
    let n = publishes(|| ok(jitmem_codegen_flush_instruction_cache(p, 16)));
    assert!(
        n >= 1,
        "{mode:?}: flush_instruction_cache published {n} times"
    );
    assert_eq!(call(p), 2);

    // The flush checks its range, as the other calls do, and then publishes nothing.
    let mut x = 0u8;
    let foreign = (&raw mut x).cast::<c_void>();
    let n = publishes(|| {
        assert_eq!(
            jitmem_codegen_flush_instruction_cache(foreign, 1),
            JitmemStatus::UnknownPointer
        );
        assert_eq!(
            jitmem_codegen_flush_instruction_cache(std::ptr::null_mut(), 1),
            JitmemStatus::InvalidArgument
        );
        assert_eq!(
            jitmem_codegen_flush_instruction_cache(p, SIZE + 1),
            JitmemStatus::SizeMismatch
        );
    });
    assert_eq!(n, 0, "{mode:?}: a refused flush published");

    ok(jitmem_codegen_free(p, SIZE));
    assert_eq!(
        jitmem_codegen_flush_instruction_cache(p, 16),
        JitmemStatus::UnknownPointer,
        "{mode:?}: flush of a freed allocation"
    );
}

#[test]
fn legacy_paths_publish() {
    codegen_paths_publish(JitmemJitType::Legacy);
}

#[test]
fn luck_no_txm_paths_publish() {
    codegen_paths_publish(JitmemJitType::LuckNoTxm);
}

#[test]
fn luck_txm_paths_publish() {
    codegen_paths_publish(JitmemJitType::LuckTxm);
}

/// The plain API: `jitmem_write_end` publishes (through jitmem's block release), under every
/// strategy this machine supports.
#[test]
fn write_end_publishes() {
    let mut tried = 0;
    for strategy in [
        JitmemStrategy::Toggle,
        JitmemStrategy::Mirror,
        JitmemStrategy::PerThread,
    ] {
        let config = JitmemConfig {
            strategy: strategy as u32,
            layout: JitmemLayout::Pooled as u32,
            arena_size: 0,
            default_align: 0,
            allow_rwx: 0,
        };
        let mut m = std::ptr::null_mut();
        // SAFETY: config and out-pointer are valid.
        let status = unsafe { jitmem_memory_new(&config, &mut m) };
        if status == JitmemStatus::Unsupported {
            eprintln!("{strategy:?} unsupported here: {}", last_error());
            continue;
        }
        ok(status);
        tried += 1;
        let mut code = std::ptr::null_mut();
        let mut rw = std::ptr::null_mut();
        // SAFETY: m is live; the out-pointers are valid; the write stays inside the scope's
        // 64 bytes and ends before jitmem_write_end.
        unsafe {
            ok(jitmem_alloc(m, 64, 0, &mut code));
            ok(jitmem_write_begin(m, code, 64, &mut rw));
            let f = jitmem::isa::return_constant(3);
            std::ptr::copy_nonoverlapping(f.as_ptr(), rw.cast::<u8>(), f.len());
        }
        // SAFETY: m is live.
        let n = publishes(|| ok(unsafe { jitmem_write_end(m, code, 0) }));
        assert!(n >= 1, "{strategy:?}: write_end published {n} times");
        assert_eq!(call(code), 3);
        // SAFETY: m is live, then freed once.
        unsafe {
            ok(jitmem_free(m, code));
            ok(jitmem_memory_free(m));
        }
    }
    assert!(tried >= 2, "Toggle and Mirror work everywhere jitmem does");
}
