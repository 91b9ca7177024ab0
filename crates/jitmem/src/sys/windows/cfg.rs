//! Control Flow Guard (CFG): whether the process enforces it, and marking call targets
//! (`SetProcessValidCallTargets`). The protection flags (`PAGE_TARGETS_INVALID`,
//! `PAGE_TARGETS_NO_UPDATE`, `FILE_MAP_TARGETS_INVALID`) are added where memory is mapped,
//! committed and protected (`super::native`, `mirror.rs`, `memory.rs`).
//!
//! **Never run with CFG enforced.** This was run under Wine only, where CFG reads as off (see
//! [`cfg_enforced`]), so [`set_call_targets`] has only been compiled, never called; what it does
//! follows Microsoft's documentation and ChakraCore (cited below).

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::OnceLock;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::core::BOOL;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Memory::CFG_CALL_TARGET_INFO;
use windows_sys::Win32::System::SystemServices::{
    CFG_CALL_TARGET_VALID, PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, ProcessControlFlowGuardPolicy};

use super::probe::mitigation_flags;
use super::{Os, os_error};
use crate::error::{Error, Result};
use crate::sys::{CallTargets, refused};

impl CallTargets for Os {
    /// `GetProcessMitigationPolicy(ProcessControlFlowGuardPolicy)`, bit 0 of its flags
    /// (`EnableControlFlowGuard`), read once.
    fn cfg_enforced() -> bool {
        cfg_enforced()
    }

    /// `SetProcessValidCallTargets`, looked up in `kernelbase.dll` at run time.
    fn set_call_targets(
        base: NonNull<u8>,
        len: usize,
        offsets: &[usize],
        valid: bool,
    ) -> Result<()> {
        set_call_targets(base, len, offsets, valid)
    }
}

/// Whether this process enforces CFG: `GetProcessMitigationPolicy(GetCurrentProcess(),
/// ProcessControlFlowGuardPolicy)` and bit 0 (`EnableControlFlowGuard`) of
/// `PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY.Flags`
/// (<https://learn.microsoft.com/en-us/windows/win32/api/winnt/ns-winnt-process_mitigation_control_flow_guard_policy>:
/// "EnableControlFlowGuard: CFG is enabled for the process if this flag is set"). The policy
/// cannot change while the process runs, so it is read once. ChakraCore marks targets and
/// allocates with `PAGE_TARGETS_INVALID` only when CFG is enabled; so does jitmem.
///
/// A failed query reads as "not enforced". The buffer is zeroed first (`probe.rs`'s
/// `mitigation_flags`): Wine's `GetProcessMitigationPolicy` returns TRUE without writing it, which
/// then reads as "not enforced" too (true under Wine, which has no CFG).
#[doc(alias = "GetProcessMitigationPolicy")]
fn cfg_enforced() -> bool {
    static ENFORCED: OnceLock<bool> = OnceLock::new();
    *ENFORCED.get_or_init(|| {
        // Zeroed before the call, kept zero (CFG off) when the call fails.
        let Ok(policy) = mitigation_flags::<PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY>(
            ProcessControlFlowGuardPolicy,
        ) else {
            return false;
        };
        // SAFETY: both union members are a u32 of flags.
        let flags = unsafe { policy.Anonymous.Flags };
        flags & 1 != 0
    })
}

/// `SetProcessValidCallTargets`
/// (<https://learn.microsoft.com/en-us/windows/win32/api/memoryapi/nf-memoryapi-setprocessvalidcalltargets>),
/// Windows 10 and later.
type SetProcessValidCallTargetsFn = unsafe extern "system" fn(
    process: HANDLE,
    virtual_address: *const c_void,
    region_size: usize,
    number_of_offsets: u32,
    offset_information: *mut CFG_CALL_TARGET_INFO,
) -> BOOL;

