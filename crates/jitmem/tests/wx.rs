//! The W^X invariant, checked from the process's memory map (`/proc/self/maps`, `VirtualQuery`
//! on Windows) and by faulting in child processes.

mod common;

use common::{
    ACCESS_FAULT, LAYOUTS, TRAP_FAULT, call, child_signal, function, is_child, memory, run_child,
};
use jitmem::{Layout, Strategy, introspect};

fn assert_not_wx(addr: usize, when: &str) {
    let m = introspect::mapping_at(addr)
        .unwrap()
        .expect("address is mapped");
    assert!(!m.is_writable_and_executable(), "{when}: {m:?}");
}

#[test]
fn toggle_and_mirror_never_map_writable_and_executable() {
    for strategy in [Strategy::Toggle, Strategy::Mirror] {
        for layout in LAYOUTS {
            let memory = memory(strategy, layout).unwrap();
            let mut block = function(&memory, 1);
            let rx = block.as_ptr() as usize;
            assert_not_wx(rx, "published");
            let m = introspect::mapping_at(rx).unwrap().unwrap();
            assert!(
                m.perms.starts_with("r-x"),
                "{strategy}/{layout}: code is r-x, got {m:?}"
            );
            {
                let scope = block.write().unwrap();
                let rw = scope.as_ptr() as usize;
                assert_not_wx(rx, "inside a scope (rx)");
                assert_not_wx(rw, "inside a scope (rw)");
                let m = introspect::mapping_at(rw).unwrap().unwrap();
                assert!(
                    m.perms.starts_with("rw-"),
                    "{strategy}/{layout}: writable view is rw-, got {m:?}"
                );
                if strategy == Strategy::Mirror {
                    assert_ne!(rw, rx, "a mirror writes through another address");
                }
            }
            assert_eq!(call(&block), 1);
        }
    }
}

#[test]
fn a_process_using_only_wx_strategies_has_no_wx_mapping() {
    if is_child("a_process_using_only_wx_strategies_has_no_wx_mapping") {
        let mut keep = Vec::new();
        for strategy in [Strategy::Toggle, Strategy::Mirror] {
            for layout in LAYOUTS {
                let memory = memory(strategy, layout).unwrap();
                keep.push(function(&memory, 3));
                let wx = introspect::writable_executable_mappings().unwrap();
                assert!(wx.is_empty(), "{wx:?}");
            }
        }
        println!("checked");
        return;
    }
    let out = run_child("a_process_using_only_wx_strategies_has_no_wx_mapping", &[]);
    let (_, text) = child_signal(&out);
    assert!(out.status.success() && text.contains("checked"), "{text}");
}

/// In a child: writes through the executable address of published code.
#[test]
fn writing_through_the_executable_address_faults() {
    const NAME: &str = "writing_through_the_executable_address_faults";
    if let Ok(which) = std::env::var("JITMEM_TEST_STRATEGY") {
        if is_child(NAME) {
            let strategy = Strategy::from_name(&which).unwrap();
            let memory = memory(strategy, Layout::Pooled).unwrap();
            let block = function(&memory, 1);
            // SAFETY: deliberately not: this write must fault.
            unsafe { (block.as_ptr() as *mut u8).write_volatile(0x90) };
            println!("wrote without a fault");
            return;
        }
    }
    if is_child(NAME) {
        return;
    }
    for strategy in [Strategy::Toggle, Strategy::Mirror, Strategy::PerThread] {
        if strategy == Strategy::PerThread && memory(strategy, Layout::Pooled).is_none() {
            continue;
        }
        let out = run_child(NAME, &[("JITMEM_TEST_STRATEGY", strategy.name())]);
        let (signal, text) = child_signal(&out);
        assert_eq!(signal, Some(ACCESS_FAULT), "{strategy}: {text}");
    }
}

#[test]
fn calling_freed_code_traps() {
    const NAME: &str = "calling_freed_code_traps";
    if let Ok(which) = std::env::var("JITMEM_TEST_STRATEGY") {
        if is_child(NAME) {
            let strategy = Strategy::from_name(&which).unwrap();
            let memory = memory(strategy, Layout::Pooled).unwrap();
            let keep = function(&memory, 1);
            let block = function(&memory, 2);
            // SAFETY: deliberately stale: the block is freed before the call, which must trap.
            let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
            drop(block);
            println!("returned {}", f());
            drop(keep);
            return;
        }
    }
    if is_child(NAME) {
        return;
    }
    for strategy in [Strategy::Toggle, Strategy::Mirror, Strategy::PerThread] {
        if strategy == Strategy::PerThread && memory(strategy, Layout::Pooled).is_none() {
            continue;
        }
        let out = run_child(NAME, &[("JITMEM_TEST_STRATEGY", strategy.name())]);
        let (signal, text) = child_signal(&out);
        // int3 (x86-64) and brk #0 (AArch64) both raise SIGTRAP; int3 is STATUS_BREAKPOINT on
        // Windows.
        assert_eq!(signal, Some(TRAP_FAULT), "{strategy}: {text}");
    }
}

/// PerThread: a thread without write rights faults on a write, while a thread inside its write
/// scope may write. Needs protection keys; on machines without them the strategy must be
/// refused with a reason (checked by `common::memory`).
#[test]
fn perthread_rights_belong_to_the_thread() {
    const NAME: &str = "perthread_rights_belong_to_the_thread";
    let Some(memory) = memory(Strategy::PerThread, Layout::Pooled) else {
        return;
    };
    if is_child(NAME) {
        let mut block = function(&memory, 1);
        let addr = block.as_ptr() as usize;
        let scope = block.write().unwrap();
        // Another thread, with no scope of its own, writes: must fault.
        std::thread::spawn(move || {
            // SAFETY: deliberately not: this write must fault.
            unsafe { (addr as *mut u8).write_volatile(0x90) };
        })
        .join()
        .unwrap();
        drop(scope);
        println!("wrote without a fault");
        return;
    }
    let out = run_child(NAME, &[]);
    let (signal, text) = child_signal(&out);
    assert_eq!(signal, Some(ACCESS_FAULT), "{text}");
}
