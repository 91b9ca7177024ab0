//! The little jitmem needs to know about instruction sets: the trap instruction that fills freed
//! code, and tiny functions for the self-test. The encoders proper live in `jitasm`.

/// The instruction set jitmem was built for.
pub const ARCH: &str = std::env::consts::ARCH;

/// The trap instruction of this ISA, as the bytes that repeat in freed code: `int3` on x86-64,
/// `brk #0xF000` on AArch64 (4-byte aligned; blocks are at least 16-byte granular).
#[cfg(target_arch = "x86_64")]
pub const TRAP: &[u8] = &[0xCC];
/// The trap instruction of this ISA, as the bytes that repeat in freed code: `int3` on x86-64,
/// `brk #0xF000` on AArch64 (4-byte aligned; blocks are at least 16-byte granular).
///
/// `brk #0xF000` ([`A64_BRK_F000`]) on every OS, not `brk #0`: Windows on ARM64 reports only
/// `brk #0xF000` as a breakpoint (`EXCEPTION_BREAKPOINT`; it is what MSVC's `__debugbreak`
/// emits: <https://learn.microsoft.com/en-us/cpp/intrinsics/debugbreak>, "On ARM64, the
/// __debugbreak intrinsic is compiled into the instruction brk #0xF000"; Rust's
/// `core::arch::breakpoint` emits it too), and turns other `brk` immediates such as `brk #0`
/// into an illegal-instruction exception. Linux reports every `brk` immediate as `SIGTRAP`
/// (arch/arm64/kernel/debug-monitors.c, `brk_handler`), and so does qemu-user.
#[cfg(target_arch = "aarch64")]
pub const TRAP: &[u8] = &A64_BRK_F000.to_le_bytes();
/// No JIT on other instruction sets (the platform layer refuses executable memory there), so no
/// freed code is ever filled: a zero byte, an invalid instruction on most ISAs.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const TRAP: &[u8] = &[0];

/// `brk #0xF000`, the A64 trap word that fills freed code on AArch64 (see [`TRAP`]): `BRK` is
/// `0xD420_0000 | imm16 << 5`.
pub const A64_BRK_F000: u32 = 0xD420_0000 | (0xF000 << 5);

/// Fills `code` with trap instructions. `code` starts on an instruction boundary.
pub fn fill_traps(code: &mut [u8]) {
    if let [byte] = TRAP {
        code.fill(*byte);
    } else {
        for (dst, src) in code.iter_mut().zip(TRAP.iter().cycle()) {
            *dst = *src;
        }
    }
}

/// Whether `new` may replace `old` at executable address `addr` while other threads may be
/// executing those bytes, as one single-copy-atomic store and no other synchronisation than the
/// local cache maintenance (what [`CodeBlock::patch_live`](crate::CodeBlock::patch_live) does).
/// `Err` names the rule the patch breaks.
///
/// - **x86-64**: 1, 2, 4 or 8 bytes at an address that is a multiple of the length, so that the
///   store is single-copy atomic and inside one cache line: a thread fetching the bytes sees all
///   old or all new, never a mix. Intel's manual (SDM vol. 3, 8.1.3, "cross-modifying code")
///   asks the *executing* thread to serialise before it runs modified code; JITs such as
///   HotSpot (call-site and entry patching with aligned stores) rely on this narrower atomic
///   form without it, and so does this call. The patched bytes should lie inside one
///   instruction (a `rel32`, an `imm32`, a whole 2/4/8-byte instruction): bytes of two
///   instructions may be seen as a new one then an old one.
/// - **AArch64**: one 4-byte aligned instruction, and both the old and the new instruction are
///   among `B`, `BL`, `NOP`, `ISB`, `BRK`, `SVC`, `HVC`, `SMC`: the only instructions the Arm
///   architecture lets one thread execute while another modifies them without explicit
///   synchronisation (Arm ARM DDI 0487, B2.2.5 "Concurrent modification and execution of
///   instructions"; any other pair may execute as neither instruction). This is how JITs link
///   blocks on AArch64 (a `NOP` or a `B` to a stub, rewritten into a `B` to the target).
///   Literal data read by `LDR (literal)` is data, not an instruction: patch it with
///   [`CodeBlock::patch_live_data`](crate::CodeBlock::patch_live_data).
/// - Other ISAs: refused (there is no JIT there).
pub fn check_live_patch(addr: usize, old: &[u8], new: &[u8]) -> Result<(), &'static str> {
    if old.len() != new.len() {
        return Err("the old and new bytes differ in length");
    }
    if cfg!(target_arch = "x86_64") {
        if !matches!(new.len(), 1 | 2 | 4 | 8) {
            return Err("x86-64 patches are 1, 2, 4 or 8 bytes (one atomic store)");
        }
        if addr % new.len() != 0 {
            return Err("the patched address is not a multiple of the patch's length");
        }
        Ok(())
    } else if cfg!(target_arch = "aarch64") {
        let (Ok(old), Ok(new)) = (<[u8; 4]>::try_from(old), <[u8; 4]>::try_from(new)) else {
            return Err("AArch64 patches are one 4-byte instruction");
        };
        if addr % 4 != 0 {
            return Err("the patched instruction is not 4-byte aligned");
        }
        if !a64_concurrently_modifiable(u32::from_le_bytes(old)) {
            return Err(
                "the old instruction is not one of B, BL, NOP, ISB, BRK, SVC, HVC, SMC (Arm ARM B2.2.5)",
            );
        }
        if !a64_concurrently_modifiable(u32::from_le_bytes(new)) {
            return Err(
                "the new instruction is not one of B, BL, NOP, ISB, BRK, SVC, HVC, SMC (Arm ARM B2.2.5)",
            );
        }
        Ok(())
    } else {
        Err("no live patching on this instruction set")
    }
}

