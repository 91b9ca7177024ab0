//! Making JIT code visible to profilers and debuggers (feature `debuginfo`, off by default:
//! without it none of this is compiled or linked).
//!
//! A [`DebugInfo`] holds the sinks a process turned on — the perf map, the jitdump file, the
//! GDB JIT interface, registration with the platform's unwinder — and
//! [`DebugInfo::register`] tells all of them about a published [`CodeBlock`]: the named ranges
//! in it ([`Symbol`]) and, optionally, the call-frame information (CFI) that describes its
//! frames. The [`Registration`] it returns withdraws what can be withdrawn when dropped, in the
//! reverse order of registration: first the unwinder's tables (so no unwinder finds an FDE
//! for code that is going away), then the GDB JIT entry. [`NamedBlock`] ties a registration to
//! its block so that both go together, registration first, then the block (trap-filled and
//! freed).
//!
//! What cannot be withdrawn: a perf map is append-only (perf takes the last line that covers
//! an address, so code reusing the range is named by its own, later line), and jitdump has no
//! unload record (perf orders `JIT_CODE_LOAD` records by time, so a later load at the same
//! address wins for samples taken after it).
//!
//! ```
//! # #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
//! # fn main() -> jitmem::Result<()> {
//! use jitmem::debuginfo::{DebugInfo, NamedBlock, Symbol};
//! use jitmem::{Config, JitMemory};
//!
//! let memory = JitMemory::new(Config::new())?;
//! let code = jitmem::isa::return_constant(7);
//! let mut block = memory.allocate(code.len())?;
//! let mut scope = block.write()?;
//! scope[..code.len()].copy_from_slice(&code);
//! scope.publish()?;
//! let debug = DebugInfo::new().with_gdb_jit();
//! let named = NamedBlock::new(&debug, block, &code, &[Symbol::new(0, code.len(), "seven")?], None)?;
//! drop(named); // withdrawn from gdb's list, then freed
//! # Ok(()) }
//! # #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
//! # fn main() {}
//! ```
//!
//! # Unwinding through JIT frames
//! The CFI given to [`DebugInfo::register`] is what debuggers (through the GDB JIT object)
//! and the process's own unwinder (through `__register_frame`) use to walk through the block's
//! frames: backtraces from a breakpoint, `std::backtrace::Backtrace` captured in a helper that
//! compiled code called. It does not by itself make Rust panics safe to unwind through JIT
//! frames: that also needs every frame between the panic and its `catch_unwind` to be built
//! for unwinding (landing pads for anything that must be cleaned up). JITs that cannot promise
//! that (jitvm among them) catch panics in every helper before they reach compiled code.
//!
//! # What each sink costs
//! - perf map: one `write` of one line per symbol, under a process-wide lock.
//! - jitdump: one `write` per symbol (the record and the code bytes), under the file's lock.
//! - GDB JIT: building a small ELF object (symbols, `.eh_frame`) and a call to the empty
//!   `__jit_debug_register_code` under a process-wide lock, where a debugger places a breakpoint.
//! - unwind registration: `__register_frame` (libgcc: one call that inserts the section in a
//!   sorted list; LLVM libunwind: one call per FDE).

use std::ops::Range;
#[cfg(target_os = "linux")]
use std::path::Path;

use crate::CodeBlock;
use crate::error::{Error, Result};

mod cfi;
mod gdb_jit;
#[cfg(target_os = "linux")]
mod jitdump;
mod perf_map;
mod unwind;

pub use cfi::{Cfi, CieIndex};
/// The `gimli` whose CIEs and call-frame instructions a [`Cfi`] is built from.
pub use gimli;
#[cfg(target_os = "linux")]
pub use jitdump::JitDump;
pub use perf_map::PerfMap;
#[cfg(all(windows, target_arch = "x86_64"))]
pub use unwind::windows::WindowsFunction;

/// A named range of a block: a function, a stub, a trampoline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    range: Range<usize>,
    name: String,
}

impl Symbol {
    /// The `len` bytes at `offset` in the block are called `name`.
    ///
    /// # Errors
    /// [`Error::DebugInfo`] when `len` is 0 or the name is empty or holds a NUL or a line break
    /// (the perf map is one line per symbol, jitdump and ELF names are C strings).
    pub fn new(offset: usize, len: usize, name: impl Into<String>) -> Result<Symbol> {
        let name = name.into();
        if len == 0 || offset.checked_add(len).is_none() {
            return Err(Error::DebugInfo(format!(
                "symbol {name:?}: empty or overflowing range"
            )));
        }
        if name.is_empty() || name.contains(['\0', '\n', '\r']) {
            return Err(Error::DebugInfo(format!(
                "symbol name {name:?} is empty or holds a NUL or a line break"
            )));
        }
        Ok(Symbol {
            range: offset..offset + len,
            name,
        })
    }

