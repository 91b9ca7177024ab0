//! The perf map: `/tmp/perf-<pid>.map`, one `START SIZE name` line (hex, no `0x`) per symbol,
//! which `perf report`/`perf script` read to name samples in anonymous executable memory.
//! Reference: linux `tools/perf/Documentation/jit-interface.txt`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Symbol;
use crate::error::{Error, Result};

/// An open perf map. Lines are written whole, one `write` each, under the map's lock, so
/// threads registering code at the same time never interleave within a line; the file is
/// opened for appending, so other writers in the process (another `PerfMap`, another runtime)
/// do not overwrite each other either.
#[derive(Debug)]
pub struct PerfMap {
    path: PathBuf,
    file: Mutex<File>,
}

impl PerfMap {
    /// Opens (creating it if missing) `/tmp/perf-<pid>.map`, where perf looks.
    ///
    /// # Errors
    /// [`Error::Os`] when the file cannot be opened.
    pub fn open_default() -> Result<PerfMap> {
        let path = PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
        PerfMap::open(&path)
    }

    /// Opens (creating it if missing) `path` for appending.
    ///
    /// # Errors
    /// [`Error::Os`] when the file cannot be opened.
    pub fn open(path: &Path) -> Result<PerfMap> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Os {
                op: "open the perf map",
                source,
            })?;
        Ok(PerfMap {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Where the map is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per symbol, with the block at `base`.
    pub(crate) fn add(&self, base: u64, symbols: &[Symbol]) -> Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| Error::Internal("perf map lock poisoned"))?;
        for s in symbols {
            let line = format!(
                "{:x} {:x} {}\n",
                base + s.range.start as u64,
                s.range.len(),
                s.name
            );
            file.write_all(line.as_bytes())
                .map_err(|source| Error::Os {
                    op: "write to the perf map",
                    source,
                })?;
        }
        Ok(())
    }
}
