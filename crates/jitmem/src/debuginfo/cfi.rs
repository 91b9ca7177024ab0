//! [`Cfi`]: the call-frame information of one block, in offsets of the block, which each sink
//! encodes as it needs: absolute addresses for the unwinder and gdb's in-memory objects
//! (`DW_EH_PE_absptr`), addresses relative to the entry (`DW_EH_PE_pcrel | DW_EH_PE_sdata4`) for
//! the `.eh_frame` that `perf inject --jit` places after each symbol's code.

use std::ops::Range;

use gimli::write::{
    Address, CallFrameInstruction, CommonInformationEntry, FrameDescriptionEntry, FrameTable,
};

use crate::error::{Error, Result};

/// Which CIE of a [`Cfi`] an FDE uses ([`Cfi::add_cie`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CieIndex(usize);

/// Call-frame information for one block: CIEs (gimli's
/// [`CommonInformationEntry`], with the initial instructions of the ISA's call) and FDEs over
/// ranges of the block, each with its instructions at offsets from the start of its range.
///
/// The pointer encoding of the CIEs is jitmem's to choose per sink (whatever
/// `fde_address_encoding` says is replaced), which is why this is not a `FrameTable`: gimli's
/// table fixes each FDE's address when it is built.
///
/// ```
/// # #[cfg(target_arch = "x86_64")]
/// # fn main() -> jitmem::Result<()> {
/// use jitmem::debuginfo::Cfi;
/// use jitmem::debuginfo::gimli::write::{CallFrameInstruction, CommonInformationEntry};
/// use jitmem::debuginfo::gimli::{Encoding, Format, X86_64};
///
/// let encoding = Encoding { format: Format::Dwarf32, version: 1, address_size: 8 };
/// let mut cie = CommonInformationEntry::new(encoding, 1, -8, X86_64::RA);
/// cie.add_instruction(CallFrameInstruction::Cfa(X86_64::RSP, 8));
/// cie.add_instruction(CallFrameInstruction::Offset(X86_64::RA, -8));
/// let mut cfi = Cfi::new();
/// let cie = cfi.add_cie(cie);
/// // A function at offset 0 of 16 bytes whose `push rbp` (1 byte) moves the CFA.
/// cfi.add_fde(cie, 0, 16, vec![(1, CallFrameInstruction::CfaOffset(16))])?;
/// # Ok(()) }
/// # #[cfg(not(target_arch = "x86_64"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug, Default)]
pub struct Cfi {
    cies: Vec<CommonInformationEntry>,
    fdes: Vec<Fde>,
}

#[derive(Clone, Debug)]
struct Fde {
    cie: usize,
    range: Range<usize>,
    instructions: Vec<(u32, CallFrameInstruction)>,
}

impl Cfi {
    /// No CIE, no FDE.
    pub fn new() -> Cfi {
        Cfi::default()
    }

    /// Adds a CIE.
    pub fn add_cie(&mut self, cie: CommonInformationEntry) -> CieIndex {
        self.cies.push(cie);
        CieIndex(self.cies.len() - 1)
    }

    /// Adds an FDE for the `len` bytes at `offset` in the block, described by `cie` and
    /// `instructions` (each at an offset from `offset`, in increasing order).
    ///
    /// # Errors
    /// [`Error::DebugInfo`] when `cie` is not one of this table's, `len` is 0 or does not fit
    /// 32 bits, the range overflows, or an instruction lies outside the range or out of order.
    pub fn add_fde(
        &mut self,
        cie: CieIndex,
        offset: usize,
        len: usize,
        instructions: Vec<(u32, CallFrameInstruction)>,
    ) -> Result<()> {
        if cie.0 >= self.cies.len() {
            return Err(Error::DebugInfo(format!(
                "FDE at {offset:#x}: CIE {} is not one of this table's {}",
                cie.0,
                self.cies.len()
            )));
        }
        let end = offset.checked_add(len);
        let (Some(end), true, Ok(len32)) = (end, len > 0, u32::try_from(len)) else {
            return Err(Error::DebugInfo(format!(
                "FDE at {offset:#x}: length {len} is 0, above 4 GiB or overflows"
            )));
        };
        let mut last = 0;
        for (at, _) in &instructions {
            if *at < last || *at >= len32 {
                return Err(Error::DebugInfo(format!(
                    "FDE at {offset:#x}: an instruction at {at} is out of order or outside its \
                     {len} bytes"
                )));
            }
            last = *at;
        }
        self.fdes.push(Fde {
            cie: cie.0,
            range: offset..end,
            instructions,
        });
        Ok(())
    }

