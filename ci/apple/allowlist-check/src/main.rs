//! Checks the `__DATA_CONST,__pth_jit_func` section of an aarch64-apple-darwin object built
//! from jitmem's `jit_write_allow_callbacks!` (allowlist-object): what libpthread reads at
//! start-up (`PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP` in `pthread.h`: a NULL-terminated array of
//! `pthread_jit_write_callback_t` in that section). The list must hold the user's callbacks
//! (named on the command line, in order), then jitmem's copy callback
//! (`_jitmem_pthread_jit_copy_callback`), then NULL; and the object must carry the macro's
//! constructor in `__DATA,__mod_init_func` with the `S_MOD_INIT_FUNC_POINTERS` type, which dyld
//! runs when the image loads (Mach-O `loader.h`), so that jitmem learns the list is there.
//!
//! Usage: allowlist-check OBJECT.o [USER_CALLBACK...]

use std::process::ExitCode;

use object::{Architecture, Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionFlags};

/// jitmem's copy callback, as the Mach-O symbol of its unmangled name.
const JITMEM_CALLBACK: &str = "_jitmem_pthread_jit_copy_callback";
/// `S_MOD_INIT_FUNC_POINTERS` (Mach-O `loader.h`): "section with only function pointers for
/// initialization"; the low byte of a section's flags is its type (`SECTION_TYPE`).
const S_MOD_INIT_FUNC_POINTERS: u32 = 0x9;

fn check(path: &str, user: &[String]) -> Result<Vec<String>, String> {
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
    let entries = user.len() + 2;
    if bytes.len() != entries * 8 {
        return Err(format!(
            "section is {} bytes, expected {} ({} user callbacks, jitmem's, and a NULL)",
            bytes.len(),
            entries * 8,
            user.len()
        ));
    }
    // The pointers are filled in by relocations (dyld fixes them up, then makes
    // __DATA_CONST read-only): one 64-bit relocation per callback, none for the NULL.
    let targets = symbol_relocations(&file, &section)?;
    let mut expected: Vec<(u64, String)> = user
        .iter()
        .enumerate()
        .map(|(i, name)| (i as u64 * 8, name.clone()))
        .collect();
    expected.push((user.len() as u64 * 8, JITMEM_CALLBACK.to_owned()));
    let matches = targets.len() == expected.len()
        && targets
            .iter()
            .zip(&expected)
            .all(|((at, name), (want_at, want))| {
                at == want_at
                    && if want == JITMEM_CALLBACK {
                        name == JITMEM_CALLBACK
                    } else {
                        name.contains(want.as_str())
                    }
            });
    if !matches {
        return Err(format!(
            "relocations {targets:?}: expected {expected:?} (the user's callbacks, then jitmem's)"
        ));
    }
    for (i, (_, name)) in targets.iter().enumerate() {
        seen.push(format!("entry {i} -> {name}"));
    }
    let null = (entries - 1) * 8;
    if bytes[null..] != [0; 8] {
        return Err(format!("the terminator is {:?}, not NULL", &bytes[null..]));
    }
    seen.push(format!(
        "entry {} is NULL (the terminator), right after jitmem's callback",
        entries - 1
    ));
    let init = file
        .sections()
        .find(|s| s.name() == Ok("__mod_init_func"))
        .ok_or("no __mod_init_func section (the list's registration constructor)")?;
    if init.segment_name().map_err(|e| e.to_string())? != Some("__DATA") {
        return Err("__mod_init_func is not in segment __DATA".to_owned());
    }
    let SectionFlags::MachO { flags } = init.flags() else {
        return Err("__mod_init_func has no Mach-O flags".to_owned());
    };
    if flags & 0xff != S_MOD_INIT_FUNC_POINTERS {
        return Err(format!(
            "__mod_init_func has section type {:#x}, not S_MOD_INIT_FUNC_POINTERS (dyld would not run it)",
            flags & 0xff
        ));
    }
    let ctors = symbol_relocations(&file, &init)?;
    if ctors.len() != 1 || !ctors[0].1.contains("jitmem_register_jit_write_allow_list") {
        return Err(format!(
            "__mod_init_func relocations {ctors:?}: expected one, to the list's registration constructor"
        ));
    }
    seen.push(format!(
        "__DATA,__mod_init_func (S_MOD_INIT_FUNC_POINTERS) -> {}",
        ctors[0].1
    ));
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

/// The 64-bit symbol relocations of `section`, as (offset, symbol name), by offset.
fn symbol_relocations(
    file: &object::File<'_>,
    section: &object::Section<'_, '_>,
) -> Result<Vec<(u64, String)>, String> {
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
    Ok(targets)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, user)) = args.split_first() else {
        eprintln!("usage: allowlist-check OBJECT.o [USER_CALLBACK...]");
        return ExitCode::from(2);
    };
    match check(path, user) {
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
