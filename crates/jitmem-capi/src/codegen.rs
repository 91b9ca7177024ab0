//! Seed 000's `CodeGen` API (Play!-CodeGen's `MemoryUtil.h`), on every platform jitmem supports.
//!
//! The three modes map onto strategies and layouts: **Legacy** = Toggle + PerAllocation,
//! **LuckNoTXM** = Mirror + Pooled (whole pages carved from shared memfd-backed chunks; the
//! writable alias of an allocation is accessible only between
//! `jitmem_codegen_writable_diff` and `jitmem_codegen_free_writable_region`, `PROT_NONE`
//! otherwise, as the seed's alias existed only then; on Unix: on Windows the alias stays for
//! the allocation's life), **LuckTXM** = Mirror + Arena (512 MiB
//! reserved, sub-allocated at 16 bytes, the alias permanent as in the seed; on an iOS device the
//! TXM handshake detects the debugger-side script's protocol, `TxmProtocol::Auto`, and under
//! StikDebug's universal script the debugger allocates the executable region itself. Elsewhere
//! pages are used as touched, but on a TXM device the script's prepare step writes one byte per
//! 16 KiB page, so all 512 MiB are dirty from the start; see docs/apple.md). Live code is patched the same way in every mode: diff, a store through
//! `ptr + diff` (Legacy: diff 0, inside `jitmem_codegen_write_enable` /
//! `jitmem_codegen_write_disable`), then `jitmem_codegen_free_writable_region`, which
//! publishes; in the mirror modes other threads may run the code meanwhile. The seed's defects
//! are fixed:
//! - allocation before `SetJitType` / `AllocateExecutableMemoryRegion` works (the seed's default
//!   mode, LuckTXM, is set up on first use) instead of silently returning NULL;
//! - the LuckTXM free checks its size, and no pointer is stored inside the code pages (the
//!   allocator's bookkeeping is out of band);
//! - finding the region of a pointer is O(log n), not a linear scan;
//! - a free unregisters before it unmaps, so no thread can find a dead region;
//! - `AllocateWritableRegionAndGetDiff` signals failure with `JITMEM_DIFF_ERROR` (`PTRDIFF_MIN`)
//!   and a message, since 0 is a valid answer (Legacy);
//! - changing the JIT type while allocations are live is refused;
//! - foreign pointers, double frees, size mismatches and unbalanced write toggles are errors,
//!   never undefined behaviour;
//! - code becomes runnable only through `jitmem::icache::publish` (instruction-cache
//!   maintenance, needed on AArch64 and iOS), in every mode: `jitmem_codegen_write_disable`
//!   (Legacy: the write scope's end; mirror modes, where the seed only checked the pointer: the
//!   whole allocation), `jitmem_codegen_free_writable_region` (the range), and
//!   `jitmem_codegen_flush_instruction_cache` (`CodeGen::FlushInstructionCache`, for code run
//!   before either, as in the seed's `CompileBlock`).

use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

use jitmem::{Layout, Strategy};

use crate::registry::Registry;
use crate::status::{CError, JitmemStatus, guard};

/// Seed 000's `CodeGen::JitType`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitmemJitType {
    /// iOS < 26 in the seed: W^X toggled with mprotect (Toggle + PerAllocation).
    Legacy = 0,
    /// iOS 26 without TXM in the seed: an RW mirror per RX allocation, present only while a
    /// writable region is open (Mirror + Pooled, the alias `PROT_NONE` otherwise).
    LuckNoTxm = 1,
    /// iOS 26 with TXM in the seed: one 512 MiB region with a permanent RW mirror
    /// (Mirror + Arena).
    LuckTxm = 2,
}

impl JitmemJitType {
    /// The C++ name of the mode (`CodeGen::JitType::LuckTXM`), used in every message.
    pub(crate) fn name(self) -> &'static str {
        match self {
            JitmemJitType::Legacy => "Legacy",
            JitmemJitType::LuckNoTxm => "LuckNoTXM",
            JitmemJitType::LuckTxm => "LuckTXM",
        }
    }
}

/// What `jitmem_codegen_writable_diff` returns on failure (`PTRDIFF_MIN`, defined in the
/// header as `JITMEM_DIFF_ERROR`): 0 cannot be the error value, since it is the right answer in
/// Legacy mode.
pub(crate) const JITMEM_DIFF_ERROR: isize = isize::MIN;

struct Global {
    jit_type: JitmemJitType,
    registry: Option<Registry>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    jit_type: JitmemJitType::LuckTxm,
    registry: None,
});

