//! Which processes are watched, and which sockets and memory are theirs.

pub mod procfs;

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
};

use procfs::ProcError;

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
    procfs::read_status(*pid)?;
    if procfs::is_kernel_thread(*pid)? {
        return Err(TargetError::KernelThread(*pid));
    }
    procfs::read_socket_inodes(*pid)?;
    Ok(())
}

/// The current PIDs of the target (empty while it is not running).
pub fn resolve(selector: &Selector) -> Vec<u32> {
    match selector {
        Selector::Pid(pid) => match procfs::read_status(*pid) {
            Ok(_) => vec![*pid],
            Err(_) => vec![],
        },
        Selector::Comm(name) => procfs::pids_by_comm(name).unwrap_or_default(),
    }
}

/// What one sweep knows about the target processes.
#[derive(Debug, Default)]
pub struct Scan {
    /// Socket inode -> owning PID.
    pub inode_owner: HashMap<u64, u32>,
    /// Network namespace inode -> PIDs in it.
    pub netns: BTreeMap<u64, Vec<u32>>,
    /// PIDs that could be read (others exited meanwhile or are unreadable).
    pub pids: Vec<u32>,
}

pub fn scan(pids: &[u32]) -> Scan {
    let mut s = Scan::default();
    for &pid in pids {
        let (Ok(inodes), Ok(ns)) = (procfs::read_socket_inodes(pid), procfs::netns_inode(pid))
        else {
            continue;
        };
        s.inode_owner.extend(inodes.into_iter().map(|i| (i, pid)));
        s.netns.entry(ns).or_default().push(pid);
        s.pids.push(pid);
    }
    s
}

/// Our own network namespace inode.
pub fn own_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// A handle on the network namespace of `pid`, for entering it.
pub fn open_netns(pid: u32) -> std::io::Result<File> {
    File::open(format!("/proc/{pid}/ns/net"))
}

/// Resident memory of the targets, summed: (VmRSS, RssAnon) in bytes.
pub fn rss(pids: &[u32]) -> Option<(u64, u64)> {
    sum_rss(&rss_each(pids))
}

/// (pid, VmRSS, RssAnon) of each target that could be read.
pub fn rss_each(pids: &[u32]) -> Vec<(u32, u64, u64)> {
    pids.iter()
        .filter_map(|&pid| {
            let st = procfs::read_status(pid).ok()?;
            Some((pid, st.vm_rss_bytes.unwrap_or(0), st.rss_anon_bytes.unwrap_or(0)))
        })
        .collect()
}

/// The sum of [`rss_each`], None when no target could be read.
pub fn sum_rss(each: &[(u32, u64, u64)]) -> Option<(u64, u64)> {
    (!each.is_empty()).then(|| each.iter().fold((0, 0), |(r, a), (_, pr, pa)| (r + pr, a + pa)))
}
