//! The GDB JIT interface: an in-memory ELF object per registration, linked into the list
//! `__jit_debug_descriptor` heads, announced through `__jit_debug_register_code`.
//! Reference: the GDB manual, "JIT Compilation Interface" (gdb/doc/gdb.texinfo), whose C
//! declarations the two items below follow. The object is laid out as LuaJIT's
//! (`src/lj_gdbjit.c`): `ET_REL`, a `SHT_NOBITS` `.text` whose `sh_addr` is the code's address
//! (gdb keeps a relocatable object's section addresses when one of them is set), `STT_FUNC`
//! symbols at offsets in it, and `.eh_frame` (absolute addresses) when CFI was given.

use std::ops::Range;
use std::ptr;
use std::sync::Mutex;

use object::elf;
use object::write::elf::{FileHeader, SectionHeader, Sym, Writer};

use super::Symbol;
use crate::error::{Error, Result};

/// `struct jit_code_entry`.
#[repr(C)]
struct JitCodeEntry {
    next_entry: *mut JitCodeEntry,
    prev_entry: *mut JitCodeEntry,
    symfile_addr: *const u8,
    symfile_size: u64,
}

/// `struct jit_descriptor`.
#[repr(C)]
struct JitDescriptor {
    version: u32,
    action_flag: u32,
    relevant_entry: *mut JitCodeEntry,
    first_entry: *mut JitCodeEntry,
}

const JIT_NOACTION: u32 = 0;
const JIT_REGISTER_FN: u32 = 1;
const JIT_UNREGISTER_FN: u32 = 2;

/// The descriptor gdb reads (by this name). Accessed only under [`LOCK`].
#[unsafe(no_mangle)]
static mut __jit_debug_descriptor: JitDescriptor = JitDescriptor {
    version: 1,
    action_flag: JIT_NOACTION,
    relevant_entry: ptr::null_mut(),
    first_entry: ptr::null_mut(),
};

/// Where gdb puts its breakpoint: called after each change of the list. Never inlined, and
/// `black_box` keeps its body from being folded with another empty function.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn __jit_debug_register_code() {
    std::hint::black_box(());
}

/// Serializes every change of the list (the protocol has one `relevant_entry`).
static LOCK: Mutex<()> = Mutex::new(());

/// One object in gdb's list; unlinked and announced when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    entry: Box<Entry>,
}

/// An entry and the object it points to (kept together: the entry points into `object`).
#[derive(Debug)]
struct Entry {
    link: JitCodeEntryCell,
    #[expect(
        dead_code,
        reason = "kept alive while gdb may read it: the link points into it"
    )]
    object: Box<[u8]>,
}

struct JitCodeEntryCell(JitCodeEntry);

impl std::fmt::Debug for JitCodeEntryCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitCodeEntry")
            .field("symfile_size", &self.0.symfile_size)
            .finish()
    }
}

// SAFETY: the raw links are only read and written under LOCK.
unsafe impl Send for Registered {}
// SAFETY: &Registered gives nothing access to the links.
unsafe impl Sync for Registered {}

impl Registered {
    /// Links `object` at the head of the list and tells gdb.
    pub(crate) fn new(object: Vec<u8>) -> Registered {
        let object = object.into_boxed_slice();
        let mut entry = Box::new(Entry {
            link: JitCodeEntryCell(JitCodeEntry {
                next_entry: ptr::null_mut(),
                prev_entry: ptr::null_mut(),
                symfile_addr: object.as_ptr(),
                symfile_size: object.len() as u64,
            }),
            object,
        });
        let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let link: *mut JitCodeEntry = &raw mut entry.link.0;
        let descriptor = &raw mut __jit_debug_descriptor;
        // SAFETY: the descriptor and every linked entry are changed only under LOCK, which
        // we hold; `link` is boxed and stays put until it is unlinked in drop.
        unsafe {
            let first = (*descriptor).first_entry;
            (*link).next_entry = first;
            if !first.is_null() {
                (*first).prev_entry = link;
            }
            (*descriptor).first_entry = link;
            (*descriptor).relevant_entry = link;
            (*descriptor).action_flag = JIT_REGISTER_FN;
        }
        __jit_debug_register_code();
        // SAFETY: as above.
        unsafe { (*descriptor).action_flag = JIT_NOACTION };
        drop(guard);
        Registered { entry }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let link: *mut JitCodeEntry = &raw mut self.entry.link.0;
        let descriptor = &raw mut __jit_debug_descriptor;
        // SAFETY: as in `new`: under LOCK, `link` is in the list (linked in `new`, unlinked
        // only here), its neighbours are live entries of the list.
        unsafe {
            let (prev, next) = ((*link).prev_entry, (*link).next_entry);
            if prev.is_null() {
                (*descriptor).first_entry = next;
            } else {
                (*prev).next_entry = next;
            }
            if !next.is_null() {
                (*next).prev_entry = prev;
            }
            (*descriptor).relevant_entry = link;
            (*descriptor).action_flag = JIT_UNREGISTER_FN;
        }
        __jit_debug_register_code();
        // SAFETY: as above.
        unsafe {
            (*descriptor).action_flag = JIT_NOACTION;
            (*descriptor).relevant_entry = ptr::null_mut();
        }
        drop(guard);
    }
}

