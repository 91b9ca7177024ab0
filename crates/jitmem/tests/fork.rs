//! fork(): the child can never write the parent's code, and the parent's later writes and frees
//! never change the code the child runs.
//!
//! Unix only: Windows has no `fork()`.

#![cfg(unix)]

mod common;

use common::{call, child_signal, function, is_child, memory, patch, run_child};
use jitmem::{Error, Layout, Strategy};

/// Runs in a re-executed child (so the process has few threads when it forks).
fn fork_scenario(strategy: Strategy, layout: Layout) {
    let memory = memory(strategy, layout).unwrap();
    let mut block = function(&memory, 1);
    let f: extern "C" fn() -> u32 = {
        // SAFETY: a return_constant function, alive until the end.
        unsafe { block.entry(0).unwrap() }
    };
    let mut to_parent = [0i32; 2];
    let mut to_child = [0i32; 2];
    // SAFETY: plain pipe creation into valid arrays.
    unsafe {
        assert_eq!(libc::pipe(to_parent.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
    }
    // SAFETY: fork; the child only runs the code below and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut status = 0;
        let mut byte = [0u8; 1];
        // Wait until the parent has patched and freed.
        // SAFETY: reads one byte from our pipe.
        unsafe { libc::read(to_child[0], byte.as_mut_ptr().cast(), 1) };
        if f() != 1 {
            status |= 1; // the parent's patch reached the child
        }
        // The child may not write through a Mirror made before the fork; other strategies give
        // it a private copy it may use.
        match block.write() {
            Err(Error::ForkedChild { .. }) if strategy == Strategy::Mirror => {}
            Ok(mut scope) if strategy != Strategy::Mirror => {
                scope[4..8].copy_from_slice(&9u32.to_le_bytes());
                drop(scope);
                if f() != 9 {
                    status |= 2;
                }
            }
            _ => status |= 4,
        }
        std::mem::forget(block);
        // SAFETY: report and leave without running the parent's destructors.
        unsafe {
            libc::write(to_parent[1], [status as u8].as_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    patch(&mut block, 2, true);
    assert_eq!(f(), 2, "the parent sees its own patch");
    // SAFETY: one byte to our child.
    unsafe { libc::write(to_child[1], [1u8].as_ptr().cast(), 1) };
    let mut status = [0xFFu8; 1];
    // SAFETY: reads one byte from our pipe.
    unsafe { libc::read(to_parent[0], status.as_mut_ptr().cast(), 1) };
    let mut wstatus = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(pid, &mut wstatus, 0) };
    assert_eq!(
        status[0], 0,
        "{strategy}/{layout}: child status bits {:#b}",
        status[0]
    );
    assert_eq!(call(&block), 2, "the child's writes never reach the parent");
    println!("fork ok {strategy} {layout}");
}

#[test]
fn fork_gives_the_child_a_private_copy() {
    const NAME: &str = "fork_gives_the_child_a_private_copy";
    if is_child(NAME) {
        for strategy in [Strategy::Mirror, Strategy::Toggle, Strategy::PerThread] {
            for layout in common::LAYOUTS {
                if memory(strategy, layout).is_some() {
                    fork_scenario(strategy, layout);
                }
            }
        }
        println!("child ok");
        return;
    }
    let out = run_child(NAME, &[]);
    let (_, text) = child_signal(&out);
    assert!(out.status.success() && text.contains("child ok"), "{text}");
    assert!(text.contains("fork ok mirror arena"), "{text}");
}