/// Whether a data word of `len` bytes at `addr` can be stored as one single-copy-atomic store
/// (4 or 8 bytes, naturally aligned) for
/// [`CodeBlock::patch_live_data`](crate::CodeBlock::patch_live_data).
pub fn check_live_data(addr: usize, len: usize) -> Result<(), &'static str> {
    if !matches!(len, 4 | 8) {
        return Err("live data is a 4- or 8-byte word");
    }
    if addr % len != 0 {
        return Err("the data word is not naturally aligned");
    }
    Ok(())
}

/// The A64 instructions that Arm ARM B2.2.5 allows to be modified while another thread executes
/// them: `B`, `BL` (any offset), `NOP`, `ISB` (any option), `BRK`, `SVC`, `HVC`, `SMC` (any
/// immediate).
pub fn a64_concurrently_modifiable(insn: u32) -> bool {
    const B: (u32, u32) = (0xFC00_0000, 0x1400_0000);
    const BL: (u32, u32) = (0xFC00_0000, 0x9400_0000);
    const NOP: (u32, u32) = (0xFFFF_FFFF, 0xD503_201F);
    const ISB: (u32, u32) = (0xFFFF_F0FF, 0xD503_30DF);
    const BRK: (u32, u32) = (0xFFE0_001F, 0xD420_0000);
    const SVC: (u32, u32) = (0xFFE0_001F, 0xD400_0001);
    const HVC: (u32, u32) = (0xFFE0_001F, 0xD400_0002);
    const SMC: (u32, u32) = (0xFFE0_001F, 0xD400_0003);
    [B, BL, NOP, ISB, BRK, SVC, HVC, SMC]
        .iter()
        .any(|(mask, value)| insn & mask == *value)
}

/// The offset of the 4-byte patchable constant in [`return_constant`], aligned to 4 so that a
/// patch is one aligned store.
pub const RETURN_CONSTANT_PATCH_OFFSET: usize = 4;

/// Machine code for `extern "C" fn() -> u32 { value }`, laid out so that the constant can be
/// patched with [`patch_return_constant`]. Used by the self-test and the tests.
pub fn return_constant(value: u32) -> Vec<u8> {
    let mut code = vec![0; 16];
    fill_traps(&mut code);
    if cfg!(target_arch = "x86_64") {
        // nop; nop; nop; mov eax, imm32 (the immediate lands at offset 4); ret
        code[..3].copy_from_slice(&[0x90, 0x90, 0x90]);
        code[3] = 0xB8;
        code[8] = 0xC3;
    } else {
        // b +8 over the literal; literal; ldr w0, [pc - 4]; ret
        code[..4].copy_from_slice(&0x1400_0002u32.to_le_bytes()); // b #8
        code[8..12].copy_from_slice(&0x18FF_FFE0u32.to_le_bytes()); // ldr w0, #-4
        code[12..16].copy_from_slice(&0xD65F_03C0u32.to_le_bytes()); // ret
    }
    patch_return_constant(&mut code, value);
    code
}

