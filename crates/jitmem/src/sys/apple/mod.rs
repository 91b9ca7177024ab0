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
//! - **Toggle** and **Rwx**: plain private anonymous memory (`map_private`) and `mprotect`
//!   (`protect`). A hardened-runtime macOS process needs the
//!   `com.apple.security.cs.allow-unsigned-executable-memory` entitlement for this; an iOS app
//!   needs JIT granted by a debugger (`CS_DEBUGGED`, seed 000's Legacy mode). Apple silicon
//!   refuses RWX without `MAP_JIT`, so Rwx is available on Intel Macs only.
//! - **Mirror**: an RX anonymous mapping, remapped with `mach_vm_remap(copy = FALSE)` into a
//!   second, read-write view of the same pages; then the RX view's *maximum* protection is
//!   lowered to `VM_PROT_READ | VM_PROT_EXECUTE`, so it can never be made writable again, and
//!   the RW view is `VM_INHERIT_NONE`, so a `fork()` child never has it. With
//!   [`txm`](super::MapOptions::txm) on an iOS device, the TXM handshake comes first
//!   (`super::txm`): the legacy script prepares jitmem's RX region (`brk #0x69`), the universal
//!   script allocates one itself (`brk #0xf00d`, x16 = 1), which jitmem mirrors but never
//!   unmaps; the RX view's maximum protection is left alone there (a debugger writes to it).
//! - **PerThread** (Apple silicon Macs only): `mmap(PROT_READ | PROT_WRITE | PROT_EXEC,
//!   MAP_PRIVATE | MAP_ANON | MAP_JIT)`, with `pthread_jit_write_protect_np(0)` opening the
//!   calling thread's write window and `pthread_jit_write_protect_np(1)` closing it.
//!
//! # Invariant: `MAP_JIT` pages are never `mprotect`ed
//! Apple's porting guide and seed 003 are explicit: the write/execute state of `MAP_JIT` memory
//! is per thread and changes only through `pthread_jit_write_protect_np`; `mprotect` on it fails
//! or breaks it. By construction only PerThread regions are `MAP_JIT` (`map_per_thread`);
//! Toggle, Rwx and `ExecBuffer` memory comes from `map_private`, which never passes `MAP_JIT`,
//! and only those ever reach `protect` (Toggle's write scopes, `ExecBuffer`'s state changes).
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
//! end switches the thread back to execute mode. `withdraw_thread_write_rights` always ends in execute mode:
//! there is no API to read a thread's current mode, so jitmem never "restores" write mode it
//! cannot see, just as Linux never leaves write access behind.
//!
//! A process with the `com.apple.security.cs.jit-write-allowlist` entitlement may not call
//! `pthread_jit_write_protect_np` at all (libpthread terminates it). PerThread then writes a
//! private RW shadow of each region and copies each scope's range into the `MAP_JIT` pages
//! inside jitmem's own allow-listed callback (`rights.rs`, `super::shadow`), provided the
//! binary invoked `jit_write_allow_callbacks!` (which lists that callback); otherwise it is
//! refused, and `jitmem::apple::jit_write_with_callback` with the app's own callbacks is the
//! way to write `MAP_JIT` memory.
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
mod fork;
mod icache;
mod introspect;
mod mach;
mod memory;
mod mirror;
mod place;
mod probe;
mod rights;
mod wait;

pub(crate) use codesign::{
    code_signing_flags, debugger_attached, has_entitlement, jit_granted_by_debugger,
};
pub(crate) use mirror::{txm_detach, txm_protocol};
pub(crate) use rights::{
    copy_callback, freeze_jit_write_callbacks, jit_write_with_callback, register_allow_list,
};

/// macOS or iOS, implementing every concern of the platform interface (one file each).
pub(crate) struct Os;

impl super::Platform for Os {}

// No Control Flow Guard here: every address of executable memory is callable.
crate::sys::impl_no_call_targets!();

// Mappings are usable as mapped: nothing to commit.
impl crate::sys::Commit for Os {}
