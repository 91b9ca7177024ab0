//! Apple platforms (macOS and iOS): `MAP_JIT` with per-thread write protection, `mach_vm_remap`
//! mirrors (with iOS's TXM handshake), `sys_icache_invalidate`, a pipeline flush through every
//! thread's state, `mach_vm_region` introspection, code-signing facts (`csops`), and the probe.
//! The POSIX primitives (`mmap`, `mprotect`, `munmap`, `sysconf`, `pthread_atfork` and the fork
//! snapshots of mirrors) are shared with Linux (`super::posix`).
//!
//! Nothing here has been run: it is type-checked for `aarch64-apple-darwin`,
//! `x86_64-apple-darwin` and `aarch64-apple-ios`, and reviewed against Apple's documentation and
//! the XNU and libpthread sources cited next to each call.
//!
//! # How each strategy is built
//! - **Toggle** and **Rwx**: plain private anonymous memory ([`map_private`]) and `mprotect`
//!   ([`protect`]). A hardened-runtime macOS process needs the
//!   `com.apple.security.cs.allow-unsigned-executable-memory` entitlement for this; an iOS app
//!   needs JIT granted by a debugger (`CS_DEBUGGED`, seed 000's Legacy mode). Apple silicon
//!   refuses RWX without `MAP_JIT`, so Rwx is available on Intel Macs only.
//! - **Mirror**: an RX anonymous mapping, remapped with `mach_vm_remap(copy = FALSE)` into a
//!   second, read-write view of the same pages; then the RX view's *maximum* protection is
//!   lowered to `VM_PROT_READ | VM_PROT_EXECUTE`, so it can never be made writable again, and
//!   the RW view is `VM_INHERIT_NONE`, so a `fork()` child never has it. With
//!   [`txm_handshake`](super::MapOptions::txm_handshake) on an iOS device, the RX region is
//!   first announced to the attached debugger (`brk #0x69`, seed 000's LuckTXM).
//! - **PerThread** (Apple silicon Macs only): `mmap(PROT_READ | PROT_WRITE | PROT_EXEC,
//!   MAP_PRIVATE | MAP_ANON | MAP_JIT)`, with `pthread_jit_write_protect_np(0)` opening the
//!   calling thread's write window and `pthread_jit_write_protect_np(1)` closing it.
//!
//! # Invariant: `MAP_JIT` pages are never `mprotect`ed
//! Apple's porting guide and seed 003 are explicit: the write/execute state of `MAP_JIT` memory
//! is per thread and changes only through `pthread_jit_write_protect_np`; `mprotect` on it fails
//! or breaks it. By construction only PerThread regions are `MAP_JIT` ([`map_per_thread`]);
//! Toggle, Rwx and `ExecBuffer` memory comes from [`map_private`], which never passes `MAP_JIT`,
//! and only those ever reach [`protect`] (Toggle's write scopes, `ExecBuffer`'s state changes).
//! PerThread rights never call `protect`: they are `Rights::ProtectionKey`, not
//! `Rights::Toggle`. Keep it so: a new caller of `protect` must never be handed a PerThread
//! region.
//!
//! # PerThread on Apple silicon: what a write scope means
//! `pthread_jit_write_protect_np(0)` makes *every* `MAP_JIT` page of the process writable and
//! non-executable **for the calling thread** (other threads keep executing). So while a thread
//! holds a write scope it cannot run any PerThread code, its own or another `JitMemory`'s.
//! Apple (the `pthread_jit_write_protect_np(3)` man page and the porting guide) warns against
//! letting one thread write a region another thread executes: if you patch live code, prefer
//! Mirror. A compile thread that wants to stay in write mode (seed 003's "background JIT
//! thread") just keeps one write scope open: inner scopes only count, and the outermost scope's
//! end switches the thread back to execute mode. `per_thread_end` always ends in execute mode:
//! there is no API to read a thread's current mode, so jitmem never "restores" write mode it
//! cannot see, just as Linux never leaves write access behind.
//!
//! A process with the `com.apple.security.cs.jit-write-allowlist` entitlement may not call
//! `pthread_jit_write_protect_np` at all (libpthread terminates it), so PerThread is refused
//! there and [`crate::apple::jit_write_with_callback`] is the way to write `MAP_JIT` memory.
//!
//! # fork()
//! Mirrors behave as on Linux: the RW view is `VM_INHERIT_NONE`, and the atfork handlers put a
//! private snapshot over the child's RX view (`super::posix`). Apple documents nothing about
//! `MAP_JIT` memory across `fork()`: XNU lets a macOS child inherit it (not iOS apps running on
//! a Mac), but the child's per-thread JIT state is not specified anywhere. Treat PerThread
//! memory made before a `fork()` as unusable in the child (exec, or make a new `JitMemory`
//! there). iOS apps cannot fork at all.
//!
//! # Safety
//! Functions that map memory are safe: they create new mappings nobody else knows about.
//! Functions that change or remove existing mappings are `unsafe`, and their callers promise
//! that they own the range. Each `unsafe {}` block says which call it makes and why its
//! arguments are valid.

