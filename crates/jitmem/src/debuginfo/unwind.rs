//! Registering CFI with the process's unwinder.
//!
//! - libgcc (Linux glibc): `__register_frame(p)` takes the whole `.eh_frame` section, read up to
//!   its zero terminator, and `__deregister_frame(p)` removes it (libgcc `unwind-dw2-fde.c`).
//! - LLVM libunwind (macOS, musl's Rust, some Linux builds): `__register_frame(p)` takes one FDE
//!   (libunwind `src/UnwindLevel1-gcc-ext.c`), so each FDE is registered on its own. Which of
//!   the two is present is told by libunwind's own `__unw_add_dynamic_fde` (as wasmtime's
//!   `sys/unix/unwind.rs` does); macOS always has libunwind.
//! - Windows: the unwinder reads `RUNTIME_FUNCTION`/`UNWIND_INFO` tables
//!   (`RtlAddFunctionTable`), not DWARF CFI; deriving them from CFI is not done here, so
//!   registration is refused with an error there.

use crate::error::{Error, Result};

/// CFI registered with the unwinder; deregistered (in reverse order) when dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    /// The `.eh_frame` bytes (8-byte aligned words: the unwinder reads them in place).
    #[cfg_attr(
        not(unix),
        expect(dead_code, reason = "nothing registers on this target")
    )]
    section: Box<[u64]>,
    /// Byte offsets in `section` of what was passed to `__register_frame`.
    #[cfg_attr(
        not(unix),
        expect(dead_code, reason = "nothing registers on this target")
    )]
    registered: Vec<usize>,
}

#[cfg(unix)]
mod imp {
    use super::{Error, Registered, Result};

    unsafe extern "C" {
        fn __register_frame(begin: *const u8);
        fn __deregister_frame(begin: *const u8);
    }

    /// Whether the unwinder is LLVM libunwind (per-FDE registration).
    fn using_libunwind() -> bool {
        if cfg!(target_vendor = "apple") {
            return true;
        }
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the name up.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__unw_add_dynamic_fde".as_ptr()) };
        !found.is_null()
    }

