//! The TXM handshakes of iOS 26 (seed 000's LuckTXM): how an app asks the debugger-side script
//! of its JIT enabler to prepare an executable region, in the two protocols in use, with the
//! detection between them and the guard that keeps a probe from killing the process.
//!
//! What the scripts do (read in their published sources, not run here):
//! - **Legacy** (UTM's and DolphiniOS's `UTM-Dolphin.js`-style scripts; DolphiniOS
//!   `Source/Core/Common/MemoryUtil_iOS_LuckTXM.cpp`): `brk #0x69` with x0 = address and
//!   x1 = length of an executable region the app mapped; the script prepares it and resumes
//!   after the `brk`. Such a script does not know `brk #0xf00d` and never advances the pc
//!   past it (the app hangs), which is why detection starts with `brk #0x69`.
//! - **Universal** (StikDebug's `universal.js`, "Universal JIT Script"): `mov x16, #command`
//!   then `brk #0xf00d`; command 0 = detach (`D`), 1 = prepare region (x0 = address, or 0 to
//!   have the debugger allocate an RX region of x1 bytes with debugserver's `_M<len>,rx`; the
//!   address comes back in x0), 2 = new breakpoints (x0 = pointer, x1 = length of a script
//!   the debugger evaluates). It answers `brk #0x69` with `P0=E0000069`: the gdb-remote `P`
//!   packet takes the register's bytes in target (little-endian) order, so x0's low 32 bits
//!   become `0x690000E0`, and with 4 bytes for an 8-byte register the upper half may keep what
//!   was there (later StikDebug versions set all of x0 to `0x690000E0`). The value as written,
//!   `0xE0000069`, is accepted too. Both are odd numbers, so they can never be a page address.
//! - The script's `prepare_memory_region` (StikDebug `IDeviceJSBridgeDebugProxy.m`,
//!   `getBulkMemWriteCommand`/`writeAddress`) writes one byte (`0x69`) to every 16 KiB page of
//!   the region with `M<addr>,1:69` packets, formatting the address with **9 hex digits** (an
//!   address at or above 64 GiB is truncated: the write lands elsewhere) and counting pages as
//!   `length >> 14` (a tail shorter than 16 KiB is not prepared). So every page of the region
//!   becomes dirty, and jitmem refuses regions that end above 64 GiB or are not 16 KiB
//!   multiples before it traps.
//! - After the debugger detached, any `brk` kills the process with `SIGTRAP`: jitmem never
//!   traps after it sent command 0 itself, and checks that a debugger is attached (`P_TRACED`)
//!   first; a failed check counts as "not attached" unless the app states otherwise.
//!
//! The trap sequences are naked functions (their bytes are decoded in the tests with
//! yaxpeax-arm), compiled on every AArch64 target, so that the detection logic runs on Linux
//! AArch64 under qemu-user with a fake debugger (a SIGTRAP handler that plays the script's
//! part). The OS-specific questions go through [`TxmHost`], which the tests replace.

#![cfg_attr(
    not(all(target_vendor = "apple", target_arch = "aarch64")),
    allow(
        dead_code,
        reason = "only iOS devices trap; other targets compile it for the tests"
    )
)]

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::sys::TxmProtocol;

/// An iOS device, where TXM and the debugger-side scripts exist. Mac Catalyst
/// (`target_abi = "macabi"`) runs on macOS and the simulator on the Mac's kernel: neither has
/// TXM, and both the handshake and the probe's iOS refusals leave them out (issue 14, defect
/// 2: the two `cfg`s used to disagree about Mac Catalyst).
pub(crate) const TXM_DEVICE: bool = cfg!(all(
    target_os = "ios",
    target_arch = "aarch64",
    not(any(target_abi = "sim", target_abi = "macabi"))
));