/// `SetProcessValidCallTargets` from `kernelbase.dll`, looked up once (`None` where it does not
/// exist). Not imported statically: the import lives in the Windows 10 API set
/// `api-ms-win-core-memory-l1-1-3.dll` (windows-sys links it there), and a static import would
/// keep the crate's programs from loading on older Windows (or on a Wine without that API set)
/// even when CFG is never used. `kernelbase.dll` is loaded in every process from Windows 7 on.
fn set_process_valid_call_targets() -> Option<SetProcessValidCallTargetsFn> {
    static FUNCTION: OnceLock<Option<SetProcessValidCallTargetsFn>> = OnceLock::new();
    *FUNCTION.get_or_init(|| {
        // SAFETY: a NUL-terminated UTF-16 module name; GetModuleHandleW takes no reference
        // (the handle needs no release).
        let module = unsafe { GetModuleHandleW(windows_sys::w!("kernelbase.dll")) };
        if module.is_null() {
            return None;
        }
        // SAFETY: a module handle from GetModuleHandleW and a NUL-terminated ASCII name.
        let function =
            unsafe { GetProcAddress(module, windows_sys::s!("SetProcessValidCallTargets")) }?;
        // SAFETY: kernelbase.dll's SetProcessValidCallTargets has this signature (the
        // documentation above; windows-sys declares the same one), and "system" is its calling
        // convention.
        Some(unsafe {
            std::mem::transmute::<unsafe extern "system" fn() -> isize, SetProcessValidCallTargetsFn>(
                function,
            )
        })
    })
}

