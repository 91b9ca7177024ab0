//! What a [`JitMemory`](crate::JitMemory) is asked to be: a W^X [`Strategy`] and a [`Layout`].

use std::fmt;

pub use crate::sys::TxmProtocol;

/// How W^X (write xor execute) is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Let the [probe](crate::probe) choose the fastest safe strategy this process allows; the
    /// environment variable `JITMEM_STRATEGY` (`toggle`, `mirror`, `perthread`) forces one.
    Auto,
    /// Pages flip between read-write and read-execute (`mprotect`). A nesting counter per page
    /// makes nested write scopes flip once. Every Toggle block owns whole pages, in every layout
    /// (its length is rounded up to the page): a write scope or a free flips only the pages of
    /// its own block, so other threads keep running every other block. The block being written
    /// cannot run while its scope is open (its pages are not executable then), so Toggle cannot
    /// patch code that other threads are running. Costs two system calls per write scope and a
    /// page per function.
    Toggle,
    /// Two views of the same physical pages: one read-write, one read-execute. Permissions never
    /// change after set-up; a write scope costs nothing.
    Mirror,
    /// Pages are read-write-execute in the page tables, but each thread holds write rights only
    /// inside its write scope: Linux memory protection keys on x86-64 (`pkey_mprotect` +
    /// `WRPKRU`), `MAP_JIT` + `pthread_jit_write_protect_np` on Apple Silicon.
    PerThread,
    /// Read-write-execute with no protection at all. Only with the unsafe opt-in
    /// [`Config::allow_rwx_without_wx`]; never chosen by `Auto`.
    Rwx,
}

impl Strategy {
    /// Every concrete strategy, in the order `Auto` prefers them (`Rwx`, never preferred, last).
    pub const CONCRETE: [Strategy; 4] = [
        Strategy::Mirror,
        Strategy::PerThread,
        Strategy::Toggle,
        Strategy::Rwx,
    ];

    /// The lower-case name used by `JITMEM_STRATEGY` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Toggle => "toggle",
            Strategy::Mirror => "mirror",
            Strategy::PerThread => "perthread",
            Strategy::Rwx => "rwx",
        }
    }

    /// Parses a name as written by [`Strategy::name`].
    pub fn from_name(name: &str) -> Option<Strategy> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Strategy::Auto),
            "toggle" => Some(Strategy::Toggle),
            "mirror" => Some(Strategy::Mirror),
            "perthread" | "per-thread" | "per_thread" => Some(Strategy::PerThread),
            "rwx" => Some(Strategy::Rwx),
            _ => None,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Each allocation is its own mapping (with its own mirror): page-granular, one or two
    /// mappings per function (Linux caps a process near 65,530 mappings).
    PerAllocation,
    /// Chunks reserved on demand (256 KiB, doubling up to 16 MiB) and sub-allocated; small
    /// functions share pages (except with Toggle, whose blocks own whole pages). One heap per
    /// core (up to 8): threads are given heaps round-robin, so up to that many threads allocate
    /// without sharing a lock or a chunk; beyond it, threads share heaps (each behind its lock),
    /// and blocks of different threads may share pages. Sharing pages is safe for every strategy
    /// (see [`Strategy`]). Each heap returns an empty chunk to the OS unless it is that heap's
    /// only empty one (kept to avoid map/unmap churn).
    Pooled,
    /// One reservation of `size` bytes up front, sub-allocated; physical pages are used only
    /// when touched (except with a TXM handshake on iOS, whose prepare step dirties every
    /// page: see [`Config::txm`]). All code lies in one range, so x86-64 rel32 calls (+-2 GiB) between any two
    /// functions reach when `size` <= 2 GiB, and AArch64 BL (+-128 MiB) when `size` <= 128 MiB.
    Arena {
        /// Bytes to reserve, rounded up to the page size.
        size: usize,
    },
}

impl Layout {
    /// The default arena size, as in the seed's LuckTXM mode: 512 MiB.
    pub const DEFAULT_ARENA_SIZE: usize = 512 << 20;

