//! Apple decisions as pure functions of what the OS answered (code-signing flags,
//! entitlements, the OS version, what was called before), so that they are unit-tested on
//! every host; `sys/apple` asks the OS and acts on the answer. Each function names the defect of
//! issue 14 it fixes and the source it follows.

#![cfg_attr(
    not(target_vendor = "apple"),
    allow(
        dead_code,
        reason = "used by sys/apple; compiled elsewhere for its tests"
    )
)]

use std::io;

/// `CS_DEBUGGED` (XNU `osfmk/kern/cs_blobs.h`): "process is currently or has previously been
/// debugged and allowed to run with invalid pages".
pub(crate) const CS_DEBUGGED: u32 = 0x1000_0000;

/// The major version of `kern.osproductversion` ("26.0.1" → 26).
pub(crate) fn major_version(version: &str) -> Option<u32> {
    version.trim().split('.').next()?.parse().ok()
}

/// Issue 14, defect 3: why `Auto` (and `jit_available()`) must not use JIT on an iOS device,
/// or `None` when it may. Before iOS 26, `CS_DEBUGGED` is what lets an app map and run
/// unsigned code (the Legacy mode), and it is enough. From iOS 26 it proves nothing: it stays
/// set after the debugger detached, and on a device with TXM the first instruction outside a
/// region the debugger-side script prepared kills the app, whatever the mapping calls
/// answered (the probe's trials map pages but never run them). jitmem cannot see whether the
/// device has TXM, so from iOS 26 (or when the version cannot be read) it refuses and the app
/// chooses a mode explicitly (`jitmem::apple::IosMode`), as seed 000's host app does.
pub(crate) fn ios_jit_refusal(flags: Option<u32>, os_version: Option<&str>) -> Option<String> {
    match flags {
        None => {
            return Some(
                "the code-signing flags cannot be read (csops failed), so JIT cannot be shown to be granted"
                    .to_owned(),
            );
        }
        Some(f) if f & CS_DEBUGGED == 0 => {
            return Some(
                "no debugger has granted JIT to this app (CS_DEBUGGED is clear): iOS would kill it on the first generated instruction"
                    .to_owned(),
            );
        }
        Some(_) => {}
    }
    match os_version.and_then(major_version) {
        Some(major) if major < 26 => None,
        Some(major) => Some(format!(
            "iOS {major}: CS_DEBUGGED is set, but from iOS 26 it does not prove JIT works (it stays set after the debugger detached, and on devices with TXM only regions the debugger-side script prepared may run). Choose a mode explicitly: IosMode::LuckTxm with the JIT enabler attached, or IosMode::LuckNoTxm when the host app knows the device has no TXM"
        )),
        None => Some(
            "the iOS version cannot be read (kern.osproductversion), so jitmem cannot tell whether CS_DEBUGGED is enough (before iOS 26) or TXM rules apply: choose a mode explicitly with jitmem::apple::IosMode"
                .to_owned(),
        ),
    }
}

/// What PerThread (`MAP_JIT` memory with per-thread write rights) may do on Apple silicon.
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    allow(dead_code, reason = "PerThread exists on Apple silicon Macs only")
)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PerThreadPlan {
    /// Refused, for this reason.
    Refuse(String),
    /// Accepted. `probe`: map one `MAP_JIT` page first to see whether mapping works (not with
    /// the single-jit entitlement). `writes`: how a write scope writes.
    Accept {
        probe: bool,
        writes: PerThreadWrites,
    },
}

/// How PerThread write scopes write `MAP_JIT` memory on Apple silicon.
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    allow(dead_code, reason = "PerThread exists on Apple silicon Macs only")
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PerThreadWrites {
    /// In place: `pthread_jit_write_protect_np(0)` for the thread's outermost scope, `(1)` at
    /// its end.
    Toggle,
    /// Under the `jit-write-allowlist` entitlement: scopes write a private RW shadow of the
    /// region, and a scope's end copies its range into the `MAP_JIT` pages inside jitmem's
    /// allow-listed callback (`pthread_jit_write_with_callback_np`).
    Shadow,
}