/// Universal command 0: the debugger detaches.
pub(crate) const CMD_DETACH: u64 = 0;
/// Universal command 1: prepare a region (x0 = address or 0, x1 = length; x0 = address back).
pub(crate) const CMD_PREPARE_REGION: u64 = 1;
/// Universal command 2: hand the script more script text (x0 = pointer, x1 = length).
pub(crate) const CMD_NEW_BREAKPOINTS: u64 = 2;
/// The universal script's answer to `brk #0x69`, as StikDebug writes it (`P0=E0000069`).
pub(crate) const SENTINEL: u32 = 0xE000_0069;
/// The same answer as it really lands in x0 (the `P` packet's bytes are little-endian).
pub(crate) const SENTINEL_LE: u32 = 0x6900_00E0;
/// StikDebug writes region addresses with 9 hex digits: regions must end at or below 64 GiB.
pub(crate) const ADDRESS_LIMIT: u64 = 1 << 36;
/// StikDebug prepares `length >> 14` pages of 16 KiB.
pub(crate) const PREPARE_GRANULE: u64 = 16 << 10;

/// Whether x0 after `brk #0x69` is the universal script's sentinel (either byte order; the
/// upper half of x0 is not looked at, since the script may leave it alone).
pub(crate) fn is_universal_sentinel(x0: u64) -> bool {
    let low = x0 as u32;
    low == SENTINEL || low == SENTINEL_LE
}

/// Whether jitmem may trap, from what the OS said about the debugger and what the app stated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TrapDecision {
    /// Trap (still under the SIGTRAP guard).
    Trap,
    /// Do not trap, for this reason.
    Refuse(String),
}

/// Defect 2 of issue 14: a failed `P_TRACED` check used to let the trap through (`if let
/// Ok(false)`), and a trap without a debugger kills the process. Now: attached → trap; not
/// attached → refuse; the check failed → refuse, unless the app stated that its debugger
/// answers the traps ([`MapOptions::txm_debugger_speaks_protocol`](crate::sys::MapOptions)).
/// `detached`: jitmem itself sent the universal detach command earlier in this process.
pub(crate) fn trap_decision(
    attached: &io::Result<bool>,
    app_states_debugger: bool,
    detached: bool,
) -> TrapDecision {
    if detached {
        return TrapDecision::Refuse(
            "the debugger-side script was told to detach (universal command 0) earlier in this process: any brk now kills the process with SIGTRAP".to_owned(),
        );
    }
    match attached {
        Ok(true) => TrapDecision::Trap,
        Ok(false) => TrapDecision::Refuse(
            "no debugger is attached (P_TRACED is clear): the TXM trap would kill the process with SIGTRAP. Attach the JIT enabler (StikDebug) first".to_owned(),
        ),
        Err(_) if app_states_debugger => TrapDecision::Trap,
        Err(e) => TrapDecision::Refuse(format!(
            "whether a debugger is attached cannot be read ({e}), which counts as \"not attached\"; if the app knows its JIT enabler is attached, say so with Config::txm_debugger_speaks_protocol(true)"
        )),
    }
}

/// Checks an executable region before it is announced: StikDebug's prepare step formats
/// addresses with 9 hex digits and prepares `length >> 14` pages of 16 KiB.
pub(crate) fn check_region(addr: u64, len: u64) -> Result<(), String> {
    if addr == 0 || len == 0 {
        return Err(format!("empty or null region {addr:#x} + {len:#x}"));
    }
    if addr % PREPARE_GRANULE != 0 || len % PREPARE_GRANULE != 0 {
        return Err(format!(
            "the region {addr:#x} + {len:#x} is not made of whole 16 KiB pages: StikDebug prepares length >> 14 pages of 16 KiB, a shorter tail would stay unprepared"
        ));
    }
    match addr.checked_add(len) {
        Some(end) if end <= ADDRESS_LIMIT => Ok(()),
        _ => Err(format!(
            "the region {addr:#x} + {len:#x} ends above 64 GiB: StikDebug writes page addresses with 9 hex digits, so its prepare step would write into other memory"
        )),
    }
}

/// Addresses to ask `mmap` for (hints, never `MAP_FIXED`) when the kernel placed a legacy
/// region above 64 GiB: every 4 GiB from 4 GiB up to the last start that still ends at or below
/// 64 GiB, for a region of `len` bytes. Empty when `len` does not fit below 64 GiB.
pub(crate) fn placement_hints(len: u64) -> impl Iterator<Item = u64> {
    const STEP: u64 = 4 << 30;
    let last = ADDRESS_LIMIT.saturating_sub(len);
    (1..ADDRESS_LIMIT / STEP)
        .map(|i| i * STEP)
        .take_while(move |&a| a <= last)
}