    /// Whether there is no FDE.
    pub fn is_empty(&self) -> bool {
        self.fdes.is_empty()
    }

    /// The ranges the FDEs cover, in the order they were added.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.fdes.iter().map(|f| f.range.clone())
    }

    /// A gimli table of the FDEs `keep` accepts (by range), each at `address(offset)`, their
    /// CIEs with `encoding` as their FDE pointer encoding. `None` when `keep` accepts none.
    pub(crate) fn table(
        &self,
        keep: impl Fn(&Range<usize>) -> bool,
        address: impl Fn(usize) -> Address,
        encoding: gimli::DwEhPe,
    ) -> Option<FrameTable> {
        let mut table = FrameTable::default();
        let mut added = false;
        for fde in self.fdes.iter().filter(|f| keep(&f.range)) {
            // In range: add_fde checked the index.
            let mut cie = self.cies.get(fde.cie)?.clone();
            cie.fde_address_encoding = encoding;
            let id = table.add_cie(cie);
            // In range: add_fde checked that the length fits 32 bits.
            let len = u32::try_from(fde.range.len()).ok()?;
            let mut entry = FrameDescriptionEntry::new(address(fde.range.start), len);
            for (at, instruction) in &fde.instructions {
                entry.add_instruction(*at, instruction.clone());
            }
            table.add_fde(id, entry);
            added = true;
        }
        added.then_some(table)
    }
}

/// The unwinding data of jitdump's `JIT_CODE_UNWINDING_INFO` for one symbol: `.eh_frame`
/// followed by `.eh_frame_hdr`, laid out for the ELF object `perf inject --jit` makes of the
/// symbol's `JIT_CODE_LOAD` (linux `tools/perf/util/genelf.c`, `jit_add_eh_frame_info`): the
/// code at some address T, `.eh_frame` at `T + ALIGN_8(code size)`, `.eh_frame_hdr` right
/// after it. Every pointer is relative (FDEs `DW_EH_PE_pcrel | DW_EH_PE_sdata4`, the header's
/// `eh_frame_ptr` pc-relative and its table `datarel`), so T does not matter (perf changed it
/// from 0x40 to 0x80) and perf copies the bytes as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(target_os = "linux"),
    allow(
        dead_code,
        reason = "jitdump is Linux-only; the layout is unit-tested everywhere"
    )
)]
pub(crate) struct PerfUnwinding {
    /// `.eh_frame` then `.eh_frame_hdr`.
    pub(crate) data: Vec<u8>,
    /// The size of the `.eh_frame_hdr` at the end of `data`.
    pub(crate) eh_frame_hdr_size: usize,
}

