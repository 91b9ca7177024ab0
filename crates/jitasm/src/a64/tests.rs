//! Tests of the AArch64 encoder against an independent decoder (yaxpeax-arm 0.5).
//!
//! Expected texts are built here from the operands (register names, hex immediates, aliases as
//! the manual prefers them and as yaxpeax prints them), never from the encoder's own output.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::OnceLock;
use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand, SizeCode};

// ----- helpers ---------------------------------------------------------------------------

fn decode(w: u32) -> Instruction {
    let b = w.to_le_bytes();
    let mut r = U8Reader::new(&b);
    InstDecoder::default()
        .decode(&mut r)
        .unwrap_or_else(|e| panic!("{w:#010x} does not decode: {e:?}"))
}

fn dis(w: u32) -> String {
    decode(w).to_string()
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Runs one form on a fresh assembler: one word on success, nothing emitted on error.
fn enc(f: impl FnOnce(&mut Assembler) -> Result<()>) -> Result<u32> {
    let mut a = Assembler::new();
    match f(&mut a) {
        Ok(()) => {
            assert_eq!(a.offset(), 4, "one instruction expected");
            Ok(word(a.bytes(), 0))
        }
        Err(e) => {
            assert_eq!(a.offset(), 0, "an error must not emit anything");
            Err(e)
        }
    }
}

#[track_caller]
fn expect(f: impl FnOnce(&mut Assembler) -> Result<()>, want: &str) {
    let w = enc(f).unwrap_or_else(|e| panic!("expected `{want}`, got {e:?}"));
    assert_eq!(dis(w), want, "word {w:#010x}");
}

#[track_caller]
fn bad_reg(f: impl FnOnce(&mut Assembler) -> Result<()>) {
    let r = enc(f);
    assert!(matches!(r, Err(Error::InvalidRegister { .. })), "{r:?}");
}

#[track_caller]
fn bad_imm(f: impl FnOnce(&mut Assembler) -> Result<()>) {
    let r = enc(f);
    assert!(matches!(r, Err(Error::ImmediateOutOfRange { .. })), "{r:?}");
}

type R = (Reg, String);

/// X0..X30 and XZR, with their names.
fn zregs() -> Vec<R> {
    let mut v: Vec<R> = (0..=30)
        .map(|n| (Reg::x(n).unwrap(), format!("x{n}")))
        .collect();
    v.push((XZR, "xzr".into()));
    v
}

/// X0..X30 and SP, with their names.
fn sregs() -> Vec<R> {
    let mut v: Vec<R> = (0..=30)
        .map(|n| (Reg::x(n).unwrap(), format!("x{n}")))
        .collect();
    v.push((SP, "sp".into()));
    v
}

/// Every register of each list appears in every position (odd multipliers permute 0..32).
fn triples(a: &[R], b: &[R], c: &[R]) -> Vec<(R, R, R)> {
    let mut out = Vec::new();
    for k in 0..3 {
        for i in 0..32 {
            out.push((
                a[i].clone(),
                b[(5 * i + 7 * k + 1) % 32].clone(),
                c[(11 * i + 13 * k + 2) % 32].clone(),
            ));
        }
    }
    out
}

fn quads(regs: &[R]) -> Vec<(R, R, R, R)> {
    triples(regs, regs, regs)
        .into_iter()
        .enumerate()
        .map(|(i, (a, b, c))| (a, b, c, regs[(13 * i + 3) % 32].clone()))
        .collect()
}

fn pairs(a: &[R], b: &[R]) -> Vec<(R, R)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            out.push((x.clone(), y.clone()));
        }
    }
    out
}

/// Signed immediate as yaxpeax prints it in memory operands.
fn simm(v: i64) -> String {
    if v < 0 {
        format!("#-{:#x}", -v)
    } else {
        format!("#{v:#x}")
    }
}

const CONDS: [(Cond, &str, &str); 15] = [
    (Cond::Eq, "eq", "ne"),
    (Cond::Ne, "ne", "eq"),
    (Cond::Hs, "hs", "lo"),
    (Cond::Lo, "lo", "hs"),
    (Cond::Mi, "mi", "pl"),
    (Cond::Pl, "pl", "mi"),
    (Cond::Vs, "vs", "vc"),
    (Cond::Vc, "vc", "vs"),
    (Cond::Hi, "hi", "ls"),
    (Cond::Ls, "ls", "hi"),
    (Cond::Ge, "ge", "lt"),
    (Cond::Lt, "lt", "ge"),
    (Cond::Gt, "gt", "le"),
    (Cond::Le, "le", "gt"),
    (Cond::Al, "al", "al"),
];

// ----- registers and conditions ----------------------------------------------------------

#[test]
fn a64_reg_and_cond_basics() {
    for n in 0..=30u8 {
        let r = Reg::x(n).unwrap();
        assert_eq!(r.number(), n);
        assert!(!r.is_zr() && !r.is_sp());
    }
    assert_eq!(Reg::x(31), None);
    assert_eq!(Reg::x(255), None);
    assert_eq!(XZR.number(), 31);
    assert_eq!(SP.number(), 31);
    assert_ne!(XZR, SP);
    assert!(XZR.is_zr() && SP.is_sp());
    assert_eq!(
        (X0, X30, FP, LR),
        (Reg::x(0).unwrap(), Reg::x(30).unwrap(), X29, X30)
    );
    assert_eq!(format!("{X7:?} {XZR:?} {SP}"), "x7 xzr sp");
    for (c, name, inv) in CONDS {
        let (ci, _, _) = CONDS.iter().find(|(_, n, _)| *n == inv).unwrap();
        assert_eq!(c.invert(), *ci, "{name}");
        assert_eq!(c.invert().invert(), c);
        // The code is the architectural encoding: check it through B.cond's text.
        let w = 0x5400_0000 | u32::from(c.code());
        assert_eq!(dis(w), format!("b.{name} $+0x0"));
    }
}

// ----- moves -----------------------------------------------------------------------------

