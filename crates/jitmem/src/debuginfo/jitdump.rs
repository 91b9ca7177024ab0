//! perf's jitdump file, `jit-<pid>.dump` (linux `tools/perf/Documentation/
//! jitdump-specification.txt`, "JITDUMP specification version 2", whose file header carries
//! `version = 1`; structures in `tools/perf/util/jitdump.h`).
//!
//! What `perf inject --jit` needs to turn it into symbols:
//! 1. `perf record` ran with `-k 1` (CLOCK_MONOTONIC sample times), because the records carry
//!    CLOCK_MONOTONIC times and inject matches samples to code loads by time;
//! 2. `perf record` saw this process map the file with `PROT_EXEC` (the marker mapping made
//!    by [`JitDump::create`]): inject finds the dump through that `MMAP` event, by its path;
//!    the file name must be `jit-<pid>.dump`;
//! 3. the directory of the dump is writable when inject runs: it writes one
//!    `jitted-<pid>-<index>.so` per `JIT_CODE_LOAD` there and points the samples at them.
//!
//! Then `perf inject --jit -i perf.data -o perf.jit.data` and `perf report -i perf.jit.data`.
//!
//! With CFI, each `JIT_CODE_LOAD` is preceded by a `JIT_CODE_UNWINDING_INFO` (the symbol's FDEs
//! as `.eh_frame` and `.eh_frame_hdr`, laid out for the ELF object inject makes of the load),
//! so that perf can unwind through JIT frames (`perf record --call-graph dwarf`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

use super::{Cfi, Symbol};
use crate::error::{Error, Result};

const MAGIC: u32 = 0x4A69_5444; // "JiTD"
const VERSION: u32 = 1;
const HEADER_SIZE: u32 = 40;
const JIT_CODE_LOAD: u32 = 0;
const JIT_CODE_CLOSE: u32 = 3;
const JIT_CODE_UNWINDING_INFO: u32 = 4;

#[cfg(target_arch = "x86_64")]
const ELF_MACHINE: u32 = 62; // EM_X86_64
#[cfg(target_arch = "aarch64")]
const ELF_MACHINE: u32 = 183; // EM_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ELF_MACHINE: u32 = 0; // EM_NONE: perf inject refuses it

/// An open jitdump file. Records are appended under the file's lock; dropping it writes
/// `JIT_CODE_CLOSE` and removes the marker mapping (the file stays for `perf inject`).
#[derive(Debug)]
pub struct JitDump {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// The `PROT_EXEC` mapping of the file's first page that tells perf where the dump is.
    marker: NonNull<libc::c_void>,
    marker_len: usize,
    next_index: u64,
}

// SAFETY: the marker mapping is only unmapped in drop; the pointer is never dereferenced.
unsafe impl Send for Inner {}

