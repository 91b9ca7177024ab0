//! Every form checked against an independent decoder and encoder (iced-x86).
//!
//! For each instruction we build what we meant as an iced [`Instruction`] (code, registers,
//! memory operand, immediate) and check two things:
//! - iced's decoder reads our bytes as exactly one instruction, of that code, with those
//!   operands, consuming every byte;
//! - iced's encoder, given what we meant with the shortest displacement allowed, produces
//!   exactly our bytes (so disp8/imm8/SIB/REX choices are the canonical shortest ones).

use super::*;
use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, Instruction, MemoryOperand, Mnemonic, OpKind, Register,
};
use proptest::prelude::*;

const R64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

const R32: [Register; 16] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::ESP,
    Register::EBP,
    Register::ESI,
    Register::EDI,
    Register::R8D,
    Register::R9D,
    Register::R10D,
    Register::R11D,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];

const R8: [Register; 16] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::SPL,
    Register::BPL,
    Register::SIL,
    Register::DIL,
    Register::R8L,
    Register::R9L,
    Register::R10L,
    Register::R11L,
    Register::R12L,
    Register::R13L,
    Register::R14L,
    Register::R15L,
];

const SETCC: [Code; 16] = [
    Code::Seto_rm8,
    Code::Setno_rm8,
    Code::Setb_rm8,
    Code::Setae_rm8,
    Code::Sete_rm8,
    Code::Setne_rm8,
    Code::Setbe_rm8,
    Code::Seta_rm8,
    Code::Sets_rm8,
    Code::Setns_rm8,
    Code::Setp_rm8,
    Code::Setnp_rm8,
    Code::Setl_rm8,
    Code::Setge_rm8,
    Code::Setle_rm8,
    Code::Setg_rm8,
];
const CMOVCC: [Code; 16] = [
    Code::Cmovo_r64_rm64,
    Code::Cmovno_r64_rm64,
    Code::Cmovb_r64_rm64,
    Code::Cmovae_r64_rm64,
    Code::Cmove_r64_rm64,
    Code::Cmovne_r64_rm64,
    Code::Cmovbe_r64_rm64,
    Code::Cmova_r64_rm64,
    Code::Cmovs_r64_rm64,
    Code::Cmovns_r64_rm64,
    Code::Cmovp_r64_rm64,
    Code::Cmovnp_r64_rm64,
    Code::Cmovl_r64_rm64,
    Code::Cmovge_r64_rm64,
    Code::Cmovle_r64_rm64,
    Code::Cmovg_r64_rm64,
];
const JCC8: [Code; 16] = [
    Code::Jo_rel8_64,
    Code::Jno_rel8_64,
    Code::Jb_rel8_64,
    Code::Jae_rel8_64,
    Code::Je_rel8_64,
    Code::Jne_rel8_64,
    Code::Jbe_rel8_64,
    Code::Ja_rel8_64,
    Code::Js_rel8_64,
    Code::Jns_rel8_64,
    Code::Jp_rel8_64,
    Code::Jnp_rel8_64,
    Code::Jl_rel8_64,
    Code::Jge_rel8_64,
    Code::Jle_rel8_64,
    Code::Jg_rel8_64,
];
const JCC32: [Code; 16] = [
    Code::Jo_rel32_64,
    Code::Jno_rel32_64,
    Code::Jb_rel32_64,
    Code::Jae_rel32_64,
    Code::Je_rel32_64,
    Code::Jne_rel32_64,
    Code::Jbe_rel32_64,
    Code::Ja_rel32_64,
    Code::Js_rel32_64,
    Code::Jns_rel32_64,
    Code::Jp_rel32_64,
    Code::Jnp_rel32_64,
    Code::Jl_rel32_64,
    Code::Jge_rel32_64,
    Code::Jle_rel32_64,
    Code::Jg_rel32_64,
];

/// The interesting displacements (disp8/disp32 boundaries and extremes).
const DISPS: [i32; 9] = [0, 1, -1, 127, 128, -128, -129, i32::MIN, i32::MAX];
/// The interesting 32-bit immediates (imm8/imm32 boundaries and extremes).
const IMMS: [i32; 9] = [0, 1, -1, 127, 128, -128, -129, i32::MIN, i32::MAX];
/// Immediates for `mov_ri` and friends.
const IMMS64: [i64; 15] = [
    0,
    1,
    -1,
    127,
    128,
    -128,
    -129,
    i32::MIN as i64,
    i32::MAX as i64,
    i32::MAX as i64 + 1,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    i64::MIN,
    i64::MAX,
    -(u32::MAX as i64),
];

fn r64(r: Reg) -> Register {
    R64[usize::from(r.number())]
}
fn r32(r: Reg) -> Register {
    R32[usize::from(r.number())]
}
fn r8(r: Reg) -> Register {
    R8[usize::from(r.number())]
}

/// Every memory operand of the brief: each base, no index or each index but RSP with each
/// scale, each displacement in [`DISPS`] (16 * 61 * 9 = 8784 operands).
fn all_mems() -> Vec<Mem> {
    let mut v = Vec::new();
    for base in Reg::ALL {
        for &disp in &DISPS {
            v.push(Mem::base(base, disp));
            for index in Reg::ALL {
                if index == Reg::Rsp {
                    continue;
                }
                for scale in Scale::ALL {
                    v.push(Mem::indexed(base, index, scale, disp));
                }
            }
        }
    }
    v
}