mod codesign;
mod jit;
mod mach;
mod mirror;
mod probe;

pub(crate) use super::posix::{
    discard_snapshot, install_snapshot_after_fork, map_private, page_size, protect,
    register_atfork, snapshot_for_fork, unmap,
};
pub(crate) use codesign::{
    code_signing_flags, debugger_attached, has_entitlement, jit_granted_by_debugger,
};
pub(crate) use jit::{
    freeze_jit_write_callbacks, jit_write_with_callback, map_per_thread, per_thread_begin,
    per_thread_end, per_thread_key,
};
pub(crate) use mach::{mapping_count, mapping_limit, mappings, pipeline_flush_mt};
pub(crate) use mirror::{map_mirror, mirror_backing, unmap_view};
pub(crate) use probe::probe_facts;

/// `MAP_JIT` memory across `fork()` is not documented by Apple (XNU treats JIT regions
/// specially, and the child's per-thread JIT write state is not specified), so jitmem does not
/// let a fork child use PerThread memory made before the fork: `Error::ForkedChild`, and
/// dropping it in the child leaves the mapping alone.
pub(crate) const PER_THREAD_SURVIVES_FORK: bool = false;

unsafe extern "C" {
    /// `void sys_icache_invalidate(void *start, size_t len);` from `<libkern/OSCacheControl.h>`
    /// (libSystem): "prepares memory for execution, typically by invalidating the instruction
    /// cache for the indicated range. This should be called after writing machine instructions
    /// to memory, and before executing them. On IA32 processors this function is a NOP"
    /// (`cache(3)`, and the porting guide's last step). The `libc` crate does not declare it.
    fn sys_icache_invalidate(start: *mut libc::c_void, len: libc::size_t);
}

/// Makes `[ptr, ptr + len)` coherent for instruction fetch: `sys_icache_invalidate`, Apple's
/// supported routine (on Apple silicon it cleans the data cache and invalidates the instruction
/// cache by address for every core; on Intel it does nothing, the caches are coherent).
///
/// Call it after the thread is back in execute mode (the porting guide's order:
/// `pthread_jit_write_protect_np(1)`, then `sys_icache_invalidate`), which is what a scope's
/// `publish` does: rights are withdrawn first, then the cache is made coherent.
///
/// # Safety
/// The range is mapped and readable.
#[doc(alias = "sys_icache_invalidate")]
#[inline]
pub(crate) unsafe fn clear_cache(ptr: *const u8, len: usize) {
    // SAFETY: the caller guarantees the range is mapped; the routine only performs cache
    // maintenance on it (it takes a `void *` but does not write through it).
    unsafe { sys_icache_invalidate(ptr.cast_mut().cast(), len) };
}
