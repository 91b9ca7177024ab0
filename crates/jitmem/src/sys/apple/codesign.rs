//! Code-signing state of this process: `csops` (status flags, entitlements), whether a debugger
//! is attached (`sysctl(KERN_PROC_PID)`), and `sysctlbyname` strings for the probe.

use std::ffi::CStr;
use std::io;

unsafe extern "C" {
    /// `int csops(pid_t pid, unsigned int ops, void *useraddr, size_t usersize);`
    ///
    /// The prototype is XNU's `bsd/sys/codesign.h` (apple-oss-distributions/xnu; the header is
    /// not in the public SDK), and the call is system call 169, exported by libSystem
    /// (`libsystem_kernel`). It is what the Security framework itself uses to read a process's
    /// code-signing status, and what iOS emulators use to check `CS_DEBUGGED` (seed 000's
    /// Legacy mode needs it).
    fn csops(
        pid: libc::pid_t,
        ops: libc::c_uint,
        useraddr: *mut libc::c_void,
        usersize: libc::size_t,
    ) -> libc::c_int;
}

/// `CS_OPS_STATUS`: the process's code-signing flags (`bsd/sys/codesign.h`).
const CS_OPS_STATUS: libc::c_uint = 0;
/// `CS_OPS_ENTITLEMENTS_BLOB`: the entitlements, as a blob with an 8-byte header (magic
/// `0xfade7171`, big-endian length) and an XML property list. XNU's `csops_copy_token` returns
/// `ERANGE` with the length in the header when the buffer is too small, and an all-zero header
/// when there are no entitlements (`bsd/kern/kern_proc.c`).
const CS_OPS_ENTITLEMENTS_BLOB: libc::c_uint = 7;
const CSMAGIC_EMBEDDED_ENTITLEMENTS: u32 = 0xfade_7171;

// Code-signing flags, from XNU's `osfmk/kern/cs_blobs.h` (older releases: `bsd/sys/codesign.h`).
const CS_VALID: u32 = 0x0000_0001;
const CS_ADHOC: u32 = 0x0000_0002;
const CS_GET_TASK_ALLOW: u32 = 0x0000_0004;
const CS_HARD: u32 = 0x0000_0100;
const CS_KILL: u32 = 0x0000_0200;
const CS_ENFORCEMENT: u32 = 0x0000_1000;
/// "Apply hardened runtime policies".
pub(super) const CS_RUNTIME: u32 = 0x0001_0000;
/// "Process is currently or has previously been debugged and allowed to run with invalid
/// pages": on iOS, the state a debugger leaves behind that lets an app map executable memory.
pub(super) const CS_DEBUGGED: u32 = crate::sys::apple_policy::CS_DEBUGGED;

/// `P_TRACED` in `extern_proc.p_flag` (`bsd/sys/proc.h`): a debugger is attached now.
const P_TRACED: i32 = 0x0000_0800;
/// Offset of `p_flag` in `struct kinfo_proc` on LP64: `kp_proc` (`struct extern_proc`) comes
/// first, and `p_flag` follows a 16-byte union and two pointers.
const P_FLAG_OFFSET: usize = 32;

/// Entitlement that lets a hardened-runtime process map `MAP_JIT` memory.
pub(super) const ALLOW_JIT: &str = "com.apple.security.cs.allow-jit";
/// Entitlement that lets a hardened-runtime process make other memory executable.
pub(super) const ALLOW_UNSIGNED_EXECUTABLE_MEMORY: &str =
    "com.apple.security.cs.allow-unsigned-executable-memory";
/// Entitlement that removes the hardened runtime's executable page protection altogether.
pub(super) const DISABLE_EXECUTABLE_PAGE_PROTECTION: &str =
    "com.apple.security.cs.disable-executable-page-protection";
/// Entitlement that restricts `MAP_JIT` writes to allow-listed callbacks and forbids
/// `pthread_jit_write_protect_np`.
pub(super) const JIT_WRITE_ALLOWLIST: &str = "com.apple.security.cs.jit-write-allowlist";
/// Entitlement that lets `dlopen`ed libraries add allow-listed callbacks until
/// `pthread_jit_write_freeze_callbacks_np`.
pub(super) const JIT_WRITE_ALLOWLIST_FREEZE_LATE: &str =
    "com.apple.security.cs.jit-write-allowlist-freeze-late";
/// Entitlement that allows one `MAP_JIT` region per process (XNU never clears its "a JIT
/// region exists" flag, so a trial mapping would use it up).
pub(super) const SINGLE_JIT: &str = "com.apple.security.cs.single-jit";
/// Entitlement of development-signed iOS apps, which lets a debugger attach.
pub(super) const GET_TASK_ALLOW: &str = "get-task-allow";

/// This process's code-signing flags (`csops(getpid(), CS_OPS_STATUS)`).
#[doc(alias = "csops")]
pub(crate) fn code_signing_flags() -> io::Result<u32> {
    let mut flags: u32 = 0;
    // SAFETY: `flags` is a valid, writable 4-byte buffer and its size is passed; csops writes at
    // most that many bytes. getpid has no preconditions.
    let rc = unsafe {
        csops(
            libc::getpid(),
            CS_OPS_STATUS,
            (&raw mut flags).cast(),
            size_of::<u32>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Whether a debugger has granted this process the right to run unsigned code: `CS_DEBUGGED`
/// is set (it stays set after the debugger detaches).
pub(crate) fn jit_granted_by_debugger() -> bool {
    code_signing_flags().is_ok_and(|f| f & CS_DEBUGGED != 0)
}

/// Whether a debugger is attached right now (`P_TRACED`, read with
/// `sysctl(CTL_KERN, KERN_PROC, KERN_PROC_PID, getpid())` as in Apple's Technical Q&A QA1361,
/// "Detecting the Debugger").
#[doc(alias = "sysctl")]
pub(crate) fn debugger_attached() -> io::Result<bool> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
    // `struct kinfo_proc` is 648 bytes on LP64; 1 KiB of 8-byte words holds it, aligned.
    let mut buf = [0u64; 128];
    let mut size: libc::size_t = size_of_val(&buf);
    // SAFETY: `mib` holds 4 valid integers; `buf` is writable for `size` bytes and sysctl writes
    // at most that many, updating `size`; no new value is set.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            4,
            buf.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if size < P_FLAG_OFFSET + size_of::<i32>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sysctl(KERN_PROC_PID) returned a short kinfo_proc",
        ));
    }
    let word = buf[P_FLAG_OFFSET / 8].to_ne_bytes();
    let p_flag = i32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
    Ok(p_flag & P_TRACED != 0)
}

