//! What the probe learns on Apple platforms: every primitive tried for real on one page (an RWX
//! mapping, an `mprotect` to executable, a `MAP_JIT` mapping, a `mach_vm_remap` mirror, the
//! thread-state pipeline flush), and the code-signing state that explains a refusal (hardened
//! runtime, entitlements, `CS_DEBUGGED`, an attached debugger).

use super::Os;
use super::codesign::{self, CS_DEBUGGED, CS_RUNTIME};
use super::mirror::try_mirror;
use crate::sys::{apple_policy, txm};
use crate::sys::{
    Probe, ProbeFacts, Prot, error_chain, page_size, pipeline_flush_mt, thread_rights_token,
    try_map,
};

impl Probe for Os {
    /// Every primitive tried for real on one page, and the code-signing state that explains a
    /// refusal.
    fn probe_facts(rwx_trial: bool) -> ProbeFacts {
        probe_facts(rwx_trial)
    }
}

/// "macOS 14.4.1 (Darwin 23.4.0, arm64)", "iOS 18.1 (Darwin 24.1.0, iPhone15,2)".
fn system() -> String {
    let os = if cfg!(target_os = "macos") {
        "macOS"
    } else {
        "iOS"
    };
    let version = codesign::sysctl_string(c"kern.osproductversion").unwrap_or_else(|| "?".into());
    let darwin = codesign::sysctl_string(c"kern.osrelease").unwrap_or_else(|| "?".into());
    let machine = codesign::sysctl_string(c"hw.machine").unwrap_or_else(|| "?".into());
    format!("{os} {version} (Darwin {darwin}, {machine})")
}

/// Why executable memory outside `MAP_JIT` may be refused here, appended to a failure.
fn explain(flags: Option<u32>) -> &'static str {
    if cfg!(target_os = "macos") {
        match flags {
            Some(f) if f & CS_RUNTIME != 0 => {
                " (hardened runtime: this needs the com.apple.security.cs.allow-unsigned-executable-memory entitlement)"
            }
            _ => "",
        }
    } else {
        match flags {
            Some(f) if f & CS_DEBUGGED != 0 => "",
            _ => {
                " (iOS lets an app map executable memory only after a debugger has attached: CS_DEBUGGED is clear)"
            }
        }
    }
}

/// Tries to map a page read-write-execute without `MAP_JIT` (Apple silicon refuses: W^X is
/// enforced unless the memory is `MAP_JIT`).
fn try_rwx(why: &str) -> Result<(), String> {
    try_map::<Os>(Prot::RWX, None).map_err(|e| format!("{e}{why}"))
}

/// Tries to map a page read-write, then make it read-execute.
fn try_mprotect_exec(why: &str) -> Result<(), String> {
    try_map::<Os>(Prot::RW, Some(Prot::RX)).map_err(|e| format!("{e}{why}"))
}

/// On an iOS device, whether the strategies the trials found may really run code: the trials
/// only map and protect pages, they never execute them, and code-signing enforcement acts when
/// an unsigned page is *executed*. [`apple_policy::ios_jit_refusal`] decides from
/// `CS_DEBUGGED` and the iOS version (issue 14, defect 3: from iOS 26 `CS_DEBUGGED` proves
/// nothing on TXM devices). An explicit strategy in a `Config` still bypasses this (the
/// `IosMode` configurations, jailbroken devices, special entitlements). Not on the simulator
/// or Mac Catalyst (the same `cfg` as the TXM handshake, `txm::TXM_DEVICE`).
fn ios_device_refusal(flags: Option<u32>) -> Option<String> {
    if !txm::TXM_DEVICE {
        return None;
    }
    let version = codesign::sysctl_string(c"kern.osproductversion");
    apple_policy::ios_jit_refusal(flags, version.as_deref())
}

/// What the probe needs from macOS or iOS.
fn probe_facts(rwx_trial: bool) -> ProbeFacts {
    let flags = codesign::code_signing_flags().ok();
    let why = explain(flags);
    // An RWX page only when asked: a probe does not create what the policy forbids.
    let rwx = if rwx_trial {
        try_rwx(why)
    } else {
        Err(crate::sys::rwx_not_tried())
    };
    let mprotect_exec = try_mprotect_exec(why);
    let mirror = try_mirror(page_size()).map_err(|e| format!("{e}{why}"));
    let per_thread = thread_rights_token().map(|_| ());
    let flush = pipeline_flush_mt().map_err(|e| error_chain(&e));
    let refused = ios_device_refusal(flags);
    let translated = codesign::sysctl_i32(c"sysctl.proc_translated");
    let debugger = match codesign::debugger_attached() {
        Ok(true) => "attached now (P_TRACED)".to_owned(),
        Ok(false) => "not attached".to_owned(),
        Err(e) => format!("unknown ({e})"),
    };
    let facts = vec![
        (
            "code signing",
            flags.map_or_else(
                || "unknown (csops failed)".to_owned(),
                codesign::describe_flags,
            ),
        ),
        ("JIT entitlements", codesign::describe_jit_entitlements()),
        ("debugger", debugger),
        (
            "TXM handshake",
            if !txm::TXM_DEVICE {
                "not applicable (not an iOS device)".to_owned()
            } else {
                match txm::detected_protocol() {
                    Some(p) => format!("{p:?} protocol spoken in this process"),
                    None => "none yet (Config::txm chooses Legacy, Universal or Auto)".to_owned(),
                }
            },
        ),
        (
            "Rosetta 2",
            match translated {
                Some(1) => "this x86-64 process is translated on Apple silicon".to_owned(),
                Some(_) => "native process".to_owned(),
                None => "not applicable".to_owned(),
            },
        ),
        (
            "page size source",
            "sysconf(_SC_PAGESIZE): 16 KiB on Apple silicon, 4 KiB on Intel and under Rosetta"
                .to_owned(),
        ),
    ];
    ProbeFacts {
        system: system(),
        facts,
        checks: vec![
            ("RWX anonymous mapping", rwx.clone()),
            ("mprotect RW -> RX", mprotect_exec.clone()),
            ("mach_vm_remap mirror", mirror.clone()),
            ("MAP_JIT per-thread W^X", per_thread.clone()),
            ("thread_get_state flush", flush),
        ],
        toggle: refused.clone().map_or(mprotect_exec, Err),
        mirror: refused.clone().map_or(mirror, Err),
        per_thread,
        rwx: refused.map_or(rwx, Err),
    }
}
