//! Platform-neutral types of the platform layer.

use std::ptr::NonNull;

/// A set of page protections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prot(u8);

impl Prot {
    #[cfg_attr(
        not(all(
            any(target_os = "linux", windows),
            any(target_arch = "x86_64", target_arch = "aarch64")
        )),
        allow(
            dead_code,
            reason = "Apple never maps inaccessible memory, unsupported targets map nothing"
        )
    )]
    pub(crate) const NONE: Prot = Prot(0);
    pub(crate) const RW: Prot = Prot(0b011);
    pub(crate) const RX: Prot = Prot(0b101);
    pub(crate) const RWX: Prot = Prot(0b111);
    /// Linux AArch64's `PROT_BTI`: indirect branches into these executable pages must land on
    /// a `bti` landing pad (`Config::bti`).
    const BTI: u8 = 0b1000;
    /// Windows' Control Flow Guard (`Config::cfg_call_targets` Explicit, in a process that
    /// enforces CFG): executable pages are allocated with `PAGE_TARGETS_INVALID`, and made
    /// executable again with `PAGE_TARGETS_NO_UPDATE` (the same bit). Ignored elsewhere.
    const TARGETS_INVALID: u8 = 0b1_0000;

    /// The same protection, with the executable pages guarded by BTI when `on` (Linux AArch64;
    /// other platforms never see it set: `Config::bti` is refused there).
    pub(crate) fn with_bti(self, on: bool) -> Prot {
        if on { Prot(self.0 | Prot::BTI) } else { self }
    }

    /// The same protection, with no location of executable pages a valid Control Flow Guard
    /// call target until marked, when `on` (Windows; other platforms ignore it).
    pub(crate) fn with_targets_invalid(self, on: bool) -> Prot {
        if on {
            Prot(self.0 | Prot::TARGETS_INVALID)
        } else {
            self
        }
    }

    /// See [`Prot::with_targets_invalid`]: meaningful for executable protections only.
    #[cfg_attr(
        not(windows),
        allow(dead_code, reason = "Control Flow Guard exists on Windows only")
    )]
    pub(crate) fn targets_invalid(self) -> bool {
        self.0 & Prot::TARGETS_INVALID != 0 && self.exec()
    }

    #[cfg_attr(
        not(all(target_os = "linux", target_arch = "aarch64")),
        allow(dead_code, reason = "PROT_BTI exists on Linux AArch64 only")
    )]
    pub(crate) fn bti(self) -> bool {
        self.0 & Prot::BTI != 0
    }

    pub(crate) fn read(self) -> bool {
        self.0 & 0b001 != 0
    }

    pub(crate) fn write(self) -> bool {
        self.0 & 0b010 != 0
    }

    pub(crate) fn exec(self) -> bool {
        self.0 & 0b100 != 0
    }
}

/// `rwx` style, as in `/proc/self/maps`: `r-x`, `rw-`, `---`.
impl std::fmt::Display for Prot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bit = |on: bool, c: char| if on { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            bit(self.read(), 'r'),
            bit(self.write(), 'w'),
            bit(self.exec(), 'x')
        )
    }
}

/// What holds the pages behind a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MirrorBacking {
    /// Linux: a `memfd_create` file, its executable view mapped from a read-only descriptor so
    /// that the executable view can never be made writable.
    Memfd,
    /// Linux: shared anonymous memory duplicated with `mremap(old_size = 0)`, the fallback when
    /// `vm.memfd_noexec` or a policy forbids executable memfds.
    SharedAnonymous,
    /// Apple: `mach_vm_remap` of the executable region, with the RX view's maximum protection
    /// lowered so that it can never become writable.
    MachRemap,
    /// Windows: a pagefile-backed section (`CreateFileMappingW`) mapped twice with
    /// `MapViewOfFile`, the executable view without write access.
    FileMapping,
}

/// Which protocol announces a Mirror region to the debugger-side script on an iOS device
/// with TXM (iOS 26, seed 000's LuckTXM), chosen with
/// [`Config::txm`](crate::Config::txm). See `docs/apple.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxmProtocol {
    /// The first protocol: `brk #0x69` with x0 = address and x1 = length of an executable
    /// region jitmem mapped itself (UTM's and DolphiniOS's scripts). The debugger answers by
    /// preparing the region; the universal script answers with a sentinel instead, which
    /// jitmem reports as an error here.
    Legacy,
    /// StikDebug's "universal" script: `mov x16, #1; brk #0xf00d` with x0 = 0 and x1 =
    /// length: the debugger allocates the executable region itself and returns its address in
    /// x0. jitmem maps only the writable view of it, and never unmaps the executable one.
    Universal,
    /// Detect once per process: `brk #0x69` on a region jitmem mapped; the universal script's
    /// sentinel reply switches to [`TxmProtocol::Universal`], any other answer means the
    /// legacy script prepared the region.
    Auto,
}