/// What we meant, as an iced memory operand (displacement size "shortest": 0 when zero, else
/// 1, which iced widens to 4 when it does not fit and to 1 for an RBP/R13 base).
fn iced_mem(m: Mem) -> MemoryOperand {
    let (index, scale) = match m.index() {
        Some((r, s)) => (r64(r), u32::from(s.factor())),
        None => (Register::None, 1),
    };
    let displ_size = if m.disp() == 0 { 0 } else { 1 };
    MemoryOperand::with_base_index_scale_displ_size(
        r64(m.base_reg()),
        index,
        scale,
        i64::from(m.disp()),
        displ_size,
    )
}

/// Checks that `bytes` is exactly the instruction `want` (see the module documentation).
#[track_caller]
fn check(bytes: &[u8], want: &Instruction) {
    // Decoder: one instruction, every byte, same code and operands.
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let got = d.decode();
    assert!(
        !got.is_invalid(),
        "{bytes:02X?} does not decode (want {want})"
    );
    assert_eq!(
        got.len(),
        bytes.len(),
        "{bytes:02X?}: {got} is not all the bytes"
    );
    assert!(!d.can_decode());
    assert_eq!(
        got.code(),
        want.code(),
        "{bytes:02X?}: got {got}, want {want}"
    );
    assert_eq!(got.op_count(), want.op_count(), "{bytes:02X?}: {got}");
    for i in 0..want.op_count() {
        assert_eq!(
            got.op_kind(i),
            want.op_kind(i),
            "{bytes:02X?}: {got} operand {i}"
        );
        match want.op_kind(i) {
            OpKind::Register => {
                assert_eq!(
                    got.op_register(i),
                    want.op_register(i),
                    "{bytes:02X?}: {got}"
                );
            }
            OpKind::Memory => {
                assert_eq!(got.memory_base(), want.memory_base(), "{bytes:02X?}: {got}");
                assert_eq!(
                    got.memory_index(),
                    want.memory_index(),
                    "{bytes:02X?}: {got}"
                );
                assert_eq!(
                    got.memory_index_scale(),
                    want.memory_index_scale(),
                    "{bytes:02X?}: {got}"
                );
                assert_eq!(
                    got.memory_displacement64(),
                    want.memory_displacement64(),
                    "{bytes:02X?}: {got}"
                );
            }
            OpKind::NearBranch64 => {
                assert_eq!(got.near_branch64(), want.near_branch64(), "{bytes:02X?}");
            }
            _ => assert_eq!(got.immediate(i), want.immediate(i), "{bytes:02X?}: {got}"),
        }
    }
    // Encoder: what we meant, in the shortest form, is our bytes.
    let mut e = Encoder::new(64);
    e.encode(want, 0).unwrap();
    assert_eq!(
        bytes,
        &e.take_buffer()[..],
        "{want}: our bytes differ from iced's"
    );
}

/// The bytes of the one instruction `f` emits.
fn one(f: impl FnOnce(&mut Assembler)) -> Vec<u8> {
    let mut a = Assembler::new();
    f(&mut a);
    a.finish().unwrap()
}

/// The bytes of the one instruction `f` emits, which must succeed.
fn one_m(f: impl FnOnce(&mut Assembler) -> Result<()>) -> Vec<u8> {
    let mut a = Assembler::new();
    f(&mut a).unwrap();
    a.finish().unwrap()
}

fn i1(code: Code, a: impl IcedOp) -> Instruction {
    a.with1(code)
}

fn i2<T, U>(code: Code, a: T, b: U) -> Instruction
where
    Instruction: With2<T, U>,
{
    <Instruction as With2<T, U>>::make(code, a, b)
}

/// Glue over iced's generic constructors, to keep the test tables short.
trait IcedOp {
    fn with1(self, code: Code) -> Instruction;
}
impl IcedOp for Register {
    fn with1(self, code: Code) -> Instruction {
        Instruction::with1(code, self).unwrap()
    }
}
impl IcedOp for MemoryOperand {
    fn with1(self, code: Code) -> Instruction {
        Instruction::with1(code, self).unwrap()
    }
}
trait With2<T, U> {
    fn make(code: Code, a: T, b: U) -> Instruction;
}
macro_rules! with2 {
    ($($t:ty, $u:ty);*) => {
        $(impl With2<$t, $u> for Instruction {
            fn make(code: Code, a: $t, b: $u) -> Instruction {
                Instruction::with2(code, a, b).unwrap()
            }
        })*
    };
}
with2!(Register, Register; Register, MemoryOperand; MemoryOperand, Register; Register, i32;
    Register, u32; Register, i64; MemoryOperand, i32);

// -------------------------------------------------------------------------------------------
// Types.