#[test]
fn a64_move_wide() {
    for (r, n) in zregs() {
        for imm in [0u16, 1, 0x1234, 0xffff] {
            for shift in [0u8, 16, 32, 48] {
                let v = u64::from(imm) << shift;
                expect(|a| a.movz(r, imm, shift), &format!("mov {n}, #{v:#x}"));
                expect(|a| a.movn(r, imm, shift), &format!("mov {n}, #{:#x}", !v));
                let sh = if shift == 0 {
                    String::new()
                } else {
                    format!(", lsl #{shift}")
                };
                expect(
                    |a| a.movk(r, imm, shift),
                    &format!("movk {n}, #{imm:#x}{sh}"),
                );
            }
        }
    }
    for shift in [1u8, 8, 15, 17, 64, 255] {
        bad_imm(|a| a.movz(X0, 1, shift));
        bad_imm(|a| a.movk(X0, 1, shift));
        bad_imm(|a| a.movn(X0, 1, shift));
    }
    bad_reg(|a| a.movz(SP, 1, 0));
    bad_reg(|a| a.movk(SP, 1, 0));
    bad_reg(|a| a.movn(SP, 1, 0));
}

#[test]
fn a64_mov_registers() {
    for ((d, dn), (m, mn)) in pairs(&zregs(), &zregs()) {
        expect(|a| a.mov_rr(d, m), &format!("mov {dn}, {mn}"));
    }
    for ((d, dn), (n, nn)) in pairs(&sregs(), &sregs()) {
        // The MOV alias of ADD #0 applies only when SP is involved.
        let want = if d == SP || n == SP {
            format!("mov {dn}, {nn}")
        } else {
            format!("add {dn}, {nn}, #0x0")
        };
        expect(|a| a.mov_sp(d, n), &want);
    }
    bad_reg(|a| a.mov_rr(SP, X1));
    bad_reg(|a| a.mov_rr(X1, SP));
    bad_reg(|a| a.mov_sp(XZR, X1));
    bad_reg(|a| a.mov_sp(X1, XZR));
}

// ----- add / subtract --------------------------------------------------------------------

#[test]
fn a64_addsub_shifted_register() {
    type F = fn(&mut Assembler, Reg, Reg, Reg, Shift, u8) -> Result<()>;
    let forms: [(&str, F); 4] = [
        ("add", Assembler::add_rrs),
        ("sub", Assembler::sub_rrs),
        ("adds", Assembler::adds_rrs),
        ("subs", Assembler::subs_rrs),
    ];
    let shifts = [
        (Shift::Lsl, 0u8, "lsl"),
        (Shift::Lsl, 1, "lsl"),
        (Shift::Lsr, 5, "lsr"),
        (Shift::Asr, 63, "asr"),
        (Shift::Lsr, 0, "lsr"),
        (Shift::Asr, 0, "asr"),
    ];
    let z = zregs();
    for (name, f) in forms {
        for ((d, dn), (n, nn), (m, mn)) in triples(&z, &z, &z) {
            for (shift, amount, sname) in shifts {
                // yaxpeax prints a zero LSR/ASR amount as a bare "lsr"/"asr".
                let sh = match (shift, amount) {
                    (Shift::Lsl, 0) => String::new(),
                    (_, 0) => format!(", {sname}"),
                    _ => format!(", {sname} #{amount}"),
                };
                let want = match name {
                    "sub" if n == XZR => format!("neg {dn}, {mn}{sh}"),
                    "adds" if d == XZR => format!("cmn {nn}, {mn}{sh}"),
                    "subs" if d == XZR => format!("cmp {nn}, {mn}{sh}"),
                    "subs" if n == XZR => format!("negs {dn}, {mn}{sh}"),
                    _ => format!("{name} {dn}, {nn}, {mn}{sh}"),
                };
                expect(|a| f(a, d, n, m, shift, amount), &want);
            }
            bad_imm(|a| f(a, d, n, m, Shift::Lsl, 64));
        }
        bad_reg(|a| f(a, SP, X1, X2, Shift::Lsl, 0));
        bad_reg(|a| f(a, X1, SP, X2, Shift::Lsl, 0));
        bad_reg(|a| f(a, X1, X2, SP, Shift::Asr, 1));
    }
    // The short forms are the LSL #0 forms and the aliases.
    for ((d, dn), (n, nn), (m, mn)) in triples(&z, &z, &z) {
        let same = |f: &dyn Fn(&mut Assembler) -> Result<()>,
                    g: &dyn Fn(&mut Assembler) -> Result<()>| {
            assert_eq!(enc(f).unwrap(), enc(g).unwrap());
        };
        same(&|a| a.add_rr(d, n, m), &|a| {
            a.add_rrs(d, n, m, Shift::Lsl, 0)
        });
        same(&|a| a.sub_rr(d, n, m), &|a| {
            a.sub_rrs(d, n, m, Shift::Lsl, 0)
        });
        same(&|a| a.adds_rr(d, n, m), &|a| {
            a.adds_rrs(d, n, m, Shift::Lsl, 0)
        });
        same(&|a| a.subs_rr(d, n, m), &|a| {
            a.subs_rrs(d, n, m, Shift::Lsl, 0)
        });
        expect(|a| a.cmp_rr(n, m), &format!("cmp {nn}, {mn}"));
        expect(|a| a.cmn_rr(n, m), &format!("cmn {nn}, {mn}"));
        expect(|a| a.neg(d, m), &format!("neg {dn}, {mn}"));
        let negs = if d == XZR {
            format!("cmp xzr, {mn}")
        } else {
            format!("negs {dn}, {mn}")
        };
        expect(|a| a.negs(d, m), &negs);
    }
    bad_reg(|a| a.add_rr(SP, X1, X2));
    bad_reg(|a| a.cmp_rr(SP, X1));
    bad_reg(|a| a.cmn_rr(X1, SP));
    bad_reg(|a| a.neg(X1, SP));
    bad_reg(|a| a.negs(SP, X1));
}

