//! Instruction-cache coherence: the ISA's own sequence (`super::super::arch`: Linux has no
//! system call for it on x86-64 or AArch64), and `membarrier` for the other threads.

use std::io;
use std::sync::OnceLock;

use super::Os;
use crate::error::{Error, Result};
use crate::sys::{Icache, arch};

impl Icache for Os {
    /// The ISA's sequence: a compiler fence on x86-64, `dc cvau`/`ic ivau` by line on AArch64.
    ///
    /// # Safety
    /// The contract of [`Icache::clear_cache`].
    #[inline]
    unsafe fn clear_cache(ptr: *const u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { arch::clear_cache(ptr, len) }
    }

    /// Makes every thread of the process execute a core-serialising instruction before it runs
    /// further user code (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)`), registering
    /// the process once first. Costs an IPI to each CPU running one of our threads.
    #[doc(alias = "membarrier")]
    fn pipeline_flush_mt() -> Result<()> {
        pipeline_flush_mt()
    }
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 6;

static MEMBARRIER: OnceLock<std::result::Result<(), i32>> = OnceLock::new();

/// [`Icache::pipeline_flush_mt`]: `membarrier`.
fn pipeline_flush_mt() -> Result<()> {
    let registered = MEMBARRIER.get_or_init(|| {
        // SAFETY: membarrier registration has no memory-safety preconditions.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
                0 as libc::c_long,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOSYS))
        }
    });
    if let Err(code) = registered {
        return Err(Error::Os {
            op: "membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)",
            source: io::Error::from_raw_os_error(*code),
        });
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
            0 as libc::c_long,
        )
    };
    if rc != 0 {
        return Err(Error::last_os("membarrier(PRIVATE_EXPEDITED_SYNC_CORE)"));
    }
    Ok(())
}