#[test]
fn reg_numbers_and_cond_inversion() {
    for (i, r) in Reg::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(r.number()), i);
        assert_eq!(Reg::from_number(r.number()), Some(r));
    }
    assert_eq!(Reg::from_number(16), None);
    for (i, c) in Cond::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(c.code()), i);
        assert_ne!(c.invert(), c);
        assert_eq!(c.invert().invert(), c);
    }
    assert_eq!(Cond::E.invert(), Cond::Ne);
    assert_eq!(Cond::B.invert(), Cond::Ae);
    assert_eq!(Cond::Be.invert(), Cond::A);
    assert_eq!(Cond::L.invert(), Cond::Ge);
    assert_eq!(Cond::Le.invert(), Cond::G);
    assert_eq!(Cond::O.invert(), Cond::No);
    assert_eq!(Cond::S.invert(), Cond::Ns);
    assert_eq!(Cond::P.invert(), Cond::Np);
    let m = Mem::indexed(Reg::Rbx, Reg::R12, Scale::S4, 8);
    assert_eq!(m.base_reg(), Reg::Rbx);
    assert_eq!(m.index(), Some((Reg::R12, Scale::S4)));
    assert_eq!(m.offset(-16).map(Mem::disp), Some(-8));
    assert_eq!(Mem::base(Reg::Rax, i32::MAX).offset(1), None);
}

// -------------------------------------------------------------------------------------------
// Register forms.

#[test]
fn no_operand_forms() {
    check(&one(Assembler::ret), &Instruction::with(Code::Retnq));
    check(&one(Assembler::nop), &Instruction::with(Code::Nopd));
    check(&one(Assembler::int3), &Instruction::with(Code::Int3));
    check(&one(Assembler::ud2), &Instruction::with(Code::Ud2));
    check(&one(Assembler::cqo), &Instruction::with(Code::Cqo));
}

#[test]
fn one_register_forms() {
    type Case = (fn(&mut Assembler, Reg), Code);
    let cases: [Case; 11] = [
        (Assembler::push, Code::Push_r64),
        (Assembler::pop, Code::Pop_r64),
        (Assembler::neg_r, Code::Neg_rm64),
        (Assembler::not_r, Code::Not_rm64),
        (Assembler::idiv_r, Code::Idiv_rm64),
        (Assembler::imul_wide_r, Code::Imul_rm64),
        (Assembler::jmp_r, Code::Jmp_rm64),
        (Assembler::call_r, Code::Call_rm64),
        (Assembler::shl_r_cl, Code::Shl_rm64_CL),
        (Assembler::shr_r_cl, Code::Shr_rm64_CL),
        (Assembler::sar_r_cl, Code::Sar_rm64_CL),
    ];
    for (f, code) in cases {
        for r in Reg::ALL {
            let want = if matches!(
                code,
                Code::Shl_rm64_CL | Code::Shr_rm64_CL | Code::Sar_rm64_CL
            ) {
                i2(code, r64(r), Register::CL)
            } else {
                i1(code, r64(r))
            };
            check(&one(|a| f(a, r)), &want);
        }
    }
    for r in Reg::ALL {
        check(&one(|a| a.zero(r)), &i2(Code::Xor_rm32_r32, r32(r), r32(r)));
    }
}

#[test]
fn two_register_forms() {
    type Case = (fn(&mut Assembler, Reg, Reg), Code, bool);
    // (method, code, operands in iced order are (dst, src))
    let cases: [Case; 10] = [
        (Assembler::mov_rr, Code::Mov_rm64_r64, true),
        (Assembler::add_rr, Code::Add_rm64_r64, true),
        (Assembler::sub_rr, Code::Sub_rm64_r64, true),
        (Assembler::and_rr, Code::And_rm64_r64, true),
        (Assembler::or_rr, Code::Or_rm64_r64, true),
        (Assembler::xor_rr, Code::Xor_rm64_r64, true),
        (Assembler::cmp_rr, Code::Cmp_rm64_r64, true),
        (Assembler::test_rr, Code::Test_rm64_r64, true),
        (Assembler::imul_rr, Code::Imul_r64_rm64, true),
        (Assembler::movzx_r8, Code::Movzx_r32_rm8, false),
    ];
    for (f, code, wide) in cases {
        for dst in Reg::ALL {
            for src in Reg::ALL {
                let want = if wide {
                    i2(code, r64(dst), r64(src))
                } else {
                    i2(code, r32(dst), r8(src))
                };
                check(&one(|a| f(a, dst, src)), &want);
            }
        }
    }
}

#[test]
fn condition_forms() {
    for (c, (&set, &cmov)) in Cond::ALL.into_iter().zip(SETCC.iter().zip(&CMOVCC)) {
        for dst in Reg::ALL {
            check(&one(|a| a.setcc(c, dst)), &i1(set, r8(dst)));
            for src in Reg::ALL {
                check(
                    &one(|a| a.cmovcc(c, dst, src)),
                    &i2(cmov, r64(dst), r64(src)),
                );
            }
        }
    }
}

