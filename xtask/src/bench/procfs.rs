//! What /proc says about a process: CPU time, memory, and the BPF objects it holds.

use std::{collections::HashMap, fs};

/// CPU time of all threads of `pid`, in ns (from each task's schedstat).
pub fn cpu_ns(pid: u32) -> u64 {
    threads_cpu_ns(pid, |_| true)
}

/// CPU time of the threads of `pid` named `name` (their `comm`), in ns.
pub fn thread_cpu_ns(pid: u32, name: &str) -> u64 {
    threads_cpu_ns(pid, |task| fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim_end() == name))
}

fn threads_cpu_ns(pid: u32, pick: impl Fn(&std::path::Path) -> bool) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|t| pick(t))
        .filter_map(|t| fs::read_to_string(t.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A `Vm*:` line of /proc/PID/status, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One BPF map or program fd of a process, from /proc/PID/fdinfo.
#[derive(Debug, Default, Clone)]
pub struct BpfFd {
    pub fields: HashMap<String, String>,
}

impl BpfFd {
    pub fn is_map(&self) -> bool {
        self.fields.contains_key("map_type")
    }
    pub fn is_prog(&self) -> bool {
        self.fields.contains_key("prog_type")
    }
    pub fn num(&self, key: &str) -> u64 {
        self.fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// Every BPF map and program fd `pid` holds, one entry per object (an
/// object held through several fds is counted once).
pub fn bpf_fds(pid: u32) -> Vec<BpfFd> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return vec![] };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        let fields: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let fd = BpfFd { fields };
        let id = if fd.is_map() {
            format!("map{}", fd.get("map_id"))
        } else if fd.is_prog() {
            format!("prog{}", fd.get("prog_id"))
        } else {
            continue;
        };
        if seen.insert(id) {
            out.push(fd);
        }
    }
    out
}

/// Kernel memory charged for the BPF maps `pid` holds: (bytes, number of maps).
pub fn map_memlock(pid: u32) -> (u64, usize) {
    let maps: Vec<BpfFd> = bpf_fds(pid).into_iter().filter(BpfFd::is_map).collect();
    (maps.iter().map(|m| m.num("memlock")).sum(), maps.len())
}

/// A line of /proc/meminfo, in kB.
pub fn meminfo_kb(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}