fn global() -> Result<MutexGuard<'static, Global>, CError> {
    GLOBAL
        .lock()
        .map_err(|_| CError::new(JitmemStatus::Internal, "CodeGen state lock poisoned"))
}

impl Global {
    /// The registry of the current mode, created on first use.
    fn registry(&mut self) -> Result<&Registry, CError> {
        if self.registry.is_none() {
            let (strategy, layout) = match self.jit_type {
                JitmemJitType::Legacy => (Strategy::Toggle, Layout::PerAllocation),
                // A shared memfd-backed pool, the alias opened per window (Registry's transient
                // alias), instead of a memfd and two mappings per allocation.
                JitmemJitType::LuckNoTxm => (Strategy::Mirror, Layout::Pooled),
                JitmemJitType::LuckTxm => (
                    Strategy::Mirror,
                    Layout::Arena {
                        size: Layout::DEFAULT_ARENA_SIZE,
                    },
                ),
            };
            // LuckTXM announces its arena to the debugger-side script on iOS devices, detecting
            // the protocol once (TxmProtocol::Auto): seed 000's brk #0x69 for the legacy
            // scripts, or StikDebug's universal script, which allocates the arena's executable
            // region itself. Ignored on other platforms.
            let base = jitmem::Config::new().txm(
                (self.jit_type == JitmemJitType::LuckTxm).then_some(jitmem::TxmProtocol::Auto),
            );
            let memory = crate::make_memory_with(base, strategy, layout, 16, false)?;
            self.registry = Some(if self.jit_type == JitmemJitType::LuckNoTxm {
                Registry::with_transient_alias(memory)
            } else {
                Registry::new(memory)
            });
        }
        self.registry
            .as_ref()
            .ok_or_else(|| CError::new(JitmemStatus::Internal, "registry vanished"))
    }

    fn existing(&self, ptr: *mut c_void) -> Result<&Registry, CError> {
        if ptr.is_null() {
            return Err(CError::new(
                JitmemStatus::InvalidArgument,
                "the pointer is NULL",
            ));
        }
        self.registry.as_ref().ok_or_else(|| {
            CError::new(
                JitmemStatus::UnknownPointer,
                format!(
                    "{ptr:p} is not a live allocation: nothing has been allocated in this mode"
                ),
            )
        })
    }
}

/// `CodeGen::SetJitType`: chooses the mode. Refused (`JITMEM_STATUS_WRONG_STATE`) while
/// allocations of another mode are live.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_set_jit_type(jit_type: u32) -> JitmemStatus {
    guard(|| {
        let jit_type = match jit_type {
            0 => JitmemJitType::Legacy,
            1 => JitmemJitType::LuckNoTxm,
            2 => JitmemJitType::LuckTxm,
            v => {
                return Err(CError::new(
                    JitmemStatus::InvalidArgument,
                    format!("unknown JitType {v}"),
                ));
            }
        };
        let mut g = global()?;
        if g.jit_type == jit_type {
            return Ok(());
        }
        let live = g.registry.as_ref().map_or(0, Registry::live);
        if live > 0 {
            return Err(CError::new(
                JitmemStatus::WrongState,
                format!(
                    "cannot change the JIT type from {} to {} while {live} allocation(s) are live: free them first",
                    g.jit_type.name(),
                    jit_type.name()
                ),
            ));
        }
        g.jit_type = jit_type;
        g.registry = None;
        Ok(())
    })
}

/// `CodeGen::AllocateExecutableMemoryRegion`: sets up the current mode now (for LuckTXM,
/// reserves the arena). Optional: the first allocation does it too.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_allocate_region() -> JitmemStatus {
    guard(|| global()?.registry().map(|_| ()))
}

/// `CodeGen::AllocateExecutableMemory`: `size` bytes (page-aligned in Legacy and LuckNoTXM,
/// 16-byte aligned in LuckTXM, which sub-allocates its arena), executable address
/// returned; NULL on failure, with the reason in `jitmem_last_error()`.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_allocate(size: usize) -> *mut c_void {
    let mut result = std::ptr::null_mut();
    guard(|| {
        let mut g = global()?;
        // LuckTXM sub-allocates at the arena's 16 bytes; the per-allocation modes hand out
        // whole pages (the seed's mmap per allocation).
        let align = (g.jit_type != JitmemJitType::LuckTxm).then(jitmem::page_size);
        result = g.registry()?.allocate(size, align)? as *mut c_void;
        Ok(())
    });
    result
}

/// `CodeGen::FreeExecutableMemory`: frees `ptr`, which must be a live allocation of exactly
/// `size` bytes; anything else is refused and nothing is freed.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_free(ptr: *mut c_void, size: usize) -> JitmemStatus {
    guard(|| global()?.existing(ptr)?.free(ptr as usize, Some(size)))
}

