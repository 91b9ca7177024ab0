//! # jitmem: executable memory for JIT compilers
//!
//! Fast, W^X-safe code memory for emulators, language VMs and baseline compilers. Two questions
//! decide how it works, and you may answer them or let the [probe] do it:
//!
//! - **How is W^X kept?** A [`Strategy`]: `Toggle` (`mprotect` flips), `Mirror` (an RW and an
//!   RX view of the same pages), `PerThread` (protection keys: per-thread write rights), or
//!   `Rwx` (none, explicit unsafe opt-in only). `Auto` picks the fastest safe one.
//! - **Where does memory come from?** A [`Layout`]: `PerAllocation`, `Pooled` or `Arena`.
//!
//! The life of a piece of code:
//!
//! ```
//! # fn main() -> jitmem::Result<()> {
//! use jitmem::{Config, JitMemory};
//!
//! let memory = JitMemory::new(Config::new())?;      // Auto strategy, Pooled layout
//! let mut block = memory.allocate(64)?;             // 1. allocate (bookkeeping out of band)
//! let mut scope = block.write()?;                   // 2. write through a write scope
//! scope[..16].copy_from_slice(&jitmem::isa::return_constant(7));
//! scope.publish()?;                                 // 3. publish: rights back, icache coherent
//! // SAFETY: the block holds a complete `extern "C" fn() -> u32`.
//! let f: extern "C" fn() -> u32 = unsafe { block.entry(0)? };
//! assert_eq!(f(), 7);                               // 4. run
//! let at = jitmem::isa::RETURN_CONSTANT_PATCH_OFFSET;
//! let mut patch = block.write_range(at..at + 4)?;   // 5. patch live code
//! patch.copy_from_slice(&9u32.to_le_bytes());
//! patch.publish_live()?;                            //    (other threads may run it)
//! assert_eq!(f(), 9);
//! drop(block);                                      // 6. free: filled with traps, recycled
//! assert_eq!(memory.stats().live_blocks, 0);
//! # Ok(()) }
//! ```
//!
//! ## Protection keys: what they do not protect
//! With `PerThread` on Linux x86-64, pages are RWX in the page tables and tagged with a
//! protection key; each thread's PKRU register decides whether it may write them, and a write
//! scope grants the right to its thread only. Keys do not govern instruction fetch (any thread
//! may run the code, which is what we want), and they do not stop code that can execute
//! `WRPKRU` itself: an attacker who already runs arbitrary instructions can grant itself write
//! access, so keys protect against stray writes, not against code injection that already
//! succeeded. Signal handlers run with the kernel's default PKRU (our key write- and
//! access-disabled) and get the interrupted PKRU back on return: do not open write scopes in a
//! signal handler, and call [`allow_code_reads`] in one before it reads code (or runs code that
//! reads its own bytes). Threads start with the PKRU of the thread that created them; jitmem
//! allocates its key when the program is loaded, so that every later thread may read code
//! (`JITMEM_PKEY_AT_LOAD=0` defers it to the first PerThread memory; the `PerThread` docs say
//! what older threads must do).
//!
//! ## fork()
//! See [`fork_safety`] for what a child process may do with code memory.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// unsafe is fenced: denied here, allowed back (with the reason) only in the platform layer, the
// allocator core, the strategies, the fork and lock machinery, and the code-entry points.
#![deny(unsafe_code)]

#[cfg(target_vendor = "apple")]
#[expect(
    unsafe_code,
    reason = "Apple's JIT write callback API (pthread_jit_write_with_callback_np) takes raw pointers"
)]
pub mod apple;
#[expect(
    unsafe_code,
    reason = "code-entry points (`entry` turns an address into a function pointer), the raw write pair of the C ABI, and slices over the writable view of a block's range"
)]
mod block;
mod call_targets;
mod config;
#[cfg(feature = "debuginfo")]
#[expect(
    unsafe_code,
    reason = "the GDB JIT interface's descriptor, the unwinder's registration functions and the jitdump marker mapping are C interfaces"
)]
pub mod debuginfo;
mod error;
#[expect(
    unsafe_code,
    reason = "seed 001's buffer maps, protects and unmaps its own pages and hands out entry points"
)]
mod exec_buffer;
#[expect(
    unsafe_code,
    reason = "turns a code address into a function pointer (the one transmute of the crate)"
)]
mod fn_ptr;
#[expect(
    unsafe_code,
    reason = "the atfork handlers run while every lock is held (or in the only thread of a child) and touch registries and mirror views directly"
)]
mod fork;
#[expect(
    unsafe_code,
    reason = "tracks its locks' addresses with the fork registry (they must outlive their registration)"
)]
mod heap;
#[expect(
    unsafe_code,
    reason = "cache maintenance on caller-given ranges and the AArch64 maintenance instructions"
)]
pub mod icache;
pub mod introspect;
pub mod isa;
mod memory;
#[expect(
    unsafe_code,
    reason = "the one atomic store of a live patch through a block's writable view"
)]
mod patch;
pub mod probe;
#[expect(unsafe_code, reason = "calls the code it wrote (a code-entry point)")]
pub mod selftest;
#[expect(
    unsafe_code,
    reason = "changes page protections and owns the mappings (Region) every strategy maps"
)]
mod strategy;
#[expect(
    unsafe_code,
    reason = "the fork-aware lock hands out references to the data it guards"
)]
mod sync;
#[expect(
    unsafe_code,
    reason = "the platform layer: system calls on memory the crate owns"
)]
mod sys;
mod thread_cache;

pub use block::{CodeBlock, WriteScope};
pub use config::{
    BTI_ENV, CfgCallTargets, Choice, Config, LAYOUT_ENV, Layout, STRATEGY_ENV, Strategy,
    TxmProtocol,
};
pub use error::{Error, Result};
pub use exec_buffer::{ExecBuffer, page_size, round_to_page};
pub use fn_ptr::FnPtr;
pub use heap::Stats;
/// The out-of-band range allocator (TLSF) behind the Pooled and Arena layouts: the crate
/// `jitmem-range-heap`, safe and generic, re-exported.
pub use jitmem_range_heap as range_heap;
pub use memory::JitMemory;
pub use patch::LivePatches;
pub use sys::MirrorBacking;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<JitMemory>();
    send_sync::<CodeBlock>();
    send_sync::<ExecBuffer>();
};

/// What happens to code memory across `fork()`: the documentation lives on this module.
pub mod fork_safety {
    #![doc = include_str!("fork.md")]
    pub use crate::fork::generation;
}

/// Lets the calling thread, or the signal handler it is running, read code as data (never
/// write it): call it in a signal handler that reads JIT code (a fault handler decoding the
/// faulting instruction) or runs code that reads its own bytes (constant pools), and on a
/// thread that existed before jitmem was loaded and runs such code without calling jitmem.
///
/// Only Linux PerThread (protection keys) restricts reads: there a thread's rights for the key
/// live in its PKRU register, and signal handlers and threads older than the key start with
/// access disabled (the `PerThread` strategy's docs). Costs one `RDPKRU` (and one `WRPKRU` when
/// reads were disabled) once PerThread memory exists, nothing otherwise. Async-signal-safe: no
/// system call, lock or allocation. A handler's rights end with it (the kernel restores the
/// interrupted thread's PKRU on return).
pub fn allow_code_reads() {
    sys::allow_thread_code_reads();
}