#[test]
fn register_immediate_forms() {
    type Case = (fn(&mut Assembler, Reg, i32), [Code; 3]);
    // (method, [imm8 code, imm32 code, RAX imm32 code])
    let cases: [Case; 7] = [
        (
            Assembler::add_ri,
            [
                Code::Add_rm64_imm8,
                Code::Add_rm64_imm32,
                Code::Add_RAX_imm32,
            ],
        ),
        (
            Assembler::sub_ri,
            [
                Code::Sub_rm64_imm8,
                Code::Sub_rm64_imm32,
                Code::Sub_RAX_imm32,
            ],
        ),
        (
            Assembler::and_ri,
            [
                Code::And_rm64_imm8,
                Code::And_rm64_imm32,
                Code::And_RAX_imm32,
            ],
        ),
        (
            Assembler::or_ri,
            [Code::Or_rm64_imm8, Code::Or_rm64_imm32, Code::Or_RAX_imm32],
        ),
        (
            Assembler::xor_ri,
            [
                Code::Xor_rm64_imm8,
                Code::Xor_rm64_imm32,
                Code::Xor_RAX_imm32,
            ],
        ),
        (
            Assembler::cmp_ri,
            [
                Code::Cmp_rm64_imm8,
                Code::Cmp_rm64_imm32,
                Code::Cmp_RAX_imm32,
            ],
        ),
        (
            Assembler::test_ri,
            [
                Code::Test_rm64_imm32,
                Code::Test_rm64_imm32,
                Code::Test_RAX_imm32,
            ],
        ),
    ];
    for (f, [c8, c32, crax]) in cases {
        for r in Reg::ALL {
            for &imm in &IMMS {
                // `test` has no imm8 form; the others prefer imm8 to the RAX form.
                let code = if i8::try_from(imm).is_ok() && c8 != c32 {
                    c8
                } else if r == Reg::Rax {
                    crax
                } else {
                    c32
                };
                let want = if code == crax {
                    i2(code, Register::RAX, imm)
                } else {
                    i2(code, r64(r), imm)
                };
                check(&one(|a| f(a, r, imm)), &want);
            }
        }
    }
    for r in Reg::ALL {
        for &imm in &IMMS {
            check(
                &one(|a| a.mov_ri32(r, imm)),
                &i2(Code::Mov_rm64_imm32, r64(r), imm),
            );
        }
    }
}

#[test]
fn imul_three_operands() {
    for dst in Reg::ALL {
        for src in Reg::ALL {
            for &imm in &IMMS {
                let code = if i8::try_from(imm).is_ok() {
                    Code::Imul_r64_rm64_imm8
                } else {
                    Code::Imul_r64_rm64_imm32
                };
                let want = Instruction::with3(code, r64(dst), r64(src), imm).unwrap();
                check(&one(|a| a.imul_rri(dst, src, imm)), &want);
            }
        }
    }
}

#[test]
fn mov_immediates() {
    for r in Reg::ALL {
        for &imm in &IMMS64 {
            // mov_ri: shortest flag-preserving form.
            let want = if let Ok(u) = u32::try_from(imm) {
                i2(Code::Mov_r32_imm32, r32(r), u)
            } else if let Ok(i) = i32::try_from(imm) {
                i2(Code::Mov_rm64_imm32, r64(r), i)
            } else {
                i2(Code::Mov_r64_imm64, r64(r), imm)
            };
            let bytes = one(|a| a.mov_ri(r, imm));
            check(&bytes, &want);
            // movabs: always 10 bytes.
            let bytes = one(|a| a.mov_ri64(r, imm));
            assert_eq!(bytes.len(), 10);
            let mut d = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE);
            let got = d.decode();
            assert_eq!(got.code(), Code::Mov_r64_imm64);
            assert_eq!(got.op0_register(), r64(r));
            assert_eq!(got.immediate64() as i64, imm);
            assert_eq!(got.len(), 10);
        }
    }
}