/// This process's entitlements as an XML property list, or `None` when it has none.
fn entitlements_xml() -> io::Result<Option<Vec<u8>>> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut header = [0u8; 8];
    // SAFETY: `header` is writable for 8 bytes and that size is passed.
    let rc = unsafe {
        csops(
            pid,
            CS_OPS_ENTITLEMENTS_BLOB,
            header.as_mut_ptr().cast(),
            header.len(),
        )
    };
    let length = if rc == 0 {
        // The blob fits in 8 bytes: only an empty blob or the all-zero "none" header does.
        return Ok(None);
    } else {
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::ERANGE) => {
                u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize
            }
            // XNU refuses with EINVAL when the process is neither validly signed nor debugged:
            // an unsigned process (possible on Intel Macs) has no entitlements.
            Some(libc::EINVAL)
                if code_signing_flags().is_ok_and(|f| f & (CS_VALID | CS_DEBUGGED) == 0) =>
            {
                return Ok(None);
            }
            _ => return Err(error),
        }
    };
    if length <= header.len() || length > 16 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("entitlements blob of implausible length {length}"),
        ));
    }
    let mut blob = vec![0u8; length];
    // SAFETY: `blob` is writable for `length` bytes and that size is passed.
    let rc = unsafe {
        csops(
            pid,
            CS_OPS_ENTITLEMENTS_BLOB,
            blob.as_mut_ptr().cast(),
            blob.len(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let magic = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
    if magic != CSMAGIC_EMBEDDED_ENTITLEMENTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("entitlements blob has magic {magic:#x}, expected 0xfade7171"),
        ));
    }
    Ok(Some(blob.split_off(header.len())))
}

/// Whether this process's signature grants the boolean entitlement `key` (its XML property list
/// holds `<key>KEY</key>` followed by `<true/>`).
pub(crate) fn has_entitlement(key: &str) -> io::Result<bool> {
    let Some(xml) = entitlements_xml()? else {
        return Ok(false);
    };
    let needle = format!("<key>{key}</key>");
    let Some(at) = find(&xml, needle.as_bytes()) else {
        return Ok(false);
    };
    let rest = &xml[at + needle.len()..];
    let value = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &rest[i..]);
    Ok(value.starts_with(b"<true/>"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The code-signing flags in words, for the probe.
pub(super) fn describe_flags(flags: u32) -> String {
    let names = [
        (CS_VALID, "valid"),
        (CS_ADHOC, "ad hoc"),
        (CS_GET_TASK_ALLOW, "get-task-allow"),
        (CS_HARD, "hard"),
        (CS_KILL, "kill"),
        (CS_ENFORCEMENT, "enforcement"),
        (CS_RUNTIME, "hardened runtime"),
        (
            CS_DEBUGGED,
            "debugged (CS_DEBUGGED: a debugger granted JIT)",
        ),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        format!("{flags:#x} (unsigned or no flags)")
    } else {
        format!("{flags:#x}: {}", set.join(", "))
    }
}

/// Which of the entitlements that decide JIT this process has, in words.
pub(super) fn describe_jit_entitlements() -> String {
    let keys = [
        ALLOW_JIT,
        ALLOW_UNSIGNED_EXECUTABLE_MEMORY,
        DISABLE_EXECUTABLE_PAGE_PROTECTION,
        JIT_WRITE_ALLOWLIST,
        JIT_WRITE_ALLOWLIST_FREEZE_LATE,
        SINGLE_JIT,
        GET_TASK_ALLOW,
    ];
    let mut present = Vec::new();
    for key in keys {
        match has_entitlement(key) {
            Ok(true) => present.push(key),
            Ok(false) => {}
            Err(e) => return format!("unknown (csops(CS_OPS_ENTITLEMENTS_BLOB): {e})"),
        }
    }
    if present.is_empty() {
        "none of the JIT entitlements".to_owned()
    } else {
        present.join(", ")
    }
}

/// A string `sysctlbyname` value (`kern.osproductversion`, `hw.machine`, ...).
pub(super) fn sysctl_string(name: &CStr) -> Option<String> {
    let mut size: libc::size_t = 0;
    // SAFETY: a size query: no output buffer, `size` is writable.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || size == 0 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` is writable for `size` bytes; sysctl writes at most that and updates `size`.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    buf.truncate(size);
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A 32-bit integer `sysctlbyname` value (`sysctl.proc_translated`, ...).
pub(super) fn sysctl_i32(name: &CStr) -> Option<i32> {
    let mut value: i32 = 0;
    let mut size: libc::size_t = size_of::<i32>();
    // SAFETY: `value` is writable for `size` bytes; sysctl writes at most that.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            (&raw mut value).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && size == size_of::<i32>()).then_some(value)
}