    /// Offsets in the block.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The sinks a process turned on. Build it once ([`DebugInfo::new`] turns everything off) and
/// share it (`&DebugInfo` or an `Arc`); it is `Send + Sync`.
#[derive(Debug, Default)]
pub struct DebugInfo {
    perf_map: Option<PerfMap>,
    #[cfg(target_os = "linux")]
    jitdump: Option<JitDump>,
    gdb_jit: bool,
    unwind: bool,
}

impl DebugInfo {
    /// Every sink off: [`register`](Self::register) does nothing but check its arguments.
    pub fn new() -> DebugInfo {
        DebugInfo::default()
    }

    /// Also append each symbol to `/tmp/perf-<pid>.map` (opened now, created if missing).
    ///
    /// # Errors
    /// [`Error::Os`] when the file cannot be opened.
    pub fn with_perf_map(mut self) -> Result<DebugInfo> {
        self.perf_map = Some(PerfMap::open_default()?);
        Ok(self)
    }

    /// Also append each symbol to `map` (a map at another path: tests, tools).
    pub fn with_perf_map_file(mut self, map: PerfMap) -> DebugInfo {
        self.perf_map = Some(map);
        self
    }

    /// Also record each symbol, with its code, in `dir/jit-<pid>.dump` (created now; see
    /// [`JitDump`] for what `perf inject --jit` needs).
    ///
    /// # Errors
    /// [`Error::Os`] when the file cannot be created or mapped.
    #[cfg(target_os = "linux")]
    pub fn with_jitdump(mut self, dir: &Path) -> Result<DebugInfo> {
        self.jitdump = Some(JitDump::create(dir)?);
        Ok(self)
    }

    /// Also register an ELF object per registration with the GDB JIT interface
    /// (`__jit_debug_descriptor`; see [`gdb_jit_entries`] for the symbol policy).
    pub fn with_gdb_jit(mut self) -> DebugInfo {
        self.gdb_jit = true;
        self
    }

    /// Also register the CFI given with a registration with the process's unwinder
    /// (`__register_frame`; on Windows this is refused: see [`DebugInfo::register`]).
    pub fn with_unwind_registration(mut self) -> DebugInfo {
        self.unwind = true;
        self
    }

    /// Whether any sink is on.
    pub fn is_enabled(&self) -> bool {
        let jitdump = {
            #[cfg(target_os = "linux")]
            {
                self.jitdump.is_some()
            }
            #[cfg(not(target_os = "linux"))]
            {
                false
            }
        };
        self.perf_map.is_some() || jitdump || self.gdb_jit || self.unwind
    }

    /// Tells every sink about `block`: `symbols` name ranges of it, `code` is what it was
    /// published with (jitdump copies it: reading code back from executable memory is not
    /// promised under every strategy), `cfi` describes its frames (in block offsets; each sink
    /// chooses the pointer encoding: absolute for the unwinder and gdb, relative to the
    /// symbol's code in jitdump's `JIT_CODE_UNWINDING_INFO`).
    ///
    /// Keep the [`Registration`] as long as the block lives and drop it before the block
    /// ([`NamedBlock`] does both).
    ///
    /// # Errors
    /// [`Error::OutOfRange`] when a symbol or `code` does not fit the block;
    /// [`Error::DebugInfo`] when the CFI cannot be encoded, when CFI is given for unwind
    /// registration on a target without a DWARF unwinder (Windows: its unwinder reads
    /// `UNWIND_INFO`, which this module does not derive from CFI), or for GDB on an
    /// instruction set without an ELF machine number here; [`Error::Os`] when a file write
    /// fails. Sinks registered before the error are withdrawn again.
    pub fn register(
        &self,
        block: &CodeBlock,
        code: &[u8],
        symbols: &[Symbol],
        cfi: Option<&Cfi>,
    ) -> Result<Registration> {
        if code.len() > block.len() {
            return Err(Error::OutOfRange {
                start: 0,
                end: code.len(),
                len: block.len(),
            });
        }
        for s in symbols {
            block.check_range(&s.range)?;
        }
        let cfi = cfi.filter(|c| !c.is_empty());
        for range in cfi.iter().flat_map(|c| c.ranges()) {
            block.check_range(&range)?;
        }
        let base = block.as_ptr() as u64;
        let eh_frame = match cfi {
            Some(cfi) if self.gdb_jit || self.unwind => Some(encode_eh_frame(cfi, base)?),
            _ => None,
        };
        let mut registration = Registration::default();
        if let Some(map) = &self.perf_map {
            map.add(base, symbols)?;
        }
        #[cfg(target_os = "linux")]
        if let Some(dump) = &self.jitdump {
            dump.code_load(base, code, symbols, cfi)?;
        }
        if self.unwind {
            if let Some(eh) = &eh_frame {
                registration.unwind = Some(unwind::Registered::new(eh)?);
            }
        }
        if self.gdb_jit {
            let object = gdb_jit::elf_object(base, block.len(), symbols, eh_frame.as_deref())?;
            registration.gdb = Some(gdb_jit::Registered::new(object));
        }
        Ok(registration)
    }
}

/// What [`DebugInfo::register`] registered for one block. Dropping it withdraws it: the
/// unwinder's entries first, then the GDB JIT entry (fields drop in this order).
#[derive(Debug, Default)]
pub struct Registration {
    #[cfg(all(windows, target_arch = "x86_64"))]
    windows: Option<unwind::windows::Table>,
    unwind: Option<unwind::Registered>,
    gdb: Option<gdb_jit::Registered>,
}

impl Registration {
    /// Whether the unwinder knows this block's CFI.
    pub fn has_unwind_info(&self) -> bool {
        self.unwind.is_some()
    }