impl Cfi {
    /// The perf unwinding data for the symbol over `range` of the block: the FDEs that overlap
    /// it, or `None` when none does.
    ///
    /// # Errors
    /// [`Error::DebugInfo`] when the CFI cannot be encoded (an FDE farther than 2 GiB from the
    /// symbol) or read back.
    #[cfg_attr(
        not(target_os = "linux"),
        allow(
            dead_code,
            reason = "jitdump is Linux-only; the layout is unit-tested everywhere"
        )
    )]
    pub(crate) fn perf_unwinding(&self, range: &Range<usize>) -> Result<Option<PerfUnwinding>> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::DebugInfo(format!("jitdump unwinding info: {what}: {e}"))
        };
        // Where .eh_frame starts, relative to the symbol's first byte.
        let text = range.len().div_ceil(8) * 8;
        let start = range.start;
        let Some(table) = self.table(
            |r| r.start < range.end && range.start < r.end,
            // gimli writes a pc-relative constant as `value - offset of the field in the
            // section`: the value is the address relative to the start of .eh_frame.
            |offset| {
                Address::Constant((offset.wrapping_sub(start) as u64).wrapping_sub(text as u64))
            },
            gimli::DW_EH_PE_pcrel | gimli::DW_EH_PE_sdata4,
        ) else {
            return Ok(None);
        };
        let endian = super::native_endian();
        let mut eh = gimli::write::EhFrame(gimli::write::EndianVec::new(endian));
        table
            .write_eh_frame(&mut eh)
            .map_err(|e| bad("encoding the CFI", &e))?;
        let mut data = eh.0.into_vec();
        data.extend_from_slice(&[0; 4]); // the terminator
        let eh_len = data.len(); // a multiple of 4: gimli pads entries to the address size
        // Read the FDEs back: their code-relative start and their offset in .eh_frame.
        let read = gimli::read::EhFrame::new(&data, endian);
        let bases = gimli::read::BaseAddresses::default().set_eh_frame(text as u64);
        let mut fdes: Vec<(i64, usize)> = Vec::new();
        let mut entries = gimli::read::UnwindSection::entries(&read, &bases);
        while let Some(entry) = entries.next().map_err(|e| bad("reading it back", &e))? {
            if let gimli::read::CieOrFde::Fde(partial) = entry {
                let fde = partial
                    .parse(gimli::read::UnwindSection::cie_from_offset)
                    .map_err(|e| bad("reading an FDE back", &e))?;
                fdes.push((fde.initial_address() as i64, fde.offset()));
            }
        }
        fdes.sort_unstable();
        let to_i32 = |v: i64| {
            i32::try_from(v).map_err(|_| bad("an offset above 2 GiB", &format_args!("{v:#x}")))
        };
        let hdr_at = (text + eh_len) as i64;
        let mut hdr = vec![
            1,                                                    // version
            gimli::DW_EH_PE_pcrel.0 | gimli::DW_EH_PE_sdata4.0,   // eh_frame_ptr_enc
            gimli::DW_EH_PE_udata4.0,                             // fde_count_enc
            gimli::DW_EH_PE_datarel.0 | gimli::DW_EH_PE_sdata4.0, // table_enc
        ];
        let mut put = |v: i32| match endian {
            gimli::RunTimeEndian::Little => hdr.extend_from_slice(&v.to_le_bytes()),
            gimli::RunTimeEndian::Big => hdr.extend_from_slice(&v.to_be_bytes()),
        };
        put(to_i32(-(eh_len as i64) - 4)?); // from the field (header + 4) back to .eh_frame
        put(to_i32(fdes.len() as i64)?);
        for (initial, offset) in &fdes {
            put(to_i32(initial - hdr_at)?);
            put(to_i32(*offset as i64 - eh_len as i64)?);
        }
        let eh_frame_hdr_size = hdr.len();
        data.extend_from_slice(&hdr);
        Ok(Some(PerfUnwinding {
            data,
            eh_frame_hdr_size,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimli::{Encoding, Format, X86_64};

    fn cie() -> CommonInformationEntry {
        let encoding = Encoding {
            format: Format::Dwarf32,
            version: 1,
            address_size: 8,
        };
        CommonInformationEntry::new(encoding, 1, -8, X86_64::RA)
    }

    #[test]
    fn bad_fdes_are_refused() {
        let mut cfi = Cfi::new();
        let other = Cfi::new().add_cie(cie());
        assert!(cfi.add_fde(other, 0, 4, vec![]).is_err(), "foreign CIE");
        let c = cfi.add_cie(cie());
        assert!(cfi.add_fde(c, 0, 0, vec![]).is_err(), "empty");
        assert!(cfi.add_fde(c, usize::MAX, 2, vec![]).is_err(), "overflow");
        let late = vec![(4, CallFrameInstruction::CfaOffset(16))];
        assert!(cfi.add_fde(c, 0, 4, late).is_err(), "outside");
        let unordered = vec![
            (2, CallFrameInstruction::CfaOffset(16)),
            (1, CallFrameInstruction::CfaOffset(8)),
        ];
        assert!(cfi.add_fde(c, 0, 4, unordered).is_err(), "order");
        assert!(cfi.is_empty());
        cfi.add_fde(c, 8, 4, vec![(1, CallFrameInstruction::CfaOffset(16))])
            .unwrap();
        assert_eq!(cfi.ranges().collect::<Vec<_>>(), vec![8..12]);
    }

    #[test]
    fn table_keeps_what_is_asked_with_the_encoding_asked() {
        let mut cfi = Cfi::new();
        let c = cfi.add_cie(cie());
        cfi.add_fde(c, 0, 4, vec![]).unwrap();
        cfi.add_fde(c, 4, 4, vec![]).unwrap();
        let none = cfi.table(
            |r| r.start >= 8,
            |o| Address::Constant(o as u64),
            gimli::DW_EH_PE_absptr,
        );
        assert!(none.is_none());
        let one = cfi
            .table(
                |r| r.start >= 4,
                |o| Address::Constant(o as u64),
                gimli::DW_EH_PE_absptr,
            )
            .unwrap();
        assert_eq!(one.fde_count(), 1);
    }

    /// The perf layout read back with gimli's own parsers: the header's table finds, for a pc
    /// in the symbol, the FDE that covers it, at the right code-relative address.
    #[test]
    fn perf_unwinding_data_resolves_pcs_through_its_header() {
        use gimli::read::{BaseAddresses, EhFrame, EhFrameHdr, UnwindSection};
        let mut c = cie();
        c.add_instruction(CallFrameInstruction::Cfa(X86_64::RSP, 8));
        let mut cfi = Cfi::new();
        let id = cfi.add_cie(c);
        // Three functions in the block; the symbol is the middle one, 0x30 bytes at 0x100.
        cfi.add_fde(id, 0, 0x100, vec![]).unwrap();
        cfi.add_fde(
            id,
            0x100,
            0x30,
            vec![(1, CallFrameInstruction::CfaOffset(16))],
        )
        .unwrap();
        cfi.add_fde(id, 0x130, 0x10, vec![]).unwrap();
        assert_eq!(cfi.perf_unwinding(&(0x200..0x210)).unwrap(), None);
        let u = cfi.perf_unwinding(&(0x100..0x130)).unwrap().unwrap();
        let eh_len = u.data.len() - u.eh_frame_hdr_size;
        assert_eq!(eh_len % 4, 0);
        assert_eq!(u.eh_frame_hdr_size, 12 + 8);
        // Place the code at 0x1000 (any T works): .eh_frame at 0x1000 + ALIGN_8(0x30).
        let code = 0x1000u64;
        let eh_at = code + 0x30;
        let bases = BaseAddresses::default()
            .set_eh_frame(eh_at)
            .set_eh_frame_hdr(eh_at + eh_len as u64);
        let endian = gimli::RunTimeEndian::Little;
        let eh = EhFrame::new(&u.data[..eh_len], endian);
        let hdr = EhFrameHdr::new(&u.data[eh_len..], endian)
            .parse(&bases, 8)
            .unwrap();
        assert_eq!(
            hdr.eh_frame_ptr(),
            gimli::read::Pointer::Direct(eh_at),
            "eh_frame_ptr"
        );
        let table = hdr.table().unwrap();
        for pc in [code, code + 0x2f] {
            let fde = table
                .fde_for_address(&eh, &bases, pc, EhFrame::cie_from_offset)
                .unwrap();
            assert_eq!(
                (fde.initial_address(), fde.len()),
                (code, 0x30),
                "pc {pc:#x}"
            );
        }
        assert!(
            table
                .fde_for_address(&eh, &bases, code + 0x30, EhFrame::cie_from_offset)
                .is_err(),
            "the next function is not this symbol's"
        );
        // A symbol over two functions: both FDEs, sorted, each at its own address.
        let u = cfi.perf_unwinding(&(0..0x130)).unwrap().unwrap();
        assert_eq!(u.eh_frame_hdr_size, 12 + 2 * 8);
        let eh_len = u.data.len() - u.eh_frame_hdr_size;
        let eh_at = code + 0x130;
        let bases = BaseAddresses::default()
            .set_eh_frame(eh_at)
            .set_eh_frame_hdr(eh_at + eh_len as u64);
        let eh = EhFrame::new(&u.data[..eh_len], endian);
        let hdr = EhFrameHdr::new(&u.data[eh_len..], endian)
            .parse(&bases, 8)
            .unwrap();
        let table = hdr.table().unwrap();
        for (pc, start, len) in [(code + 5, code, 0x100), (code + 0x110, code + 0x100, 0x30)] {
            let fde = table
                .fde_for_address(&eh, &bases, pc, EhFrame::cie_from_offset)
                .unwrap();
            assert_eq!(
                (fde.initial_address(), fde.len()),
                (start, len),
                "pc {pc:#x}"
            );
        }
    }
}
