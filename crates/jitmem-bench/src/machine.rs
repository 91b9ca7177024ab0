//! Facts about the machine, for the header of the report.

use std::fs;

/// The CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    ["model name", "Hardware", "cpu model", "CPU part"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key).then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Cores this process may run on, and the processors `/proc/cpuinfo` lists.
pub fn cores() -> String {
    let usable = std::thread::available_parallelism().map_or(0, usize::from);
    let listed = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    if listed == 0 || listed == usable {
        format!("{usable} cores")
    } else {
        format!("{usable} usable cores ({listed} listed)")
    }
}

/// The kernel: `Linux 6.1.0 x86_64`.
pub fn kernel() -> String {
    let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_string());
    let os = read("/proc/sys/kernel/ostype").unwrap_or_else(|_| std::env::consts::OS.into());
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_else(|_| "?".into());
    format!("{os} {release} {}", std::env::consts::ARCH)
}

/// `vm.max_map_count`.
pub fn max_map_count() -> Option<u64> {
    fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the CPU and kernel offer protection keys (the `pku` and `ospke` flags).
pub fn pkeys() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|flags| {
            let mut words = flags.split_whitespace();
            words.clone().any(|w| w == "pku") && words.any(|w| w == "ospke")
        })
}

/// The command line of this process, quoted where a word needs it.
pub fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))
            {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