    /// Whether gdb's JIT list holds this block's object.
    pub fn has_gdb_entry(&self) -> bool {
        self.gdb.is_some()
    }
}

/// A block and what was registered for it, freed together: the registration first, then the
/// block (trap-filled and returned to the heap).
#[derive(Debug)]
pub struct NamedBlock {
    // Field order is drop order: withdraw everything before the memory goes back.
    registration: Registration,
    block: CodeBlock,
}

impl NamedBlock {
    /// Registers `block` with `debug` (see [`DebugInfo::register`]) and keeps both.
    ///
    /// # Errors
    /// As [`DebugInfo::register`]; the block is freed then.
    pub fn new(
        debug: &DebugInfo,
        block: CodeBlock,
        code: &[u8],
        symbols: &[Symbol],
        cfi: Option<&Cfi>,
    ) -> Result<NamedBlock> {
        let registration = debug.register(&block, code, symbols, cfi)?;
        Ok(NamedBlock {
            registration,
            block,
        })
    }

    /// The block.
    pub fn block(&self) -> &CodeBlock {
        &self.block
    }

    /// The block, to patch it (its names and CFI stay registered).
    pub fn block_mut(&mut self) -> &mut CodeBlock {
        &mut self.block
    }

    /// What was registered.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Windows x64: registers the block's functions with the system unwinder
    /// (`RtlAddFunctionTable`, the block's start as the base of the RVAs), their `UNWIND_INFO`
    /// already written into the block by the JIT. Withdrawn (`RtlDeleteFunctionTable`) first
    /// when the named block is freed. Replaces an earlier table of this block.
    ///
    /// # Errors
    /// [`Error::DebugInfo`] when a function or its unwind data is outside the block;
    /// [`Error::Os`] when the system refuses the table.
    #[cfg(all(windows, target_arch = "x86_64"))]
    pub fn register_windows_unwind(&mut self, functions: &[WindowsFunction]) -> Result<()> {
        self.registration.windows = None;
        let table =
            unwind::windows::Table::new(self.block.as_ptr() as usize, self.block.len(), functions)?;
        self.registration.windows = Some(table);
        Ok(())
    }
}

/// The executable ranges gdb's JIT list holds now (one per registered object, the range of
/// its `.text`), read under the interface's lock: what a debugger attached now would see.
///
/// # Symbol policy
/// jitmem defines `__jit_debug_descriptor` and `__jit_debug_register_code` with
/// `#[unsafe(no_mangle)]` (stable Rust has no weak definitions). gdb (since 10) reads the
/// descriptor of every object file that defines one, so another runtime in its own shared
/// library (LLVM's ORC, a JVM, wasmtime) keeps its own list and both are seen. Two definitions
/// linked statically into one binary do not link ("multiple definition"): then only one of
/// them may provide the symbols.
pub fn gdb_jit_entries() -> Vec<Range<usize>> {
    gdb_jit::entries()
}

/// Whether the process's unwinder finds an FDE covering `pc` (libgcc/libunwind's
/// `_Unwind_Find_FDE`; Linux only, `false` elsewhere).
pub fn unwinder_covers(pc: usize) -> bool {
    unwind::covers(pc)
}

/// `.eh_frame` bytes for `cfi` with the block at `base` (absolute addresses,
/// `DW_EH_PE_absptr`), ended by the zero terminator libgcc's `__register_frame` reads up to.
fn encode_eh_frame(cfi: &Cfi, base: u64) -> Result<Vec<u8>> {
    let table = cfi
        .table(
            |_| true,
            |offset| gimli::write::Address::Constant(base.wrapping_add(offset as u64)),
            gimli::DW_EH_PE_absptr,
        )
        .ok_or(Error::Internal("CFI without an FDE"))?;
    let mut eh = gimli::write::EhFrame(gimli::write::EndianVec::new(native_endian()));
    table
        .write_eh_frame(&mut eh)
        .map_err(|e| Error::DebugInfo(format!("encoding the CFI: {e}")))?;
    let mut bytes = eh.0.into_vec();
    bytes.extend_from_slice(&[0; 4]);
    Ok(bytes)
}

/// This target's byte order, for gimli.
fn native_endian() -> gimli::RunTimeEndian {
    if cfg!(target_endian = "big") {
        gimli::RunTimeEndian::Big
    } else {
        gimli::RunTimeEndian::Little
    }
}