    /// The lower-case name used by `JITMEM_LAYOUT` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Layout::PerAllocation => "per-allocation",
            Layout::Pooled => "pooled",
            Layout::Arena { .. } => "arena",
        }
    }

    /// Parses `per-allocation`, `pooled`, `arena` (512 MiB) or `arena:SIZE` (bytes, or with a
    /// `k`, `m` or `g` suffix).
    pub fn from_name(name: &str) -> Option<Layout> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "per-allocation" | "perallocation" | "per_allocation" => Some(Layout::PerAllocation),
            "pooled" => Some(Layout::Pooled),
            "arena" => Some(Layout::Arena {
                size: Layout::DEFAULT_ARENA_SIZE,
            }),
            _ => {
                let size = name.strip_prefix("arena:")?;
                let (digits, shift) = match size.as_bytes().last()? {
                    b'k' => (&size[..size.len() - 1], 10),
                    b'm' => (&size[..size.len() - 1], 20),
                    b'g' => (&size[..size.len() - 1], 30),
                    _ => (size, 0),
                };
                let n: usize = digits.parse().ok()?;
                let size = n.checked_mul(1usize.checked_shl(shift)?)?;
                Some(Layout::Arena { size })
            }
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Arena { size } => write!(f, "arena({} MiB)", size >> 20),
            other => f.write_str(other.name()),
        }
    }
}

/// Which addresses of executable memory an indirect call may land on, where the process enforces
/// Windows' Control Flow Guard (CFG): a host built with `/guard:cf` (MSVC, clang-cl; Rust's
/// `-C control-flow-guard` on `*-windows-msvc`). Under CFG every indirect call is checked
/// against a per-process bitmap of valid targets, one entry per 16 bytes; Windows marks
/// **every** location of executable memory that a program allocates as valid unless told
/// otherwise (Microsoft, "Memory Protection Constants": "The default behavior for executable
/// pages allocated is to be marked valid call targets for CFG"), so without
/// [`CfgCallTargets::Explicit`] each byte of JIT code is a valid target, and CFG does not
/// protect calls into it.
///
/// Set with [`Config::cfg_call_targets`]. See `docs/windows.md`, "Control Flow Guard".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CfgCallTargets {
    /// Windows' default: every location of code memory is a valid indirect-call target.
    /// [`CodeBlock::allow_indirect_calls`](crate::CodeBlock::allow_indirect_calls) checks its
    /// offsets and does nothing else.
    #[default]
    AllValid,
    /// No location of code memory is a valid indirect-call target until the JIT marks it with
    /// [`CodeBlock::allow_indirect_calls`](crate::CodeBlock::allow_indirect_calls), as V8 and
    /// ChakraCore do: on Windows in a process that enforces CFG, executable memory is
    /// allocated with `PAGE_TARGETS_INVALID` (`FILE_MAP_TARGETS_INVALID` for a mirror's
    /// executable view), Toggle flips pages back to executable with `PAGE_TARGETS_NO_UPDATE`
    /// (so that its marks survive a write scope), and a freed or shrunk block's marks are
    /// withdrawn before its range is handed out again. Where CFG is not enforced (a host built
    /// without it, Windows before 10, Wine, every other OS) every address is callable anyway:
    /// this is accepted and changes nothing, and `allow_indirect_calls` is a checked no-op.
    Explicit,
}

impl CfgCallTargets {
    /// The lower-case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            CfgCallTargets::AllValid => "all-valid",
            CfgCallTargets::Explicit => "explicit",
        }
    }
}

/// The configuration of a [`JitMemory`](crate::JitMemory). Build it with the methods below.
///
/// ```
/// use jitmem::{Config, Layout, Strategy};
/// let config = Config::new()
///     .strategy(Strategy::Mirror)
///     .layout(Layout::Arena { size: 64 << 20 })
///     .default_align(64);
/// assert_eq!(config.requested_strategy(), Strategy::Mirror);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub(crate) strategy: Strategy,
    pub(crate) layout: Option<Layout>,
    pub(crate) default_align: usize,
    pub(crate) rwx_opt_in: bool,
    pub(crate) use_environment: bool,
    pub(crate) txm: Option<TxmProtocol>,
    pub(crate) txm_debugger_speaks_protocol: bool,
    pub(crate) near: Option<(usize, usize)>,
    pub(crate) bti: bool,
    pub(crate) cfg_call_targets: CfgCallTargets,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// The environment variable that forces the strategy when the configuration says `Auto`.