/// Whether jitmem's copy callback is in an allow-list libpthread reads, as far as jitmem can
/// tell: `jit_write_allow_callbacks!` always lists it and registers the list at load time (a
/// `__DATA,__mod_init_func` constructor).
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    allow(dead_code, reason = "PerThread exists on Apple silicon Macs only")
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllowListState {
    /// No `jit_write_allow_callbacks!` list was registered in this process.
    NotRegistered,
    /// A list was registered, but jitmem's callback is not in it before its NULL.
    Missing,
    /// The registered list holds jitmem's callback.
    Listed,
}

/// Whether `ours` is among the entries of `list` before the first NULL (libpthread reads a
/// `__pth_jit_func` list up to its first NULL: `PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP` in
/// `pthread.h` declares a NULL-terminated array). Entries are addresses, NULL as `None`.
pub(crate) fn allow_list_has(list: impl IntoIterator<Item = Option<usize>>, ours: usize) -> bool {
    list.into_iter()
        .map_while(|entry| entry)
        .any(|entry| entry == ours)
}

/// Issue 14, defects 7 and 8, and the allow-list item. With
/// `com.apple.security.cs.jit-write-allowlist`, `pthread_jit_write_protect_np` terminates the
/// process (libpthread `pthread.h`: the allow-list entitlement makes the callback the only way
/// to write), so PerThread writes through a shadow copied by jitmem's allow-listed callback
/// ([`PerThreadWrites::Shadow`]) when that callback is listed, and is refused otherwise (with
/// the remedy: invoke `jit_write_allow_callbacks!` once in the binary). A failed entitlement
/// read refuses too (it used to count as "no allow-list"). With
/// `com.apple.security.cs.single-jit`, XNU allows one `MAP_JIT` region per process and never
/// clears its "a JIT region exists" flag when it is unmapped (`vm_map_enter_mem_object`'s
/// `map->jit_entry_exists` check, `osfmk/vm/vm_map.c`): a trial mapping would use up the only
/// one, so jitmem does not probe by mapping then (and PerThread then needs one `Arena`).
#[cfg_attr(
    not(all(target_os = "macos", target_arch = "aarch64")),
    allow(dead_code, reason = "PerThread exists on Apple silicon Macs only")
)]
pub(crate) fn per_thread_plan(
    allowlist: &io::Result<bool>,
    single_jit: &io::Result<bool>,
    listed: AllowListState,
) -> PerThreadPlan {
    let writes = match allowlist {
        Ok(true) => match listed {
            AllowListState::Listed => PerThreadWrites::Shadow,
            AllowListState::NotRegistered => {
                return PerThreadPlan::Refuse(
                    "this process has the com.apple.security.cs.jit-write-allowlist entitlement, which forbids pthread_jit_write_protect_np (libpthread terminates the process), and no jit_write_allow_callbacks! list was registered: invoke jitmem::jit_write_allow_callbacks!(...) once in the binary (jitmem::jit_write_allow_callbacks!() when it has no callbacks of its own) so that jitmem's copy callback is allow-listed; or use Mirror".to_owned(),
                );
            }
            AllowListState::Missing => {
                return PerThreadPlan::Refuse(
                    "this process has the com.apple.security.cs.jit-write-allowlist entitlement, and the registered allow-list does not hold jitmem's copy callback before its NULL: declare the image's list with jitmem::jit_write_allow_callbacks!, which adds it".to_owned(),
                );
            }
        },
        Err(e) => {
            return PerThreadPlan::Refuse(format!(
                "the entitlements cannot be read (csops(CS_OPS_ENTITLEMENTS_BLOB): {e}): with com.apple.security.cs.jit-write-allowlist, pthread_jit_write_protect_np would terminate the process, so PerThread is refused"
            ));
        }
        Ok(false) => PerThreadWrites::Toggle,
    };
    match single_jit {
        Ok(true) => PerThreadPlan::Accept {
            probe: false,
            writes,
        },
        Ok(false) => PerThreadPlan::Accept {
            probe: true,
            writes,
        },
        Err(e) => PerThreadPlan::Refuse(format!(
            "the entitlements cannot be read (csops(CS_OPS_ENTITLEMENTS_BLOB): {e}): with com.apple.security.cs.single-jit a trial MAP_JIT mapping would use up the process's only JIT region, so PerThread is refused"
        )),
    }
}