    impl Registered {
        /// Registers `eh_frame` (ended by a zero terminator).
        pub(crate) fn new(eh_frame: &[u8]) -> Result<Registered> {
            let mut section = vec![0u64; eh_frame.len().div_ceil(8)].into_boxed_slice();
            // SAFETY: `section` holds at least `eh_frame.len()` bytes; u64 has no invalid
            // bit patterns.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(section.as_mut_ptr().cast::<u8>(), eh_frame.len())
            };
            bytes.copy_from_slice(eh_frame);
            let mut registered = Vec::new();
            if using_libunwind() {
                let mut at = 0;
                while let Some(word) = bytes.get(at..at + 4) {
                    let len = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]) as usize;
                    if len == 0 {
                        break;
                    }
                    if len == 0xffff_ffff {
                        return Err(Error::DebugInfo("64-bit DWARF CFI is not supported".into()));
                    }
                    let id = bytes
                        .get(at + 4..at + 8)
                        .ok_or(Error::DebugInfo("truncated .eh_frame entry".into()))?;
                    if id != [0; 4] {
                        registered.push(at);
                    }
                    at += 4 + len;
                }
            } else {
                registered.push(0);
            }
            let base = section.as_ptr().cast::<u8>();
            for &offset in &registered {
                // SAFETY: `base + offset` is the start of the section (libgcc) or of an FDE
                // (libunwind) in `section`, which stays allocated and unchanged until drop
                // deregisters it; the bytes are well-formed CFI made by gimli.
                unsafe { __register_frame(base.add(offset)) };
            }
            Ok(Registered {
                section,
                registered,
            })
        }
    }

    impl Drop for Registered {
        fn drop(&mut self) {
            let base = self.section.as_ptr().cast::<u8>();
            for &offset in self.registered.iter().rev() {
                // SAFETY: registered in `new` at this address, not yet deregistered.
                unsafe { __deregister_frame(base.add(offset)) };
            }
        }
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn covers(pc: usize) -> bool {
        #[repr(C)]
        struct DwarfEhBases {
            tbase: *mut libc::c_void,
            dbase: *mut libc::c_void,
            func: *mut libc::c_void,
        }
        unsafe extern "C" {
            fn _Unwind_Find_FDE(pc: *mut libc::c_void, bases: *mut DwarfEhBases) -> *const u8;
        }
        let mut bases = DwarfEhBases {
            tbase: std::ptr::null_mut(),
            dbase: std::ptr::null_mut(),
            func: std::ptr::null_mut(),
        };
        // SAFETY: `_Unwind_Find_FDE` only reads the unwinder's tables and writes `bases`.
        !unsafe { _Unwind_Find_FDE(pc as *mut libc::c_void, &mut bases) }.is_null()
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn covers(_pc: usize) -> bool {
        false
    }
}

#[cfg(unix)]
pub(crate) use imp::covers;

#[cfg(not(unix))]
impl Registered {
    /// Refused: see the module documentation.
    pub(crate) fn new(_eh_frame: &[u8]) -> Result<Registered> {
        Err(Error::DebugInfo(
            "unwind registration from DWARF CFI is not available on this target (Windows reads UNWIND_INFO through RtlAddFunctionTable)".into(),
        ))
    }
}

#[cfg(not(unix))]
pub(crate) fn covers(_pc: usize) -> bool {
    false
}

/// Windows x64: function tables (`RtlAddFunctionTable`) for code whose `UNWIND_INFO` the JIT
/// wrote into the block itself. References: Microsoft, "x64 exception handling" (the
/// `RUNTIME_FUNCTION` and `UNWIND_INFO` layouts: addresses are 32-bit RVAs from a base, which
/// here is the block's start, so the unwind data must lie in the block) and
/// "RtlAddFunctionTable function (winnt.h)" / "RtlDeleteFunctionTable".
#[cfg(all(windows, target_arch = "x86_64"))]
pub(crate) mod windows {
    use std::ops::Range;

    use windows_sys::Win32::System::Diagnostics::Debug::{
        IMAGE_RUNTIME_FUNCTION_ENTRY, IMAGE_RUNTIME_FUNCTION_ENTRY_0, RtlAddFunctionTable,
        RtlDeleteFunctionTable,
    };

    use crate::error::{Error, Result};

    /// One function of a block for the Windows x64 unwinder: its code range and where its
    /// `UNWIND_INFO` is, both as offsets in the block.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct WindowsFunction {
        /// The function's code (offsets in the block).
        pub code: Range<usize>,
        /// Offset in the block of its `UNWIND_INFO` (4-byte aligned, inside the block).
        pub unwind_info: usize,
    }

    /// A registered function table; `RtlDeleteFunctionTable` when dropped.
    pub(crate) struct Table {
        /// The `RUNTIME_FUNCTION` array the system keeps a pointer to (never moved: boxed).
        entries: Box<[IMAGE_RUNTIME_FUNCTION_ENTRY]>,
    }

    // SAFETY: the table is only read by the system's unwinder and deleted in drop.
    unsafe impl Send for Table {}
    // SAFETY: as above; &Table gives no access to the entries.
    unsafe impl Sync for Table {}

    impl Table {
        /// Registers `functions` of the block at `base` of `len` bytes.
        pub(crate) fn new(base: usize, len: usize, functions: &[WindowsFunction]) -> Result<Table> {
            let rva = |offset: usize| {
                u32::try_from(offset)
                    .map_err(|_| Error::DebugInfo("block larger than 4 GiB".into()))
            };
            let mut entries = Vec::with_capacity(functions.len());
            for f in functions {
                if f.code.start >= f.code.end
                    || f.code.end > len
                    || f.unwind_info % 4 != 0
                    || f.unwind_info + 4 > len
                {
                    return Err(Error::DebugInfo(format!(
                        "Windows function {:?} with UNWIND_INFO at {} does not fit a block of {len} bytes (or is misaligned)",
                        f.code, f.unwind_info
                    )));
                }
                entries.push(IMAGE_RUNTIME_FUNCTION_ENTRY {
                    BeginAddress: rva(f.code.start)?,
                    EndAddress: rva(f.code.end)?,
                    Anonymous: IMAGE_RUNTIME_FUNCTION_ENTRY_0 {
                        UnwindInfoAddress: rva(f.unwind_info)?,
                    },
                });
            }
            entries.sort_unstable_by_key(|e| e.BeginAddress);
            let entries = entries.into_boxed_slice();
            let count = u32::try_from(entries.len())
                .map_err(|_| Error::DebugInfo("too many functions".into()))?;
            // SAFETY: `entries` stays allocated and unchanged until drop deletes the table;
            // every RVA lies inside the block at `base` (checked above).
            let added = unsafe { RtlAddFunctionTable(entries.as_ptr(), count, base as u64) };
            if !added {
                return Err(Error::last_os("RtlAddFunctionTable"));
            }
            Ok(Table { entries })
        }
    }

    impl std::fmt::Debug for Table {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Table")
                .field("functions", &self.entries.len())
                .finish()
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            // SAFETY: the table was added in `new` with this pointer and not deleted since.
            unsafe { RtlDeleteFunctionTable(self.entries.as_ptr()) };
        }
    }
}
