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

/// In a child per strategy x layout: writes through the executable address of published code.
#[test]
fn writing_through_the_executable_address_faults() {
    common::fault_per_pair(
        "writing_through_the_executable_address_faults",
        |strategy, _| (strategy != Strategy::Rwx).then_some(ACCESS_FAULT),
        |memory| {
            let block = function(&memory, 1);
            // SAFETY: deliberately not: this write must fault.
            unsafe { (block.as_ptr() as *mut u8).write_volatile(0x90) };
        },
    );
}

/// In a child per strategy x layout: a stale call into freed code traps (its range is filled
/// with traps) or faults (PerAllocation unmaps it); it never runs old code.
#[test]
fn calling_freed_code_traps() {
    common::fault_per_pair(
        "calling_freed_code_traps",
        |_, layout| {
            Some(if layout == Layout::PerAllocation {
                ACCESS_FAULT
            } else {
                TRAP_FAULT
            })
        },
        |memory| {
            let keep = function(&memory, 1);
            let block = function(&memory, 2);
            // SAFETY: deliberately stale: the block is freed before the call, which must trap.
            let f: extern "C" fn() -> u32 = unsafe { block.entry(0).unwrap() };
            drop(block);
            println!("returned {}", f());
            drop(keep);
        },
    );
}

/// In a child per strategy x layout: code in the tail that `shrink` gave back traps.
#[test]
fn calling_code_in_a_shrunk_tail_traps() {
    common::fault_per_pair(
        "calling_code_in_a_shrunk_tail_traps",
        |_, _| Some(TRAP_FAULT),
        |memory| {
            // Two pages, so that even Toggle (whose blocks own whole pages) has a tail.
            let page = memory.page_size();
            let mut block = memory.allocate(2 * page).unwrap();
            {
                let mut scope = block.write().unwrap();
                scope[page..page + 16].copy_from_slice(&jitmem::isa::return_constant(3));
                scope.publish().unwrap();
            }
            // SAFETY: deliberately stale after the shrink below, which must trap. (Not called
            // before the shrink: qemu-user would keep its translation of the old code, since it
            // does not see writes made through another mapping; without the trap fill the call
            // returns 3 and the test fails.)
            let f: extern "C" fn() -> u32 = unsafe { block.entry(page).unwrap() };
            block.shrink(16).unwrap();
            println!("returned {}", f());
        },
    );
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
        // The writer starts before the scope opens: a thread created inside a PerThread scope
        // inherits its creator's rights (Linux copies PKRU into new threads).
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            wait.recv().unwrap();
            // SAFETY: deliberately not: this write must fault.
            unsafe { (addr as *mut u8).write_volatile(0x90) };
        });
        let scope = block.write().unwrap();
        // Another thread, with no scope of its own, writes: must fault.
        go.send(()).unwrap();
        writer.join().unwrap();
        drop(scope);
        println!("wrote without a fault");
        return;
    }
    let out = run_child(NAME, &[]);
    let (signal, text) = child_signal(&out);
    assert_eq!(signal, Some(ACCESS_FAULT), "{text}");
}