#[test]
fn shifts() {
    type Case = (fn(&mut Assembler, Reg, u8), Code, Code);
    let cases: [Case; 3] = [
        (Assembler::shl_ri, Code::Shl_rm64_1, Code::Shl_rm64_imm8),
        (Assembler::shr_ri, Code::Shr_rm64_1, Code::Shr_rm64_imm8),
        (Assembler::sar_ri, Code::Sar_rm64_1, Code::Sar_rm64_imm8),
    ];
    for (f, by1, by_imm) in cases {
        for r in Reg::ALL {
            for n in 0..=u8::MAX {
                let count = n & 63;
                let code = if count == 1 { by1 } else { by_imm };
                check(&one(|a| f(a, r, n)), &i2(code, r64(r), u32::from(count)));
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Memory forms.

/// A method taking a memory operand, with a register and an immediate it may ignore.
type MemFn = fn(&mut Assembler, Mem, Reg, i32) -> Result<()>;
/// What that method means, in iced terms.
type WantFn = fn(MemoryOperand, Reg, i32) -> Instruction;

/// Checks `f` against `want` for every operand of [`all_mems`], with registers and immediates
/// cycling so that each base meets every register and each immediate.
fn check_mem_form(f: MemFn, want: WantFn) {
    let regs = Reg::ALL;
    for (i, m) in all_mems().into_iter().enumerate() {
        let r = regs[i % 16];
        let imm = IMMS[(i / 7) % IMMS.len()];
        let bytes = one_m(|a| f(a, m, r, imm));
        check(&bytes, &want(iced_mem(m), r, imm));
    }
    // An RSP index is rejected, and nothing is emitted.
    let mut a = Assembler::new();
    let bad = Mem::indexed(Reg::Rax, Reg::Rsp, Scale::S1, 0);
    assert!(matches!(
        f(&mut a, bad, Reg::Rax, 0),
        Err(Error::InvalidRegister { .. })
    ));
    assert!(a.bytes().is_empty());
}

fn imm_code(imm: i32, c8: Code, c32: Code) -> Code {
    if i8::try_from(imm).is_ok() { c8 } else { c32 }
}

#[test]
fn mem_mov_lea() {
    check_mem_form(
        |a, m, r, _| a.mov_rm(r, m),
        |m, r, _| i2(Code::Mov_r64_rm64, r64(r), m),
    );
    check_mem_form(
        |a, m, r, _| a.mov_mr(m, r),
        |m, r, _| i2(Code::Mov_rm64_r64, m, r64(r)),
    );
    check_mem_form(
        |a, m, _, imm| a.mov_mi(m, imm),
        |m, _, imm| i2(Code::Mov_rm64_imm32, m, imm),
    );
    check_mem_form(
        |a, m, r, _| a.lea(r, m),
        |m, r, _| i2(Code::Lea_r64_m, r64(r), m),
    );
}

#[test]
fn mem_misc() {
    check_mem_form(
        |a, m, r, _| a.imul_rm(r, m),
        |m, r, _| i2(Code::Imul_r64_rm64, r64(r), m),
    );
    check_mem_form(|a, m, _, _| a.idiv_m(m), |m, _, _| i1(Code::Idiv_rm64, m));
    check_mem_form(|a, m, _, _| a.jmp_m(m), |m, _, _| i1(Code::Jmp_rm64, m));
    check_mem_form(|a, m, _, _| a.call_m(m), |m, _, _| i1(Code::Call_rm64, m));
}

macro_rules! alu_mem_test {
    ($test:ident, $rm:ident, $mr:ident, $mi:ident, $c_rm:ident, $c_mr:ident, $c8:ident, $c32:ident) => {
        #[test]
        fn $test() {
            check_mem_form(
                |a, m, r, _| a.$rm(r, m),
                |m, r, _| i2(Code::$c_rm, r64(r), m),
            );
            check_mem_form(
                |a, m, r, _| a.$mr(m, r),
                |m, r, _| i2(Code::$c_mr, m, r64(r)),
            );
            check_mem_form(
                |a, m, _, imm| a.$mi(m, imm),
                |m, _, imm| i2(imm_code(imm, Code::$c8, Code::$c32), m, imm),
            );
        }
    };
}

alu_mem_test!(
    mem_add,
    add_rm,
    add_mr,
    add_mi,
    Add_r64_rm64,
    Add_rm64_r64,
    Add_rm64_imm8,
    Add_rm64_imm32
);
alu_mem_test!(
    mem_sub,
    sub_rm,
    sub_mr,
    sub_mi,
    Sub_r64_rm64,
    Sub_rm64_r64,
    Sub_rm64_imm8,
    Sub_rm64_imm32
);
alu_mem_test!(
    mem_and,
    and_rm,
    and_mr,
    and_mi,
    And_r64_rm64,
    And_rm64_r64,
    And_rm64_imm8,
    And_rm64_imm32
);
alu_mem_test!(
    mem_or,
    or_rm,
    or_mr,
    or_mi,
    Or_r64_rm64,
    Or_rm64_r64,
    Or_rm64_imm8,
    Or_rm64_imm32
);
alu_mem_test!(
    mem_xor,
    xor_rm,
    xor_mr,
    xor_mi,
    Xor_r64_rm64,
    Xor_rm64_r64,
    Xor_rm64_imm8,
    Xor_rm64_imm32
);
alu_mem_test!(
    mem_cmp,
    cmp_rm,
    cmp_mr,
    cmp_mi,
    Cmp_r64_rm64,
    Cmp_rm64_r64,
    Cmp_rm64_imm8,
    Cmp_rm64_imm32
);

/// Spot checks of the awkward encodings, byte for byte.
#[test]
fn awkward_memory_bytes() {
    let b = |m: Mem| one_m(|a| a.mov_rm(Reg::Rax, m));
    // RSP / R12 base: SIB with no index.
    assert_eq!(b(Mem::base(Reg::Rsp, 0)), [0x48, 0x8B, 0x04, 0x24]);
    assert_eq!(b(Mem::base(Reg::R12, 0)), [0x49, 0x8B, 0x04, 0x24]);
    // RBP / R13 base: disp8 0.
    assert_eq!(b(Mem::base(Reg::Rbp, 0)), [0x48, 0x8B, 0x45, 0x00]);
    assert_eq!(b(Mem::base(Reg::R13, 0)), [0x49, 0x8B, 0x45, 0x00]);
    assert_eq!(
        b(Mem::indexed(Reg::R13, Reg::Rax, Scale::S1, 0)),
        [0x49, 0x8B, 0x44, 0x05, 0x00]
    );
    // R12 as an index is fine (REX.X), unlike RSP.
    assert_eq!(
        b(Mem::indexed(Reg::Rax, Reg::R12, Scale::S8, 0)),
        [0x4A, 0x8B, 0x04, 0xE0]
    );
    // disp8 / disp32 boundary.
    assert_eq!(b(Mem::base(Reg::Rcx, 127)), [0x48, 0x8B, 0x41, 0x7F]);
    assert_eq!(
        b(Mem::base(Reg::Rcx, 128)),
        [0x48, 0x8B, 0x81, 0x80, 0x00, 0x00, 0x00]
    );
    assert_eq!(b(Mem::base(Reg::Rcx, -128)), [0x48, 0x8B, 0x41, 0x80]);
    assert_eq!(
        b(Mem::base(Reg::Rcx, -129)),
        [0x48, 0x8B, 0x81, 0x7F, 0xFF, 0xFF, 0xFF]
    );
    // REX.R for a high destination register, REX.B for a high base.
    assert_eq!(
        one_m(|a| a.mov_rm(Reg::R15, Mem::base(Reg::R8, 8))),
        [0x4D, 0x8B, 0x78, 0x08]
    );
    // jmp/call through memory need no REX.W, only REX.B/X for high registers.
    assert_eq!(one_m(|a| a.jmp_m(Mem::base(Reg::Rax, 0))), [0xFF, 0x20]);
    assert_eq!(
        one_m(|a| a.call_m(Mem::base(Reg::R11, 0))),
        [0x41, 0xFF, 0x13]
    );
}

/// 8-bit registers: SPL/BPL/SIL/DIL need a bare REX, or they would mean AH/CH/DH/BH.
#[test]
fn byte_register_bytes() {
    assert_eq!(one(|a| a.setcc(Cond::E, Reg::Rbx)), [0x0F, 0x94, 0xC3]);
    assert_eq!(
        one(|a| a.setcc(Cond::E, Reg::Rsp)),
        [0x40, 0x0F, 0x94, 0xC4]
    );
    assert_eq!(
        one(|a| a.setcc(Cond::E, Reg::Rdi)),
        [0x40, 0x0F, 0x94, 0xC7]
    );
    assert_eq!(
        one(|a| a.setcc(Cond::E, Reg::R15)),
        [0x41, 0x0F, 0x94, 0xC7]
    );
    assert_eq!(one(|a| a.movzx_r8(Reg::Rax, Reg::Rbx)), [0x0F, 0xB6, 0xC3]);
    assert_eq!(
        one(|a| a.movzx_r8(Reg::Rax, Reg::Rsi)),
        [0x40, 0x0F, 0xB6, 0xC6]
    );
    // A high-numbered destination does not make SIL out of the source: REX is there anyway.
    assert_eq!(
        one(|a| a.movzx_r8(Reg::R8, Reg::Rbx)),
        [0x44, 0x0F, 0xB6, 0xC3]
    );
    assert_eq!(one(|a| a.movzx_r8(Reg::Rsp, Reg::Rax)), [0x0F, 0xB6, 0xE0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random memory operands, registers and immediates (any displacement, not only the
    /// interesting ones).
    #[test]
    fn random_memory_operands(
        base in 0u8..16,
        index in proptest::option::of((0u8..15, 0usize..4)),
        disp in any::<i32>(),
        reg in 0u8..16,
        imm in any::<i32>(),
    ) {
        let base = Reg::from_number(base).unwrap();
        let m = match index {
            // 0..15 skipping RSP (4).
            Some((i, s)) => {
                let i = if i >= 4 { i + 1 } else { i };
                Mem::indexed(base, Reg::from_number(i).unwrap(), Scale::ALL[s], disp)
            }
            None => Mem::base(base, disp),
        };
        let r = Reg::from_number(reg).unwrap();
        check(&one_m(|a| a.mov_rm(r, m)), &i2(Code::Mov_r64_rm64, r64(r), iced_mem(m)));
        check(&one_m(|a| a.xor_mr(m, r)), &i2(Code::Xor_rm64_r64, iced_mem(m), r64(r)));
        check(
            &one_m(|a| a.add_mi(m, imm)),
            &i2(imm_code(imm, Code::Add_rm64_imm8, Code::Add_rm64_imm32), iced_mem(m), imm),
        );
        check(&one_m(|a| a.lea(r, m)), &i2(Code::Lea_r64_m, r64(r), iced_mem(m)));
    }

    /// Random 64-bit immediates for `mov_ri`.
    #[test]
    fn random_mov_ri(reg in 0u8..16, imm in any::<i64>(), small in any::<u32>()) {
        let r = Reg::from_number(reg).unwrap();
        for imm in [imm, i64::from(small), -i64::from(small)] {
            let bytes = one(|a| a.mov_ri(r, imm));
            let mut d = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE);
            let got = d.decode();
            prop_assert_eq!(got.len(), bytes.len());
            prop_assert_eq!(got.mnemonic(), Mnemonic::Mov);
            // The value the register holds afterwards.
            let value = match got.code() {
                Code::Mov_r32_imm32 => i64::from(got.immediate32()),
                Code::Mov_rm64_imm32 => got.immediate32to64(),
                Code::Mov_r64_imm64 => got.immediate64() as i64,
                other => panic!("{other:?}"),
            };
            prop_assert_eq!(value, imm);
            let expected_len = if u32::try_from(imm).is_ok() {
                5 + usize::from(r.number() >= 8)
            } else if i32::try_from(imm).is_ok() {
                7
            } else {
                10
            };
            prop_assert_eq!(bytes.len(), expected_len);
        }
    }
}

// -------------------------------------------------------------------------------------------
// Labels and branches.

/// Decodes `code` from the start and returns the instruction at `offset`.
fn decode_at(code: &[u8], offset: usize) -> Instruction {
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    while d.can_decode() {
        let ins = d.decode();
        assert!(!ins.is_invalid(), "invalid instruction at {:#x}", ins.ip());
        if ins.ip() == offset as u64 {
            return ins;
        }
    }
    panic!("no instruction at {offset:#x}");
}

fn nops(a: &mut Assembler, n: usize) {
    for _ in 0..n {
        a.nop();
    }
}

#[test]
fn backward_branches_rel8_and_rel32() {
    // A backward branch is short while the target is within -128 of the branch's end.
    for gap in [0usize, 1, 100, 125, 126, 127, 128, 200, 1000] {
        let mut a = Assembler::new();
        nops(&mut a, 3);
        let l = a.new_label();
        a.bind(l).unwrap();
        nops(&mut a, gap);
        let at_jmp = a.offset();
        a.jmp(l).unwrap();
        let at_jcc = a.offset();
        a.jcc(Cond::Le, l).unwrap();
        let at_call = a.offset();
        a.call_label(l).unwrap();
        let code = a.finish().unwrap();

        let jmp = decode_at(&code, at_jmp);
        let short = gap + 2 <= 128;
        assert_eq!(
            jmp.code(),
            if short {
                Code::Jmp_rel8_64
            } else {
                Code::Jmp_rel32_64
            },
            "gap {gap}"
        );
        assert_eq!(jmp.near_branch_target(), 3);
        let jcc = decode_at(&code, at_jcc);
        let short = at_jcc + 2 - 3 <= 128;
        assert_eq!(
            jcc.code(),
            if short {
                Code::Jle_rel8_64
            } else {
                Code::Jle_rel32_64
            },
            "gap {gap}"
        );
        assert_eq!(jcc.near_branch_target(), 3);
        let call = decode_at(&code, at_call);
        assert_eq!(call.code(), Code::Call_rel32_64);
        assert_eq!(call.near_branch_target(), 3);
    }
}

#[test]
fn exact_rel8_boundary() {
    // Target 128 bytes before the end of the 2-byte jmp: rel8 -128, the last short one.
    let mut a = Assembler::new();
    let l = a.new_label();
    a.bind(l).unwrap();
    nops(&mut a, 126);
    a.jmp(l).unwrap();
    assert_eq!(&a.bytes()[126..], [0xEB, 0x80]);
    // One more byte: rel32.
    let mut a = Assembler::new();
    let l = a.new_label();
    a.bind(l).unwrap();
    nops(&mut a, 127);
    a.jmp(l).unwrap();
    assert_eq!(&a.bytes()[127..], [0xE9, 0x7C, 0xFF, 0xFF, 0xFF]); // -132
}

#[test]
fn forward_branches_all_conditions() {
    let mut a = Assembler::new();
    let l = a.new_label();
    let mut sites = Vec::new();
    for c in Cond::ALL {
        sites.push((a.offset(), JCC32[usize::from(c.code())]));
        a.jcc(c, l).unwrap();
    }
    sites.push((a.offset(), Code::Jmp_rel32_64));
    a.jmp(l).unwrap();
    sites.push((a.offset(), Code::Call_rel32_64));
    a.call_label(l).unwrap();
    nops(&mut a, 300);
    let target = a.offset();
    assert_eq!(a.label_offset(l), None);
    a.bind(l).unwrap();
    assert_eq!(a.label_offset(l), Some(target));
    // Backward short ones, each condition.
    for c in Cond::ALL {
        sites.push((a.offset(), JCC8[usize::from(c.code())]));
        a.jcc(c, l).unwrap();
    }
    let code = a.finish().unwrap();
    for (at, code_want) in sites {
        let ins = decode_at(&code, at);
        assert_eq!(ins.code(), code_want, "at {at:#x}");
        assert_eq!(ins.near_branch_target(), target as u64, "at {at:#x}");
    }
}

#[test]
fn label_errors() {
    // Used, never bound.
    let mut a = Assembler::new();
    let unused = a.new_label();
    let l = a.new_label();
    a.jmp(l).unwrap();
    assert_eq!(unused.index(), 0);
    assert_eq!(a.clone().finish(), Err(Error::UnboundLabel(1)));
    // Bound twice: an error, and the first binding stays.
    a.bind(l).unwrap();
    nops(&mut a, 1);
    assert_eq!(a.bind(l), Err(Error::LabelBoundTwice(1)));
    assert_eq!(a.label_offset(l), Some(5));
    // A label created and never used is fine.
    assert_eq!(a.finish().unwrap(), [0xE9, 0, 0, 0, 0, 0x90]);
    // Another assembler's label.
    let mut b = Assembler::new();
    assert_eq!(b.jmp(l), Err(Error::UnknownLabel(1)));
    assert_eq!(b.jcc(Cond::E, l), Err(Error::UnknownLabel(1)));
    assert_eq!(b.call_label(l), Err(Error::UnknownLabel(1)));
    assert_eq!(b.bind(l), Err(Error::UnknownLabel(1)));
    assert_eq!(b.label_offset(l), None);
    assert!(b.bytes().is_empty());
}

#[test]
fn code_too_large() {
    let mut a = Assembler::with_limit(10);
    a.mov_ri64(Reg::Rax, 1); // 10 bytes: exactly the limit
    let l = a.new_label();
    a.bind(l).unwrap();
    a.nop(); // does not fit: dropped, not partially written
    assert_eq!(a.offset(), 10);
    assert_eq!(a.jmp(l), Err(Error::CodeTooLarge));
    assert_eq!(a.bind(a.clone().new_label()), Err(Error::CodeTooLarge));
    assert_eq!(
        a.mov_rm(Reg::Rax, Mem::base(Reg::Rax, 0)),
        Err(Error::CodeTooLarge)
    );
    assert_eq!(a.bytes().len(), 10);
    assert_eq!(a.finish(), Err(Error::CodeTooLarge));

    // A whole instruction that does not fit is not written at all.
    let mut a = Assembler::with_limit(12);
    a.mov_ri64(Reg::Rax, 1);
    assert_eq!(
        a.mov_rm(Reg::Rax, Mem::base(Reg::Rax, 1000)),
        Err(Error::CodeTooLarge)
    );
    assert_eq!(a.offset(), 10);
    assert_eq!(a.finish(), Err(Error::CodeTooLarge));

    // Alignment padding past the limit.
    let mut a = Assembler::with_limit(100);
    a.nop();
    a.align(128);
    assert_eq!(a.offset(), 1);
    assert_eq!(a.finish(), Err(Error::CodeTooLarge));
    let mut a = Assembler::new();
    a.nop();
    a.align(usize::MAX);
    assert_eq!(a.finish(), Err(Error::CodeTooLarge));

    assert_eq!(MAX_CODE_SIZE, (1 << 31) - 1);
}

#[test]
fn align_pads_with_nops() {
    for start in 0..40 {
        for n in [0usize, 1, 2, 4, 8, 16, 32] {
            let mut a = Assembler::new();
            nops(&mut a, start);
            a.align(n);
            let end = a.offset();
            if n > 0 {
                assert_eq!(end % n, 0);
                assert!(end - start < n);
            } else {
                assert_eq!(end, start);
            }
            let code = a.finish().unwrap();
            let mut d = Decoder::with_ip(64, &code[start..], 0, DecoderOptions::NONE);
            let mut count = 0;
            while d.can_decode() {
                let ins = d.decode();
                assert_eq!(ins.mnemonic(), Mnemonic::Nop, "{:02X?}", &code[start..]);
                assert!(ins.len() <= 9);
                count += 1;
            }
            // As few NOPs as possible.
            assert_eq!(count, (end - start).div_ceil(9));
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Nops(usize),
    Jmp(usize),
    Jcc(usize, usize),
    Call(usize),
    Bind(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..200).prop_map(Step::Nops),
        (0usize..6).prop_map(Step::Jmp),
        (0usize..16, 0usize..6).prop_map(|(c, l)| Step::Jcc(c, l)),
        (0usize..6).prop_map(Step::Call),
        (0usize..6).prop_map(Step::Bind),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random programs of branches and bindings: every branch lands on its label.
    #[test]
    fn random_branches(steps in proptest::collection::vec(step(), 0..60)) {
        let mut a = Assembler::new();
        let labels: Vec<Label> = (0..6).map(|_| a.new_label()).collect();
        let mut sites = Vec::new();
        for s in steps {
            match s {
                Step::Nops(n) => nops(&mut a, n),
                Step::Jmp(l) => {
                    sites.push((a.offset(), l));
                    a.jmp(labels[l]).unwrap();
                }
                Step::Jcc(c, l) => {
                    sites.push((a.offset(), l));
                    a.jcc(Cond::ALL[c], labels[l]).unwrap();
                }
                Step::Call(l) => {
                    sites.push((a.offset(), l));
                    a.call_label(labels[l]).unwrap();
                }
                Step::Bind(l) => {
                    let r = a.bind(labels[l]);
                    if r.is_err() {
                        prop_assert_eq!(r, Err(Error::LabelBoundTwice(labels[l].index())));
                    }
                }
            }
        }
        for &l in &labels {
            if a.label_offset(l).is_none() {
                a.bind(l).unwrap();
            }
        }
        let targets: Vec<usize> = labels.iter().map(|&l| a.label_offset(l).unwrap()).collect();
        let code = a.finish().unwrap();
        for (at, l) in sites {
            let ins = decode_at(&code, at);
            prop_assert!(ins.is_jmp_short_or_near() || ins.is_jcc_short_or_near() || ins.is_call_near());
            prop_assert_eq!(ins.near_branch_target(), targets[l] as u64);
        }
    }
}