/// `CodeGen::AllocateWritableRegionAndGetDiff`: `writable address - ptr` for the allocation
/// containing `[ptr, ptr + size)` (0 in Legacy mode, where code is written in place inside a
/// `JITPageWriteEnableExecuteDisable` pair); `JITMEM_DIFF_ERROR` on failure, with the reason in
/// `jitmem_last_error()`. A fork child of a mirror mode gets `JITMEM_DIFF_ERROR` too: its
/// writable alias is not inherited. In LuckNoTXM this makes the allocation's alias writable
/// until the matching `jitmem_codegen_free_writable_region` (calls nest per allocation).
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_writable_diff(ptr: *mut c_void, size: usize) -> isize {
    let mut diff = JITMEM_DIFF_ERROR;
    guard(|| {
        diff = global()?.existing(ptr)?.open_window(ptr as usize, size)?;
        Ok(())
    });
    diff
}

/// `CodeGen::FreeWritableRegion`: checks that `diff` is what `jitmem_codegen_writable_diff`
/// returned for this allocation, then publishes `[ptr, ptr + size)` (makes the code written
/// through `ptr + diff` coherent for instruction fetch), in every mode. LuckNoTXM: when this
/// closes the allocation's last open writable region, its alias becomes inaccessible
/// (`PROT_NONE`: a later store through `ptr + diff` faults); without an open region it is
/// refused (`JITMEM_STATUS_UNBALANCED`). Legacy and LuckTXM: the writable view lives as long as
/// the allocation, so there is nothing else to free.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_free_writable_region(
    ptr: *mut c_void,
    size: usize,
    diff: isize,
) -> JitmemStatus {
    guard(|| {
        global()?
            .existing(ptr)?
            .close_window(ptr as usize, size, diff)
    })
}

/// `CodeGen::FlushInstructionCache` (not in the seed, which had no flush): publishes
/// `[ptr, ptr + size)`, which must lie inside one live allocation, so that code written there
/// (through `ptr + diff`) runs as written, in every mode. Call it after writing and before
/// running when neither `jitmem_codegen_write_disable` nor
/// `jitmem_codegen_free_writable_region` comes in between (the seed's `CompileBlock` runs the
/// code before `FreeWritableRegion`).
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_flush_instruction_cache(
    ptr: *mut c_void,
    size: usize,
) -> JitmemStatus {
    guard(|| global()?.existing(ptr)?.publish(ptr as usize, Some(size)))
}

/// `CodeGen::JITPageWriteEnableExecuteDisable`: in Legacy mode, makes the allocation containing
/// `ptr` writable (and not executable) for this thread's scope; nests. In the mirror modes
/// nothing is writable in place: after checking `ptr` it returns
/// `JITMEM_STATUS_WRITE_THROUGH_DIFF`, with a message saying to write through
/// `ptr + jitmem_codegen_writable_diff(ptr, size)`.
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_write_enable(ptr: *mut c_void) -> JitmemStatus {
    guard(|| {
        let g = global()?;
        let legacy = g.jit_type == JitmemJitType::Legacy;
        let registry = g.existing(ptr)?;
        if legacy {
            registry.begin_write_block(ptr as usize).map(|_| ())
        } else {
            registry.writable_offset(ptr as usize, 1)?;
            Err(CError::new(
                JitmemStatus::WriteThroughDiff,
                format!(
                    "{}: JITPageWriteEnableExecuteDisable makes nothing writable in place (a store through {ptr:p} faults): write through ptr + AllocateWritableRegionAndGetDiff(ptr, size), then FreeWritableRegion",
                    g.jit_type.name()
                ),
            ))
        }
    })
}

/// `CodeGen::JITPageWriteDisableExecuteEnable`: makes the code of the allocation containing
/// `ptr` runnable. Legacy: ends the innermost `jitmem_codegen_write_enable` of that allocation
/// (executable again, published); without a matching enable: `JITMEM_STATUS_UNBALANCED`. Mirror
/// modes: publishes the whole allocation (code written through the writable view becomes
/// coherent for instruction fetch).
#[unsafe(no_mangle)]
pub extern "C" fn jitmem_codegen_write_disable(ptr: *mut c_void) -> JitmemStatus {
    guard(|| {
        let g = global()?;
        let legacy = g.jit_type == JitmemJitType::Legacy;
        let registry = g.existing(ptr)?;
        if legacy {
            registry.end_write(ptr as usize, false)
        } else {
            registry.publish(ptr as usize, None)
        }
    })
}
