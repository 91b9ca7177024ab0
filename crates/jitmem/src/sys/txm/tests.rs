//! The TXM handshake's logic against scripted debuggers: a pure fake host on every target,
//! and on AArch64 the real trap functions answered by a fake debugger (a SIGTRAP handler that
//! plays the script's part: reads x16/x0/x1 and the `brk` immediate, writes x0, moves the pc
//! past the `brk`), plus the SIGTRAP guard with no debugger at all (in a child process).

use std::cell::RefCell;
use std::sync::atomic::AtomicU8;

use super::*;

/// The scripts a fake host plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    /// UTM/DolphiniOS: prepares on `brk #0x69`, leaves x0 alone.
    Legacy,
    /// StikDebug universal.js: sentinel on `brk #0x69`, allocates on command 1 with x0 = 0.
    Universal,
    /// Nobody answers (the guard catches every trap).
    Nobody,
}

const OWN: u64 = 0x1_2340_0000;
const ALLOCATED: u64 = 0x8_0000_0000;
const LEN: u64 = 512 << 20;

struct FakeHost {
    attached: io::Result<bool>,
    script: Script,
    traps: RefCell<Vec<(Trap, u64, u64)>>,
    unmapped: RefCell<Vec<u64>>,
}

impl FakeHost {
    fn new(script: Script) -> FakeHost {
        FakeHost {
            attached: Ok(true),
            script,
            traps: RefCell::new(Vec::new()),
            unmapped: RefCell::new(Vec::new()),
        }
    }
}

