//! Every target without a backend (Linux on riscv64, s390x, wasm32, ... : anything but Linux,
//! macOS/iOS and Windows on x86-64 and AArch64). It compiles, and answers every call with an
//! "unsupported" error that says why ([`refused`]), so that crates built on jitmem (jitvm's
//! interpreter above all) build here and run without a JIT: the probe reports every strategy
//! unavailable, `JitMemory::new` gives `Error::Unsupported`, `ExecBuffer::new` gives an
//! `ErrorKind::Unsupported` error.
//!
//! No memory is ever mapped here, so the functions that take a mapping (`protect`, `unmap`,
//! the fork snapshots...) are never reached with one; they refuse too, or do nothing.
//!
//! Also compiled into the unit tests of every host, which check these answers.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{
    Icache, Introspect, MapOptions, Mapping, Memory, Mirror, MirrorBacking, MirrorViews, Place,
    Placement, Probe, ProbeFacts, Prot, Rights, Wait, refused, try_map, try_rwx_if,
};
use crate::error::Result;

/// A target jitmem has no executable-memory backend for.
pub(crate) struct Os;

impl super::Platform for Os {}

// Nothing is ever mapped here, and nothing enforces call targets.
crate::sys::impl_no_call_targets!();

// Mappings are usable as mapped: nothing to commit.
impl crate::sys::Commit for Os {}