impl JitDump {
    /// Creates `dir/jit-<pid>.dump` (truncating an old one), writes the header and maps the
    /// file's first page with `PROT_EXEC` once, so that `perf record` logs where it is.
    ///
    /// # Errors
    /// [`Error::Os`] when the file cannot be created, written or mapped.
    pub fn create(dir: &Path) -> Result<JitDump> {
        let pid = std::process::id();
        let path = dir.join(format!("jit-{pid}.dump"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| Error::Os {
                op: "create the jitdump file",
                source,
            })?;
        let mut header = Vec::with_capacity(HEADER_SIZE as usize);
        header.extend_from_slice(&MAGIC.to_ne_bytes());
        header.extend_from_slice(&VERSION.to_ne_bytes());
        header.extend_from_slice(&HEADER_SIZE.to_ne_bytes());
        header.extend_from_slice(&ELF_MACHINE.to_ne_bytes());
        header.extend_from_slice(&0u32.to_ne_bytes()); // pad1
        header.extend_from_slice(&pid.to_ne_bytes());
        header.extend_from_slice(&timestamp()?.to_ne_bytes());
        header.extend_from_slice(&0u64.to_ne_bytes()); // flags
        file.write_all(&header).map_err(|source| Error::Os {
            op: "write the jitdump header",
            source,
        })?;
        let marker_len = crate::page_size();
        // SAFETY: a new private mapping of the file's first page; nothing in this process
        // reads or runs it (it exists for perf's MMAP event). It is unmapped in drop.
        let marker = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                marker_len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if marker == libc::MAP_FAILED {
            return Err(Error::last_os("mmap the jitdump file (PROT_EXEC marker)"));
        }
        let marker = NonNull::new(marker).ok_or(Error::Internal("mmap returned null"))?;
        Ok(JitDump {
            path,
            inner: Mutex::new(Inner {
                file,
                marker,
                marker_len,
                next_index: 0,
            }),
        })
    }

    /// Where the dump is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One `JIT_CODE_LOAD` per symbol, with its bytes from `code` (the block's code, at
    /// `base`; bytes of a symbol beyond `code` are recorded as zeros), each preceded by a
    /// `JIT_CODE_UNWINDING_INFO` when `cfi` has FDEs over the symbol (perf applies it to the
    /// next load: `jit_repipe_code_load` in linux `tools/perf/util/jitdump.c`).
    pub(crate) fn code_load(
        &self,
        base: u64,
        code: &[u8],
        symbols: &[Symbol],
        cfi: Option<&Cfi>,
    ) -> Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::Internal("jitdump lock poisoned"))?;
        let pid = std::process::id();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        for s in symbols {
            if let Some(unwinding) = cfi
                .map(|c| c.perf_unwinding(&s.range))
                .transpose()?
                .flatten()
            {
                let record = unwinding_record(&unwinding.data, unwinding.eh_frame_hdr_size)?;
                inner.file.write_all(&record).map_err(|source| Error::Os {
                    op: "write a jitdump record",
                    source,
                })?;
            }
            let len = s.range.len();
            let mut bytes = vec![0u8; len];
            if let Some(have) = code.get(s.range.start..code.len().min(s.range.end)) {
                bytes[..have.len()].copy_from_slice(have);
            }
            let name = s.name.as_bytes();
            let size = 16 + 4 + 4 + 8 * 4 + name.len() + 1 + len;
            let size = u32::try_from(size).map_err(|_| {
                Error::DebugInfo(format!("symbol {:?} too large for jitdump", s.name))
            })?;
            let addr = base + s.range.start as u64;
            let mut record = Vec::with_capacity(size as usize);
            record.extend_from_slice(&JIT_CODE_LOAD.to_ne_bytes());
            record.extend_from_slice(&size.to_ne_bytes());
            record.extend_from_slice(&timestamp()?.to_ne_bytes());
            record.extend_from_slice(&pid.to_ne_bytes());
            record.extend_from_slice(&tid.to_ne_bytes());
            record.extend_from_slice(&addr.to_ne_bytes()); // vma
            record.extend_from_slice(&addr.to_ne_bytes()); // code_addr
            record.extend_from_slice(&(len as u64).to_ne_bytes());
            record.extend_from_slice(&inner.next_index.to_ne_bytes());
            record.extend_from_slice(name);
            record.push(0);
            record.extend_from_slice(&bytes);
            inner.next_index += 1;
            inner.file.write_all(&record).map_err(|source| Error::Os {
                op: "write a jitdump record",
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for JitDump {
    fn drop(&mut self) {
        let Ok(inner) = self.inner.get_mut() else {
            return;
        };
        if let Ok(now) = timestamp() {
            let mut record = Vec::with_capacity(16);
            record.extend_from_slice(&JIT_CODE_CLOSE.to_ne_bytes());
            record.extend_from_slice(&16u32.to_ne_bytes());
            record.extend_from_slice(&now.to_ne_bytes());
            let _ = inner.file.write_all(&record);
        }
        // SAFETY: the marker mapping was made in `create` with this length and is unmapped
        // only here.
        unsafe { libc::munmap(inner.marker.as_ptr(), inner.marker_len) };
    }
}

/// A `JIT_CODE_UNWINDING_INFO` record (`struct jr_code_unwinding_info` in linux
/// `tools/perf/util/jitdump.h`): the prefix, `unwinding_size` (`.eh_frame` and `.eh_frame_hdr`,
/// unpadded), `eh_frame_hdr_size`, `mapped_size`, then the data (`.eh_frame` first, whatever
/// the specification text says: `genelf.c` splits it that way) padded to 8 bytes.
/// `mapped_size` is the data's size, as V8 writes it: perf extends the symbol's map by it.
fn unwinding_record(data: &[u8], eh_frame_hdr_size: usize) -> Result<Vec<u8>> {
    let size = (40 + data.len()).div_ceil(8) * 8;
    let size32 = u32::try_from(size)
        .map_err(|_| Error::DebugInfo("unwinding info too large for jitdump".to_owned()))?;
    let mut record = Vec::with_capacity(size);
    record.extend_from_slice(&JIT_CODE_UNWINDING_INFO.to_ne_bytes());
    record.extend_from_slice(&size32.to_ne_bytes());
    record.extend_from_slice(&timestamp()?.to_ne_bytes());
    record.extend_from_slice(&(data.len() as u64).to_ne_bytes());
    record.extend_from_slice(&(eh_frame_hdr_size as u64).to_ne_bytes());
    record.extend_from_slice(&(data.len() as u64).to_ne_bytes());
    record.extend_from_slice(data);
    record.resize(size, 0);
    Ok(record)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `perf record -k 1` stamps samples with.
fn timestamp() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(Error::last_os("clock_gettime(CLOCK_MONOTONIC)"));
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
