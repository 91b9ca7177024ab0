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
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessMitigationPolicy, PROCESS_MITIGATION_POLICY,
    ProcessControlFlowGuardPolicy, ProcessDynamicCodePolicy,
};

use super::{Os, allocation_granularity};
use crate::sys::{
    MapOptions, Probe, ProbeFacts, Prot, error_chain, map_mirror, mapping_count, page_size,
    pipeline_flush_mt, thread_rights_token, try_map, unmap_view,
};

impl Probe for Os {
    /// Every primitive tried for real on one page, and the policies that explain a refusal.
    fn probe_facts() -> ProbeFacts {
        probe_facts()
    }
}

/// The Windows version from `RtlGetVersion` (which, unlike `GetVersionExW`, does not depend on
/// the program's manifest).
fn windows_version() -> Option<(u32, u32, u32)> {
    let mut info = OSVERSIONINFOW {
        dwOSVersionInfoSize: size_of::<OSVERSIONINFOW>() as u32,
        ..Default::default()
    };
    // SAFETY: info is a valid OSVERSIONINFOW with its size set.
    let status = unsafe { RtlGetVersion(&mut info) };
    (status == 0).then_some((info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber))
}

/// Wine's version when this process runs under Wine (its `ntdll` exports `wine_get_version`).
fn wine_version() -> Option<String> {
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
fn mitigation_flags<T: Default>(policy: PROCESS_MITIGATION_POLICY) -> io::Result<T> {
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

/// Arbitrary Code Guard: `Ok(true)` when `ProhibitDynamicCode` is set for this process.
fn arbitrary_code_guard() -> io::Result<(bool, String)> {
    let policy: PROCESS_MITIGATION_DYNAMIC_CODE_POLICY =
        mitigation_flags(ProcessDynamicCodePolicy)?;
    // SAFETY: both union members are a u32 of flags.
    let flags = unsafe { policy.Anonymous.Flags };
    let prohibit = flags & 0b0001 != 0;
    let thread_opt_out = flags & 0b0010 != 0;
    let audit = flags & 0b1000 != 0;
    let text = match (prohibit, audit) {
        (true, _) => format!(
            "on (ProhibitDynamicCode): no memory can become executable after it is mapped, so no strategy can work{}",
            if thread_opt_out {
                "; threads may opt out (AllowThreadOptOut)"
            } else {
                ""
            }
        ),
        (false, true) => "audit only: dynamic code is allowed and logged".to_owned(),
        (false, false) => "off: dynamic code is allowed".to_owned(),
    };
    Ok((prohibit, text))
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
                "on: executable pages made by VirtualAlloc, VirtualProtect and MapViewOfFile are valid call targets as a whole".to_owned()
            } else {
                "off".to_owned()
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
fn probe_facts() -> ProbeFacts {
    let acg = arbitrary_code_guard();
    let acg_on = matches!(acg, Ok((true, _)));
    let because = |r: std::result::Result<(), String>| {
        r.map_err(|e| {
            if acg_on {
                format!("Arbitrary Code Guard forbids dynamic code in this process: {e}")
            } else {
                e
            }
        })
    };
    let rwx = because(try_map::<Os>(Prot::RWX, None));
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
        let facts = probe_facts();
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