#[test]
fn a64_addsub_immediate() {
    let good = [0u64, 1, 0x10, 0xfff, 0x1000, 0x5000, 0xfff000];
    let bad = [
        0x1001u64,
        0x1800,
        0xfff001,
        0x100_0000,
        0x7fff_ffff,
        u64::MAX,
    ];
    let imm_text = |imm: u64| {
        if imm < 0x1000 {
            format!("#{imm:#x}")
        } else {
            format!("#{:#x}, lsl #12", imm >> 12)
        }
    };
    let (s, z) = (sregs(), zregs());
    // ADD/SUB: register 31 is SP for both.
    for ((d, dn), (n, nn)) in pairs(&s, &s) {
        for imm in good {
            let it = imm_text(imm);
            let add = if imm == 0 && (d == SP || n == SP) {
                format!("mov {dn}, {nn}")
            } else {
                format!("add {dn}, {nn}, {it}")
            };
            expect(|a| a.add_ri(d, n, imm), &add);
            expect(|a| a.sub_ri(d, n, imm), &format!("sub {dn}, {nn}, {it}"));
        }
    }
    // ADDS/SUBS: rd is XZR-or-register, rn is SP-or-register.
    for ((d, dn), (n, nn)) in pairs(&z, &s) {
        for imm in good {
            let it = imm_text(imm);
            let (adds, subs) = if d == XZR {
                (format!("cmn {nn}, {it}"), format!("cmp {nn}, {it}"))
            } else {
                (
                    format!("adds {dn}, {nn}, {it}"),
                    format!("subs {dn}, {nn}, {it}"),
                )
            };
            expect(|a| a.adds_ri(d, n, imm), &adds);
            expect(|a| a.subs_ri(d, n, imm), &subs);
        }
    }
    for (n, nn) in &s {
        for imm in good {
            let it = imm_text(imm);
            expect(|a| a.cmp_ri(*n, imm), &format!("cmp {nn}, {it}"));
            expect(|a| a.cmn_ri(*n, imm), &format!("cmn {nn}, {it}"));
        }
    }
    for imm in bad {
        bad_imm(|a| a.add_ri(X0, X1, imm));
        bad_imm(|a| a.sub_ri(SP, SP, imm));
        bad_imm(|a| a.adds_ri(X0, X1, imm));
        bad_imm(|a| a.subs_ri(X0, X1, imm));
        bad_imm(|a| a.cmp_ri(X1, imm));
        bad_imm(|a| a.cmn_ri(SP, imm));
    }
    bad_reg(|a| a.add_ri(XZR, X1, 1));
    bad_reg(|a| a.add_ri(X1, XZR, 1));
    bad_reg(|a| a.sub_ri(XZR, X1, 1));
    bad_reg(|a| a.sub_ri(X1, XZR, 1));
    bad_reg(|a| a.adds_ri(SP, X1, 1));
    bad_reg(|a| a.adds_ri(X1, XZR, 1));
    bad_reg(|a| a.subs_ri(SP, X1, 1));
    bad_reg(|a| a.subs_ri(X1, XZR, 1));
    bad_reg(|a| a.cmp_ri(XZR, 1));
    bad_reg(|a| a.cmn_ri(XZR, 1));
}

// ----- multiply / divide -----------------------------------------------------------------

#[test]
fn a64_multiply_divide() {
    let z = zregs();
    for ((d, dn), (n, nn), (m, mn), (r, rn)) in quads(&z) {
        let madd = if r == XZR {
            format!("mul {dn}, {nn}, {mn}")
        } else {
            format!("madd {dn}, {nn}, {mn}, {rn}")
        };
        let msub = if r == XZR {
            format!("mneg {dn}, {nn}, {mn}")
        } else {
            format!("msub {dn}, {nn}, {mn}, {rn}")
        };
        expect(|a| a.madd(d, n, m, r), &madd);
        expect(|a| a.msub(d, n, m, r), &msub);
        expect(|a| a.mul(d, n, m), &format!("mul {dn}, {nn}, {mn}"));
        expect(|a| a.sdiv(d, n, m), &format!("sdiv {dn}, {nn}, {mn}"));
        expect(|a| a.udiv(d, n, m), &format!("udiv {dn}, {nn}, {mn}"));
        expect(|a| a.smulh(d, n, m), &format!("smulh {dn}, {nn}, {mn}"));
        expect(|a| a.umulh(d, n, m), &format!("umulh {dn}, {nn}, {mn}"));
    }
    type F3 = fn(&mut Assembler, Reg, Reg, Reg) -> Result<()>;
    for f in [
        Assembler::mul as F3,
        Assembler::sdiv,
        Assembler::udiv,
        Assembler::smulh,
        Assembler::umulh,
    ] {
        bad_reg(|a| f(a, SP, X1, X2));
        bad_reg(|a| f(a, X1, SP, X2));
        bad_reg(|a| f(a, X1, X2, SP));
    }
    for f in [Assembler::madd, Assembler::msub] {
        bad_reg(|a| f(a, SP, X1, X2, X3));
        bad_reg(|a| f(a, X1, SP, X2, X3));
        bad_reg(|a| f(a, X1, X2, SP, X3));
        bad_reg(|a| f(a, X1, X2, X3, SP));
    }
}

// ----- logical and shifts ----------------------------------------------------------------

#[test]
fn a64_logical_register() {
    let z = zregs();
    for ((d, dn), (n, nn), (m, mn)) in triples(&z, &z, &z) {
        expect(|a| a.and_rr(d, n, m), &format!("and {dn}, {nn}, {mn}"));
        expect(|a| a.eor_rr(d, n, m), &format!("eor {dn}, {nn}, {mn}"));
        let orr = if n == XZR {
            format!("mov {dn}, {mn}")
        } else {
            format!("orr {dn}, {nn}, {mn}")
        };
        expect(|a| a.orr_rr(d, n, m), &orr);
        let ands = if d == XZR {
            format!("tst {nn}, {mn}")
        } else {
            format!("ands {dn}, {nn}, {mn}")
        };
        expect(|a| a.ands_rr(d, n, m), &ands);
        expect(|a| a.tst_rr(n, m), &format!("tst {nn}, {mn}"));
        expect(|a| a.mvn(d, m), &format!("mvn {dn}, {mn}"));
        expect(|a| a.lsl_rr(d, n, m), &format!("lsl {dn}, {nn}, {mn}"));
        expect(|a| a.lsr_rr(d, n, m), &format!("lsr {dn}, {nn}, {mn}"));
        expect(|a| a.asr_rr(d, n, m), &format!("asr {dn}, {nn}, {mn}"));
    }
    type F3 = fn(&mut Assembler, Reg, Reg, Reg) -> Result<()>;
    for f in [
        Assembler::and_rr as F3,
        Assembler::orr_rr,
        Assembler::eor_rr,
        Assembler::ands_rr,
        Assembler::lsl_rr,
        Assembler::lsr_rr,
        Assembler::asr_rr,
    ] {
        bad_reg(|a| f(a, SP, X1, X2));
        bad_reg(|a| f(a, X1, SP, X2));
        bad_reg(|a| f(a, X1, X2, SP));
    }
    bad_reg(|a| a.tst_rr(SP, X1));
    bad_reg(|a| a.mvn(X1, SP));
}

