//! The kernel's own run-time accounting of BPF programs: enabled only while
//! a guard lives (it adds two clock reads per run), read from the observer's
//! fdinfo, with program names from the JIT's kallsyms entries.

use std::{
    collections::HashMap,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{Result, bail};

use super::procfs;

const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics are on while this lives (BPF_ENABLE_STATS: the
/// kernel turns them off again when the fd closes, even if we crash).
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

pub fn enable() -> Result<StatsOn> {
    // union bpf_attr { struct { __u32 type; } enable_stats; ... }; the rest zero.
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
    // SAFETY: bpf(2) reads `attr.len()` bytes from a valid buffer.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(StatsOn(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Cumulative run-time statistics of the programs a process holds whose
/// name starts with a prefix, and which programs those were.
#[derive(Debug, Clone, Default)]
pub struct ProgTotals {
    pub run_ns: u64,
    pub runs: u64,
    /// Calls the kernel skipped because a program of the same kind was
    /// already running on that CPU (`recursion_misses`): not in `runs`.
    pub misses: u64,
    pub names: Vec<String>,
}

impl ProgTotals {
    /// What ran between `earlier` and `self`.
    pub fn since(&self, earlier: &ProgTotals) -> ProgTotals {
        ProgTotals {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            runs: self.runs.saturating_sub(earlier.runs),
            misses: self.misses.saturating_sub(earlier.misses),
            names: self.names.clone(),
        }
    }

    /// Mean run time per call; None when nothing ran (or no such program).
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_ns as f64 / self.runs as f64)
    }
}

/// Cumulative statistics of `pid`'s programs whose name starts with `prefix`.
/// `names` is read once before a window: reading /proc/kallsyms takes tens
/// of milliseconds, which would skew a window bracketed by these reads.
pub fn prog_stats(names: &JitNames, pid: u32, prefix: &str) -> ProgTotals {
    let mut totals = ProgTotals::default();
    for p in procfs::bpf_fds(pid).into_iter().filter(|p| p.is_prog()) {
        let Some(name) = names.0.get(p.get("prog_tag")).filter(|n| n.starts_with(prefix)) else { continue };
        totals.run_ns += p.num("run_time_ns");
        totals.runs += p.num("run_cnt");
        totals.misses += p.num("recursion_misses");
        totals.names.push(name.clone());
    }
    totals.names.sort();
    totals
}

/// Program tag -> name, from `bpf_prog_<tag>_<name>` symbols of JIT-ed programs.
pub struct JitNames(HashMap<String, String>);

/// The names of the programs loaded now (load the programs first).
pub fn jit_names() -> JitNames {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    JitNames(
        text.lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.strip_prefix("bpf_prog_"))
            .filter_map(|s| s.split_once('_'))
            .map(|(tag, name)| (tag.to_string(), name.to_string()))
            .collect(),
    )
}