/// Marks `base + offsets[i]` valid (`CFG_CALL_TARGET_VALID`) or invalid (flags 0) for CFG.
/// `[base, base + len)` is whole pages of one executable allocation (ChakraCore passes a page
/// start and the page size); `offsets` ascending multiples of 16 below `len`, as the
/// documentation asks ("The call targets specified should be 16-byte aligned and in ascending
/// order"). Its failures keep the OS error: CFG not enabled for the process, or
/// `ERROR_COMMITMENT_LIMIT` (the bitmap's pages are committed on demand).
///
/// Executable memory must have been allocated with an execute protection from the start (a
/// reservation made read-write and later made executable has no CFG bitmap, and this call
/// fails on it: MicrosoftDocs/sdk-api pull request 442); jitmem reserves and commits
/// executable memory with one when this is in use (`memory.rs`).
#[doc(alias = "SetProcessValidCallTargets")]
fn set_call_targets(base: NonNull<u8>, len: usize, offsets: &[usize], valid: bool) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let Some(function) = set_process_valid_call_targets() else {
        return Err(refused(
            "SetProcessValidCallTargets",
            "this Windows has no SetProcessValidCallTargets (Windows 10 and later)",
        ));
    };
    let flags = if valid {
        CFG_CALL_TARGET_VALID as usize
    } else {
        0
    };
    let mut info: Vec<CFG_CALL_TARGET_INFO> = offsets
        .iter()
        .map(|&offset| CFG_CALL_TARGET_INFO {
            Offset: offset,
            Flags: flags,
        })
        .collect();
    // Large ranges (a freed block's every 16-byte address) go in calls of at most u32::MAX
    // entries; in practice one.
    for chunk in info.chunks_mut(u32::MAX as usize) {
        let count = u32::try_from(chunk.len()).map_err(|_| Error::TooLarge { len })?;
        // SAFETY: `chunk` is `count` initialised CFG_CALL_TARGET_INFO entries that live across
        // the call; the range is the caller's executable allocation (the system checks it and
        // fails otherwise); the call changes only the CFG bitmap, never memory contents.
        let ok = unsafe {
            function(
                GetCurrentProcess(),
                base.as_ptr().cast::<c_void>(),
                len,
                count,
                chunk.as_mut_ptr(),
            )
        };
        if ok == 0 {
            return Err(os_error("SetProcessValidCallTargets"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Commit, MapOptions, Memory, Mirror, Prot};

    /// Run under Wine: CFG reads as off (Wine has none). The run-time lookup of
    /// `SetProcessValidCallTargets` is made: Wine 8 exports no such function (from
    /// `kernelbase.dll` or `kernel32.dll`), so it finds none there, which is why the function is
    /// not imported statically (an unresolved import makes Wine's loader map a writable and
    /// executable page of stubs, see `probe.rs`). Windows 10 and later must have it.
    #[test]
    fn cfg_reads_as_off_and_the_function_is_looked_up_at_run_time() {
        let wine = super::super::probe::wine_version().is_some();
        if wine {
            assert!(!cfg_enforced(), "Wine has no CFG, yet it reads as enforced");
        }
        let found = set_process_valid_call_targets().is_some();
        let windows_10 = super::super::probe::windows_version().is_some_and(|(major, ..)| major >= 10);
        if !wine && windows_10 {
            assert!(found, "Windows 10 has SetProcessValidCallTargets in kernelbase.dll");
        }
        // An empty list makes no call, found or not.
        set_call_targets(NonNull::dangling(), 4096, &[], true).unwrap();
        if !found {
            // Without the function, marking is refused with a reason, never a crash.
            let err = set_call_targets(NonNull::dangling(), 4096, &[0], true).unwrap_err();
            assert!(crate::sys::refusal(&err).is_some_and(|r| r.contains("Windows 10")), "{err}");
        }
    }

    /// The calls of explicit-target memory with their CFG flags, made for real: a private
    /// reservation with `PAGE_EXECUTE_READ | PAGE_TARGETS_INVALID`, its commit, a flip to RW
    /// and back with `PAGE_TARGETS_NO_UPDATE` (Toggle's), and a mirror whose executable view is
    /// mapped with `FILE_MAP_TARGETS_INVALID` and committed with `PAGE_TARGETS_INVALID`; code
    /// written through them runs. Under Wine the flags are accepted and ignored (it has no CFG),
    /// so this shows that the calls are well formed, not what CFG makes of them.
    #[test]
    fn the_cfg_flags_are_accepted_by_every_call_that_takes_them() {
        let len = super::super::allocation_granularity();
        let code = crate::isa::return_constant(5);
        let rx = Prot::RX.with_targets_invalid(true);
        let ptr = <Os as Commit>::reserve_private(len, rx, MapOptions::default()).unwrap();
        // SAFETY: the test's own fresh reservation, of which nothing is committed yet; then
        // its first page, which nothing runs while it is writable, and one thread.
        unsafe {
            <Os as Commit>::commit(ptr, len, rx).unwrap();
            <Os as Memory>::protect(ptr, 4096, Prot::RW).unwrap();
            std::ptr::copy_nonoverlapping(code.as_ptr(), ptr.as_ptr(), code.len());
            <Os as Memory>::protect(ptr, 4096, rx).unwrap();
            let f: extern "C" fn() -> u32 = std::mem::transmute(ptr.as_ptr());
            assert_eq!(f(), 5);
            <Os as Memory>::unmap(ptr, len).unwrap();
        }
        let options = MapOptions {
            cfg_targets_invalid: true,
            ..MapOptions::default()
        };
        let views = <Os as Commit>::reserve_mirror(len, options).unwrap();
        // SAFETY: the test's own fresh views, committed once each; the executable view runs
        // what was written through the writable one.
        unsafe {
            <Os as Commit>::commit(views.rx, len, rx).unwrap();
            <Os as Commit>::commit(views.rw, len, Prot::RW).unwrap();
            std::ptr::copy_nonoverlapping(code.as_ptr(), views.rw.as_ptr(), code.len());
            crate::sys::clear_cache(views.rx.as_ptr(), code.len());
            let f: extern "C" fn() -> u32 = std::mem::transmute(views.rx.as_ptr());
            assert_eq!(f(), 5);
            <Os as Mirror>::unmap_view(views.rx, len).unwrap();
            <Os as Mirror>::unmap_view(views.rw, len).unwrap();
        }
    }
}
