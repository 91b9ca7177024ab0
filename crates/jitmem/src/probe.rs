//! What this process may do with executable memory, and why; and what `Auto` picks.
//!
//! The probe tries each primitive for real on one page (an RWX mapping, an `mprotect` to
//! executable, an executable memfd mirror, a shared-anonymous mirror, a protection key) rather
//! than guessing from versions, and reads the settings that explain a refusal (SELinux, PaX,
//! `vm.memfd_noexec`, mount options, `vm.max_map_count`).

use std::fmt;
use std::sync::OnceLock;

use crate::config::{Layout, Strategy};
use crate::memory::Choice;
use crate::sys;

/// One capability tried by the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was tried.
    pub name: &'static str,
    /// Whether it worked.
    pub ok: bool,
    /// What happened, or why it failed.
    pub detail: String,
}

/// The probe's report.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Operating system and kernel release.
    pub kernel: String,
    /// Instruction set.
    pub arch: &'static str,
    /// Page size in bytes.
    pub page_size: usize,
    /// `vm.max_map_count`.
    pub max_map_count: Option<usize>,
    /// Mappings this process has now.
    pub mappings: Option<usize>,
    /// `vm.memfd_noexec` (kernels >= 6.3).
    pub memfd_noexec: Option<u32>,
    /// Security policies that can forbid JIT, and their state.
    pub policies: Vec<(&'static str, String)>,
    /// The primitives tried.
    pub checks: Vec<Check>,
    /// Each concrete strategy: available, or why not.
    pub strategies: Vec<(Strategy, Result<(), String>)>,
    /// What `Auto` picks, or why nothing can be picked.
    pub auto: Result<Choice, String>,
}

impl Probe {
    /// Runs every check (a dozen system calls, a few page mappings).
    pub fn run() -> Probe {
        let rwx = sys::try_rwx();
        let mprotect_exec = sys::try_mprotect_exec();
        let [memfd, shared_anon] = sys::try_mirrors();
        let pkey = sys::code_pkey().map(|_| ());
        let membarrier = sys::membarrier_sync_core().map_err(|e| sys::error_chain(&e));

        let mirror = match (&memfd, &shared_anon) {
            (Ok(()), _) => Ok(()),
            (Err(_), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(format!("memfd: {a}; shared anonymous: {b}")),
        };
        let per_thread = match (&pkey, &rwx) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(format!(
                "pages must be mapped RWX under a key, and RWX is refused: {e}"
            )),
        };
        let strategies = vec![
            (Strategy::Mirror, mirror),
            (Strategy::PerThread, per_thread),
            (Strategy::Toggle, mprotect_exec.clone()),
            (Strategy::Rwx, rwx.clone()),
        ];
        let check = |name, r: &Result<(), String>, ok_detail: &str| Check {
            name,
            ok: r.is_ok(),
            detail: match r {
                Ok(()) => ok_detail.to_owned(),
                Err(e) => e.clone(),
            },
        };
        let checks = vec![
            check("RWX anonymous mapping", &rwx, "allowed"),
            check("mprotect RW -> RX", &mprotect_exec, "allowed"),
            check("memfd mirror (exec)", &memfd, "allowed"),
            check("shared-anonymous mirror", &shared_anon, "allowed"),
            check("protection keys", &pkey, "pkey_alloc works; PKRU writable"),
            check("membarrier SYNC_CORE", &membarrier, "registered"),
        ];
        let auto = choose(&strategies, sys::mirror_backing());
        Probe {
            kernel: sys::kernel_version(),
            arch: crate::isa::ARCH,
            page_size: sys::page_size(),
            max_map_count: sys::max_map_count(),
            mappings: sys::mapping_count().ok(),
            memfd_noexec: sys::memfd_noexec(),
            policies: sys::security_policies(),
            checks,
            strategies,
            auto,
        }
    }

    /// Whether `strategy` is available here.
    pub fn allows(&self, strategy: Strategy) -> bool {
        self.strategies
            .iter()
            .any(|(s, r)| *s == strategy && r.is_ok())
    }
}