/// One trap of either protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trap {
    /// `brk #0x69`.
    Legacy,
    /// `mov x16, #command; brk #0xf00d`.
    Universal(u64),
}

/// What the handshake needs from the OS, replaced by a fake in the tests.
pub(crate) trait TxmHost {
    /// Whether a debugger is attached now (`P_TRACED` on Apple, `TracerPid` on Linux).
    fn debugger_attached(&self) -> io::Result<bool>;
    /// Executes one trap with x0 and x1; `None` when nobody answered it (the SIGTRAP guard
    /// caught it), else x0 afterwards.
    fn trap(&self, trap: Trap, x0: u64, x1: u64) -> Option<u64>;
    /// Maps a fresh executable region of `len` bytes for the legacy request (its address).
    fn map_own(&self, len: u64) -> Result<u64, String>;
    /// Unmaps a region [`TxmHost::map_own`] returned.
    fn unmap_own(&self, addr: u64, len: u64);
}

/// Where the prepared executable region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Region {
    /// jitmem mapped it (legacy protocol): jitmem unmaps it.
    Own(u64),
    /// The debugger allocated it (universal protocol): jitmem never unmaps it.
    Debugger(u64),
}

/// The outcome of a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prepared {
    /// The protocol that was spoken (never `Auto`).
    pub(crate) protocol: TxmProtocol,
    pub(crate) region: Region,
}

/// The executable regions a debugger allocated (universal protocol), which jitmem mirrors but
/// must never unmap: the Apple `unmap_view` asks [`DebuggerRegions::release`] first and leaves
/// such a region mapped.
pub(crate) struct DebuggerRegions(std::sync::Mutex<Vec<(usize, usize)>>);

impl DebuggerRegions {
    pub(crate) const fn new() -> DebuggerRegions {
        DebuggerRegions(std::sync::Mutex::new(Vec::new()))
    }

    /// Records a region the debugger allocated.
    pub(crate) fn insert(&self, addr: usize, len: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((addr, len));
    }

