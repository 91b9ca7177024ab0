//! The one error type of the crate.

use crate::config::Strategy;

/// Everything that can go wrong in jitmem. The operating system's error, when there is one, is
/// kept as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A length of zero was asked for.
    #[error("zero-length request: a code block needs at least one byte")]
    ZeroLength,
    /// A length so large that rounding it up to pages or granules overflows, or that no mapping
    /// can hold.
    #[error("length {len} is too large to map")]
    TooLarge {
        /// The length asked for.
        len: usize,
    },
    /// An alignment that is zero, not a power of two, or above the page size.
    #[error(
        "alignment {align} is invalid: it must be a power of two from 1 to the page size ({page_size})"
    )]
    BadAlignment {
        /// The alignment asked for.
        align: usize,
        /// The page size of this process.
        page_size: usize,
    },
    /// The arena has no free range large enough. Live code is untouched and keeps running.
    #[error(
        "arena exhausted: no free range of {len} bytes aligned to {align} in an arena of {arena} bytes ({free} bytes free, fragmented)"
    )]
    Exhausted {
        /// The length asked for.
        len: usize,
        /// The alignment asked for.
        align: usize,
        /// The arena's size.
        arena: usize,
        /// Bytes still free (in pieces too small or misaligned for the request).
        free: usize,
    },
    /// The strategy cannot work in this process (the kernel, a security policy or the CPU
    /// refuses it).
    #[error("strategy {strategy} is not available here: {reason}")]
    Unsupported {
        /// The strategy that was asked for.
        strategy: Strategy,
        /// Why, in words a user can act on.
        reason: String,
        /// The operating system's error when a system call failed (for example Windows'
        /// `ERROR_DYNAMIC_CODE_BLOCKED` under Arbitrary Code Guard, or `ERROR_COMMITMENT_LIMIT`),
        /// with its raw code ([`std::io::Error::raw_os_error`]); `None` when the platform
        /// refused the strategy outright (a policy read, a missing CPU feature).
        #[source]
        source: Option<std::io::Error>,
    },
    /// [`Strategy::Rwx`] was asked for without the unsafe opt-in
    /// [`Config::allow_rwx_without_wx`](crate::Config::allow_rwx_without_wx).
    #[error(
        "the Rwx strategy gives up W^X and needs the explicit unsafe opt-in Config::allow_rwx_without_wx"
    )]
    RwxNotOptedIn,
    /// The environment variable that forces a strategy or layout holds a value we do not know.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    BadEnvironment {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What values are accepted.
        reason: &'static str,
    },
    /// The process has reached its limit of memory mappings (`vm.max_map_count` on Linux).
    #[error(
        "the process has {count} memory mappings, at the limit of {max} (vm.max_map_count); use the Pooled or Arena layout, which put many functions in one mapping"
    )]
    MappingLimit {
        /// Mappings this process had when the call failed.
        count: usize,
        /// The limit.
        max: usize,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Os {
        /// The system call or operation, with its arguments where they help.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A range that is not inside the block.
    #[error("range {start}..{end} is not inside the block of {len} bytes")]
    OutOfRange {
        /// Start of the range asked for.
        start: usize,
        /// End of the range asked for.
        end: usize,
        /// The block's length.
        len: usize,
    },
    /// A shrink to a length that is zero or larger than the block.
    #[error("cannot shrink a block of {len} bytes to {new_len} bytes")]
    BadShrink {
        /// The block's length.
        len: usize,
        /// The length asked for.
        new_len: usize,
    },
    /// The buffer is in the wrong state for this call (for example: writing to an executable
    /// [`ExecBuffer`](crate::ExecBuffer)).
    #[error("{0}")]
    WrongState(&'static str),
    /// A live patch ([`CodeBlock::patch_live`](crate::CodeBlock::patch_live)) that this
    /// instruction set or strategy cannot make safe for threads running the code meanwhile.
    #[error("not a safe live patch: {reason}; use a write scope and publish_live instead")]
    NotLivePatchable {
        /// Which rule the patch breaks.
        reason: &'static str,
    },
    /// A memory region shared with a parent process cannot be written in a child after
    /// `fork()`; the child keeps a private, read-only copy of the code.
    #[error(
        "this process is a fork() child: code shared with the parent is kept as a private read-only copy, and new allocations and writes through the {strategy} strategy are refused; create a new JitMemory in the child"
    )]
    ForkedChild {
        /// The strategy of the memory that was used.
        strategy: Strategy,
    },
    /// An earlier failure to restore execute rights (for example `mprotect` failing when a write
    /// scope was dropped) left this memory in a state we cannot vouch for.
    #[error("this memory is poisoned: restoring execute rights failed earlier ({0})")]
    Poisoned(String),
    /// Debug information (the `debuginfo` feature) that cannot be made or registered: a bad
    /// symbol name, CFI that does not encode, a target without the needed interface.
    #[error("debug info: {0}")]
    DebugInfo(String),
    /// No room for a region within reach of the address given to
    /// [`Config::near`](crate::Config::near): the address space there is taken. Code is never
    /// placed farther instead.
    #[error(
        "no room for a region of {len} bytes within {max_distance} bytes of {address:#x}: the address space there is taken (Config::near never places code farther)"
    )]
    NoRoomNear {
        /// The address code must stay near.
        address: usize,
        /// The largest distance allowed from it, for every byte.
        max_distance: usize,
        /// Bytes the region needed (its guard pages included).
        len: usize,
    },
    /// An option of the configuration is not available on this platform or CPU.
    #[error("{feature} is not available here: {reason}")]
    FeatureUnsupported {
        /// The option, as the configuration names it.
        feature: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// An offset given to
    /// [`CodeBlock::allow_indirect_calls`](crate::CodeBlock::allow_indirect_calls) cannot be an
    /// indirect-call target: outside the block, or at an address that is not a multiple of 16
    /// (Control Flow Guard's granularity).
    #[error("offset {offset} cannot be marked as an indirect-call target: {reason}")]
    BadCallTarget {
        /// The offset in the block.
        offset: usize,
        /// Why, in words.
        reason: &'static str,
    },
    /// A broken internal invariant: a bug in jitmem. Please report it.
    #[error("internal error in jitmem: {0}")]
    Internal(&'static str),
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps the calling thread's last OS error (`errno`).
    #[cfg_attr(
        not(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            all(feature = "debuginfo", target_os = "linux")
        )),
        expect(
            dead_code,
            reason = "only the OS backends and Linux's jitdump use it; other targets have none"
        )
    )]
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::Os {
            op,
            source: std::io::Error::last_os_error(),
        }
    }
}