fn choose(
    strategies: &[(Strategy, Result<(), String>)],
    backing: Option<sys::MirrorBacking>,
) -> Result<Choice, String> {
    let mut refused = Vec::new();
    for (strategy, available) in strategies {
        let reason = match (strategy, available) {
            (Strategy::Rwx, _) => continue,
            (_, Err(e)) => {
                refused.push(format!("{strategy}: {e}"));
                continue;
            }
            (Strategy::Mirror, Ok(())) => format!(
                "mirror ({}): code is never writable through its executable address, permissions never change after set-up, and live code can be patched while other threads run it",
                match backing {
                    Some(sys::MirrorBacking::SharedAnonymous) => "shared anonymous memory; executable memfds are refused here",
                    _ => "memfd",
                }
            ),
            (Strategy::PerThread, Ok(())) => {
                "perthread (protection keys): mirrors are refused here, and a write scope costs one WRPKRU, no system call".to_owned()
            }
            (_, Ok(())) => "toggle: neither mirrors nor protection keys work here; mprotect to executable does".to_owned(),
        };
        let mut reason = reason;
        if !refused.is_empty() {
            reason.push_str(" (not available: ");
            reason.push_str(&refused.join("; "));
            reason.push(')');
        }
        return Ok(Choice {
            strategy: *strategy,
            layout: Layout::Pooled,
            reason,
        });
    }
    Err(format!(
        "this process cannot run generated code: {}",
        refused.join("; ")
    ))
}

static AUTO: OnceLock<Result<Choice, String>> = OnceLock::new();

/// What `Auto` picks in this process (the probe runs once; later calls reuse its answer).
pub fn auto_choice() -> Result<Choice, String> {
    AUTO.get_or_init(|| Probe::run().auto).clone()
}

/// Whether this process can run generated code at all (seed 002's "is JIT available" check):
/// false means use an interpreter.
pub fn jit_available() -> bool {
    auto_choice().is_ok()
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: &str| writeln!(f, "  {k:<26} {v}");
        writeln!(f, "system")?;
        row(f, "kernel", &self.kernel)?;
        row(f, "arch", self.arch)?;
        row(f, "page size", &format!("{} bytes", self.page_size))?;
        let opt = |v: Option<usize>| v.map_or("unknown".to_owned(), |v| v.to_string());
        row(f, "vm.max_map_count", &opt(self.max_map_count))?;
        row(f, "mappings now", &opt(self.mappings))?;
        row(
            f,
            "vm.memfd_noexec",
            &self
                .memfd_noexec
                .map_or("absent (kernel < 6.3)".to_owned(), |v| {
                    format!(
                        "{v} ({})",
                        match v {
                            0 => "executable memfds allowed",
                            1 => "memfds are noexec unless MFD_EXEC",
                            _ => "executable memfds refused",
                        }
                    )
                }),
        )?;
        for (name, state) in &self.policies {
            row(f, name, state)?;
        }
        writeln!(f, "checks")?;
        for c in &self.checks {
            row(
                f,
                c.name,
                &format!("{} {}", if c.ok { "yes" } else { "no " }, c.detail),
            )?;
        }
        writeln!(f, "strategies")?;
        for (s, r) in &self.strategies {
            let note = if *s == Strategy::Rwx {
                " (explicit unsafe opt-in only)"
            } else {
                ""
            };
            match r {
                Ok(()) => row(f, s.name(), &format!("available{note}"))?,
                Err(e) => row(f, s.name(), &format!("unavailable: {e}"))?,
            }
        }
        writeln!(f, "auto")?;
        match &self.auto {
            Ok(c) => {
                row(f, "picks", &format!("{} + {}", c.strategy, c.layout))?;
                row(f, "because", &c.reason)
            }
            Err(e) => row(f, "picks", &format!("nothing: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_prefers_mirror_then_perthread_then_toggle_never_rwx() {
        let no = || Err::<(), _>("refused".to_owned());
        let all = vec![
            (Strategy::Mirror, Ok(())),
            (Strategy::PerThread, Ok(())),
            (Strategy::Toggle, Ok(())),
            (Strategy::Rwx, Ok(())),
        ];
        assert_eq!(choose(&all, None).unwrap().strategy, Strategy::Mirror);
        let no_mirror = vec![
            (Strategy::Mirror, no()),
            (Strategy::PerThread, Ok(())),
            (Strategy::Toggle, Ok(())),
        ];
        let c = choose(&no_mirror, None).unwrap();
        assert_eq!(c.strategy, Strategy::PerThread);
        assert!(c.reason.contains("mirror: refused"), "{}", c.reason);
        let only_rwx = vec![
            (Strategy::Mirror, no()),
            (Strategy::PerThread, no()),
            (Strategy::Toggle, no()),
            (Strategy::Rwx, Ok(())),
        ];
        assert!(choose(&only_rwx, None).is_err());
    }

    #[test]
    fn probe_agrees_with_reality_for_mirror_and_toggle() {
        let p = Probe::run();
        assert!(p.page_size.is_power_of_two());
        // This crate's CI machines allow both; if that ever changes the probe must say why.
        assert!(p.allows(Strategy::Toggle), "{p}");
        assert!(p.allows(Strategy::Mirror), "{p}");
        assert!(p.to_string().contains("auto"));
    }
}