    /// Whether `[addr, addr + len)` is such a region (it is forgotten: the caller drops its
    /// view of it and must not unmap it).
    pub(crate) fn release(&self, addr: usize, len: usize) -> bool {
        let mut regions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match regions.iter().position(|&r| r == (addr, len)) {
            Some(i) => {
                regions.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// The debugger-allocated regions of this process.
pub(crate) static DEBUGGER_REGIONS: DebuggerRegions = DebuggerRegions::new();

/// The protocol Auto detected in this process: 0 = not yet, 1 = Legacy, 2 = Universal.
pub(crate) static DETECTED: AtomicU8 = AtomicU8::new(0);
/// Set once jitmem sent the universal detach command.
pub(crate) static DETACHED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn encode(p: TxmProtocol) -> u8 {
    match p {
        TxmProtocol::Legacy => 1,
        TxmProtocol::Universal => 2,
        TxmProtocol::Auto => 0,
    }
}

fn decode(v: u8) -> Option<TxmProtocol> {
    match v {
        1 => Some(TxmProtocol::Legacy),
        2 => Some(TxmProtocol::Universal),
        _ => None,
    }
}

/// Announces (legacy) or obtains (universal) a prepared executable region of `len` bytes.
/// `Auto` detects once (`detected` keeps the answer) by sending the legacy request: the
/// universal script's sentinel means nothing was prepared, so jitmem unmaps its own region
/// and asks the universal script to allocate one.
pub(crate) fn handshake(
    host: &dyn TxmHost,
    protocol: TxmProtocol,
    len: u64,
    app_states_debugger: bool,
    detected: &AtomicU8,
    detached: bool,
) -> Result<Prepared, String> {
    if let TrapDecision::Refuse(why) =
        trap_decision(&host.debugger_attached(), app_states_debugger, detached)
    {
        return Err(why);
    }
    let protocol = match protocol {
        TxmProtocol::Auto => decode(detected.load(Ordering::Acquire)).unwrap_or(TxmProtocol::Auto),
        p => p,
    };
    if protocol == TxmProtocol::Universal {
        return universal(host, len).map(|addr| Prepared {
            protocol,
            region: Region::Debugger(addr),
        });
    }
    let own = host.map_own(len)?;
    if let Err(e) = check_region(own, len) {
        host.unmap_own(own, len);
        return Err(e);
    }
    match host.trap(Trap::Legacy, own, len) {
        None => {
            host.unmap_own(own, len);
            Err(not_answered("brk #0x69"))
        }
        Some(x0) if is_universal_sentinel(x0) => {
            host.unmap_own(own, len);
            if protocol == TxmProtocol::Legacy {
                return Err(format!(
                    "the debugger-side script answered brk #0x69 with the universal script's sentinel ({x0:#x}): it speaks the universal protocol and prepared nothing. Use TxmProtocol::Universal or TxmProtocol::Auto"
                ));
            }
            detected.store(encode(TxmProtocol::Universal), Ordering::Release);
            universal(host, len).map(|addr| Prepared {
                protocol: TxmProtocol::Universal,
                region: Region::Debugger(addr),
            })
        }
        Some(_) => {
            if protocol == TxmProtocol::Auto {
                detected.store(encode(TxmProtocol::Legacy), Ordering::Release);
            }
            Ok(Prepared {
                protocol: TxmProtocol::Legacy,
                region: Region::Own(own),
            })
        }
    }
}

fn not_answered(what: &str) -> String {
    format!(
        "nobody answered {what}: no JIT enabler served the trap (the SIGTRAP guard caught it), so no region was prepared"
    )
}

/// Universal command 1 with x0 = 0: the debugger allocates and prepares `len` bytes.
fn universal(host: &dyn TxmHost, len: u64) -> Result<u64, String> {
    if len == 0 || len % PREPARE_GRANULE != 0 {
        return Err(format!(
            "{len:#x} bytes is not a whole number of 16 KiB pages, which StikDebug's prepare step needs"
        ));
    }
    let Some(addr) = host.trap(Trap::Universal(CMD_PREPARE_REGION), 0, len) else {
        return Err(not_answered("brk #0xf00d (prepare region)"));
    };
    if addr == 0 || is_universal_sentinel(addr) {
        return Err(format!(
            "the universal script answered the prepare-region command with {addr:#x}: it could not allocate {len:#x} bytes"
        ));
    }
    check_region(addr, len)
        .map_err(|e| format!("the debugger allocated a region jitmem cannot use: {e}"))?;
    Ok(addr)
}

/// Universal command 0: the script detaches. Refused (no trap) unless the universal protocol
/// was spoken in this process and a debugger is attached.
pub(crate) fn detach(
    host: &dyn TxmHost,
    app_states_debugger: bool,
    detected: &AtomicU8,
    detached: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    if decode(detected.load(Ordering::Acquire)) != Some(TxmProtocol::Universal) {
        return Err(
            "the universal protocol has not been spoken in this process (detach is its command 0); the legacy script has no detach command".to_owned(),
        );
    }
    if let TrapDecision::Refuse(why) = trap_decision(
        &host.debugger_attached(),
        app_states_debugger,
        detached.load(Ordering::Acquire),
    ) {
        return Err(why);
    }
    match host.trap(Trap::Universal(CMD_DETACH), 0, 0) {
        None => Err(not_answered("brk #0xf00d (detach)")),
        Some(_) => {
            detached.store(true, Ordering::Release);
            Ok(())
        }
    }
}

/// The protocol spoken or detected in this process, if any.
pub(crate) fn detected_protocol() -> Option<TxmProtocol> {
    decode(DETECTED.load(Ordering::Acquire))
}

/// Records that a handshake spoke `protocol` (explicit Legacy or Universal), so that a later
/// Auto and [`detach`] know it.
pub(crate) fn remember(detected: &AtomicU8, protocol: TxmProtocol) {
    if protocol != TxmProtocol::Auto {
        detected.store(encode(protocol), Ordering::Release);
    }
}

#[cfg(all(unix, target_arch = "aarch64"))]
#[cfg_attr(
    not(any(target_vendor = "apple", test)),
    allow(
        unused_imports,
        reason = "only iOS devices trap; Linux AArch64 runs the tests"
    )
)]
pub(crate) use self::trap::*;

/// The trap sequences, as naked functions following the C calling convention: x0 and x1 in,
/// x0 out; x16 (IP0, free for the callee to clobber under AAPCS64) carries the universal
/// command. The debugger resumes after the `brk`, so the `ret` returns what it left in x0.
#[cfg(all(unix, target_arch = "aarch64"))]
mod trap {
    /// `brk #0x69; ret`: the legacy request (x0 = address, x1 = length).
    ///
    /// # Safety
    /// Without a debugger serving it, the `brk` raises SIGTRAP: call it under [`guarded`].
    #[unsafe(naked)]
    pub(crate) unsafe extern "C" fn legacy_trap(x0: u64, x1: u64) -> u64 {
        core::arch::naked_asm!("brk #0x69", "ret")
    }

    /// `mov x16, #1; brk #0xf00d; ret`: universal prepare region.
    ///
    /// # Safety
    /// As [`legacy_trap`].
    #[unsafe(naked)]
    pub(crate) unsafe extern "C" fn universal_prepare_trap(x0: u64, x1: u64) -> u64 {
        core::arch::naked_asm!("mov x16, #1", "brk #0xf00d", "ret")
    }

    /// `mov x16, #0; brk #0xf00d; ret`: universal detach.
    ///
    /// # Safety
    /// As [`legacy_trap`].
    #[unsafe(naked)]
    pub(crate) unsafe extern "C" fn universal_detach_trap(x0: u64, x1: u64) -> u64 {
        core::arch::naked_asm!("mov x16, #0", "brk #0xf00d", "ret")
    }

    /// `mov x16, #2; brk #0xf00d; ret`: universal new breakpoints (x0 = script, x1 = length).
    ///
    /// # Safety
    /// As [`legacy_trap`]; x0..x0 + x1 is readable.
    #[unsafe(naked)]
    pub(crate) unsafe extern "C" fn universal_script_trap(x0: u64, x1: u64) -> u64 {
        core::arch::naked_asm!("mov x16, #2", "brk #0xf00d", "ret")
    }

    type TrapFn = unsafe extern "C" fn(u64, u64) -> u64;

    /// The function of a trap, and the offset of its `brk` in it.
    pub(crate) fn trap_fn(trap: super::Trap) -> (TrapFn, usize) {
        match trap {
            super::Trap::Legacy => (legacy_trap, 0),
            super::Trap::Universal(super::CMD_DETACH) => (universal_detach_trap, 4),
            super::Trap::Universal(super::CMD_NEW_BREAKPOINTS) => (universal_script_trap, 4),
            super::Trap::Universal(_) => (universal_prepare_trap, 4),
        }
    }

    /// Whether `pc` is the `brk` of one of the trap functions.
    pub(crate) fn is_our_brk(pc: usize) -> bool {
        [
            super::Trap::Legacy,
            super::Trap::Universal(super::CMD_DETACH),
            super::Trap::Universal(super::CMD_PREPARE_REGION),
            super::Trap::Universal(super::CMD_NEW_BREAKPOINTS),
        ]
        .into_iter()
        .any(|t| {
            let (f, at) = trap_fn(t);
            f as usize + at == pc
        })
    }

    // -----------------------------------------------------------------------------------------
    // The SIGTRAP guard: while one trap runs, a SIGTRAP at one of our `brk`s (nobody answered
    // it: no debugger, so the kernel delivered the signal) is turned into "not answered": x0 = 0
    // and the pc moves past the `brk`. Any other SIGTRAP gets the previous disposition back and
    // re-executes (the default kills the process, as it would have). DolphiniOS's LuckTXM code
    // and other iOS JITs guard their handshake the same way (a SIGTRAP handler around the brk).

    use std::cell::UnsafeCell;
    use std::mem::MaybeUninit;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// One guarded trap at a time (signal dispositions are per process).
    static GUARD: Mutex<()> = Mutex::new(());
    static ARMED: AtomicBool = AtomicBool::new(false);
    static FIRED: AtomicBool = AtomicBool::new(false);

    struct Previous(UnsafeCell<MaybeUninit<libc::sigaction>>);
    // SAFETY: written only while GUARD is held and before ARMED is set; read by the handler
    // (any thread) only while it is set, and by `guarded` under GUARD.
    unsafe impl Sync for Previous {}
    static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));