/// The `.text` ranges of the objects in the list (walked under LOCK). Only entries this
/// module made are in it: each `symfile_addr` is matched back to its object's range.
pub(crate) fn entries() -> Vec<Range<usize>> {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    // SAFETY: under LOCK the list is stable and every entry in it is live, its `symfile_addr`
    // pointing to `symfile_size` readable bytes (the protocol's promise, kept by `new`).
    unsafe {
        let descriptor = &raw const __jit_debug_descriptor;
        let mut at = (*descriptor).first_entry;
        while !at.is_null() {
            let object =
                std::slice::from_raw_parts((*at).symfile_addr, (*at).symfile_size as usize);
            if let Some(range) = text_range(object) {
                out.push(range);
            }
            at = (*at).next_entry;
        }
    }
    out
}

/// The `.text` range of an object made by [`elf_object`] (section header 1).
fn text_range(object: &[u8]) -> Option<Range<usize>> {
    let shoff =
        usize::try_from(u64::from_ne_bytes(object.get(0x28..0x30)?.try_into().ok()?)).ok()?;
    let header = object.get(shoff + 64..shoff + 128)?;
    let addr = u64::from_ne_bytes(header.get(16..24)?.try_into().ok()?) as usize;
    let size = u64::from_ne_bytes(header.get(32..40)?.try_into().ok()?) as usize;
    Some(addr..addr + size)
}

#[cfg(target_arch = "x86_64")]
const MACHINE: Option<u16> = Some(elf::EM_X86_64);
#[cfg(target_arch = "aarch64")]
const MACHINE: Option<u16> = Some(elf::EM_AARCH64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MACHINE: Option<u16> = None;

/// The ELF object for a block of `len` bytes at `base`: `.text` (no bytes: gdb reads the
/// code from memory), the symbols, `.eh_frame` when given.
pub(crate) fn elf_object(
    base: u64,
    len: usize,
    symbols: &[Symbol],
    eh_frame: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let machine = MACHINE.ok_or(Error::DebugInfo(
        "no ELF machine number for this instruction set".into(),
    ))?;
    if cfg!(not(target_pointer_width = "64")) {
        return Err(Error::DebugInfo(
            "GDB JIT objects are built for 64-bit targets only".into(),
        ));
    }
    let endian = if cfg!(target_endian = "big") {
        object::Endianness::Big
    } else {
        object::Endianness::Little
    };
    let mut buffer = Vec::new();
    let mut w = Writer::new(endian, true, &mut buffer);
    w.reserve_file_header();
    w.reserve_null_section_index();
    let text_name = w.add_section_name(b".text");
    let text = w.reserve_section_index();
    let eh = eh_frame.map(|bytes| {
        let name = w.add_section_name(b".eh_frame");
        let index = w.reserve_section_index();
        let offset = w.reserve(bytes.len(), 8);
        (name, index, offset, bytes)
    });
    let names: Vec<_> = symbols
        .iter()
        .map(|s| w.add_string(s.name.as_bytes()))
        .collect();
    w.reserve_null_symbol_index();
    for _ in symbols {
        w.reserve_symbol_index(Some(text));
    }
    w.reserve_symtab_section_index();
    w.reserve_symtab();
    w.reserve_strtab_section_index();
    w.reserve_strtab();
    w.reserve_shstrtab_section_index();
    w.reserve_shstrtab();
    w.reserve_section_headers();

    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_REL,
        e_machine: machine,
        e_entry: 0,
        e_flags: 0,
    })
    .map_err(|e| Error::DebugInfo(format!("writing the GDB JIT object: {e}")))?;
    if let Some((_, _, _, bytes)) = eh {
        w.write_align(8);
        w.write(bytes);
    }
    w.write_null_symbol();
    for (s, name) in symbols.iter().zip(&names) {
        w.write_symbol(&Sym {
            name: Some(*name),
            section: Some(text),
            st_info: (elf::STB_GLOBAL << 4) | elf::STT_FUNC,
            st_other: elf::STV_DEFAULT,
            st_shndx: 0,
            st_value: s.range.start as u64,
            st_size: s.range.len() as u64,
        });
    }
    w.write_strtab();
    w.write_shstrtab();
    w.write_null_section_header();
    w.write_section_header(&SectionHeader {
        name: Some(text_name),
        sh_type: elf::SHT_NOBITS,
        sh_flags: u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR),
        sh_addr: base,
        sh_offset: 0,
        sh_size: len as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 16,
        sh_entsize: 0,
    });
    if let Some((name, _, offset, bytes)) = eh {
        w.write_section_header(&SectionHeader {
            name: Some(name),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: 0,
            sh_addr: 0,
            sh_offset: offset as u64,
            sh_size: bytes.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 8,
            sh_entsize: 0,
        });
    }
    w.write_symtab_section_header(1);
    w.write_strtab_section_header();
    w.write_shstrtab_section_header();
    Ok(buffer)
}
