//! `jitmem::debuginfo` on Windows x64 (run under Wine by CI, not on Windows): a named block's
//! function table is found by the system unwinder while it lives and is gone once it is freed;
//! its GDB JIT entry comes and goes with it; DWARF CFI registration is refused with an error.

#![cfg(all(windows, target_arch = "x86_64"))]

use jitmem::debuginfo::Cfi;
use jitmem::debuginfo::gimli::write::CommonInformationEntry;
use jitmem::debuginfo::gimli::{Encoding, Format, X86_64};
use jitmem::debuginfo::{DebugInfo, NamedBlock, Symbol, WindowsFunction, gdb_jit_entries};
use jitmem::{Config, JitMemory};
use windows_sys::Win32::System::Diagnostics::Debug::RtlLookupFunctionEntry;

/// Where the system unwinder finds a function entry for `pc`: the entry's begin RVA and its
/// base, or `None`.
fn lookup(pc: usize) -> Option<(u32, u64)> {
    let mut base = 0u64;
    // SAFETY: a lookup in the process's function tables; a null history table is allowed.
    let entry = unsafe { RtlLookupFunctionEntry(pc as u64, &mut base, std::ptr::null_mut()) };
    // SAFETY: a non-null result points to a live RUNTIME_FUNCTION.
    (!entry.is_null()).then(|| (unsafe { (*entry).BeginAddress }, base))
}

#[test]
fn function_table_and_gdb_entry_live_and_die_with_the_block() {
    let memory = JitMemory::new(Config::new()).unwrap();
    let code = jitmem::isa::return_constant(7);
    let mut block = memory.allocate(64).unwrap();
    let mut scope = block.write().unwrap();
    scope[..code.len()].copy_from_slice(&code);
    // UNWIND_INFO of a leaf without prologue: version 1, no flags, no codes.
    scope[32..36].copy_from_slice(&[1, 0, 0, 0]);
    scope.publish().unwrap();
    let start = block.as_ptr() as usize;
    let range = block.addr_range();
    let debug = DebugInfo::new().with_gdb_jit();
    let symbols = [Symbol::new(0, code.len(), "seven").unwrap()];
    let mut named = NamedBlock::new(&debug, block, &code, &symbols, None).unwrap();
    assert_eq!(lookup(start + 1), None);
    named
        .register_windows_unwind(&[WindowsFunction {
            code: 0..code.len(),
            unwind_info: 32,
        }])
        .unwrap();
    assert_eq!(lookup(start + 1), Some((0, start as u64)));
    assert!(gdb_jit_entries().contains(&range));
    let outside = named.register_windows_unwind(&[WindowsFunction {
        code: 0..code.len(),
        unwind_info: 64,
    }]);
    assert!(matches!(outside, Err(jitmem::Error::DebugInfo(_))));
    drop(named);
    assert_eq!(lookup(start + 1), None);
    assert!(!gdb_jit_entries().contains(&range));
}

#[test]
fn dwarf_cfi_registration_is_refused() {
    let memory = JitMemory::new(Config::new()).unwrap();
    let code = jitmem::isa::return_constant(7);
    let mut block = memory.allocate(code.len()).unwrap();
    let mut scope = block.write().unwrap();
    scope[..code.len()].copy_from_slice(&code);
    scope.publish().unwrap();
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 1,
        address_size: 8,
    };
    let mut cfi = Cfi::new();
    let cie = cfi.add_cie(CommonInformationEntry::new(encoding, 1, -8, X86_64::RA));
    cfi.add_fde(cie, 0, code.len(), Vec::new()).unwrap();
    let debug = DebugInfo::new().with_unwind_registration();
    let refused = debug.register(&block, &code, &[], Some(&cfi));
    assert!(matches!(refused, Err(jitmem::Error::DebugInfo(_))));
}