/// Issue 14, defect 4: whether `pthread_jit_write_freeze_callbacks_np` may be called. libpthread
/// (`pthread.h`, "must be called exactly once ... calling it multiple times" is an error; "If
/// the jit-write-allowlist-freeze-late entitlement is not present, calling this function is an
/// error"; its errors terminate the process) punishes a second call, a call without
/// `jit-write-allowlist-freeze-late`, and a call without `jit-write-allowlist` (freeze-late
/// qualifies the allow-list and means nothing without it). `already` is whether jitmem made
/// the call before in this process.
pub(crate) fn freeze_decision(
    already: bool,
    allowlist: &io::Result<bool>,
    freeze_late: &io::Result<bool>,
) -> Result<(), String> {
    if already {
        return Err(
            "pthread_jit_write_freeze_callbacks_np was already called in this process: libpthread terminates the process on a second call".to_owned(),
        );
    }
    match (allowlist, freeze_late) {
        (Err(e), _) | (_, Err(e)) => Err(format!(
            "the entitlements cannot be read (csops(CS_OPS_ENTITLEMENTS_BLOB): {e}), so whether pthread_jit_write_freeze_callbacks_np is legal is unknown"
        )),
        (Ok(true), Ok(true)) => Ok(()),
        (_, Ok(false)) => Err(
            "pthread_jit_write_freeze_callbacks_np is only legal with the com.apple.security.cs.jit-write-allowlist-freeze-late entitlement (libpthread terminates the process otherwise)".to_owned(),
        ),
        (Ok(false), Ok(true)) => Err(
            "the com.apple.security.cs.jit-write-allowlist-freeze-late entitlement is present without com.apple.security.cs.jit-write-allowlist: pthread_jit_write_freeze_callbacks_np would terminate the process".to_owned(),
        ),
    }
}

