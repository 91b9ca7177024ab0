//! `jitmem::debuginfo`: what is registered for a block is there while it lives and gone once
//! it is freed (gdb's JIT list, the unwinder's tables), and the perf map gets its lines.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use jitmem::debuginfo::gimli::write::{CallFrameInstruction, CommonInformationEntry};
use jitmem::debuginfo::gimli::{Encoding, Format, X86_64};
use jitmem::debuginfo::{
    Cfi, DebugInfo, NamedBlock, PerfMap, Symbol, gdb_jit_entries, unwinder_covers,
};
use jitmem::{CodeBlock, Config, JitMemory};

fn published(memory: &JitMemory) -> (CodeBlock, Vec<u8>) {
    let code = jitmem::isa::return_constant(7);
    let mut block = memory.allocate(code.len()).unwrap();
    let mut scope = block.write().unwrap();
    scope[..code.len()].copy_from_slice(&code);
    scope.publish().unwrap();
    (block, code)
}

/// CFI for a leaf function of `len` bytes at the block's start (CFA = RSP + 8 throughout).
fn leaf_cfi(len: usize) -> Cfi {
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 1,
        address_size: 8,
    };
    let mut cie = CommonInformationEntry::new(encoding, 1, -8, X86_64::RA);
    cie.add_instruction(CallFrameInstruction::Cfa(X86_64::RSP, 8));
    cie.add_instruction(CallFrameInstruction::Offset(X86_64::RA, -8));
    let mut cfi = Cfi::new();
    let cie = cfi.add_cie(cie);
    cfi.add_fde(cie, 0, len, Vec::new()).unwrap();
    cfi
}

#[test]
fn freed_blocks_leave_gdbs_list_and_the_unwind_tables() {
    let memory = JitMemory::new(Config::new()).unwrap();
    let debug = DebugInfo::new().with_gdb_jit().with_unwind_registration();
    let (block, code) = published(&memory);
    let range = block.addr_range();
    let symbols = [Symbol::new(0, code.len(), "seven").unwrap()];
    let cfi = leaf_cfi(code.len());
    let named = NamedBlock::new(&debug, block, &code, &symbols, Some(&cfi)).unwrap();
    assert!(named.registration().has_gdb_entry());
    assert!(named.registration().has_unwind_info());
    assert!(
        gdb_jit_entries().contains(&range),
        "{:x?}",
        gdb_jit_entries()
    );
    assert!(unwinder_covers(range.start + 1));
    // SAFETY: the block holds `return_constant(7)`, an `extern "C" fn() -> u32`.
    let f: extern "C" fn() -> u32 = unsafe { named.block().entry(0).unwrap() };
    assert_eq!(f(), 7);
    drop(named);
    assert!(!gdb_jit_entries().contains(&range));
    assert!(!unwinder_covers(range.start + 1));
}

#[test]
fn nothing_is_registered_when_every_sink_is_off() {
    let memory = JitMemory::new(Config::new()).unwrap();
    let debug = DebugInfo::new();
    assert!(!debug.is_enabled());
    let (block, code) = published(&memory);
    let range = block.addr_range();
    let symbols = [Symbol::new(0, code.len(), "seven").unwrap()];
    let named =
        NamedBlock::new(&debug, block, &code, &symbols, Some(&leaf_cfi(code.len()))).unwrap();
    assert!(!named.registration().has_gdb_entry());
    assert!(!gdb_jit_entries().contains(&range));
    assert!(!unwinder_covers(range.start + 1));
}

#[test]
fn symbols_outside_the_block_and_bad_names_are_refused() {
    let memory = JitMemory::new(Config::new()).unwrap();
    let debug = DebugInfo::new().with_gdb_jit();
    let (block, code) = published(&memory);
    let too_long = [Symbol::new(0, block.len() + 1, "f").unwrap()];
    assert!(matches!(
        debug.register(&block, &code, &too_long, None),
        Err(jitmem::Error::OutOfRange { .. })
    ));
    assert!(Symbol::new(0, 4, "two\nlines").is_err());
    assert!(Symbol::new(0, 0, "empty").is_err());
}

#[test]
fn perf_map_lines_from_many_threads_stay_whole() {
    let dir = std::env::temp_dir().join(format!("jitmem-perfmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("perf.map");
    let _ = std::fs::remove_file(&path);
    let debug = DebugInfo::new().with_perf_map_file(PerfMap::open(&path).unwrap());
    assert!(debug.is_enabled());
    let memory = JitMemory::new(Config::new()).unwrap();
    let code_len = jitmem::isa::return_constant(7).len() as u64;
    std::thread::scope(|s| {
        for t in 0..4 {
            let (debug, memory) = (&debug, &memory);
            s.spawn(move || {
                for i in 0..50 {
                    let (block, code) = published(memory);
                    let name = format!("thread{t}_function{i}_with_a_long_name_{}", "x".repeat(40));
                    let symbols = [Symbol::new(0, code.len(), name).unwrap()];
                    let named = NamedBlock::new(debug, block, &code, &symbols, None).unwrap();
                    assert!(!named.registration().has_gdb_entry());
                }
            });
        }
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 200);
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3, "{line}");
        u64::from_str_radix(parts[0], 16).unwrap();
        assert_eq!(u64::from_str_radix(parts[1], 16).unwrap(), code_len);
        assert!(parts[2].starts_with("thread") && parts[2].ends_with(&"x".repeat(40)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