/// All 5334 64-bit logical immediates, enumerated from the definition: a run of `ones` set
/// bits (1..esize-1) rotated by 0..esize-1 in an element of 2, 4, ..., 64 bits, replicated.
fn bitmask_immediates() -> &'static HashSet<u64> {
    static SET: OnceLock<HashSet<u64>> = OnceLock::new();
    SET.get_or_init(|| {
        let mut set = HashSet::new();
        for esize in [2u32, 4, 8, 16, 32, 64] {
            let emask = if esize == 64 {
                u64::MAX
            } else {
                (1 << esize) - 1
            };
            for ones in 1..esize {
                let run = (1u64 << ones) - 1;
                for rot in 0..esize {
                    let elem = if rot == 0 {
                        run
                    } else {
                        ((run >> rot) | (run << (esize - rot))) & emask
                    };
                    let mut v = 0u64;
                    for i in 0..64 / esize {
                        v |= elem << (i * esize);
                    }
                    set.insert(v);
                }
            }
        }
        set
    })
}

#[test]
fn a64_logical_immediate() {
    let set = bitmask_immediates();
    assert_eq!(set.len(), 5334);
    for &v in set {
        let w = enc(|a| a.orr_ri(X1, X2, v)).unwrap();
        let i = decode(w);
        assert_eq!(i.opcode, Opcode::ORR);
        assert_eq!(i.operands[2], Operand::Imm64(v), "{v:#x}");
        assert_eq!(i.to_string(), format!("orr x1, x2, #{v:#x}"));
    }
    for v in [
        0u64,
        u64::MAX,
        5,
        0x1234,
        0x8000_0000_0000_0005,
        0x0f0f_0f0f_0f0f_0f0e,
    ] {
        bad_imm(|a| a.and_ri(X0, X1, v));
        bad_imm(|a| a.orr_ri(X0, X1, v));
        bad_imm(|a| a.eor_ri(X0, X1, v));
        bad_imm(|a| a.tst_ri(X1, v));
    }
    let imm = 0x00ff_00ff_00ff_00ffu64;
    for ((d, dn), (n, nn)) in pairs(&sregs(), &zregs()) {
        expect(
            |a| a.and_ri(d, n, imm),
            &format!("and {dn}, {nn}, #{imm:#x}"),
        );
        expect(
            |a| a.eor_ri(d, n, imm),
            &format!("eor {dn}, {nn}, #{imm:#x}"),
        );
        let orr = if n == XZR {
            format!("mov {dn}, #{imm:#x}")
        } else {
            format!("orr {dn}, {nn}, #{imm:#x}")
        };
        expect(|a| a.orr_ri(d, n, imm), &orr);
        if d == SP {
            expect(|a| a.tst_ri(n, imm), &format!("tst {nn}, #{imm:#x}"));
        }
    }
    bad_reg(|a| a.and_ri(XZR, X1, imm));
    bad_reg(|a| a.orr_ri(X1, SP, imm));
    bad_reg(|a| a.eor_ri(XZR, X1, imm));
    bad_reg(|a| a.tst_ri(SP, imm));
}

#[test]
fn a64_shift_immediate() {
    for ((d, dn), (n, nn)) in triples(&zregs(), &zregs(), &zregs())
        .into_iter()
        .map(|(a, b, _)| (a, b))
    {
        for s in 0..=63u8 {
            // LSL #0 is UBFM #0, #63, whose preferred disassembly is LSR #0.
            let lsl = if s == 0 {
                format!("lsr {dn}, {nn}, #0x0")
            } else {
                format!("lsl {dn}, {nn}, #{s:#x}")
            };
            expect(|a| a.lsl_ri(d, n, s), &lsl);
            expect(|a| a.lsr_ri(d, n, s), &format!("lsr {dn}, {nn}, #{s:#x}"));
            expect(|a| a.asr_ri(d, n, s), &format!("asr {dn}, {nn}, #{s:#x}"));
        }
        bad_imm(|a| a.lsl_ri(d, n, 64));
        bad_imm(|a| a.lsr_ri(d, n, 64));
        bad_imm(|a| a.asr_ri(d, n, 255));
    }
    bad_reg(|a| a.lsl_ri(SP, X1, 1));
    bad_reg(|a| a.lsr_ri(X1, SP, 1));
    bad_reg(|a| a.asr_ri(SP, X1, 1));
}

// ----- conditional select ----------------------------------------------------------------

#[test]
fn a64_conditional_select() {
    let z = zregs();
    for ((d, dn), (n, nn), (m, mn)) in triples(&z, &z, &z) {
        for (c, cn, inv) in CONDS {
            expect(
                |a| a.csel(d, n, m, c),
                &format!("csel {dn}, {nn}, {mn}, {cn}"),
            );
            // Aliases apply when rn == rm and the condition is not AL/NV.
            let alias = n == m && c != Cond::Al;
            let csinc = match (alias, n == XZR) {
                (true, true) => format!("cset {dn}, {inv}"),
                (true, false) => format!("cinc {dn}, {nn}, {inv}"),
                _ => format!("csinc {dn}, {nn}, {mn}, {cn}"),
            };
            expect(|a| a.csinc(d, n, m, c), &csinc);
            let csinv = match (alias, n == XZR) {
                (true, true) => format!("csetm {dn}, {inv}"),
                (true, false) => format!("cinv {dn}, {nn}, {inv}"),
                _ => format!("csinv {dn}, {nn}, {mn}, {cn}"),
            };
            expect(|a| a.csinv(d, n, m, c), &csinv);
            let csneg = if alias {
                format!("cneg {dn}, {nn}, {inv}")
            } else {
                format!("csneg {dn}, {nn}, {mn}, {cn}")
            };
            expect(|a| a.csneg(d, n, m, c), &csneg);
            // CSET/CSETM cannot express AL: they become MOVZ #1 / MOVN #0.
            let (cset, csetm) = if c == Cond::Al {
                (
                    format!("mov {dn}, #0x1"),
                    format!("mov {dn}, #0xffffffffffffffff"),
                )
            } else {
                (format!("cset {dn}, {cn}"), format!("csetm {dn}, {cn}"))
            };
            expect(|a| a.cset(d, c), &cset);
            expect(|a| a.csetm(d, c), &csetm);
        }
    }
    type F = fn(&mut Assembler, Reg, Reg, Reg, Cond) -> Result<()>;
    for f in [
        Assembler::csel as F,
        Assembler::csinc,
        Assembler::csinv,
        Assembler::csneg,
    ] {
        bad_reg(|a| f(a, SP, X1, X2, Cond::Eq));
        bad_reg(|a| f(a, X1, SP, X2, Cond::Eq));
        bad_reg(|a| f(a, X1, X2, SP, Cond::Eq));
    }
    bad_reg(|a| a.cset(SP, Cond::Eq));
    bad_reg(|a| a.cset(SP, Cond::Al));
    bad_reg(|a| a.csetm(SP, Cond::Ne));
}