    /// Reads the pc of the interrupted context.
    ///
    /// # Safety
    /// `ctx` is the third argument of an `SA_SIGINFO` handler.
    #[cfg(target_os = "linux")]
    pub(crate) unsafe fn context_regs(ctx: *mut libc::c_void) -> (*mut u64, *mut u64) {
        let uc = ctx.cast::<libc::ucontext_t>();
        // SAFETY: the kernel passes a valid ucontext_t; mcontext_t holds regs[31] and pc.
        unsafe {
            (
                (&raw mut (*uc).uc_mcontext.regs).cast::<u64>(),
                &raw mut (*uc).uc_mcontext.pc,
            )
        }
    }

    /// The interrupted context's x0..x28 and pc (xnu `__darwin_arm_thread_state64`).
    ///
    /// # Safety
    /// `ctx` is the third argument of an `SA_SIGINFO` handler.
    #[cfg(target_vendor = "apple")]
    pub(crate) unsafe fn context_regs(ctx: *mut libc::c_void) -> (*mut u64, *mut u64) {
        let uc = ctx.cast::<libc::ucontext_t>();
        // SAFETY: xnu passes a valid ucontext_t whose uc_mcontext points at the saved state.
        unsafe {
            let mc = (*uc).uc_mcontext;
            (
                (&raw mut (*mc).__ss.__x).cast::<u64>(),
                &raw mut (*mc).__ss.__pc,
            )
        }
    }

