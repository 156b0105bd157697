//! Which processes are watched, and which sockets and memory are theirs.

pub mod held;

use std::collections::{BTreeMap, HashSet};

use observer_common::HeldSocket;

use log::{debug, warn};

use crate::{
    netns,
    proc::{self, ProcError},
};

/// How the operator names the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    /// Every process whose `comm` is this name, re-resolved at each sweep so
    /// a restarted server (new PID) is picked up.
    Comm(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "pid {p}"),
            Selector::Comm(c) => write!(f, "comm {c:?}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("pid {0} is a kernel thread; it owns no sockets to watch")]
    KernelThread(u32),
    #[error("pid 0 is not a process")]
    PidZero,
}

/// Checks at start-up that a `--pid` target is something we can watch, so
/// the operator hears about a typo at once rather than through a gauge.
pub fn validate(selector: &Selector) -> Result<(), TargetError> {
    let Selector::Pid(pid) = selector else {
        return Ok(());
    };
    if *pid == 0 {
        return Err(TargetError::PidZero);
    }
    proc::exists(*pid)?;
    if proc::is_kernel_thread(*pid)? {
        return Err(TargetError::KernelThread(*pid));
    }
    proc::read_socket_inodes(*pid)?;
    Ok(())
}

/// The current PIDs of the target (empty while it is not running).
pub fn resolve(selector: &Selector) -> Vec<u32> {
    match selector {
        Selector::Pid(pid) => match proc::exists(*pid) {
            Ok(()) => vec![*pid],
            Err(_) => vec![],
        },
        Selector::Comm(name) => proc::pids_by_comm(name).unwrap_or_default(),
    }
}

/// Socket inode -> owning PID. Keyed by inode numbers no user picks, and
/// looked up once per socket of the table at every file-table read.
pub type InodeOwners = foldhash::HashMap<u64, u32>;

/// What one sweep knows about the target processes.
#[derive(Debug, Default)]
pub struct Scan {
    /// Socket inode -> owning PID.
    pub inode_owner: InodeOwners,
    /// Network namespace inode -> PIDs in it.
    pub netns: BTreeMap<u64, Vec<u32>>,
    /// PIDs that could be read (others exited meanwhile or are unreadable).
    pub pids: Vec<u32>,
}

pub fn scan(pids: &[u32]) -> Scan {
    let mut s = Scan::default();
    for &pid in pids {
        let (Ok(inodes), Ok(ns)) = (proc::read_socket_inodes(pid), netns::inode_of(pid)) else {
            continue;
        };
        s.inode_owner.extend(inodes.into_iter().map(|i| (i, pid)));
        s.netns.entry(ns).or_default().push(pid);
        s.pids.push(pid);
    }
    s
}

/// The same from the file-table iterator's output: `held` lists the
/// sockets of the processes in `registered` (those the kernel filters on);
/// the others' file tables are read from `/proc`.
pub fn scan_held(pids: &[u32], held: &[HeldSocket], registered: &HashSet<u32>) -> Scan {
    let mut s = Scan::default();
    for &pid in pids {
        let Ok(ns) = netns::inode_of(pid) else { continue };
        if !registered.contains(&pid) {
            let Ok(inodes) = proc::read_socket_inodes(pid) else { continue };
            s.inode_owner.extend(inodes.into_iter().map(|i| (i, pid)));
        }
        s.netns.entry(ns).or_default().push(pid);
        s.pids.push(pid);
    }
    let read: HashSet<u32> = s.pids.iter().copied().filter(|p| registered.contains(p)).collect();
    s.inode_owner.reserve(held.len());
    s.inode_owner.extend(held.iter().filter(|h| read.contains(&h.tgid)).map(|h| (h.inode, h.tgid)));
    s
}

/// Resident memory of the targets, summed: (VmRSS, RssAnon) in bytes;
/// None when no target could be read.
pub fn rss(pids: &[u32]) -> Option<(u64, u64)> {
    let m = sample_memory(pids, false);
    (!m.each.is_empty()).then_some((m.rss, m.rss_anon))
}