pub const STRATEGY_ENV: &str = "JITMEM_STRATEGY";
/// The environment variable that forces the layout when the configuration leaves it unset.
pub const LAYOUT_ENV: &str = "JITMEM_LAYOUT";
/// The environment variable that turns [`Config::bti`] on (`1`) when the configuration
/// honours the environment (for test suites run under `qemu-aarch64 -cpu max`).
pub const BTI_ENV: &str = "JITMEM_BTI";

impl Config {
    /// `Auto` strategy, the layout `Auto` picks (Pooled), 16-byte default alignment, environment
    /// variables honoured.
    pub fn new() -> Self {
        Config {
            strategy: Strategy::Auto,
            layout: None,
            default_align: 16,
            rwx_opt_in: false,
            use_environment: true,
            txm: None,
            txm_debugger_speaks_protocol: false,
            near: None,
            bti: false,
            cfg_call_targets: CfgCallTargets::AllValid,
        }
    }

    /// Sets the strategy. [`Strategy::Rwx`] also needs [`Config::allow_rwx_without_wx`].
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the layout (default: chosen by `Auto`, which picks [`Layout::Pooled`]).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = Some(layout);
        self
    }

    /// Sets the alignment of [`JitMemory::allocate`](crate::JitMemory::allocate) (default 16
    /// bytes, a good function entry alignment). Checked when the memory is created.
    pub fn default_align(mut self, align: usize) -> Self {
        self.default_align = align;
        self
    }

    /// Ignore `JITMEM_STRATEGY`, `JITMEM_LAYOUT` and `JITMEM_BTI` (for tests and tools that must get exactly
    /// what they ask for).
    pub fn ignore_environment(mut self) -> Self {
        self.use_environment = false;
        self
    }

    /// Allows [`Strategy::Rwx`]: pages readable, writable and executable at once, for every
    /// thread, with no protection.
    ///
    /// # Safety
    /// This gives up W^X: any memory-safety bug that writes through a stray pointer into code
    /// pages becomes arbitrary code execution. Use it only where no other strategy works and
    /// the code's inputs are trusted.
    #[expect(
        unsafe_code,
        reason = "the opt-in gives up W^X: being unsafe to call is its point"
    )]
    pub unsafe fn allow_rwx_without_wx(mut self) -> Self {
        self.rwx_opt_in = true;
        self
    }

    /// iOS 26 with TXM (seed 000's LuckTXM): shorthand for [`Config::txm`] with
    /// [`TxmProtocol::Auto`] (`true`) or no handshake (`false`). Kept for existing callers; it
    /// used to mean the legacy protocol only, which Auto still speaks when the debugger's
    /// script does.
    pub fn txm_handshake(self, on: bool) -> Self {
        self.txm(on.then_some(TxmProtocol::Auto))
    }

    /// iOS 26 with TXM (seed 000's LuckTXM): announce each Mirror region to the attached
    /// debugger-side script with `protocol` (`None`: no handshake, the default). Use it with
    /// `Strategy::Mirror` and an `Arena` (whose size is a multiple of 16 KiB and which
    /// StikDebug's prepare step dirties completely: see `docs/apple.md`), so that the
    /// handshake happens once, when the arena is reserved. TXM detection belongs to the host
    /// app: set this when it says TXM is active. Ignored on every platform but an iOS device.
    ///
    /// jitmem traps only when a debugger is attached (`P_TRACED`); a failed check counts as
    /// "not attached" unless [`Config::txm_debugger_speaks_protocol`] says otherwise.
    pub fn txm(mut self, protocol: Option<TxmProtocol>) -> Self {
        self.txm = protocol;
        self
    }

    /// The app states that the debugger attached to it is a JIT enabler that answers the TXM
    /// traps (StikDebug and its scripts), not a debugger that merely stops the app on a `brk`
    /// (Xcode's lldb: `P_TRACED` is set, and the app just stops). With it, jitmem also traps
    /// when the `P_TRACED` check itself fails (some sandboxes refuse `sysctl(KERN_PROC)`); a
    /// check that says "not attached" still refuses, and a SIGTRAP guard still turns an
    /// unanswered trap into an error. Default: `false`.
    pub fn txm_debugger_speaks_protocol(mut self, yes: bool) -> Self {
        self.txm_debugger_speaks_protocol = yes;
        self
    }

    /// The TXM protocol asked for ([`Config::txm`]).
    pub fn requested_txm(&self) -> Option<TxmProtocol> {
        self.txm
    }

    /// Places the code within reach of `address`: every byte of every region's executable view
    /// (Pooled chunks, the Arena, PerAllocation mappings, guard pages included) lies at most
    /// `max_distance` bytes from it, so that code can call a function at `address` directly:
    /// x86-64 `call rel32` reaches +-2 GiB, AArch64 `bl` +-128 MiB (leave a margin for the
    /// size of the code being called). Regions go in the nearest free gaps of the address
    /// space; when there is no room within reach, mapping a region (a new chunk, the arena)
    /// fails with [`Error::NoRoomNear`](crate::Error::NoRoomNear), never placing code farther.
    /// Linux (each fresh mapping is moved into a reservation, `mremap`) and Windows (each
    /// region is reserved, or each view mapped, at the chosen address); on Apple
    /// [`JitMemory::new`](crate::JitMemory::new) gives
    /// [`Error::FeatureUnsupported`](crate::Error::FeatureUnsupported).
    pub fn near(mut self, address: usize, max_distance: usize) -> Self {
        self.near = Some((address, max_distance));
        self
    }

    /// Maps executable views with `PROT_BTI` (Linux on AArch64 with BTI): an indirect branch
    /// (`br`, `blr`) into the code faults (`SIGILL`) unless it lands on a `bti` landing pad of
    /// the right kind, so every function entry and every other indirect-branch target of the
    /// generated code must begin with one (`bti c` for calls). Toggle, Mirror and Rwx. Where
    /// the CPU or the platform has no BTI, [`JitMemory::new`](crate::JitMemory::new) gives
    /// [`Error::FeatureUnsupported`](crate::Error::FeatureUnsupported).
    pub fn bti(mut self, on: bool) -> Self {
        self.bti = on;
        self
    }

    /// Which addresses of code memory are valid indirect-call targets under Windows' Control
    /// Flow Guard (default [`CfgCallTargets::AllValid`], Windows' own default: all of them).
    /// [`CfgCallTargets::Explicit`] makes none valid until
    /// [`CodeBlock::allow_indirect_calls`](crate::CodeBlock::allow_indirect_calls) marks entry
    /// points; it takes effect only on Windows in a process that enforces CFG, and is accepted
    /// (changing nothing) everywhere else. Every strategy Windows offers (Toggle, Mirror, Rwx).
    pub fn cfg_call_targets(mut self, targets: CfgCallTargets) -> Self {
        self.cfg_call_targets = targets;
        self
    }

    /// The Control Flow Guard setting asked for ([`Config::cfg_call_targets`]).
    pub fn requested_cfg_call_targets(&self) -> CfgCallTargets {
        self.cfg_call_targets
    }

    /// The strategy asked for (before `Auto` and the environment are resolved).
    pub fn requested_strategy(&self) -> Strategy {
        self.strategy
    }
}

/// Why a [`JitMemory`](crate::JitMemory) uses the strategy and layout it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The strategy in use.
    pub strategy: Strategy,
    /// The layout in use.
    pub layout: Layout,
    /// Why, in words.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::CONCRETE.into_iter().chain([Strategy::Auto]) {
            assert_eq!(Strategy::from_name(s.name()), Some(s));
        }
        assert_eq!(Strategy::from_name("nope"), None);
        assert_eq!(Layout::from_name("pooled"), Some(Layout::Pooled));
        assert_eq!(
            Layout::from_name("arena:64m"),
            Some(Layout::Arena { size: 64 << 20 })
        );
        assert_eq!(
            Layout::from_name("arena:4096"),
            Some(Layout::Arena { size: 4096 })
        );
        assert_eq!(Layout::from_name("arena:99999999999999999999g"), None);
        assert_eq!(Layout::from_name("arena:"), None);
    }
}