    extern "C" fn on_sigtrap(
        _sig: libc::c_int,
        _info: *mut libc::siginfo_t,
        ctx: *mut libc::c_void,
    ) {
        // SAFETY: installed with SA_SIGINFO, so ctx is the ucontext.
        let (regs, pc) = unsafe { context_regs(ctx) };
        // SAFETY: pointers into the live ucontext.
        let at = unsafe { *pc } as usize;
        if ARMED.load(Ordering::Acquire) && is_our_brk(at) {
            // SAFETY: as above; x0 is regs[0].
            unsafe {
                *regs = 0;
                *pc += 4;
            }
            FIRED.store(true, Ordering::Release);
            return;
        }
        // Not ours: put the previous disposition back; returning re-executes the instruction,
        // which raises SIGTRAP again under it (sigaction is async-signal-safe).
        // SAFETY: PREVIOUS was written before the handler was installed.
        unsafe {
            libc::sigaction(
                libc::SIGTRAP,
                (*PREVIOUS.0.get()).as_ptr(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Runs `trap` with x0 and x1 under the SIGTRAP guard; `None` when the guard caught it.
    pub(crate) fn guarded(trap: super::Trap, x0: u64, x1: u64) -> Result<Option<u64>, String> {
        let _lock = GUARD.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: a zeroed sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigtrap as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: sa_mask is a valid sigset_t to empty.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: GUARD is held and ARMED is clear, so no handler reads PREVIOUS now.
        let previous = unsafe { (*PREVIOUS.0.get()).as_mut_ptr() };
        // SAFETY: installs our handler, saving the old one into PREVIOUS.
        if unsafe { libc::sigaction(libc::SIGTRAP, &action, previous) } != 0 {
            return Err(format!(
                "sigaction(SIGTRAP) for the guard failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        FIRED.store(false, Ordering::Release);
        ARMED.store(true, Ordering::Release);
        let (f, _) = trap_fn(trap);
        // SAFETY: the guard is armed: an unanswered brk comes back as "not answered".
        let x0 = unsafe { f(x0, x1) };
        ARMED.store(false, Ordering::Release);
        // SAFETY: restores what was there before (PREVIOUS was filled by the call above).
        unsafe { libc::sigaction(libc::SIGTRAP, previous, std::ptr::null_mut()) };
        Ok((!FIRED.load(Ordering::Acquire)).then_some(x0))
    }
}

#[cfg(test)]
mod tests;