impl TxmHost for FakeHost {
    fn debugger_attached(&self) -> io::Result<bool> {
        match &self.attached {
            Ok(b) => Ok(*b),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
    fn trap(&self, trap: Trap, x0: u64, x1: u64) -> Option<u64> {
        self.traps.borrow_mut().push((trap, x0, x1));
        match (self.script, trap) {
            (Script::Nobody, _) => None,
            (Script::Legacy, Trap::Legacy) => Some(x0),
            (Script::Legacy, Trap::Universal(_)) => panic!("a legacy script hangs on brk #0xf00d"),
            // StikDebug's P0=E0000069: four little-endian bytes, the upper half left alone.
            (Script::Universal, Trap::Legacy) => Some((x0 & !0xffff_ffff) | SENTINEL_LE as u64),
            (Script::Universal, Trap::Universal(CMD_PREPARE_REGION)) => {
                Some(if x0 == 0 { ALLOCATED } else { x0 })
            }
            (Script::Universal, Trap::Universal(_)) => Some(x0),
        }
    }
    fn map_own(&self, _len: u64) -> Result<u64, String> {
        Ok(OWN)
    }
    fn unmap_own(&self, addr: u64, _len: u64) {
        self.unmapped.borrow_mut().push(addr);
    }
}

#[test]
fn sentinel_is_recognised_in_both_byte_orders_whatever_the_upper_half() {
    assert!(is_universal_sentinel(0xE000_0069));
    assert!(is_universal_sentinel(0x6900_00E0));
    assert!(is_universal_sentinel(0xCCCC_CCCC_6900_00E0));
    assert!(is_universal_sentinel(0x0000_0001_E000_0069));
    assert!(!is_universal_sentinel(0));
    assert!(!is_universal_sentinel(OWN));
    assert!(!is_universal_sentinel(ALLOCATED));
    // Every 16 KiB-aligned address is even, the sentinels are odd: no address is mistaken.
    for page in (0..1u64 << 36).step_by(1 << 30).map(|a| a + 0x4000) {
        assert!(!is_universal_sentinel(page));
    }
}

#[test]
fn trap_decision_refuses_on_a_failed_check_unless_the_app_says_so() {
    let failed = || Err(io::Error::other("sysctl refused"));
    assert_eq!(trap_decision(&Ok(true), false, false), TrapDecision::Trap);
    assert!(matches!(
        trap_decision(&Ok(false), false, false),
        TrapDecision::Refuse(_)
    ));
    assert!(matches!(
        trap_decision(&Ok(false), true, false),
        TrapDecision::Refuse(_)
    ));
    // The old code trapped here (`if let Ok(false)`): a failed check is "not attached".
    assert!(matches!(
        trap_decision(&failed(), false, false),
        TrapDecision::Refuse(_)
    ));
    assert_eq!(trap_decision(&failed(), true, false), TrapDecision::Trap);
    // After jitmem sent the detach command, nothing traps any more.
    assert!(matches!(
        trap_decision(&Ok(true), true, true),
        TrapDecision::Refuse(_)
    ));
}

#[test]
fn regions_must_be_16k_pages_below_64_gib() {
    assert!(check_region(0x1_0000_0000, 512 << 20).is_ok());
    assert!(check_region(ADDRESS_LIMIT - 0x4000, 0x4000).is_ok());
    assert!(check_region(ADDRESS_LIMIT - 0x4000, 0x8000).is_err());
    assert!(check_region(ADDRESS_LIMIT, 0x4000).is_err());
    assert!(check_region(0x1_0000_1000, 0x4000).is_err());
    assert!(check_region(0x1_0000_0000, 0x5000).is_err());
    assert!(check_region(0, 0x4000).is_err());
    assert!(check_region(u64::MAX - 0x3fff, 0x4000).is_err());
}

#[test]
fn debugger_regions_are_released_once_and_only_when_exact() {
    let regions = DebuggerRegions::new();
    regions.insert(ALLOCATED as usize, LEN as usize);
    // Any other range (our own RW view, a different length) is unmapped as usual.
    assert!(!regions.release(OWN as usize, LEN as usize));
    assert!(!regions.release(ALLOCATED as usize, 0x4000));
    assert!(regions.release(ALLOCATED as usize, LEN as usize));
    assert!(!regions.release(ALLOCATED as usize, LEN as usize));
}

#[test]
fn placement_hints_stay_below_64_gib() {
    let hints: Vec<u64> = placement_hints(LEN).collect();
    assert_eq!(hints.first(), Some(&(4 << 30)));
    assert!(hints.iter().all(|&h| check_region(h, LEN).is_ok()));
    assert_eq!(hints.len(), 15);
    // A region that only fits at the very bottom gets no hint; one larger than 64 GiB neither.
    assert_eq!(placement_hints(ADDRESS_LIMIT - (2 << 30)).count(), 0);
    assert_eq!(placement_hints(ADDRESS_LIMIT + 0x4000).count(), 0);
}

#[test]
fn txm_handshake_bool_is_auto_shorthand() {
    use crate::Config;
    assert_eq!(
        Config::new().txm_handshake(true).requested_txm(),
        Some(TxmProtocol::Auto)
    );
    assert_eq!(Config::new().txm_handshake(false).requested_txm(), None);
    assert_eq!(
        Config::new()
            .txm(Some(TxmProtocol::Universal))
            .requested_txm(),
        Some(TxmProtocol::Universal)
    );
}

#[test]
fn auto_under_the_legacy_script_prepares_its_own_region_and_remembers() {
    let host = FakeHost::new(Script::Legacy);
    let detected = AtomicU8::new(0);
    let got = handshake(&host, TxmProtocol::Auto, LEN, false, &detected, false).unwrap();
    assert_eq!(got.protocol, TxmProtocol::Legacy);
    assert_eq!(got.region, Region::Own(OWN));
    assert_eq!(*host.traps.borrow(), vec![(Trap::Legacy, OWN, LEN)]);
    assert!(host.unmapped.borrow().is_empty());
    assert_eq!(
        decode(detected.load(Ordering::Relaxed)),
        Some(TxmProtocol::Legacy)
    );
}

#[test]
fn auto_under_the_universal_script_switches_to_a_debugger_allocated_region() {
    let host = FakeHost::new(Script::Universal);
    let detected = AtomicU8::new(0);
    let got = handshake(&host, TxmProtocol::Auto, LEN, false, &detected, false).unwrap();
    assert_eq!(got.protocol, TxmProtocol::Universal);
    assert_eq!(got.region, Region::Debugger(ALLOCATED));
    assert_eq!(
        *host.traps.borrow(),
        vec![
            (Trap::Legacy, OWN, LEN),
            (Trap::Universal(CMD_PREPARE_REGION), 0, LEN)
        ]
    );
    // The region jitmem mapped for the probe was not prepared: it is unmapped.
    assert_eq!(*host.unmapped.borrow(), vec![OWN]);
    // Detected once: the next arena goes straight to the universal request.
    let again = FakeHost::new(Script::Universal);
    let got = handshake(&again, TxmProtocol::Auto, LEN, false, &detected, false).unwrap();
    assert_eq!(got.region, Region::Debugger(ALLOCATED));
    assert_eq!(
        *again.traps.borrow(),
        vec![(Trap::Universal(CMD_PREPARE_REGION), 0, LEN)]
    );
}

#[test]
fn legacy_under_the_universal_script_is_an_error_not_a_silent_success() {
    // Defect 1 of issue 14: the reply was ignored, the region reported prepared.
    let host = FakeHost::new(Script::Universal);
    let detected = AtomicU8::new(0);
    let e = handshake(&host, TxmProtocol::Legacy, LEN, false, &detected, false).unwrap_err();
    assert!(e.contains("sentinel"), "{e}");
    assert_eq!(*host.unmapped.borrow(), vec![OWN]);
}

#[test]
fn no_trap_without_a_debugger_and_unanswered_traps_fail() {
    let mut host = FakeHost::new(Script::Universal);
    host.attached = Ok(false);
    let detected = AtomicU8::new(0);
    assert!(handshake(&host, TxmProtocol::Auto, LEN, true, &detected, false).is_err());
    assert!(host.traps.borrow().is_empty(), "trapped without a debugger");
    host.attached = Err(io::Error::other("sysctl refused"));
    assert!(handshake(&host, TxmProtocol::Auto, LEN, false, &detected, false).is_err());
    assert!(host.traps.borrow().is_empty(), "trapped on a failed check");

    let nobody = FakeHost::new(Script::Nobody);
    let e = handshake(&nobody, TxmProtocol::Auto, LEN, false, &detected, false).unwrap_err();
    assert!(e.contains("nobody answered"), "{e}");
    assert_eq!(*nobody.unmapped.borrow(), vec![OWN]);
    assert_eq!(detected.load(Ordering::Relaxed), 0, "nothing detected");
    let e = handshake(
        &nobody,
        TxmProtocol::Universal,
        LEN,
        false,
        &detected,
        false,
    )
    .unwrap_err();
    assert!(e.contains("nobody answered"), "{e}");
}

#[test]
fn detach_only_after_the_universal_protocol_and_only_once() {
    let host = FakeHost::new(Script::Universal);
    let detected = AtomicU8::new(0);
    let detached = std::sync::atomic::AtomicBool::new(false);
    assert!(detach(&host, false, &detected, &detached).is_err());
    assert!(host.traps.borrow().is_empty());
    remember(&detected, TxmProtocol::Universal);
    detach(&host, false, &detected, &detached).unwrap();
    assert_eq!(
        *host.traps.borrow(),
        vec![(Trap::Universal(CMD_DETACH), 0, 0)]
    );
    assert!(detach(&host, false, &detected, &detached).is_err());
    assert_eq!(host.traps.borrow().len(), 1, "trapped after the detach");
    let e = handshake(&host, TxmProtocol::Universal, LEN, false, &detected, true).unwrap_err();
    assert!(e.contains("detach"), "{e}");
}

#[test]
fn a_debugger_region_above_64_gib_or_a_failed_allocation_is_refused() {
    struct Far;
    impl TxmHost for Far {
        fn debugger_attached(&self) -> io::Result<bool> {
            Ok(true)
        }
        fn trap(&self, _: Trap, _: u64, _: u64) -> Option<u64> {
            Some(ADDRESS_LIMIT)
        }
        fn map_own(&self, _: u64) -> Result<u64, String> {
            Ok(OWN)
        }
        fn unmap_own(&self, _: u64, _: u64) {}
    }
    let detected = AtomicU8::new(0);
    assert!(handshake(&Far, TxmProtocol::Universal, LEN, false, &detected, false).is_err());
    assert!(
        handshake(
            &FakeHost::new(Script::Universal),
            TxmProtocol::Universal,
            0x5000,
            false,
            &detected,
            false
        )
        .is_err()
    );
}

/// The trap functions, their bytes decoded by an independent decoder, and the register
/// contract exercised by a fake debugger in a SIGTRAP handler.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
mod aarch64 {
    use std::process::Command;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

    use yaxpeax_arch::{Decoder, U8Reader};
    use yaxpeax_arm::armv8::a64::InstDecoder;

    use super::*;

    fn disassemble(f: unsafe extern "C" fn(u64, u64) -> u64, count: usize) -> Vec<String> {
        // SAFETY: the function's code is mapped readable (text segment) for `count` words.
        let bytes = unsafe { std::slice::from_raw_parts(f as usize as *const u8, count * 4) };
        let mut reader = U8Reader::new(bytes);
        (0..count)
            .map(|_| {
                InstDecoder::default()
                    .decode(&mut reader)
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn trap_sequences_decode_as_the_scripts_expect() {
        assert_eq!(disassemble(legacy_trap, 2), ["brk #0x69", "ret"]);
        assert_eq!(
            disassemble(universal_prepare_trap, 3),
            ["mov x16, #0x1", "brk #0xf00d", "ret"]
        );
        assert_eq!(
            disassemble(universal_detach_trap, 3),
            ["mov x16, #0x0", "brk #0xf00d", "ret"]
        );
        assert_eq!(
            disassemble(universal_script_trap, 3),
            ["mov x16, #0x2", "brk #0xf00d", "ret"]
        );
        // The guard recognises exactly the brk of each sequence.
        let legacy = legacy_trap as *const () as usize;
        let prepare = universal_prepare_trap as *const () as usize;
        assert!(is_our_brk(legacy));
        assert!(!is_our_brk(legacy + 4));
        assert!(is_our_brk(prepare + 4));
        assert!(!is_our_brk(prepare));
    }

    // ---- the fake debugger ----------------------------------------------------------------

    /// 1 = legacy script, 2 = universal script.
    static MODE: AtomicU8 = AtomicU8::new(0);
    /// (brk immediate, x16, x0, x1) of each trap, up to 8.
    static LOG: [[AtomicU64; 4]; 8] = [const { [const { AtomicU64::new(0) }; 4] }; 8];
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static SERIAL: Mutex<()> = Mutex::new(());

    extern "C" fn fake_debugger(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: SA_SIGINFO handler: ctx is the ucontext; x16 is regs[16].
        unsafe {
            let (regs, pc) = super::super::trap::context_regs(ctx);
            let word = *((*pc) as usize as *const u32);
            let imm = u64::from((word >> 5) & 0xffff);
            let (x0, x1, x16) = (*regs, *regs.add(1), *regs.add(16));
            let n = COUNT.fetch_add(1, Ordering::SeqCst);
            if n < LOG.len() {
                for (slot, v) in LOG[n].iter().zip([imm, x16, x0, x1]) {
                    slot.store(v, Ordering::SeqCst);
                }
            }
            let universal = MODE.load(Ordering::SeqCst) == 2;
            match imm {
                0x69 if universal => *regs = (x0 & !0xffff_ffff) | u64::from(SENTINEL_LE),
                0x69 => {}
                0xf00d if universal && x16 == CMD_PREPARE_REGION && x0 == 0 => *regs = ALLOCATED,
                0xf00d if universal => {}
                _ => {
                    // Not a script trap (or a legacy script seeing 0xf00d): let it kill.
                    libc::signal(libc::SIGTRAP, libc::SIG_DFL);
                    return;
                }
            }
            *pc += 4;
        }
    }

    /// Installs the fake debugger for one test; restores the default on drop.
    struct Installed(
        #[allow(dead_code, reason = "held for the test")] std::sync::MutexGuard<'static, ()>,
    );

    fn install(mode: u8) -> Installed {
        let lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        MODE.store(mode, Ordering::SeqCst);
        COUNT.store(0, Ordering::SeqCst);
        // SAFETY: a zeroed sigaction, filled in; the handler only touches the ucontext.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = fake_debugger as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGTRAP, &action, std::ptr::null_mut()),
                0
            );
        }
        Installed(lock)
    }

    impl Drop for Installed {
        fn drop(&mut self) {
            // SAFETY: back to the default disposition.
            unsafe { libc::signal(libc::SIGTRAP, libc::SIG_DFL) };
        }
    }

    fn log() -> Vec<[u64; 4]> {
        (0..COUNT.load(Ordering::SeqCst).min(LOG.len()))
            .map(|i| std::array::from_fn(|j| LOG[i][j].load(Ordering::SeqCst)))
            .collect()
    }

    /// The real trap functions, answered by the fake debugger (no guard: the fake handler is
    /// the "debugger").
    struct SignalHost;
    impl TxmHost for SignalHost {
        fn debugger_attached(&self) -> io::Result<bool> {
            Ok(true)
        }
        fn trap(&self, trap: Trap, x0: u64, x1: u64) -> Option<u64> {
            let (f, _) = trap_fn(trap);
            // SAFETY: the fake debugger answers every trap of these sequences.
            Some(unsafe { f(x0, x1) })
        }
        fn map_own(&self, _: u64) -> Result<u64, String> {
            Ok(OWN)
        }
        fn unmap_own(&self, _: u64, _: u64) {}
    }

    #[test]
    fn fake_universal_script_is_detected_through_the_real_traps() {
        let _fake = install(2);
        let detected = AtomicU8::new(0);
        let got = handshake(&SignalHost, TxmProtocol::Auto, LEN, false, &detected, false).unwrap();
        assert_eq!(got.protocol, TxmProtocol::Universal);
        assert_eq!(got.region, Region::Debugger(ALLOCATED));
        // The registers the script read: brk #0x69 with x0 = address, x1 = length; then
        // brk #0xf00d with x16 = 1, x0 = 0, x1 = length.
        assert_eq!(log(), [[0x69, log()[0][1], OWN, LEN], [0xf00d, 1, 0, LEN]]);
        let flag = AtomicBool::new(false);
        detach(&SignalHost, false, &detected, &flag).unwrap();
        assert_eq!(log()[2], [0xf00d, 0, 0, 0]);
    }

    #[test]
    fn fake_legacy_script_is_detected_through_the_real_traps() {
        let _fake = install(1);
        let detected = AtomicU8::new(0);
        let got = handshake(&SignalHost, TxmProtocol::Auto, LEN, false, &detected, false).unwrap();
        assert_eq!(got.protocol, TxmProtocol::Legacy);
        assert_eq!(got.region, Region::Own(OWN));
        assert_eq!(log().len(), 1);
        assert_eq!(log()[0][0], 0x69);
        assert_eq!(log()[0][2..], [OWN, LEN]);
    }

    const CHILD: &str = "JITMEM_TXM_GUARD_CHILD";

    /// Without a debugger a `brk` raises SIGTRAP, which kills the process: the guard turns the
    /// one probing trap into "not answered". Runs in a child (without the guard it dies).
    #[test]
    fn guard_survives_an_unanswered_trap() {
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(guarded(Trap::Legacy, OWN, LEN), Ok(None));
            assert_eq!(
                guarded(Trap::Universal(CMD_PREPARE_REGION), 0, LEN),
                Ok(None)
            );
            // The disposition is back to the default afterwards.
            // SAFETY: reads the current disposition only.
            let old = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut old);
                old
            };
            assert_eq!(old.sa_sigaction, libc::SIG_DFL);
            println!("GUARD-SURVIVED");
            return;
        }
        let out = child(
            CHILD,
            "sys::txm::tests::aarch64::guard_survives_an_unanswered_trap",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("GUARD-SURVIVED"),
            "child: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A trap of ours outside the guard still kills (the guard is gone after the call), so
    /// the guard hides nothing: the child must die of SIGTRAP.
    #[test]
    fn an_unguarded_trap_still_kills() {
        const DIE: &str = "JITMEM_TXM_DIE_CHILD";
        if std::env::var_os(DIE).is_some() {
            let _ = guarded(Trap::Legacy, OWN, LEN);
            // SAFETY: deliberately unguarded: the process must die here.
            unsafe { legacy_trap(OWN, LEN) };
            println!("SURVIVED");
            return;
        }
        let out = child(
            DIE,
            "sys::txm::tests::aarch64::an_unguarded_trap_still_kills",
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGTRAP), "{:?}", out.status);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("SURVIVED"));
    }

    /// Runs this test binary's test `name` alone with `env` set (under `JITMEM_TEST_RUNNER`,
    /// e.g. qemu-user, when the tests run emulated).
    fn child(env: &str, name: &str) -> std::process::Output {
        let exe = std::env::current_exe().unwrap();
        let runner = std::env::var("JITMEM_TEST_RUNNER").unwrap_or_default();
        let mut words = runner.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(env, "1")
            .output()
            .unwrap()
    }
}
