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
    // A freed block the parent's thread cache keeps (Pooled, Arena): the child inherits it.
    let spare = function(&memory, 5);
    drop(spare);
    let cached = layout != Layout::PerAllocation && strategy != Strategy::Toggle;
    assert_eq!(
        memory.stats().cached_blocks,
        usize::from(cached),
        "{strategy}/{layout}"
    );
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
    let rw = (block.as_ptr() as usize).wrapping_add_signed(block.writable_offset());
    let page = memory.page_size();
    // qemu-user ignores MADV_DONTFORK and does not map guest mappings 1:1: checked natively.
    let native = std::env::var_os("JITMEM_UNDER_QEMU").is_none();
    // SAFETY: fork; the child only runs the code below and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the child's copies of the ends it does not use.
        unsafe {
            libc::close(to_parent[0]);
            libc::close(to_child[1]);
        }
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
        // The child allocates the size the parent's cache holds: refused where the child may
        // not use the memory (Mirror), otherwise a trap-filled range of its own (the cached one
        // in the cached layouts) that it writes and runs.
        match memory.allocate(16) {
            Err(Error::ForkedChild { .. }) if strategy == Strategy::Mirror => {}
            Ok(mut fresh) if strategy != Strategy::Mirror => {
                if memory.stats().cached_blocks != 0 {
                    status |= 32; // the inherited cache was not used
                }
                // Read inside a write scope (PerThread pages may be unreadable outside one).
                let (clean, written) = match fresh.write() {
                    Ok(mut scope) => {
                        let clean = scope
                            .chunks(jitmem::isa::TRAP.len())
                            .all(|c| c == jitmem::isa::TRAP || c.iter().all(|b| *b == 0));
                        scope[..16].copy_from_slice(&jitmem::isa::return_constant(11));
                        (clean, scope.publish().is_ok())
                    }
                    Err(_) => (false, false),
                };
                if !clean || !written || call(&fresh) != 11 {
                    status |= 32;
                }
            }
            _ => status |= 32,
        }
        let rw_page = rw & !(page - 1);
        let mut placeholder = None;
        if strategy == Strategy::Mirror && native {
            // The writable view was not inherited (MADV_DONTFORK): a child can never write the
            // parent's code through it.
            if jitmem::introspect::mapping_at(rw).ok().flatten().is_some() {
                status |= 8;
            }
            // Something of the child's own now sits at the old writable address: dropping the
            // memory must leave it alone.
            // SAFETY: a fresh anonymous page at an address the child does not use (checked
            // above: nothing is mapped there), refused rather than replacing anything.
            let p = unsafe {
                libc::mmap(
                    rw_page as *mut libc::c_void,
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as usize == rw_page {
                placeholder = Some(rw_page);
            }
        }
        // The child frees its block and its memory (the bookkeeping only, for Mirror).
        drop(block);
        drop(memory);
        if let Some(at) = placeholder {
            if jitmem::introspect::mapping_at(at).ok().flatten().is_none() {
                status |= 16; // the drop unmapped the child's own page
            }
        }
        // SAFETY: report and leave without running the parent's destructors.
        unsafe {
            libc::write(to_parent[1], [status as u8].as_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copies of the ends it does not use: a child that dies closes its
    // write end, and the read below then returns at once instead of waiting forever.
    unsafe {
        libc::close(to_parent[1]);
        libc::close(to_child[0]);
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
        "{strategy}/{layout}: child status bits {:#b} (1 saw the parent's patch, 2 could not \
         write its copy, 4 wrong write outcome, 8 inherited the writable view, 16 its drop \
         unmapped a page of its own, 32 allocating after the fork (the inherited thread cache) \
         went wrong; 0xff: died)",
        status[0]
    );
    assert_eq!(call(&block), 2, "the child's writes never reach the parent");
    println!("fork ok {strategy} {layout}");
}

#[test]
fn fork_gives_the_child_a_private_copy() {
    const NAME: &str = "fork_gives_the_child_a_private_copy";
    if is_child(NAME) {
        for strategy in Strategy::CONCRETE {
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

/// What a grandchild reports through its exit code (bits), so that it needs no lock (no
/// printing, no panicking) in a process whose other threads vanished at the fork.
const OLD_CODE_WRONG: i32 = 1;
const FREED_BLOCK_WRONG: i32 = 2;
const ALLOCATION_WRONG: i32 = 4;
const NOT_PUBLISHED: i32 = 8;

/// The grandchild: runs code made before the fork, frees a block (through a heap another
/// thread may have held at the fork), allocates where the strategy lets a child keep its
/// memory (else expects `ForkedChild`), and checks that a Mirror child's private copy was
/// published. Never returns.
fn grandchild(
    memory: &jitmem::JitMemory,
    keep: &jitmem::CodeBlock,
    victim: jitmem::CodeBlock,
    victim_value: u32,
    publishes_before: u64,
) -> ! {
    let mut code = 0;
    if call(keep) != 42 {
        code |= OLD_CODE_WRONG;
    }
    if call(&victim) != victim_value {
        code |= FREED_BLOCK_WRONG;
    }
    drop(victim);
    let keeps = memory.strategy() != Strategy::Mirror
        && !(cfg!(target_vendor = "apple") && memory.strategy() == Strategy::PerThread);
    match memory.allocate(64) {
        Ok(mut b) if keeps => {
            let ok = match b.write() {
                Ok(mut scope) => {
                    scope[..16].copy_from_slice(&jitmem::isa::return_constant(5));
                    scope.publish().is_ok()
                }
                Err(_) => false,
            };
            if !ok || call(&b) != 5 {
                code |= ALLOCATION_WRONG;
            }
        }
        Err(Error::ForkedChild { .. }) if !keeps => {}
        _ => code |= ALLOCATION_WRONG,
    }
    if memory.strategy() == Strategy::Mirror && jitmem::icache::publish_count() <= publishes_before
    {
        code |= NOT_PUBLISHED;
    }
    // SAFETY: leaves at once, running no destructor and no atexit handler.
    unsafe { libc::_exit(code) }
}

/// Waits for `pid` for at most 20 s; its exit code, or a description of how it failed.
fn wait_with_deadline(pid: libc::pid_t) -> Result<i32, String> {
    let deadline =
        std::time::Instant::now() + common::child_timeout().min(std::time::Duration::from_secs(20));
    loop {
        let mut status = 0;
        // SAFETY: polls our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("killed by signal {}", libc::WTERMSIG(status)));
        }
        if rc < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if std::time::Instant::now() > deadline {
            // SAFETY: kills and reaps our own hung child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err("hung (deadlocked?) and was killed after the deadline".to_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Forks in a loop while two other threads allocate, write, publish, call and free, in the
/// shared memory (growing it with 300 KiB blocks) and in fresh memories they create and drop.
fn fork_under_load(memory: jitmem::JitMemory) {
    let (strategy, layout) = (memory.strategy(), memory.layout());
    let rounds: usize = std::env::var("JITMEM_FORK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(common::scaled(60));
    let keep = function(&memory, 42);
    let mut victims: Vec<_> = (0..rounds as u32)
        .map(|i| (function(&memory, 1000 + i), 1000 + i))
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let memory = &memory;
            s.spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    if i % 8 == 0 {
                        let fresh = common::memory(strategy, layout).unwrap();
                        let b = function(&fresh, i);
                        assert_eq!(call(&b), i);
                    }
                    if i % 4 == 0 {
                        let mut big = memory.allocate(300 << 10).unwrap();
                        let mut scope = big.write_range(0..16).unwrap();
                        scope.copy_from_slice(&jitmem::isa::return_constant(i));
                        scope.publish().unwrap();
                        assert_eq!(call(&big), i);
                    }
                    let mut live: Vec<_> = (0..16).map(|k| function(memory, t * 100 + k)).collect();
                    patch(&mut live[3], 7, false);
                    assert_eq!(call(&live[3]), 7);
                }
            });
        }
        for round in 0..rounds {
            let (victim, value) = victims.pop().unwrap();
            let before = jitmem::icache::publish_count();
            // SAFETY: the child only calls jitmem and leaves with _exit (grandchild).
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                grandchild(&memory, &keep, victim, value, before);
            }
            drop(victim);
            let outcome = wait_with_deadline(pid);
            if outcome != Ok(0) {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!(
                    "{strategy}/{layout}: fork round {round}: child {outcome:?} (bits: 1 old code, 2 freed block, 4 allocation, 8 not published)"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(call(&keep), 42);
}

/// fork() while other threads allocate, write, publish and free, for every strategy x layout:
/// every child runs existing code, frees, allocates where allowed and exits 0 in time.
#[test]
fn fork_is_safe_while_other_threads_allocate() {
    let Some(ran) =
        common::in_child_per_pair("fork_is_safe_while_other_threads_allocate", fork_under_load)
    else {
        return;
    };
    assert!(ran.iter().any(|p| p == "mirror/arena"), "{ran:?}");
    assert!(ran.iter().any(|p| p == "toggle/pooled"), "{ran:?}");
}

/// Every memory installs jitmem's fork handlers, whatever its strategy and layout: in a process
/// whose only memory is Rwx + PerAllocation (no lock, no mirror to register), a fork child is
/// still one generation further (the fork policy depends on it: Apple MAP_JIT memory must not be
/// used by a child).
#[test]
fn every_memory_installs_the_fork_handlers() {
    const NAME: &str = "every_memory_installs_the_fork_handlers";
    if is_child(NAME) {
        let memory = memory(Strategy::Rwx, Layout::PerAllocation).unwrap();
        let block = function(&memory, 3);
        assert_eq!(jitmem::fork_safety::generation(), 0);
        // SAFETY: the child only reads a counter, calls the block and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = jitmem::fork_safety::generation() == 1 && call(&block) == 3;
            // SAFETY: leaves at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child did not see a new fork generation (status {status:#x})"
        );
        println!("child ok");
        return;
    }
    let out = run_child(NAME, &[]);
    let (_, text) = child_signal(&out);
    assert!(out.status.success() && text.contains("child ok"), "{text}");
}