/// Memory of one target process, as read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMemory {
    pub pid: u32,
    /// `VmRSS`: every resident page the process maps, shared ones in full.
    pub rss: u64,
    /// `RssAnon`: the anonymous part of it (heap, stacks, buffers).
    pub rss_anon: u64,
    /// `Pss` of `smaps_rollup`: each resident page divided by the number of
    /// processes mapping it. None when not asked for or not readable.
    pub pss: Option<u64>,
}

/// Memory of the target processes that could be read, and their sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub each: Vec<ProcMemory>,
    pub rss: u64,
    pub rss_anon: u64,
    /// Sum of the `pss` that could be read.
    pub pss: u64,
}

/// Reads the memory of `pids`: `statm` always, `smaps_rollup` too when
/// `with_pss`. Blocking, and for PSS proportional to the targets' mapped
/// memory: call it off the async runtime.
///
/// A process that exits between the listing and the reads is left out of
/// every sum (not an error), so RSS and PSS describe the same processes.
pub fn sample_memory(pids: &[u32], with_pss: bool) -> MemorySample {
    sample_memory_with(pids, with_pss, proc::read_memory, proc::read_pss)
}

fn sample_memory_with(
    pids: &[u32],
    with_pss: bool,
    memory: impl Fn(u32) -> Result<proc::Memory, ProcError>,
    pss: impl Fn(u32) -> Result<u64, ProcError>,
) -> MemorySample {
    let mut out = MemorySample::default();
    for &pid in pids {
        let mem = match memory(pid) {
            Ok(mem) => mem,
            Err(e) => {
                debug!("memory of pid {pid}: {e}");
                continue;
            }
        };
        let pss = if with_pss {
            match pss(pid) {
                Ok(p) => Some(p),
                // Exited (or became a zombie) between the two reads.
                Err(ProcError::NoSuchProcess(_)) => continue,
                Err(e) => {
                    warn_pss_once(&e);
                    None
                }
            }
        } else {
            None
        };
        let m = ProcMemory { pid, rss: mem.rss_bytes, rss_anon: mem.rss_anon_bytes, pss };
        out.rss += m.rss;
        out.rss_anon += m.rss_anon;
        out.pss += m.pss.unwrap_or(0);
        out.each.push(m);
    }
    out
}

/// A process whose PSS cannot be read (permission, I/O) is said once per
/// run, not at every scrape; later ones go to the debug log.
fn warn_pss_once(e: &ProcError) {
    static SAID: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    SAID.call_once(|| first = true);
    if first {
        warn!("PSS of a target process is unreadable, observer_target_pss_bytes leaves it out: {e}");
    } else {
        debug!("PSS unreadable: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(pid: u32) -> Result<proc::Memory, ProcError> {
        match pid {
            1..=3 => Ok(proc::Memory { rss_bytes: u64::from(pid) * 100, rss_anon_bytes: u64::from(pid) * 10 }),
            _ => Err(ProcError::NoSuchProcess(pid)),
        }
    }

    #[test]
    fn processes_that_vanish_between_reads_leave_every_sum() {
        // 2 exits between its statm and its smaps_rollup; 9 is gone at once.
        let pss = |pid: u32| if pid == 2 { Err(ProcError::NoSuchProcess(2)) } else { Ok(u64::from(pid) * 50) };
        let m = sample_memory_with(&[1, 2, 3, 9], true, memory, pss);
        assert_eq!(m.each.iter().map(|p| p.pid).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((m.rss, m.rss_anon, m.pss), (400, 40, 200));
        assert_eq!(m.each[1], ProcMemory { pid: 3, rss: 300, rss_anon: 30, pss: Some(150) });
    }

    #[test]
    fn unreadable_pss_keeps_the_process_in_rss() {
        let pss = |pid: u32| {
            if pid == 1 { Err(ProcError::PermissionDenied { pid, path: "/proc/1/smaps_rollup".into() }) } else { Ok(7) }
        };
        let m = sample_memory_with(&[1, 3], true, memory, pss);
        assert_eq!((m.rss, m.pss), (400, 7));
        assert_eq!(m.each[0].pss, None);
        // Not asked for: never read.
        let m =
            sample_memory_with(&[1, 3], false, memory, |_| -> Result<u64, ProcError> { panic!("read without need") });
        assert_eq!((m.rss, m.pss), (400, 0));
        assert!(m.each.iter().all(|p| p.pss.is_none()));
    }
}