/// Why nothing works here, in words a user can act on.
fn reason() -> String {
    format!(
        "jitmem has no executable-memory backend for {} on {} (it supports Linux, macOS, iOS and Windows on x86-64 and AArch64): run without a JIT",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The page size reported here: a nominal 4 KiB, for arithmetic only (nothing is ever mapped).
const NOMINAL_PAGE: usize = 4096;

impl Memory for Os {
    /// A nominal 4 KiB: nothing is mapped, but sizes are still rounded the usual way.
    fn page_size() -> usize {
        NOMINAL_PAGE
    }

    /// Refused.
    fn map_private(_len: usize, prot: Prot) -> Result<NonNull<u8>> {
        Err(refused(
            "map private memory",
            format!("{prot} memory: {}", reason()),
        ))
    }

    /// Refused (never reached: nothing was mapped).
    ///
    /// # Safety
    /// The contract of [`Memory::protect`].
    unsafe fn protect(_ptr: NonNull<u8>, _len: usize, prot: Prot) -> Result<()> {
        Err(refused(
            "change memory protection",
            format!("to {prot}: {}", reason()),
        ))
    }

    /// Refused (never reached: nothing was mapped).
    ///
    /// # Safety
    /// The contract of [`Memory::unmap`].
    unsafe fn unmap(_ptr: NonNull<u8>, _len: usize) -> Result<()> {
        Err(refused("unmap memory", reason()))
    }
}

impl Place for Os {
    const PLACEMENT: Placement = Placement::Unsupported;

    /// Refused.
    fn reserve(_len: usize, _at: Option<usize>) -> Result<Option<NonNull<u8>>> {
        Err(refused("reserve address space", reason()))
    }

    /// Refused (never reached: nothing was mapped).
    ///
    /// # Safety
    /// The contract of [`Place::move_mapping`].
    unsafe fn move_mapping(_from: NonNull<u8>, _len: usize, _to: NonNull<u8>) -> Result<()> {
        Err(refused("move a mapping", reason()))
    }

    /// Refused (never reached: nothing is placed).
    fn busy_ranges(_lo: usize, _hi: usize) -> io::Result<Vec<(usize, usize)>> {
        Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
    }

    /// Refused (never reached: no mirror was made).
    ///
    /// # Safety
    /// The contract of [`Place::unmap_guarded_view`].
    unsafe fn unmap_guarded_view(_view: NonNull<u8>, _len: usize, _guard: usize) -> Result<()> {
        Err(refused("unmap a mirror view", reason()))
    }

    fn bti_support() -> std::result::Result<(), String> {
        Err(reason())
    }
}

impl Mirror for Os {
    /// Refused.
    fn map_mirror(_len: usize, _options: MapOptions) -> Result<MirrorViews> {
        Err(refused("map a mirror", reason()))
    }

    /// Refused (never reached: no mirror was made).
    ///
    /// # Safety
    /// The contract of [`Mirror::unmap_view`].
    unsafe fn unmap_view(_ptr: NonNull<u8>, _len: usize) -> Result<()> {
        Err(refused("unmap a mirror view", reason()))
    }

    /// None: no mirror is ever made.
    fn mirror_backing() -> Option<MirrorBacking> {
        None
    }
}

impl Rights for Os {
    /// No PerThread memory exists, so nothing is lost across a fork.
    const PER_THREAD_SURVIVES_FORK: bool = true;

    /// Refused.
    fn thread_rights_token() -> std::result::Result<u32, String> {
        Err(reason())
    }

    /// Refused.
    fn map_per_thread(_len: usize, _key: u32) -> Result<NonNull<u8>> {
        Err(refused("map per-thread memory", reason()))
    }

    /// Never called: [`Rights::thread_rights_token`] gives no key. Grants nothing.
    ///
    /// # Safety
    /// The contract of [`Rights::grant_thread_write_rights`].
    unsafe fn grant_thread_write_rights(_key: u32) -> u32 {
        0
    }

    /// Never called: see `grant_thread_write_rights`.
    ///
    /// # Safety
    /// The contract of [`Rights::withdraw_thread_write_rights`].
    unsafe fn withdraw_thread_write_rights(_key: u32, _saved: u32) {}
}

impl Icache for Os {
    /// Nothing to do: no code is ever made executable here (a range that is merely readable,
    /// like a `publish` of ordinary memory, needs nothing).
    ///
    /// # Safety
    /// The contract of [`Icache::clear_cache`].
    unsafe fn clear_cache(_ptr: *const u8, _len: usize) {}

    /// Refused.
    fn pipeline_flush_mt() -> Result<()> {
        Err(refused("flush every thread's pipeline", reason()))
    }
}

crate::sys::impl_no_fork!("no memory is ever mapped here, so a fork has nothing to protect");

impl Introspect for Os {
    /// Refused: the memory map is not read here.
    fn mappings() -> io::Result<Vec<Mapping>> {
        Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
    }

    /// Refused, as [`Introspect::mappings`].
    fn mapping_count() -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
    }

    /// No known limit.
    fn mapping_limit() -> Option<(usize, usize)> {
        None
    }

    /// Refused: the thread's stack is not read here.
    fn thread_stack() -> io::Result<(usize, usize)> {
        Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
    }
}

impl Wait for Os {
    /// Yields once (no futex, and `thread::sleep` is missing on some of these targets); the
    /// lock that calls this spins first and re-checks.
    fn wait_while_equal(word: &AtomicU32, value: u32) {
        if word.load(Ordering::Relaxed) == value {
            std::thread::yield_now();
        }
    }

    /// Nothing to wake: [`Wait::wait_while_equal`] polls.
    fn wake_one(_word: &AtomicU32) {}
}

impl Probe for Os {
    /// Every strategy unavailable, with the reason; the trial mappings say the same.
    fn probe_facts(rwx_trial: bool) -> ProbeFacts {
        let why = reason();
        ProbeFacts {
            system: format!(
                "{} ({}), no jitmem backend",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            facts: vec![("backend", why.clone())],
            checks: vec![
                ("RWX anonymous mapping", try_rwx_if::<Os>(rwx_trial)),
                ("protect RW -> RX", try_map::<Os>(Prot::RW, Some(Prot::RX))),
            ],
            toggle: Err(why.clone()),
            mirror: Err(why.clone()),
            per_thread: Err(why.clone()),
            rwx: Err(why),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Apple targets without a backend (an Apple OS on neither x86-64 nor AArch64): what
// `jitmem::apple` asks of the platform, refused the same way.

/// No code-signing state is read here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn code_signing_flags() -> io::Result<u32> {
    Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
}

/// False: nothing is granted here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn jit_granted_by_debugger() -> bool {
    false
}

/// Not read here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn debugger_attached() -> io::Result<bool> {
    Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
}

/// Not read here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn has_entitlement(_key: &str) -> io::Result<bool> {
    Err(io::Error::new(io::ErrorKind::Unsupported, reason()))
}

/// Refused, without calling `callback`.
///
/// # Safety
/// None needed: nothing is called.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) unsafe fn jit_write_with_callback(
    _callback: super::JitWriteCallback,
    _ctx: *mut std::ffi::c_void,
) -> Result<std::ffi::c_int> {
    Err(refused("pthread_jit_write_with_callback_np", reason()))
}

