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
//! signal handler. Threads start with the PKRU of the thread that created them.
//!
//! ## fork()
//! See [`fork_safety`] for what a child process may do with code memory.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(target_vendor = "apple")]
pub mod apple;
mod block;
mod config;
mod error;
mod exec_buffer;
mod fn_ptr;
mod fork;
pub mod icache;
pub mod introspect;
pub mod isa;
mod memory;
pub mod probe;
pub mod range_heap;
mod region;
mod rights;
pub mod selftest;
mod sync;
mod sys;

pub use block::{CodeBlock, WriteScope};
pub use config::{Config, LAYOUT_ENV, Layout, STRATEGY_ENV, Strategy};
pub use error::{Error, Result};
pub use exec_buffer::{ExecBuffer, page_size, round_to_page};
pub use fn_ptr::FnPtr;
pub use memory::{Choice, JitMemory, Stats};
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
}