/// Rewrites the constant of a [`return_constant`] function in place (one aligned 4-byte store
/// when `code` is 4-byte aligned).
pub fn patch_return_constant(code: &mut [u8], value: u32) {
    let at = RETURN_CONSTANT_PATCH_OFFSET;
    if let Some(slot) = code.get_mut(at..at + 4) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AArch64 trap is `brk #0xF000` (Windows on ARM64's breakpoint) on every OS: the word
    /// `d43e0000` that MSVC emits for `__debugbreak` (and that `aarch64-linux-gnu-objdump`
    /// disassembles as `brk #0xf000`).
    #[test]
    fn a64_trap_is_brk_f000() {
        assert_eq!(A64_BRK_F000, 0xD43E_0000);
        assert!(a64_concurrently_modifiable(A64_BRK_F000));
        if cfg!(target_arch = "aarch64") {
            assert_eq!(TRAP, &A64_BRK_F000.to_le_bytes());
        }
    }

    #[test]
    fn traps_fill_every_byte() {
        let mut code = [0u8; 32];
        fill_traps(&mut code);
        assert!(code.chunks(TRAP.len()).all(|c| c == TRAP));
    }

    #[test]
    fn a64_modifiable_set() {
        for ok in [
            0x1400_0002,  // b #8
            0x97FF_FFFF,  // bl #-4
            0xD503_201F,  // nop
            0xD503_3FDF,  // isb
            0xD420_0000,  // brk #0
            A64_BRK_F000, // brk #0xF000
            0xD400_0001,  // svc #0
            0xD400_1002,  // hvc #0x80
            0xD400_0003,  // smc #0
        ] {
            assert!(a64_concurrently_modifiable(ok), "{ok:#x}");
        }
        for not in [
            0xD65F_03C0, // ret
            0x18FF_FFE0, // ldr w0, literal
            0x5400_0040, // b.eq
            0xD61F_0200, // br x16
            0x5280_0540, // mov w0, #42
            0xD503_203F, // yield
            0xD420_0001, // not brk (low bits)
        ] {
            assert!(!a64_concurrently_modifiable(not), "{not:#x}");
        }
    }

    #[test]
    fn live_patch_rules() {
        let four = [1u8, 2, 3, 4];
        assert!(check_live_patch(0x1000, &four, &[1, 2]).is_err());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(check_live_patch(0x1004, &four, &four), Ok(()));
            assert!(check_live_patch(0x1002, &four, &four).is_err());
            assert!(check_live_patch(0x1000, &[0; 3], &[0; 3]).is_err());
            assert_eq!(check_live_patch(0x1003, &[0], &[1]), Ok(()));
            assert!(check_live_patch(0x1004, &[0; 8], &[0; 8]).is_err());
        }
        if cfg!(target_arch = "aarch64") {
            let nop = 0xD503_201Fu32.to_le_bytes();
            let b = 0x1400_0010u32.to_le_bytes();
            let ret = 0xD65F_03C0u32.to_le_bytes();
            assert_eq!(check_live_patch(0x1004, &nop, &b), Ok(()));
            assert!(check_live_patch(0x1002, &nop, &b).is_err());
            assert!(check_live_patch(0x1004, &ret, &b).is_err());
            assert!(check_live_patch(0x1004, &b, &ret).is_err());
        }
        assert_eq!(check_live_data(0x1008, 8), Ok(()));
        assert!(check_live_data(0x1004, 8).is_err());
        assert!(check_live_data(0x1004, 2).is_err());
    }

    #[test]
    fn constant_is_patchable() {
        let mut code = return_constant(7);
        assert_eq!(code[4..8], 7u32.to_le_bytes());
        patch_return_constant(&mut code, 0xDEAD_BEEF);
        assert_eq!(code[4..8], 0xDEAD_BEEFu32.to_le_bytes());
    }
}
