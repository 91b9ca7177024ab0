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

/// How a region is mapped, beyond its strategy and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MapOptions {
    /// iOS with TXM (seed 000's LuckTXM): announce the executable region to the attached
    /// debugger (`brk #0x69`, x0 = address, x1 = size) before making its writable mirror.
    /// Ignored elsewhere.
    pub(crate) txm_handshake: bool,
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