/// Copies nothing: no shadow exists here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn copy_callback(_ctx: *mut std::ffi::c_void) -> std::ffi::c_int {
    -1
}

/// Nothing to register: PerThread is refused here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn register_allow_list(_list: &'static [Option<super::JitWriteCallback>]) {}

/// Refused.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn freeze_jit_write_callbacks() -> Result<()> {
    Err(refused("pthread_jit_write_freeze_callbacks_np", reason()))
}

/// Refused.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn txm_detach(_app_states_debugger: bool) -> Result<()> {
    Err(refused("universal detach (brk #0xf00d, x16 = 0)", reason()))
}

/// None: no handshake happens here.
#[cfg(all(
    target_vendor = "apple",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
pub(crate) fn txm_protocol() -> Option<super::TxmProtocol> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{error_chain, refusal};

    /// Every call that could make or use code memory refuses, with the reason.
    #[test]
    fn every_call_refuses_with_the_reason() {
        let expected = reason();
        assert!(expected.contains(std::env::consts::ARCH), "{expected}");
        let page = <Os as Memory>::page_size();
        assert!(page.is_power_of_two());
        let e = <Os as Memory>::map_private(page, Prot::RX).unwrap_err();
        assert!(refusal(&e).is_some_and(|r| r.contains(&expected)), "{e:?}");
        let Err(e) = <Os as Mirror>::map_mirror(page, MapOptions::default()) else {
            panic!("a mirror was made");
        };
        assert_eq!(refusal(&e), Some(expected.as_str()));
        assert_eq!(<Os as Mirror>::mirror_backing(), None);
        assert_eq!(<Os as Rights>::thread_rights_token(), Err(expected.clone()));
        let e = <Os as Rights>::map_per_thread(page, 0).unwrap_err();
        assert_eq!(refusal(&e), Some(expected.as_str()));
        let e = <Os as Icache>::pipeline_flush_mt().unwrap_err();
        assert!(error_chain(&e).contains(&expected));
        let e = <Os as Introspect>::mappings().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(<Os as Introspect>::mapping_count().is_err());
        let facts = <Os as Probe>::probe_facts(true);
        for r in [facts.toggle, facts.mirror, facts.per_thread, facts.rwx] {
            assert_eq!(r, Err(expected.clone()));
        }
        assert!(facts.checks.iter().all(|(_, r)| r.is_err()));
    }

    /// A failed call of a real backend is never taken for a refusal, even when the OS error's
    /// kind is `Unsupported` (`ENOSYS`).
    #[test]
    fn refusals_are_told_from_os_errors() {
        let e = crate::error::Error::Os {
            op: "a call",
            source: io::Error::new(io::ErrorKind::Unsupported, "not a refusal"),
        };
        assert_eq!(refusal(&e), None);
        let e = refused("a call", "because");
        assert_eq!(refusal(&e), Some("because"));
        assert_eq!(error_chain(&e), "a call failed: because");
    }
}
