//! Checks the `__DATA_CONST,__pth_jit_func` section of an aarch64-apple-darwin object built
//! from jitmem's `jit_write_allow_callbacks!` with two callbacks (allowlist-object): what
//! libpthread reads at start-up (`PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP` in `pthread.h`: a
//! NULL-terminated array of `pthread_jit_write_callback_t` in that section).
//!
//! Usage: allowlist-check OBJECT.o

use std::process::ExitCode;

use object::{Architecture, Object, ObjectSection, ObjectSymbol, RelocationTarget};

fn check(path: &str) -> Result<Vec<String>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let file = object::File::parse(&*data).map_err(|e| format!("{path}: {e}"))?;
    let mut seen = Vec::new();
    if file.format() != object::BinaryFormat::MachO || file.architecture() != Architecture::Aarch64
    {
        return Err(format!(
            "{path}: not an arm64 Mach-O object ({:?}, {:?})",
            file.format(),
            file.architecture()
        ));
    }
    let section = file
        .sections()
        .find(|s| s.name() == Ok("__pth_jit_func"))
        .ok_or("no __pth_jit_func section")?;
    let segment = section.segment_name().map_err(|e| e.to_string())?;
    if segment != Some("__DATA_CONST") {
        return Err(format!(
            "__pth_jit_func is in segment {segment:?}, not __DATA_CONST"
        ));
    }
    seen.push("section __DATA_CONST,__pth_jit_func present".to_owned());
    let bytes = section.data().map_err(|e| e.to_string())?;
    if bytes.len() != 3 * 8 {
        return Err(format!(
            "section is {} bytes, expected 24 (two pointers and a NULL)",
            bytes.len()
        ));
    }
    // The pointers are filled in by relocations (dyld fixes them up, then makes
    // __DATA_CONST read-only): one 64-bit relocation per callback, none for the NULL.
    let mut targets = Vec::new();
    for (offset, reloc) in section.relocations() {
        let RelocationTarget::Symbol(index) = reloc.target() else {
            return Err(format!("relocation at {offset} does not target a symbol"));
        };
        let symbol = file.symbol_by_index(index).map_err(|e| e.to_string())?;
        if reloc.size() != 64 {
            return Err(format!(
                "relocation at {offset} is {} bits, expected 64",
                reloc.size()
            ));
        }
        targets.push((offset, symbol.name().map_err(|e| e.to_string())?.to_owned()));
    }
    targets.sort();
    let names: Vec<&str> = targets.iter().map(|(_, n)| n.as_str()).collect();
    if targets.len() != 2
        || targets[0].0 != 0
        || targets[1].0 != 8
        || !names[0].contains("allowlisted_first")
        || !names[1].contains("allowlisted_second")
    {
        return Err(format!(
            "relocations {targets:?}: expected allowlisted_first at 0 and allowlisted_second at 8"
        ));
    }
    seen.push(format!("entry 0 -> {}, entry 1 -> {}", names[0], names[1]));
    if bytes[16..24] != [0; 8] {
        return Err(format!("the terminator is {:?}, not NULL", &bytes[16..24]));
    }
    seen.push("entry 2 is NULL (the terminator)".to_owned());
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok("_JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP"))
        .ok_or("no _JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP symbol")?;
    if !symbol.is_definition()
        || !symbol.is_global()
        || symbol.section_index() != Some(section.index())
    {
        return Err("_JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP is not a global definition in __pth_jit_func (a second list would not collide at link time)".to_owned());
    }
    seen.push("global symbol _JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP defines the list (a second list in the image is a duplicate symbol)".to_owned());
    Ok(seen)
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: allowlist-check OBJECT.o");
        return ExitCode::from(2);
    };
    match check(&path) {
        Ok(lines) => {
            for line in lines {
                println!("ok: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
