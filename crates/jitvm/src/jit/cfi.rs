//! Call-frame information for compiled code and the runtime stubs: the [`FrameStep`]s the
//! backends record, as a `jitmem::debuginfo::Cfi` (which jitmem hands to gdb's JIT objects, to
//! the process's unwinder and to jitdump's unwinding records).
//!
//! The CIEs state each ISA's call state: x86-64, CFA = RSP + 8 with the return address at
//! CFA - 8 (System V psABI 3.7); AArch64, CFA = SP with the return address in X30 (AAPCS64).

use jitmem::debuginfo::Cfi;
use jitmem::debuginfo::gimli::write::{CallFrameInstruction, CommonInformationEntry};
use jitmem::debuginfo::gimli::{AArch64, Encoding, Format, Register, X86_64};

use super::masm::FrameStep;
use super::{Isa, JitError};

/// The call-frame information of one block: one FDE over its `len` bytes, described by
/// `steps` (offsets in the same code).
pub(crate) fn frame_table(isa: Isa, steps: &[FrameStep], len: usize) -> Result<Cfi, JitError> {
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 1,
        address_size: 8,
    };
    let (cie, sp, entry_cfa) = match isa {
        Isa::X64 => {
            let mut cie = CommonInformationEntry::new(encoding, 1, -8, X86_64::RA);
            cie.add_instruction(CallFrameInstruction::Cfa(X86_64::RSP, 8));
            cie.add_instruction(CallFrameInstruction::Offset(X86_64::RA, -8));
            (cie, X86_64::RSP, 8)
        }
        Isa::A64 => {
            let mut cie = CommonInformationEntry::new(encoding, 4, -8, AArch64::X30);
            cie.add_instruction(CallFrameInstruction::Cfa(AArch64::SP, 0));
            (cie, AArch64::SP, 0)
        }
    };
    let mut fde = Vec::new();
    let mut saved: Vec<u16> = Vec::new();
    for step in steps {
        let (at, instructions) = match *step {
            FrameStep::Entry { at } => {
                let mut v = vec![CallFrameInstruction::Cfa(sp, entry_cfa)];
                v.extend(
                    saved
                        .iter()
                        .map(|r| CallFrameInstruction::Restore(Register(*r))),
                );
                (at, v)
            }
            FrameStep::Cfa { at, reg, offset } => {
                (at, vec![CallFrameInstruction::Cfa(Register(reg), offset)])
            }
            FrameStep::CfaOffset { at, offset } => {
                (at, vec![CallFrameInstruction::CfaOffset(offset)])
            }
            FrameStep::Saved { at, reg, offset } => {
                if !saved.contains(&reg) {
                    saved.push(reg);
                }
                (
                    at,
                    vec![CallFrameInstruction::Offset(Register(reg), offset)],
                )
            }
            FrameStep::Restored { at, reg } => {
                (at, vec![CallFrameInstruction::Restore(Register(reg))])
            }
            FrameStep::Remember { at } => (at, vec![CallFrameInstruction::RememberState]),
            FrameStep::Restore { at } => (at, vec![CallFrameInstruction::RestoreState]),
        };
        let at = u32::try_from(at).map_err(|_| JitError::Internal("code larger than 4 GiB"))?;
        for instruction in instructions {
            fde.push((at, instruction));
        }
    }
    let mut cfi = Cfi::new();
    let cie = cfi.add_cie(cie);
    cfi.add_fde(cie, 0, len, fde)?;
    Ok(cfi)
}