// ----- branches --------------------------------------------------------------------------

type BranchFn<'a> = &'a dyn Fn(&mut Assembler, Label) -> Result<()>;

/// Decoded text of the word at `at`.
fn branch_text(bytes: &[u8], at: usize) -> String {
    dis(word(bytes, at))
}

fn pc(delta: i64) -> String {
    if delta < 0 {
        format!("$-{:#x}", -delta)
    } else {
        format!("$+{delta:#x}")
    }
}

/// Exact reach of a label-relative form: `range` bytes back works, one word more fails at the
/// branch; `range - 4` forward works, `range` forward fails at bind and at finish.
fn check_reach(emit: BranchFn<'_>, prefix: &str, range: usize) {
    let r = range as i64;
    // Backward.
    let mut a = Assembler::new();
    let l = a.new_label();
    a.bind(l).unwrap();
    a.nops(range / 4);
    assert_eq!(a.offset(), range);
    emit(&mut a, l).unwrap();
    assert_eq!(branch_text(a.bytes(), range), format!("{prefix}{}", pc(-r)));
    let err = emit(&mut a, l).unwrap_err();
    assert_eq!(
        err,
        Error::BranchOutOfRange {
            at: range + 4,
            target: 0,
            range
        }
    );
    assert_eq!(a.offset(), range + 4, "a failed branch emits nothing");
    a.finish().unwrap();

    // Forward: the branch at 0 cannot reach `range`, the one at 4 can.
    let mut a = Assembler::new();
    let l = a.new_label();
    emit(&mut a, l).unwrap();
    emit(&mut a, l).unwrap();
    a.nops(range / 4 - 2);
    assert_eq!(a.offset(), range);
    let err = Error::BranchOutOfRange {
        at: 0,
        target: range,
        range,
    };
    assert_eq!(a.bind(l), Err(err.clone()));
    assert_eq!(a.label_offset(l), Some(range));
    assert_eq!(branch_text(a.bytes(), 4), format!("{prefix}{}", pc(r - 4)));
    assert_eq!(a.finish(), Err(err));

    // Forward, the last reachable offset only: finish succeeds.
    if range <= 1 << 20 {
        let mut a = Assembler::new();
        let l = a.new_label();
        a.nop();
        emit(&mut a, l).unwrap();
        a.nops(range / 4 - 2);
        a.bind(l).unwrap();
        let code = a.finish().unwrap();
        assert_eq!(branch_text(&code, 4), format!("{prefix}{}", pc(r - 4)));
    }
}

#[test]
fn a64_branch_reach_short() {
    check_reach(&|a, l| a.b_cond(Cond::Ne, l), "b.ne ", 1 << 20);
    check_reach(&|a, l| a.cbz(X3, l), "cbz x3, ", 1 << 20);
    check_reach(&|a, l| a.cbnz(XZR, l), "cbnz xzr, ", 1 << 20);
    check_reach(&|a, l| a.adr(X4, l), "adr x4, ", 1 << 20);
    check_reach(&|a, l| a.tbz(X5, 7, l), "tbz w5, #0x7, ", 1 << 15);
    check_reach(&|a, l| a.tbnz(X6, 40, l), "tbnz x6, #0x28, ", 1 << 15);
}

#[test]
fn a64_branch_reach_long() {
    check_reach(&|a, l| a.b(l), "b ", 1 << 27);
    check_reach(&|a, l| a.bl(l), "bl ", 1 << 27);
}

#[test]
fn a64_branch_forms() {
    // Every form, every register, both directions, a few distances.
    for delta_words in [-5i64, -1, 0, 1, 2, 1000] {
        let d = delta_words * 4;
        let run = |emit: BranchFn<'_>| -> String {
            let mut a = Assembler::new();
            let l = a.new_label();
            let at;
            if d <= 0 {
                a.nops(10);
                a.bind(l).unwrap();
                a.nops((-delta_words) as usize);
                at = a.offset();
                emit(&mut a, l).unwrap();
            } else {
                at = a.offset();
                emit(&mut a, l).unwrap();
                a.nops(delta_words as usize - 1);
                a.bind(l).unwrap();
            }
            assert_eq!(a.label_offset(l).unwrap() as i64 - at as i64, d);
            let code = a.finish().unwrap();
            dis(word(&code, at))
        };
        let t = pc(d);
        assert_eq!(run(&|a, l| a.b(l)), format!("b {t}"));
        assert_eq!(run(&|a, l| a.bl(l)), format!("bl {t}"));
        for (c, cn, _) in CONDS {
            assert_eq!(run(&|a, l| a.b_cond(c, l)), format!("b.{cn} {t}"));
        }
        for (r, rn) in zregs() {
            assert_eq!(run(&|a, l| a.cbz(r, l)), format!("cbz {rn}, {t}"));
            assert_eq!(run(&|a, l| a.cbnz(r, l)), format!("cbnz {rn}, {t}"));
            assert_eq!(run(&|a, l| a.adr(r, l)), format!("adr {rn}, {t}"));
            for bit in [0u8, 1, 31, 32, 63] {
                // The W form is the standard syntax for bits 0..=31.
                let wr = if bit < 32 {
                    rn.replacen('x', "w", 1)
                } else {
                    rn.clone()
                };
                assert_eq!(
                    run(&|a, l| a.tbz(r, bit, l)),
                    format!("tbz {wr}, #{bit:#x}, {t}")
                );
                assert_eq!(
                    run(&|a, l| a.tbnz(r, bit, l)),
                    format!("tbnz {wr}, #{bit:#x}, {t}")
                );
            }
        }
    }
    let mut a = Assembler::new();
    let l = a.new_label();
    for r in [
        a.cbz(SP, l),
        a.cbnz(SP, l),
        a.tbz(SP, 1, l),
        a.tbnz(SP, 1, l),
        a.adr(SP, l),
    ] {
        assert!(matches!(r, Err(Error::InvalidRegister { .. })), "{r:?}");
    }
    assert!(matches!(
        a.tbz(X1, 64, l),
        Err(Error::ImmediateOutOfRange { .. })
    ));
    assert!(matches!(
        a.tbnz(X1, 255, l),
        Err(Error::ImmediateOutOfRange { .. })
    ));
    assert_eq!(a.offset(), 0);
    a.bind(l).unwrap();
    a.finish().unwrap();
}