/// How a region is mapped, beyond its strategy and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MapOptions {
    /// iOS with TXM (seed 000's LuckTXM): announce the executable region to the attached
    /// debugger with this protocol before making its writable mirror. Ignored elsewhere.
    pub(crate) txm: Option<TxmProtocol>,
    /// The app states that the attached debugger answers the TXM traps
    /// ([`Config::txm_debugger_speaks_protocol`](crate::Config::txm_debugger_speaks_protocol)).
    pub(crate) txm_debugger_speaks_protocol: bool,
    /// Bytes of inaccessible guard pages before and after each view of the region (0: none).
    pub(crate) guard: usize,
    /// Place the executable view within reach of an address (`Config::near`).
    pub(crate) near: Option<Near>,
    /// Map the executable view with `PROT_BTI` (`Config::bti`, Linux AArch64).
    pub(crate) bti: bool,
    /// No location of executable memory is a valid Control Flow Guard call target until marked
    /// (`Config::cfg_call_targets` Explicit, in a process that enforces CFG; Windows only).
    pub(crate) cfg_targets_invalid: bool,
}

/// Where executable views must lie: every byte of them (guard pages included) at most
/// `max_distance` bytes from `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Near {
    pub(crate) address: usize,
    pub(crate) max_distance: usize,
}

/// The two views of a mirror.
pub(crate) struct MirrorViews {
    pub(crate) rx: NonNull<u8>,
    pub(crate) rw: NonNull<u8>,
}

/// One mapping of this process (a line of `/proc/self/maps` on Linux, a region from
/// `VirtualQuery` on Windows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// The permission string, e.g. `r-xs`: read, write, execute, then `p` private, `s` shared
    /// (a section view on Windows) or `i` (a Windows image).
    pub perms: String,
    /// The path or pseudo-name, possibly empty.
    pub name: String,
}

impl Mapping {
    /// Writable and executable at once.
    pub fn is_writable_and_executable(&self) -> bool {
        let p = self.perms.as_bytes();
        p.get(1) == Some(&b'w') && p.get(2) == Some(&b'x')
    }
}

/// What a platform tells the probe: facts in words, primitives tried, and which strategies
/// can work.
pub(crate) struct ProbeFacts {
    /// The operating system and its version.
    pub(crate) system: String,
    /// Settings and policies, in words (mapping limits, security policies...).
    pub(crate) facts: Vec<(&'static str, String)>,
    /// Primitives tried for real: name and outcome.
    pub(crate) checks: Vec<(&'static str, Result<(), String>)>,
    /// Whether each strategy can work: Toggle, Mirror, PerThread, Rwx.
    pub(crate) toggle: Result<(), String>,
    pub(crate) mirror: Result<(), String>,
    pub(crate) per_thread: Result<(), String>,
    pub(crate) rwx: Result<(), String>,
}

/// Probe trial on the platform `M`: maps one page with `first`, then (if given) changes it to
/// `then`, and unmaps it. `Err` says why the platform refused.
pub(crate) fn try_map<M: super::Memory>(first: Prot, then: Option<Prot>) -> Result<(), String> {
    let page = M::page_size();
    let ptr = M::map_private(page, first).map_err(|e| error_chain(&e))?;
    let result = match then {
        // SAFETY: the fresh mapping above, known to no one else.
        Some(prot) => unsafe { M::protect(ptr, page, prot) }.map_err(|e| error_chain(&e)),
        None => Ok(()),
    };
    // SAFETY: the fresh mapping above, no longer used.
    let _ = unsafe { M::unmap(ptr, page) };
    result
}

/// The probe's verdict on Rwx when it was not asked to try it: a probe does not create what the
/// policy forbids (a page writable and executable at once, which shows up in Arbitrary Code
/// Guard audits, EDR heuristics and SELinux `execmem` denials) unless asked.
pub(crate) fn rwx_not_tried() -> String {
    "not tried: the probe maps no writable and executable page unless asked (Probe::run_trying_rwx, `jitmem-cli probe --rwx`); Rwx needs the unsafe opt-in anyway".to_owned()
}

/// The probe's RWX trial on the platform `M` when `asked`, else [`rwx_not_tried`].
#[cfg_attr(
    target_vendor = "apple",
    allow(
        dead_code,
        reason = "the Apple probe explains its RWX refusals with its own try_rwx"
    )
)]
pub(crate) fn try_rwx_if<M: super::Memory>(asked: bool) -> Result<(), String> {
    if asked {
        try_map::<M>(Prot::RWX, None)
    } else {
        Err(rwx_not_tried())
    }
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
