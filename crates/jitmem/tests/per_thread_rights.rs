//! PerThread's read rights: code that reads its own bytes as data (a RIP-relative constant, as
//! asmjit's and Xbyak's constant pools do) must run on every thread, not only on the thread that
//! allocated the protection key. Linux gives a thread that existed before `pkey_alloc`, and every
//! signal handler, the kernel's default rights for a new key: access disabled. Instruction fetch
//! ignores keys, so such a thread runs the code until its first data read of it.
//!
//! Runs where PerThread exists: x86-64 Linux with protection keys (CI's emulated-PKU VM,
//! `ci/pku/run.sh`, where `JITMEM_REQUIRE_PKU=1` turns a refusal into a failure). Elsewhere each
//! test says PerThread is not available here and passes.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;

use common::{child_signal, is_child, memory, run_child};
use jitmem::{CodeBlock, JitMemory, Layout, Strategy};

const VALUE: u32 = 0x5eed_c0de;

/// `mov eax, [rip + 2]; ret; int3` then the constant: a function that reads its own bytes.
fn reads_own_bytes(memory: &JitMemory) -> CodeBlock {
    let mut block = memory.allocate(16).unwrap();
    let mut scope = block.write().unwrap();
    scope[..8].copy_from_slice(&[0x8b, 0x05, 0x02, 0x00, 0x00, 0x00, 0xc3, 0xcc]);
    scope[8..12].copy_from_slice(&VALUE.to_le_bytes());
    scope[12..16].fill(0xcc);
    scope.publish().unwrap();
    block
}

fn child_passes(test: &str, env: &[(&str, &str)]) {
    let out = run_child(test, env);
    let (signal, text) = child_signal(&out);
    assert!(
        out.status.success(),
        "{test} {env:?}: the child failed (signal {signal:?}):\n{text}"
    );
    // The child's notes (`jitmem-test: made perthread/...`, counted by ci/pku/run.sh).
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

/// A thread started before the process's first PerThread memory runs a function that reads its
/// own bytes, having been handed only the function pointer: it never calls jitmem, because the
/// key was allocated when the program was loaded, before the thread existed. With that turned
/// off (`JITMEM_PKEY_AT_LOAD=0`) the key is younger than the thread, which then calls
/// `jitmem::allow_code_reads()` first.
#[test]
fn thread_older_than_the_memory_reads_code() {
    const TEST: &str = "thread_older_than_the_memory_reads_code";
    if !is_child(TEST) {
        child_passes(TEST, &[]);
        child_passes(TEST, &[("JITMEM_PKEY_AT_LOAD", "0")]);
        return;
    }
    let key_at_load = std::env::var("JITMEM_PKEY_AT_LOAD").map_or(true, |v| v != "0");
    let (send, receive) = mpsc::channel::<extern "C" fn() -> u32>();
    let older = std::thread::spawn(move || {
        receive
            .recv()
            .map(|f| {
                if !key_at_load {
                    jitmem::allow_code_reads();
                }
                f()
            })
            .ok()
    });
    let Some(memory) = memory(Strategy::PerThread, Layout::Pooled) else {
        drop(send);
        let _ = older.join();
        return;
    };
    let block = reads_own_bytes(&memory);
    // SAFETY: the block holds the function written above.
    let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
    assert_eq!(f(), VALUE, "the allocating thread");
    send.send(f).unwrap();
    assert_eq!(older.join().unwrap(), Some(VALUE), "the older thread");
}

static FROM_HANDLER: AtomicU32 = AtomicU32::new(0);
static HANDLER_FN: AtomicU32 = AtomicU32::new(0);
static mut ENTRY: Option<extern "C" fn() -> u32> = None;

extern "C" fn on_signal(_: libc::c_int) {
    // A fault handler that decodes the faulting JIT instruction (Dolphin's fastmem back-patcher)
    // reads code the same way. Signal handlers start with the kernel's default PKRU.
    jitmem::allow_code_reads();
    // SAFETY: ENTRY was set before the signal was raised, on this thread, and is not changed.
    if let Some(f) = unsafe { ENTRY } {
        FROM_HANDLER.store(f(), Ordering::SeqCst);
    }
    HANDLER_FN.store(1, Ordering::SeqCst);
}

/// A signal handler that calls `jitmem::allow_code_reads()` runs a function that reads its own
/// bytes, and the interrupted thread's rights are unchanged afterwards.
#[test]
fn signal_handler_reads_code_after_allowing_it() {
    const TEST: &str = "signal_handler_reads_code_after_allowing_it";
    if !is_child(TEST) {
        child_passes(TEST, &[]);
        child_passes(TEST, &[("JITMEM_PKEY_AT_LOAD", "0")]);
        return;
    }
    let Some(memory) = memory(Strategy::PerThread, Layout::Pooled) else {
        return;
    };
    let block = reads_own_bytes(&memory);
    // SAFETY: the block holds the function written above.
    let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
    // SAFETY: set once, before the handler that reads it can run.
    unsafe { ENTRY = Some(f) };
    // SAFETY: installs a handler that only calls async-signal-safe code (a WRPKRU, the JIT
    // function, atomics) for SIGUSR1, which nothing else in this child process uses.
    unsafe {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        assert_ne!(
            libc::signal(libc::SIGUSR1, handler as libc::sighandler_t),
            libc::SIG_ERR
        );
        assert_eq!(libc::raise(libc::SIGUSR1), 0);
    }
    assert_eq!(HANDLER_FN.load(Ordering::SeqCst), 1, "the handler ran");
    assert_eq!(FROM_HANDLER.load(Ordering::SeqCst), VALUE, "the handler");
    assert_eq!(f(), VALUE, "the interrupted thread afterwards");
    // Writing still needs a scope: allow_code_reads never grants writes.
    let mut block = block;
    let mut scope = block.write().unwrap();
    scope[8..12].copy_from_slice(&(VALUE + 1).to_le_bytes());
    scope.publish().unwrap();
    assert_eq!(f(), VALUE + 1);
}
