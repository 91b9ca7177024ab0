//! What the probe learns on Windows: every primitive tried for real on one page, and the
//! policies that explain a refusal (Arbitrary Code Guard, Control Flow Guard), and Wine.

use std::ffi::{CStr, c_char};
use std::io;

use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::SystemInformation::OSVERSIONINFOW;
use windows_sys::Win32::System::SystemServices::{
    PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY, PROCESS_MITIGATION_DYNAMIC_CODE_POLICY,
};
use windows_sys::Win32::System::SystemServices::THREAD_DYNAMIC_CODE_ALLOW;
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentThread, GetProcessMitigationPolicy, PROCESS_MITIGATION_POLICY,
    ProcessControlFlowGuardPolicy, ProcessDynamicCodePolicy, ThreadDynamicCodePolicy,
};

use super::{Os, allocation_granularity};
use crate::sys::{
    MapOptions, Probe, ProbeFacts, Prot, error_chain, map_mirror, mapping_count, page_size,
    pipeline_flush_mt, thread_rights_token, try_map, try_rwx_if, unmap_view,
};

impl Probe for Os {
    /// Every primitive tried for real on one page, and the policies that explain a refusal.
    fn probe_facts(rwx_trial: bool) -> ProbeFacts {
        probe_facts(rwx_trial)
    }
}

/// The Windows version from `RtlGetVersion` (which, unlike `GetVersionExW`, does not depend on
/// the program's manifest).
pub(super) fn windows_version() -> Option<(u32, u32, u32)> {
    let mut info = OSVERSIONINFOW {
        dwOSVersionInfoSize: size_of::<OSVERSIONINFOW>() as u32,
        ..Default::default()
    };
    // SAFETY: info is a valid OSVERSIONINFOW with its size set.
    let status = unsafe { RtlGetVersion(&mut info) };
    (status == 0).then_some((info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber))
}

