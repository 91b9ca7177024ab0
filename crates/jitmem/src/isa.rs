//! The little jitmem needs to know about instruction sets: the trap instruction that fills freed
//! code, and tiny functions for the self-test. The encoders proper live in `jitasm`.

/// The instruction set jitmem was built for.
pub const ARCH: &str = std::env::consts::ARCH;

/// The trap instruction of this ISA, as the bytes that repeat in freed code: `int3` on x86-64,
/// `brk #0` on AArch64 (4-byte aligned; blocks are at least 16-byte granular).
#[cfg(target_arch = "x86_64")]
pub const TRAP: &[u8] = &[0xCC];
/// The trap instruction of this ISA, as the bytes that repeat in freed code: `int3` on x86-64,
/// `brk #0` on AArch64 (4-byte aligned; blocks are at least 16-byte granular).
#[cfg(target_arch = "aarch64")]
pub const TRAP: &[u8] = &0xD420_0000u32.to_le_bytes();
/// No JIT on other instruction sets (the platform layer refuses executable memory there), so no
/// freed code is ever filled: a zero byte, an invalid instruction on most ISAs.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const TRAP: &[u8] = &[0];

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

    #[test]
    fn traps_fill_every_byte() {
        let mut code = [0u8; 32];
        fill_traps(&mut code);
        assert!(code.chunks(TRAP.len()).all(|c| c == TRAP));
    }

    #[test]
    fn constant_is_patchable() {
        let mut code = return_constant(7);
        assert_eq!(code[4..8], 7u32.to_le_bytes());
        patch_return_constant(&mut code, 0xDEAD_BEEF);
        assert_eq!(code[4..8], 0xDEAD_BEEFu32.to_le_bytes());
    }
}