#[test]
fn a64_labels() {
    let mut a = Assembler::new();
    let l = a.new_label();
    let m = a.new_label();
    assert_ne!(l, m);
    assert_eq!(a.label_offset(l), None);
    // Several fixups to one label, forward, then a backward use.
    a.b(l).unwrap();
    a.cbz(X0, l).unwrap();
    a.tbz(X0, 3, l).unwrap();
    a.adr(X1, l).unwrap();
    a.b_cond(Cond::Eq, l).unwrap();
    a.bind(l).unwrap();
    a.b(l).unwrap();
    assert_eq!(a.label_offset(l), Some(20));
    assert_eq!(a.bind(l), Err(Error::LabelBoundTwice(l.index())));
    // A label this assembler did not make.
    let mut other = Assembler::new();
    for _ in 0..5 {
        other.new_label();
    }
    let foreign = other.new_label();
    assert_eq!(a.b(foreign), Err(Error::UnknownLabel(foreign.index())));
    assert_eq!(a.bind(foreign), Err(Error::UnknownLabel(foreign.index())));
    assert_eq!(a.label_offset(foreign), None);
    let code = a.clone().finish().unwrap();
    let texts: Vec<String> = words(&code).into_iter().map(dis).collect();
    assert_eq!(
        texts,
        [
            "b $+0x14",
            "cbz x0, $+0x10",
            "tbz w0, #0x3, $+0xc",
            "adr x1, $+0x8",
            "b.eq $+0x4",
            "b $+0x0"
        ]
    );
    // An unbound used label fails finish; an unused one does not.
    a.cbnz(X2, m).unwrap();
    assert_eq!(a.clone().finish(), Err(Error::UnboundLabel(m.index())));
    let mut b = Assembler::new();
    b.new_label();
    b.ret();
    assert_eq!(b.finish().unwrap(), 0xd65f_03c0u32.to_le_bytes());
    // bytes() shows the unpatched word before binding.
    let mut c = Assembler::default();
    let k = c.new_label();
    c.b(k).unwrap();
    assert_eq!(word(c.bytes(), 0), 0x1400_0000);
    c.bind(k).unwrap();
    assert_eq!(word(c.bytes(), 0), 0x1400_0001);
}

#[test]
fn a64_register_branches_and_misc() {
    for (r, rn) in zregs() {
        expect(|a| a.blr(r), &format!("blr {rn}"));
        expect(|a| a.br(r), &format!("br {rn}"));
    }
    bad_reg(|a| a.blr(SP));
    bad_reg(|a| a.br(SP));
    expect(
        |a| {
            a.ret();
            Ok(())
        },
        "ret",
    );
    let ret = enc(|a| {
        a.ret();
        Ok(())
    });
    assert_eq!(
        decode(ret.unwrap()).operands[0],
        Operand::Register(SizeCode::X, 30)
    );
    for imm in [0u16, 1, 0x1234, 0xffff] {
        expect(
            |a| {
                a.brk(imm);
                Ok(())
            },
            &format!("brk #{imm:#x}"),
        );
    }
    expect(
        |a| {
            a.nop();
            Ok(())
        },
        "nop",
    );
    // nops and align.
    let mut a = Assembler::new();
    a.nops(0);
    assert_eq!(a.offset(), 0);
    a.align(16);
    assert_eq!(a.offset(), 0);
    a.nops(3);
    assert_eq!(a.offset(), 12);
    a.align(16);
    assert_eq!(a.offset(), 16);
    a.ret();
    a.align(4);
    assert_eq!(a.offset(), 20);
    a.align(64);
    assert_eq!(a.offset(), 64);
    a.align(12); // rounded up to 16
    assert_eq!(a.offset(), 64);
    a.nop();
    a.align(0); // rounded up to 4
    assert_eq!(a.offset(), 68);
    a.nops(1000);
    let code = a.finish().unwrap();
    for (i, w) in words(&code).into_iter().enumerate() {
        assert_eq!(dis(w), if i == 4 { "ret" } else { "nop" }, "word {i}");
    }
}

// ----- loads and stores ------------------------------------------------------------------

#[test]
fn a64_load_store_immediate() {
    let good = [
        0i64, 8, 16, 248, 256, 4096, 32760, 1, 4, 7, 255, -1, -8, -16, -256,
    ];
    let bad = [
        32768i64,
        32761,
        32767,
        257,
        260,
        -257,
        -264,
        -4096,
        i64::MIN,
        i64::MAX,
    ];
    for ((t, tn), (n, nn)) in pairs(&zregs(), &sregs()) {
        for off in good {
            let scaled = off % 8 == 0 && (0..=32760).contains(&off);
            for (op, unscaled) in [("ldr", "ldur"), ("str", "stur")] {
                let want = if scaled && off == 0 {
                    format!("{op} {tn}, [{nn}]")
                } else if scaled {
                    format!("{op} {tn}, [{nn}, #{off:#x}]")
                } else {
                    format!("{unscaled} {tn}, [{nn}, {}]", simm(off))
                };
                if op == "ldr" {
                    expect(|a| a.ldr(t, n, off), &want);
                } else {
                    expect(|a| a.str(t, n, off), &want);
                }
            }
        }
    }
    for off in bad {
        bad_imm(|a| a.ldr(X0, X1, off));
        bad_imm(|a| a.str(X0, SP, off));
    }
    bad_reg(|a| a.ldr(SP, X1, 0));
    bad_reg(|a| a.ldr(X1, XZR, 0));
    bad_reg(|a| a.str(SP, X1, 0));
    bad_reg(|a| a.str(X1, XZR, 0));
}