/// Wine's version when this process runs under Wine (its `ntdll` exports `wine_get_version`).
pub(super) fn wine_version() -> Option<String> {
    // SAFETY: GetModuleHandleW with a valid wide string; ntdll is loaded in every process.
    let ntdll = unsafe { GetModuleHandleW(windows_sys::w!("ntdll.dll")) };
    if ntdll.is_null() {
        return None;
    }
    // SAFETY: a loaded module and a valid C string.
    let proc = unsafe { GetProcAddress(ntdll, windows_sys::s!("wine_get_version")) }?;
    // SAFETY: Wine declares `const char *wine_get_version(void)`; on x86-64 and AArch64 the
    // "system" and "C" conventions are the same.
    let get: unsafe extern "C" fn() -> *const c_char = unsafe { std::mem::transmute(proc) };
    // SAFETY: calling it as declared.
    let text = unsafe { get() };
    if text.is_null() {
        return None;
    }
    // SAFETY: Wine returns a static NUL-terminated string.
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Reads a process mitigation policy of this process into `T` (a `PROCESS_MITIGATION_*_POLICY`,
/// which is one `u32` of flags).
pub(super) fn mitigation_flags<T: Default>(policy: PROCESS_MITIGATION_POLICY) -> io::Result<T> {
    let mut value = T::default();
    // SAFETY: our own process's pseudo-handle and a writable buffer of the size we pass; T is
    // the structure this policy fills.
    let ok = unsafe {
        GetProcessMitigationPolicy(
            GetCurrentProcess(),
            policy,
            (&mut value as *mut T).cast(),
            size_of::<T>(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// `GetThreadInformation`'s signature (processthreadsapi.h).
type GetThreadInformationFn = unsafe extern "system" fn(
    thread: windows_sys::Win32::Foundation::HANDLE,
    class: windows_sys::Win32::System::Threading::THREAD_INFORMATION_CLASS,
    information: *mut std::ffi::c_void,
    size: u32,
) -> windows_sys::core::BOOL;

/// Whether the calling thread has opted out of Arbitrary Code Guard
/// (`GetThreadInformation(ThreadDynamicCodePolicy)` gives `THREAD_DYNAMIC_CODE_ALLOW`; see
/// <https://learn.microsoft.com/en-us/windows/win32/api/processthreadsapi/nf-processthreadsapi-getthreadinformation>).
///
/// Looked up at run time (`GetProcAddress`), not imported: Wine's kernel32 does not export it,
/// and an unresolved import makes Wine's loader map a writable and executable page of stubs in
/// every process (which the W^X tests then see).
fn thread_opted_out() -> io::Result<bool> {
    // SAFETY: GetModuleHandleW with a valid wide string; kernel32 is loaded in every process.
    let kernel32 = unsafe { GetModuleHandleW(windows_sys::w!("kernel32.dll")) };
    if kernel32.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a loaded module and a valid C string.
    let Some(proc) = (unsafe { GetProcAddress(kernel32, windows_sys::s!("GetThreadInformation")) })
    else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel32 does not export GetThreadInformation",
        ));
    };
    // SAFETY: the export has GetThreadInformation's documented signature.
    let get: GetThreadInformationFn = unsafe { std::mem::transmute(proc) };
    let mut policy: u32 = 0;
    // SAFETY: our own thread's pseudo-handle and a writable u32, the size this class fills.
    let ok = unsafe {
        get(
            GetCurrentThread(),
            ThreadDynamicCodePolicy,
            (&mut policy as *mut u32).cast(),
            size_of::<u32>() as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(policy & THREAD_DYNAMIC_CODE_ALLOW != 0)
}

/// Arbitrary Code Guard: `Ok(true)` when `ProhibitDynamicCode` is set for this process and the
/// calling thread has not opted out; the words say which threads may make code.
///
/// PROCESS_MITIGATION_DYNAMIC_CODE_POLICY
/// (<https://learn.microsoft.com/en-us/windows/win32/api/winnt/ns-winnt-process_mitigation_dynamic_code_policy>):
/// `ProhibitDynamicCode` (bit 0), `AllowThreadOptOut` (bit 1: "allow threads to opt out of the
/// restrictions on dynamic code generation by calling the SetThreadInformation function with
/// the ThreadInformation parameter set to ThreadDynamicCodePolicy"), `AuditProhibitDynamicCode`
/// (bit 3). The policy is per process but an opt-out is per thread, so the probe's verdict is
/// the calling thread's, and `Auto` does not keep a refusal (see `probe::auto_choice`).
fn arbitrary_code_guard() -> io::Result<(bool, String)> {
    let policy: PROCESS_MITIGATION_DYNAMIC_CODE_POLICY =
        mitigation_flags(ProcessDynamicCodePolicy)?;
    // SAFETY: both union members are a u32 of flags.
    let flags = unsafe { policy.Anonymous.Flags };
    let prohibit = flags & 0b0001 != 0;
    let thread_opt_out = flags & 0b0010 != 0;
    let audit = flags & 0b1000 != 0;
    let opted_out = prohibit && thread_opt_out && thread_opted_out().unwrap_or(false);
    let text = match (prohibit, audit) {
        (true, _) if opted_out => "on (ProhibitDynamicCode), but this thread opted out (ThreadDynamicCodePolicy = THREAD_DYNAMIC_CODE_ALLOW): it may make code, threads that did not opt out may not (jitmem gives them the OS error ERROR_DYNAMIC_CODE_BLOCKED when they map, commit or flip code pages)".to_owned(),
        (true, _) if thread_opt_out => "on (ProhibitDynamicCode): no memory can become executable after it is mapped, so no strategy works in this thread; threads may opt out (AllowThreadOptOut): a thread that calls SetThreadInformation(ThreadDynamicCodePolicy, THREAD_DYNAMIC_CODE_ALLOW) may make code".to_owned(),
        (true, _) => "on (ProhibitDynamicCode), no thread opt-out (AllowThreadOptOut is clear): no memory can become executable after it is mapped, so no strategy can work in this process".to_owned(),
        (false, true) => "audit only: dynamic code is allowed and logged".to_owned(),
        (false, false) => "off: dynamic code is allowed".to_owned(),
    };
    Ok((prohibit && !opted_out, text))
}

/// Control Flow Guard, in words.
fn control_flow_guard() -> String {
    match mitigation_flags::<PROCESS_MITIGATION_CONTROL_FLOW_GUARD_POLICY>(
        ProcessControlFlowGuardPolicy,
    ) {
        Err(e) => format!("unknown ({e})"),
        Ok(policy) => {
            // SAFETY: both union members are a u32 of flags.
            let flags = unsafe { policy.Anonymous.Flags };
            if flags & 1 != 0 {
                "on: executable pages made by VirtualAlloc, VirtualProtect and MapViewOfFile are valid call targets as a whole, so by default (CfgCallTargets::AllValid) every byte of JIT code is a valid indirect-call target; Config::cfg_call_targets(CfgCallTargets::Explicit) allocates code with PAGE_TARGETS_INVALID and marks only the entry points given to CodeBlock::allow_indirect_calls (SetProcessValidCallTargets)".to_owned()
            } else {
                "off: nothing checks indirect calls (CfgCallTargets::Explicit changes nothing, and CodeBlock::allow_indirect_calls is a checked no-op)".to_owned()
            }
        }
    }
}

/// Tries a one-page mirror, and that a byte written through the RW view reads back through the
/// RX view.
fn try_mirror() -> std::result::Result<(), String> {
    let page = page_size();
    let views = map_mirror(page, MapOptions::default()).map_err(|e| error_chain(&e))?;
    // SAFETY: both views are one fresh page of the same section.
    let shared = unsafe {
        views.rw.as_ptr().write_volatile(0xC3);
        views.rx.as_ptr().read_volatile() == 0xC3
    };
    // SAFETY: the fresh views above.
    let _ = unsafe { unmap_view(views.rx, page) };
    // SAFETY: as above.
    let _ = unsafe { unmap_view(views.rw, page) };
    if shared {
        Ok(())
    } else {
        Err("the two views of one section do not show the same bytes".to_owned())
    }
}

/// What the probe needs from Windows: every primitive tried for real on one page, and the
/// policies that explain a refusal.
fn probe_facts(rwx_trial: bool) -> ProbeFacts {
    let acg = arbitrary_code_guard();
    let acg_on = matches!(acg, Ok((true, _)));
    let because = |r: std::result::Result<(), String>| {
        r.map_err(|e| {
            if acg_on {
                format!("Arbitrary Code Guard forbids dynamic code in this thread: {e}")
            } else {
                e
            }
        })
    };
    // The PAGE_EXECUTE_READWRITE page only when asked (it shows up in ACG audits and EDR
    // heuristics, and Rwx is never chosen without the opt-in).
    let rwx = match try_rwx_if::<Os>(rwx_trial) {
        not_tried @ Err(_) if !rwx_trial => not_tried,
        tried => because(tried),
    };
    let protect_exec = because(try_map::<Os>(Prot::RW, Some(Prot::RX)));
    let mirror = because(try_mirror());
    let per_thread = thread_rights_token().map(|_| ());
    let wine = wine_version();
    let arch = std::env::consts::ARCH;
    let version = windows_version().map_or_else(
        || format!("Windows, version unknown ({arch})"),
        |(major, minor, build)| format!("Windows {major}.{minor} build {build} ({arch})"),
    );
    let system = match &wine {
        Some(w) => format!("Wine {w}, reporting {version}"),
        None => version,
    };
    let mut facts = vec![
        (
            "allocation granularity",
            format!(
                "{} bytes (every reservation and view starts on it; pages are {} bytes)",
                allocation_granularity(),
                page_size()
            ),
        ),
        (
            "mappings now",
            mapping_count().map_or("unknown".to_owned(), |n| {
                format!("{n} regions (no mapping limit on Windows)")
            }),
        ),
        (
            "Arbitrary Code Guard",
            match acg {
                Ok((_, text)) => text,
                Err(e) => format!("unknown (GetProcessMitigationPolicy failed: {e})"),
            },
        ),
        ("Control Flow Guard", control_flow_guard()),
    ];
    if let Some(w) = wine {
        facts.push((
            "Wine",
            format!("{w}: this is Wine, not Windows; the checks say what Wine does"),
        ));
    }
    ProbeFacts {
        system,
        facts,
        checks: vec![
            ("VirtualAlloc RWX", rwx.clone()),
            ("VirtualProtect RW -> RX", protect_exec.clone()),
            ("file-mapping mirror", mirror.clone()),
            ("per-thread write rights", per_thread.clone()),
            (
                "FlushProcessWriteBuffers",
                pipeline_flush_mt().map_err(|e| error_chain(&e)),
            ),
        ],
        toggle: protect_exec,
        mirror,
        per_thread,
        rwx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reports_windows_facts() {
        let facts = probe_facts(false);
        assert!(facts.system.contains("Windows"), "{}", facts.system);
        assert!(
            facts.toggle.is_ok() && facts.mirror.is_ok(),
            "{:?}",
            facts.checks
        );
        assert!(facts.per_thread.is_err());
        assert!(
            facts
                .facts
                .iter()
                .any(|(k, _)| *k == "Arbitrary Code Guard")
        );
    }
}