/// With `jit-write-allowlist-freeze-late`, libpthread (`pthread.h`): "Failing to call this
/// function before calling pthread_jit_write_with_callback_np(3) for the first time is an
/// error". Whether `jit_write_with_callback` may go ahead.
pub(crate) fn with_callback_decision(
    freeze_late: &io::Result<bool>,
    frozen: bool,
) -> Result<(), String> {
    match freeze_late {
        Ok(true) if !frozen => Err(
            "with the com.apple.security.cs.jit-write-allowlist-freeze-late entitlement, jitmem::apple::freeze_jit_write_callbacks must be called before the first pthread_jit_write_with_callback_np (libpthread terminates the process otherwise)".to_owned(),
        ),
        Err(e) => Err(format!(
            "the entitlements cannot be read (csops(CS_OPS_ENTITLEMENTS_BLOB): {e}), so whether the callbacks must be frozen first is unknown"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> io::Result<bool> {
        Err(io::Error::other("csops refused"))
    }

    #[test]
    fn ios_26_and_unknown_versions_refuse_even_with_cs_debugged() {
        assert_eq!(major_version("26.0.1"), Some(26));
        assert_eq!(major_version("18.6"), Some(18));
        assert_eq!(major_version("x"), None);
        assert_eq!(ios_jit_refusal(Some(CS_DEBUGGED), Some("18.6")), None);
        assert!(ios_jit_refusal(Some(CS_DEBUGGED), Some("26.0")).is_some());
        assert!(ios_jit_refusal(Some(CS_DEBUGGED | 1), Some("27.1")).is_some());
        assert!(ios_jit_refusal(Some(CS_DEBUGGED), None).is_some());
        assert!(ios_jit_refusal(Some(1), Some("18.6")).is_some());
        assert!(ios_jit_refusal(None, Some("18.6")).is_some());
    }

    #[test]
    fn per_thread_refuses_on_unreadable_entitlements_and_never_burns_single_jit() {
        use AllowListState::*;
        let toggle = |probe| PerThreadPlan::Accept {
            probe,
            writes: PerThreadWrites::Toggle,
        };
        for listed in [NotRegistered, Missing, Listed] {
            assert_eq!(
                per_thread_plan(&Ok(false), &Ok(false), listed),
                toggle(true)
            );
            assert_eq!(
                per_thread_plan(&Ok(false), &Ok(true), listed),
                toggle(false)
            );
            // Defect 8: a csops error used to count as "no allow-list".
            assert!(matches!(
                per_thread_plan(&failed(), &Ok(false), listed),
                PerThreadPlan::Refuse(why) if why.contains("cannot be read")
            ));
            assert!(matches!(
                per_thread_plan(&Ok(false), &failed(), listed),
                PerThreadPlan::Refuse(_)
            ));
        }
    }

    #[test]
    fn per_thread_under_the_allow_list_writes_through_a_shadow_when_jitmem_is_listed() {
        let shadow = |probe| PerThreadPlan::Accept {
            probe,
            writes: PerThreadWrites::Shadow,
        };
        assert_eq!(
            per_thread_plan(&Ok(true), &Ok(false), AllowListState::Listed),
            shadow(true)
        );
        assert_eq!(
            per_thread_plan(&Ok(true), &Ok(true), AllowListState::Listed),
            shadow(false)
        );
        assert!(matches!(
            per_thread_plan(&Ok(true), &Ok(false), AllowListState::NotRegistered),
            PerThreadPlan::Refuse(why) if why.contains("jit_write_allow_callbacks!")
        ));
        assert!(matches!(
            per_thread_plan(&Ok(true), &Ok(true), AllowListState::Missing),
            PerThreadPlan::Refuse(why) if why.contains("jit_write_allow_callbacks!")
        ));
        assert!(matches!(
            per_thread_plan(&Ok(true), &failed(), AllowListState::Listed),
            PerThreadPlan::Refuse(_)
        ));
    }

    #[test]
    fn the_allow_list_is_read_up_to_its_first_null() {
        assert!(allow_list_has([Some(1), Some(7), None], 7));
        assert!(allow_list_has([Some(7)], 7));
        assert!(!allow_list_has([Some(1), None, Some(7), None], 7));
        assert!(!allow_list_has([Some(1), Some(2), None], 7));
        assert!(!allow_list_has([None], 7));
    }

    #[test]
    fn freeze_is_allowed_once_and_only_with_both_entitlements() {
        assert!(freeze_decision(false, &Ok(true), &Ok(true)).is_ok());
        assert!(freeze_decision(true, &Ok(true), &Ok(true)).is_err());
        assert!(freeze_decision(false, &Ok(false), &Ok(true)).is_err());
        assert!(freeze_decision(false, &Ok(true), &Ok(false)).is_err());
        assert!(freeze_decision(false, &Ok(false), &Ok(false)).is_err());
        assert!(freeze_decision(false, &failed(), &Ok(true)).is_err());
        assert!(freeze_decision(false, &Ok(true), &failed()).is_err());
    }

    #[test]
    fn write_with_callback_waits_for_the_freeze_under_freeze_late() {
        assert!(with_callback_decision(&Ok(false), false).is_ok());
        assert!(with_callback_decision(&Ok(true), false).is_err());
        assert!(with_callback_decision(&Ok(true), true).is_ok());
        assert!(with_callback_decision(&failed(), true).is_err());
    }
}