#[test]
fn a64_load_store_writeback() {
    type F = fn(&mut Assembler, Reg, Reg, i64) -> Result<()>;
    let forms: [(F, &str, bool); 4] = [
        (Assembler::ldr_pre, "ldr", true),
        (Assembler::ldr_post, "ldr", false),
        (Assembler::str_pre, "str", true),
        (Assembler::str_post, "str", false),
    ];
    for (f, op, pre) in forms {
        for ((t, tn), (n, nn)) in pairs(&zregs(), &sregs()) {
            if t == n {
                bad_reg(|a| f(a, t, n, 8));
                continue;
            }
            for off in [-256i64, -16, -1, 0, 1, 8, 255] {
                let want = if pre {
                    format!("{op} {tn}, [{nn}, {}]!", simm(off))
                } else {
                    format!("{op} {tn}, [{nn}], {}", simm(off))
                };
                expect(|a| f(a, t, n, off), &want);
            }
            bad_imm(|a| f(a, t, n, 256));
            bad_imm(|a| f(a, t, n, -257));
        }
        bad_reg(|a| f(a, SP, X1, 8));
        bad_reg(|a| f(a, X1, XZR, 8));
    }
}

#[test]
fn a64_load_store_register_offset() {
    for ((t, tn), (n, nn), (m, mn)) in triples(&zregs(), &sregs(), &zregs()) {
        expect(
            |a| a.ldr_rr(t, n, m, false),
            &format!("ldr {tn}, [{nn}, {mn}]"),
        );
        expect(
            |a| a.ldr_rr(t, n, m, true),
            &format!("ldr {tn}, [{nn}, {mn}, lsl #3]"),
        );
        expect(
            |a| a.str_rr(t, n, m, false),
            &format!("str {tn}, [{nn}, {mn}]"),
        );
        expect(
            |a| a.str_rr(t, n, m, true),
            &format!("str {tn}, [{nn}, {mn}, lsl #3]"),
        );
    }
    for f in [Assembler::ldr_rr, Assembler::str_rr] {
        bad_reg(|a| f(a, SP, X1, X2, false));
        bad_reg(|a| f(a, X1, XZR, X2, true));
        bad_reg(|a| f(a, X1, X2, SP, false));
    }
}

#[test]
fn a64_load_store_pair() {
    type F = fn(&mut Assembler, Reg, Reg, Reg, i64) -> Result<()>;
    // (form, mnemonic, is load, addressing: 0 offset, 1 pre-index, 2 post-index)
    let forms: [(F, &str, bool, u8); 6] = [
        (Assembler::stp, "stp", false, 0),
        (Assembler::ldp, "ldp", true, 0),
        (Assembler::stp_pre, "stp", false, 1),
        (Assembler::ldp_pre, "ldp", true, 1),
        (Assembler::stp_post, "stp", false, 2),
        (Assembler::ldp_post, "ldp", true, 2),
    ];
    let (z, s) = (zregs(), sregs());
    for (f, op, load, mode) in forms {
        for ((t1, t1n), (t2, t2n), (n, nn)) in triples(&z, &z, &s) {
            let unpredictable = (load && t1 == t2) || (mode != 0 && (t1 == n || t2 == n));
            if unpredictable {
                bad_reg(|a| f(a, t1, t2, n, 16));
                continue;
            }
            for off in [-512i64, -16, -8, 0, 8, 16, 504] {
                let want = match mode {
                    0 if off == 0 => format!("{op} {t1n}, {t2n}, [{nn}]"),
                    0 => format!("{op} {t1n}, {t2n}, [{nn}, {}]", simm(off)),
                    1 => format!("{op} {t1n}, {t2n}, [{nn}, {}]!", simm(off)),
                    _ => format!("{op} {t1n}, {t2n}, [{nn}], {}", simm(off)),
                };
                expect(|a| f(a, t1, t2, n, off), &want);
            }
            for off in [4i64, 1, -1, 505, 512, -520, -513, 1 << 40] {
                bad_imm(|a| f(a, t1, t2, n, off));
            }
        }
        bad_reg(|a| f(a, SP, X1, X2, 0));
        bad_reg(|a| f(a, X1, SP, X2, 0));
        bad_reg(|a| f(a, X1, X2, XZR, 0));
    }
    // The usual frame idiom.
    expect(
        |a| a.stp_pre(FP, LR, SP, -16),
        "stp x29, x30, [sp, #-0x10]!",
    );
    expect(|a| a.ldp_post(FP, LR, SP, 16), "ldp x29, x30, [sp], #0x10");
    // Pairs with XZR and writeback through SP are fine.
    expect(
        |a| a.stp_pre(XZR, XZR, SP, -16),
        "stp xzr, xzr, [sp, #-0x10]!",
    );
}

// ----- mov_imm ---------------------------------------------------------------------------

