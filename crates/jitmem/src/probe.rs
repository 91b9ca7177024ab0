//! What this process may do with executable memory, and why; and what `Auto` picks.
//!
//! The probe tries each primitive for real on one page (an RWX mapping, an `mprotect` to
//! executable, an executable memfd mirror, a shared-anonymous mirror, a protection key) rather
//! than guessing from versions, and reads the settings that explain a refusal (SELinux, PaX,
//! `vm.memfd_noexec`, mount options, `vm.max_map_count`).

use std::fmt;
use std::sync::OnceLock;

use crate::config::Choice;
use crate::config::{Layout, Strategy};
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
    /// Operating system and version.
    pub system: String,
    /// Instruction set.
    pub arch: &'static str,
    /// Page size in bytes.
    pub page_size: usize,
    /// Settings and policies that decide what may run (mapping limits, SELinux, PaX,
    /// `vm.memfd_noexec`, hardened runtime, ...), in words.
    pub facts: Vec<(&'static str, String)>,
    /// The primitives tried.
    pub checks: Vec<Check>,
    /// Each concrete strategy: available, or why not.
    pub strategies: Vec<(Strategy, Result<(), String>)>,
    /// What `Auto` picks, or why nothing can be picked.
    pub auto: Result<Choice, String>,
}

impl Probe {
    /// Runs every check (a dozen system calls, a few page mappings), except mapping a page that
    /// is writable and executable at once: what only the unsafe Rwx opt-in uses, and what
    /// security policies forbid (it shows up in Arbitrary Code Guard audits, EDR heuristics and
    /// SELinux `execmem` denials). Rwx is then reported "not tried"; see
    /// [`run_trying_rwx`](Self::run_trying_rwx).
    pub fn run() -> Probe {
        Probe::run_with(false)
    }

    /// [`run`](Self::run), and also maps (and unmaps) one writable and executable page to tell
    /// whether Rwx would work (`jitmem-cli probe --rwx`).
    pub fn run_trying_rwx() -> Probe {
        Probe::run_with(true)
    }

    fn run_with(rwx_trial: bool) -> Probe {
        let f = sys::probe_facts(rwx_trial);
        let strategies = vec![
            (Strategy::Mirror, f.mirror),
            (Strategy::PerThread, f.per_thread),
            (Strategy::Toggle, f.toggle),
            (Strategy::Rwx, f.rwx),
        ];
        let checks = f
            .checks
            .into_iter()
            .map(|(name, r)| Check {
                name,
                ok: r.is_ok(),
                detail: r.err().unwrap_or_else(|| "works".to_owned()),
            })
            .collect();
        let auto = choose(&strategies, sys::mirror_backing());
        Probe {
            system: f.system,
            arch: crate::isa::ARCH,
            page_size: sys::page_size(),
            facts: f.facts,
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
                    Some(sys::MirrorBacking::SharedAnonymous) => {
                        "shared anonymous memory; executable memfds are refused here"
                    }
                    Some(sys::MirrorBacking::Memfd) => "memfd",
                    Some(sys::MirrorBacking::MachRemap) => "mach_vm_remap",
                    Some(sys::MirrorBacking::FileMapping) => "file mapping",
                    None => "two views",
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

static AUTO: OnceLock<Choice> = OnceLock::new();

/// What `Auto` picks in this process. A choice is kept (the probe runs once it succeeds; later
/// calls reuse it); a refusal is not: the probe runs again on the next call, because what a
/// process may do can change, and can differ per thread (Windows' Arbitrary Code Guard with
/// `AllowThreadOptOut`: a thread that opted out with `SetThreadInformation(ThreadDynamicCodePolicy)`
/// may make code while the others may not).
pub fn auto_choice() -> Result<Choice, String> {
    if let Some(choice) = AUTO.get() {
        return Ok(choice.clone());
    }
    let choice = Probe::run().auto?;
    Ok(AUTO.get_or_init(|| choice).clone())
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
        row(f, "os", &self.system)?;
        row(f, "arch", self.arch)?;
        row(f, "page size", &format!("{} bytes", self.page_size))?;
        for (name, state) in &self.facts {
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

    /// The default probe maps no writable and executable page: Rwx is "not tried", and the RWX
    /// trial of the checks says so; asked, it tries.
    #[test]
    fn the_default_probe_does_not_try_rwx() {
        let p = Probe::run();
        let rwx = p.strategies.iter().find(|(s, _)| *s == Strategy::Rwx);
        assert!(
            matches!(rwx, Some((_, Err(e))) if e.starts_with("not tried")),
            "{p}"
        );
        assert!(
            p.checks
                .iter()
                .filter(|c| c.name.contains("RWX"))
                .all(|c| !c.ok && c.detail.starts_with("not tried")),
            "{p}"
        );
        let asked = Probe::run_trying_rwx();
        let rwx = asked.strategies.iter().find(|(s, _)| *s == Strategy::Rwx);
        assert!(
            matches!(rwx, Some((_, r)) if !matches!(r, Err(e) if e.starts_with("not tried"))),
            "{asked}"
        );
    }

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

    /// The probe's verdict for each strategy is what `JitMemory::new` does with it: a strategy
    /// the probe allows can be made, one it refuses is refused with `Unsupported` (a property
    /// of the code, whatever this machine allows).
    #[test]
    #[expect(
        unsafe_code,
        reason = "the Rwx opt-in, to check the probe's verdict on it"
    )]
    fn probe_agrees_with_jitmem_memory_new_for_every_strategy() {
        use crate::{Config, Error, JitMemory, Layout};
        let p = Probe::run_trying_rwx();
        assert!(p.page_size.is_power_of_two());
        assert!(p.to_string().contains("auto"));
        for strategy in Strategy::CONCRETE {
            let config = Config::new()
                .strategy(strategy)
                .layout(Layout::Pooled)
                .ignore_environment();
            // SAFETY: the test only makes the memory, it writes no code.
            let config = unsafe { config.allow_rwx_without_wx() };
            match JitMemory::new(config) {
                Ok(_) => assert!(
                    p.allows(strategy),
                    "{strategy} works but the probe says no:\n{p}"
                ),
                Err(Error::Unsupported { .. }) => {
                    assert!(
                        !p.allows(strategy),
                        "{strategy} refused but the probe says yes:\n{p}"
                    )
                }
                Err(e) => panic!("{strategy}: {e}"),
            }
        }
        match &p.auto {
            Ok(choice) => assert!(p.allows(choice.strategy) && choice.strategy != Strategy::Rwx),
            Err(_) => assert!(!p.allows(Strategy::Mirror) && !p.allows(Strategy::Toggle)),
        }
    }
}
