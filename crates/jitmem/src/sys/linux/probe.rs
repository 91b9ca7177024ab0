//! What the probe learns on Linux: every primitive tried for real on one page, and the settings
//! that explain a refusal (`vm.max_map_count`, `vm.memfd_noexec`, SELinux, PaX, `/dev/shm`).

use super::Os;
use super::introspect::{mapping_count, max_map_count, read_sysctl};
use super::mirror::{memfd_mirror, shared_anon_mirror};
use crate::error::Result;
use crate::sys::posix::{page_size, unmap};
use crate::sys::{
    Icache, MirrorViews, Probe, ProbeFacts, Prot, Rights, error_chain, try_map, try_rwx_if,
};

impl Probe for Os {
    fn probe_facts(rwx_trial: bool) -> ProbeFacts {
        probe_facts(rwx_trial)
    }
}

/// `vm.memfd_noexec` (0: allowed, 1: noexec by default, 2: exec refused), on kernels >= 6.3.
fn memfd_noexec() -> Option<u32> {
    read_sysctl("/proc/sys/vm/memfd_noexec")?.parse().ok()
}

/// The kernel's name and release (`uname`).
fn kernel_version() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_owned();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} ({})",
        field(&uts.sysname),
        field(&uts.release),
        field(&uts.machine)
    )
}

/// Facts about the security policies that can forbid JIT, in words.
fn security_policies() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match read_sysctl("/sys/fs/selinux/enforce") {
        Some(v) if v == "1" => {
            out.push(("SELinux", "enforcing (execmem may be denied)".to_owned()))
        }
        Some(_) => out.push(("SELinux", "permissive".to_owned())),
        None => out.push(("SELinux", "not active".to_owned())),
    }
    let pax = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("PaX:"))
                .map(|l| l.to_owned())
        });
    out.push(("PaX", pax.unwrap_or_else(|| "not present".to_owned())));
    let shm_noexec = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
                .map(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .unwrap_or("")
                        .split(',')
                        .any(|o| o == "noexec")
                })
        });
    out.push((
        "/dev/shm",
        match shm_noexec {
            Some(true) => {
                "mounted noexec (memfd is unaffected; shm_open-based mirrors would fail)".to_owned()
            }
            Some(false) => "mounted exec".to_owned(),
            None => "not mounted".to_owned(),
        },
    ));
    out
}

/// Tries each mirror backing on one page: `(memfd, shared anonymous)`.
fn try_mirrors() -> [std::result::Result<(), String>; 2] {
    let page = page_size();
    let attempt = |f: fn(usize) -> Result<MirrorViews>| {
        let views = f(page).map_err(|e| error_chain(&e))?;
        // SAFETY: the fresh views above.
        let _ = unsafe { unmap(views.rx, page) };
        // SAFETY: as above.
        let _ = unsafe { unmap(views.rw, page) };
        Ok(())
    };
    [attempt(memfd_mirror), attempt(shared_anon_mirror)]
}

/// PerThread's own trial: one page mapped under this process's protection key (RWX in the page
/// tables, writable only by a thread whose PKRU grants the key), then unmapped.
fn try_per_thread() -> std::result::Result<(), String> {
    let key = <Os as Rights>::thread_rights_token()?;
    let page = page_size();
    let ptr = <Os as Rights>::map_per_thread(page, key).map_err(|e| error_chain(&e))?;
    // SAFETY: the fresh mapping above, known to no one else.
    let _ = unsafe { unmap(ptr, page) };
    Ok(())
}

/// [`Probe::probe_facts`] on Linux.
fn probe_facts(rwx_trial: bool) -> ProbeFacts {
    // A plain RWX page only when asked; PerThread's own trial is a page mapped RWX under its
    // protection key, which no thread can write outside a write scope.
    let rwx = try_rwx_if::<Os>(rwx_trial);
    let mprotect_exec = try_map::<Os>(Prot::RW, Some(Prot::RX));
    let [memfd, shared_anon] = try_mirrors();
    let pkey = <Os as Rights>::thread_rights_token().map(|_| ());
    let membarrier = <Os as Icache>::pipeline_flush_mt().map_err(|e| error_chain(&e));
    let mirror = match (&memfd, &shared_anon) {
        (Ok(()), _) | (_, Ok(())) => Ok(()),
        (Err(a), Err(b)) => Err(format!("memfd: {a}; shared anonymous: {b}")),
    };
    let per_thread = pkey.clone().and_then(|()| {
        try_per_thread().map_err(|e| {
            format!("pages must be mapped RWX under a key, and that mapping is refused: {e}")
        })
    });
    let opt = |v: Option<usize>| v.map_or("unknown".to_owned(), |v| v.to_string());
    let mut facts = vec![
        ("vm.max_map_count", opt(max_map_count())),
        ("mappings now", opt(mapping_count().ok())),
        (
            "vm.memfd_noexec",
            memfd_noexec().map_or("absent (kernel < 6.3)".to_owned(), |v| {
                format!(
                    "{v} ({})",
                    match v {
                        0 => "executable memfds allowed",
                        1 => "memfds are noexec unless MFD_EXEC",
                        _ => "executable memfds refused",
                    }
                )
            }),
        ),
    ];
    facts.extend(security_policies());
    ProbeFacts {
        system: kernel_version(),
        facts,
        checks: vec![
            ("RWX anonymous mapping", rwx.clone()),
            ("mprotect RW -> RX", mprotect_exec.clone()),
            ("memfd mirror (exec)", memfd),
            ("shared-anonymous mirror", shared_anon),
            ("protection keys", pkey),
            ("membarrier SYNC_CORE", membarrier),
        ],
        toggle: mprotect_exec,
        mirror,
        per_thread,
        rwx,
    }
}