/// Rebuilds the value a decoded MOVZ/MOVN/MOVK/ORR sequence leaves in `rd`.
fn emulate_mov(code: &[u8], rd: u16) -> u64 {
    let mut v: Option<u64> = None;
    for w in words(code) {
        let i = decode(w);
        let dest = match i.operands[0] {
            Operand::Register(SizeCode::X, r) | Operand::RegisterOrSP(SizeCode::X, r) => r,
            ref o => panic!("unexpected destination {o:?} in {i}"),
        };
        assert_eq!(dest, rd, "{i}");
        let imm = |op: &Operand| match *op {
            Operand::ImmShift(imm, shift) => (u64::from(imm), u32::from(shift)),
            ref o => panic!("unexpected operand {o:?} in {i}"),
        };
        v = Some(match i.opcode {
            Opcode::MOVZ => {
                assert!(v.is_none(), "MOVZ after the first instruction: {i}");
                let (imm, shift) = imm(&i.operands[1]);
                imm << shift
            }
            Opcode::MOVN => {
                assert!(v.is_none(), "MOVN after the first instruction: {i}");
                let (imm, shift) = imm(&i.operands[1]);
                !(imm << shift)
            }
            Opcode::MOVK => {
                let old = v.expect("MOVK first");
                let (imm, shift) = imm(&i.operands[1]);
                (old & !(0xffff << shift)) | (imm << shift)
            }
            Opcode::ORR => {
                assert!(v.is_none(), "ORR after the first instruction: {i}");
                assert!(matches!(i.operands[0], Operand::RegisterOrSP(..)));
                assert_eq!(i.operands[1], Operand::Register(SizeCode::X, 31), "{i}");
                match i.operands[2] {
                    Operand::Imm64(x) => x,
                    ref o => panic!("unexpected operand {o:?} in {i}"),
                }
            }
            ref o => panic!("unexpected opcode {o:?} in {i}"),
        });
    }
    v.expect("no instruction")
}

/// MOVZ/MOVN + MOVK count: the 16-bit chunks differing from the better background, at least 1.
fn movk_family_len(v: u64) -> usize {
    let chunks = (0..4).map(|i| (v >> (16 * i)) & 0xffff);
    let zeros = chunks.clone().filter(|&c| c == 0).count();
    let ones = chunks.filter(|&c| c == 0xffff).count();
    (4 - zeros.max(ones)).max(1)
}

fn check_mov_imm(v: i64, rd: Reg) {
    let mut a = Assembler::new();
    a.mov_imm(rd, v).unwrap();
    let code = a.finish().unwrap();
    let n = code.len() / 4;
    assert_eq!(
        emulate_mov(&code, u16::from(rd.number())),
        v as u64,
        "{v:#x}"
    );
    let family = movk_family_len(v as u64);
    let bitmask = bitmask_immediates().contains(&(v as u64));
    let want = if bitmask && family > 1 && rd != XZR {
        1
    } else {
        family
    };
    assert_eq!(
        n,
        want,
        "{v:#x}: {:?}",
        words(&code).into_iter().map(dis).collect::<Vec<_>>()
    );
    if n == 1 && family == 1 {
        assert_ne!(
            decode(word(&code, 0)).opcode,
            Opcode::ORR,
            "{v:#x}: MOVZ/MOVN preferred"
        );
    }
}

#[test]
fn a64_mov_imm_fixed() {
    let values = [
        0i64,
        1,
        -1,
        -2,
        0xffff,
        0x10000,
        0x1_0000_0000,
        0x1234_5678_9abc_def0,
        -0x1234_5678_9abc_def0,
        i64::MIN,
        i64::MAX,
        0x0000_ffff_0000_ffff,
        0xffff_0000_ffff_0000u64 as i64,
        0x5555_5555_5555_5555,
        0xaaaa_aaaa_aaaa_aaaau64 as i64,
        0x0000_0000_ffff_ffff,
        0xffff_ffff_0000_0000u64 as i64,
        0xffff_1234_ffff_ffffu64 as i64,
        0x0000_1234_0000_5678,
        0xffff_0000_0000_ffffu64 as i64,
        0x00ff_00ff_00ff_00ff,
        0x1234_0000_0000_0000,
        0x8000_0000_0000_0001u64 as i64,
    ];
    for v in values {
        for rd in [X0, X17, X30, XZR] {
            check_mov_imm(v, rd);
        }
    }
    for (r, _) in zregs() {
        check_mov_imm(0x1234_5678, r);
        check_mov_imm(0x0f0f_0f0f_0f0f_0f0f, r);
    }
    for &v in bitmask_immediates() {
        check_mov_imm(v as i64, X9);
    }
    let mut a = Assembler::new();
    assert!(matches!(
        a.mov_imm(SP, 1),
        Err(Error::InvalidRegister { .. })
    ));
    assert_eq!(a.offset(), 0);
}

fn chunky() -> impl Strategy<Value = i64> {
    let chunk = prop_oneof![Just(0u64), Just(0xffff), any::<u16>().prop_map(u64::from)];
    prop::array::uniform4(chunk)
        .prop_map(|c| (c[0] | (c[1] << 16) | (c[2] << 32) | (c[3] << 48)) as i64)
}

proptest! {
    #[test]
    fn a64_mov_imm_any(v in any::<i64>(), r in 0u8..=30) {
        check_mov_imm(v, Reg::x(r).unwrap());
    }

    #[test]
    fn a64_mov_imm_chunks(v in chunky(), zr in any::<bool>()) {
        check_mov_imm(v, if zr { XZR } else { X5 });
    }

    #[test]
    fn a64_bitmask_agrees(v in any::<u64>(), shift in 0u32..64, pick in any::<prop::sample::Index>()) {
        let set = bitmask_immediates();
        prop_assert_eq!(encode_bitmask(v).is_some(), set.contains(&v));
        // Sparse random values are rarely bitmasks: also try members and near-members.
        let members: Vec<u64> = {
            let mut m: Vec<u64> = set.iter().copied().collect();
            m.sort_unstable();
            m
        };
        let m = members[pick.index(members.len())];
        prop_assert!(encode_bitmask(m).is_some());
        let near = m ^ (1 << shift);
        prop_assert_eq!(encode_bitmask(near).is_some(), set.contains(&near));
    }
}

#[test]
fn a64_bti_and_bl_disp() {
    let mut a = Assembler::new();
    a.bti(super::BtiTargets::C);
    a.bti(super::BtiTargets::J);
    a.bti(super::BtiTargets::Jc);
    a.bl_disp(-4).unwrap();
    a.bl_disp((1 << 27) - 4).unwrap();
    assert!(a.bl_disp(1 << 27).is_err());
    assert!(a.bl_disp(2).is_err());
    let words: Vec<u32> = a
        .finish()
        .unwrap()
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        words,
        [
            0xd503_245f,
            0xd503_249f,
            0xd503_24df,
            0x97ff_ffff,
            0x95ff_ffff
        ]
    );
}
