//! Parsing of `/proc` data for a target process.
//!
//! The pure parsers (`parse_status`, `parse_stat_flags`,
//! `socket_inode_from_link`) never panic, whatever the input. The readers
//! (`read_*`, `netns_inode`, `pids_by_comm`, `is_kernel_thread`) translate the
//! usual races of `/proc` into typed errors:
//!
//! * the process is gone (`ENOENT` / `ESRCH`)   -> [`ProcError::NoSuchProcess`]
//! * we may not look at it (`EACCES` / `EPERM`) -> [`ProcError::PermissionDenied`]
//! * anything else                              -> [`ProcError::Io`]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Mount point of procfs.
const PROC_ROOT: &str = "/proc";

/// `/proc/PID/comm` holds at most `TASK_COMM_LEN - 1` = 15 bytes for user
/// processes; the kernel silently truncates longer names.
pub const COMM_MAX_BYTES: usize = 15;

/// `PF_KTHREAD` from `include/linux/sched.h`: "I am a kernel thread".
const PF_KTHREAD: u32 = 0x0020_0000;

/// Longest input excerpt quoted in an error message.
const MAX_QUOTED: usize = 64;

const STATUS_FILE: &str = "/proc/PID/status";
const STAT_FILE: &str = "/proc/PID/stat";
const SMAPS_ROLLUP_FILE: &str = "/proc/PID/smaps_rollup";

/// The parts of `/proc/PID/status` the observer cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// `Name:`, with the kernel's `\n` and `\\` escapes undone.
    pub name: String,
    /// `Tgid:`, the process id (thread-group id).
    pub tgid: u32,
    /// `VmRSS:` in bytes; `None` when the task has no address space
    /// (kernel threads, zombies).
    pub vm_rss_bytes: Option<u64>,
    /// `RssAnon:` in bytes; `None` when absent (kernel threads, zombies).
    pub rss_anon_bytes: Option<u64>,
    /// `Threads:`, number of threads in the thread group.
    pub threads: u32,
}

/// Errors from reading or parsing `/proc`. `Display` is a one-line message
/// meant for operators.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process does not exist (or exited while we were looking at it).
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    /// The kernel refused access to a file of the process.
    #[error(
        "permission denied reading {} of process {pid} (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
        path.display()
    )]
    PermissionDenied { pid: u32, path: PathBuf },
    /// Any other I/O failure.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A required field is missing from a `/proc` file.
    #[error("malformed {file}: missing {field}")]
    MissingField { file: &'static str, field: &'static str },
    /// A field of a `/proc` file has a value we cannot interpret.
    #[error("malformed {file}: invalid {field} value {value:?}")]
    InvalidField {
        file: &'static str,
        field: &'static str,
        /// The offending text, cut to a few dozen characters.
        value: String,
    },
    /// `pids_by_comm` was given an empty process name.
    #[error("process name to search for is empty")]
    EmptyName,
}

// ---------------------------------------------------------------------------
// Pure parsers
// ---------------------------------------------------------------------------

/// Parses the text of `/proc/PID/status`.
///
/// `Name`, `Tgid` and `Threads` are required; `VmRSS` and `RssAnon` are
/// optional (absent for kernel threads and zombies) but must be well formed
/// (`<decimal> kB`) when present. When a key appears twice the first one wins.
pub fn parse_status(text: &str) -> Result<ProcStatus, ProcError> {
    let mut name = None;
    let mut tgid = None;
    let mut vm_rss_bytes = None;
    let mut rss_anon_bytes = None;
    let mut threads = None;

    // Split on '\n' only (not `lines()`), so a name ending in '\r' survives.
    for line in text.split('\n') {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Name" if name.is_none() => name = Some(parse_status_name(value)),
            "Tgid" if tgid.is_none() => tgid = Some(parse_status_u32("Tgid", value)?),
            "Threads" if threads.is_none() => {
                threads = Some(parse_status_u32("Threads", value)?);
            }
            "VmRSS" if vm_rss_bytes.is_none() => {
                vm_rss_bytes = Some(parse_status_kb("VmRSS", value)?);
            }
            "RssAnon" if rss_anon_bytes.is_none() => {
                rss_anon_bytes = Some(parse_status_kb("RssAnon", value)?);
            }
            _ => {}
        }
    }

    let missing = |field| ProcError::MissingField { file: STATUS_FILE, field };
    Ok(ProcStatus {
        name: name.ok_or_else(|| missing("Name"))?,
        tgid: tgid.ok_or_else(|| missing("Tgid"))?,
        vm_rss_bytes,
        rss_anon_bytes,
        threads: threads.ok_or_else(|| missing("Threads"))?,
    })
}

/// The kernel prints `Name:\t<comm>` where comm is escaped with
/// `seq_escape_str(.., ESCAPE_SPACE | ESCAPE_SPECIAL, "\n\\")`, i.e. only a
/// newline (as `\n`) and a backslash (as `\\`) are escaped.
fn parse_status_name(value: &str) -> String {
    // Exactly one tab separates key and value; anything after it is the name
    // (which may itself start with blanks). Be lenient with hand-written input.
    let raw = value.strip_prefix('\t').unwrap_or_else(|| value.trim_start());
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn parse_status_u32(field: &'static str, value: &str) -> Result<u32, ProcError> {
    parse_decimal(value.trim().as_bytes())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| invalid(STATUS_FILE, field, value.trim().as_bytes()))
}

/// Parses `   1234 kB` into bytes (1 kB = 1024 bytes in /proc).
fn parse_status_kb(field: &'static str, value: &str) -> Result<u64, ProcError> {
    parse_kb(STATUS_FILE, field, value)
}

/// Parses the text of `/proc/PID/smaps_rollup` (Linux 4.14+) and returns its
/// `Pss:` in bytes: the process's proportional share of resident memory,
/// each page divided by the number of processes mapping it.
///
/// Only the exact key `Pss` counts (`Pss_Anon`, `Pss_Dirty`, ... are parts
/// of it); when it appears twice the first one wins.
pub fn parse_smaps_rollup_pss(text: &str) -> Result<u64, ProcError> {
    for line in text.split('\n') {
        if let Some(("Pss", value)) = line.split_once(':') {
            return parse_kb(SMAPS_ROLLUP_FILE, "Pss", value);
        }
    }
    Err(ProcError::MissingField { file: SMAPS_ROLLUP_FILE, field: "Pss" })
}

fn parse_kb(file: &'static str, field: &'static str, value: &str) -> Result<u64, ProcError> {
    let mut parts = value.split_ascii_whitespace();
    let bytes = match (parts.next(), parts.next(), parts.next()) {
        (Some(number), Some("kB"), None) => parse_decimal(number.as_bytes()).and_then(|kb| kb.checked_mul(1024)),
        _ => None,
    };
    bytes.ok_or_else(|| invalid(file, field, value.trim().as_bytes()))
}

/// Extracts the `flags` field (field 9) from the contents of `/proc/PID/stat`.
///
/// Takes bytes because field 2 (`(comm)`) is printed raw and may hold
/// arbitrary bytes, including spaces and `)`. The fields after it are found by
/// searching for the *last* `)`.
pub fn parse_stat_flags(stat: &[u8]) -> Result<u32, ProcError> {
    let close =
        stat.iter().rposition(|&b| b == b')').ok_or(ProcError::MissingField { file: STAT_FILE, field: "comm" })?;
    let after_comm = stat.get(close + 1..).unwrap_or_default();
    // Fields after the comm: state(3) ppid(4) pgrp(5) session(6) tty_nr(7)
    // tpgid(8) flags(9) -> index 6.
    let flags = after_comm
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(6)
        .ok_or(ProcError::MissingField { file: STAT_FILE, field: "flags" })?;
    parse_decimal(flags).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| invalid(STAT_FILE, "flags", flags))
}

/// Returns the inode number from an fd link target such as `socket:[12345]`,
/// or `None` for anything else (files, pipes, anon inodes, malformed text,
/// numbers that do not fit in a `u64`).
pub fn socket_inode_from_link(link: impl AsRef<OsStr>) -> Option<u64> {
    let digits = link.as_ref().as_bytes().strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    parse_decimal(digits)
}

/// Strict unsigned decimal: at least one digit, nothing but ASCII digits (no
/// sign, no blanks), no overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn invalid(file: &'static str, field: &'static str, value: &[u8]) -> ProcError {
    ProcError::InvalidField { file, field, value: quote(value) }
}

/// Lossy, length-limited copy of untrusted input for error messages.
fn quote(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text.into_owned(),
    }
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

/// Returns the inodes of all sockets process `pid` has open, from the
/// `socket:[INODE]` targets of `/proc/PID/fd/*`.
///
/// File descriptors closed while we scan are skipped. If the process itself
/// exits during the scan the result is [`ProcError::NoSuchProcess`], not a
/// partial set.
pub fn read_socket_inodes(pid: u32) -> Result<HashSet<u64>, ProcError> {
    read_socket_inodes_in(Path::new(PROC_ROOT), pid)
}

/// Reads and parses `/proc/PID/status`. Non-UTF-8 bytes (possible in the
/// process name) are replaced with U+FFFD.
pub fn read_status(pid: u32) -> Result<ProcStatus, ProcError> {
    read_status_in(Path::new(PROC_ROOT), pid)
}

/// Reads `/proc/PID/smaps_rollup` and returns its `Pss:` in bytes.
///
/// The kernel walks the page tables of the process to produce it, so this
/// costs more than [`read_status`] (about a millisecond per GiB mapped) and
/// must not run on an async runtime thread. A process that exited, or a
/// zombie (no address space left: the kernel answers `ESRCH`), gives
/// [`ProcError::NoSuchProcess`]. Reading another user's process needs
/// `CAP_SYS_PTRACE` (ptrace read access, as for `/proc/PID/maps`).
pub fn read_pss(pid: u32) -> Result<u64, ProcError> {
    read_pss_in(Path::new(PROC_ROOT), pid)
}

/// Whether this kernel has `/proc/PID/smaps_rollup` (Linux 4.14+), asked
/// of our own process, which certainly exists.
pub fn smaps_rollup_supported() -> bool {
    Path::new(PROC_ROOT).join("self").join("smaps_rollup").exists()
}

/// Returns the inode of the network namespace of `pid` (`st_ino` of
/// `/proc/PID/ns/net`); equal inodes mean the same namespace.
pub fn netns_inode(pid: u32) -> Result<u64, ProcError> {
    let path = pid_dir(Path::new(PROC_ROOT), pid).join("ns").join("net");
    // `metadata` follows the magic link to the nsfs inode.
    fs::metadata(&path).map(|m| m.ino()).map_err(|e| classify(pid, path, e))
}

/// Returns the sorted pids of all processes whose `comm` is `name`.
///
/// The kernel truncates `comm` to 15 bytes, so only the first 15 bytes of
/// `name` are compared (`"observer-daemon-x"` matches comm
/// `"observer-daemon"`). A comm that is exactly `name` also matches, which
/// covers kernel threads whose full (longer) name is shown. Processes that
/// exit during the scan, or whose `comm` we may not read, are skipped.
pub fn pids_by_comm(name: &str) -> Result<Vec<u32>, ProcError> {
    pids_by_comm_in(Path::new(PROC_ROOT), name)
}

/// Tells whether `pid` is a kernel thread.
///
/// Uses the `PF_KTHREAD` bit of the `flags` field of `/proc/PID/stat` rather
/// than the absence of `VmRSS` in `/proc/PID/status`: the flag is what the
/// kernel itself checks, whereas `VmRSS` is also missing for zombie user
/// processes (their address space is already torn down), which would make
/// them look like kernel threads. (`Kthread:` in status would do as well but
/// only exists since Linux 6.3.)
pub fn is_kernel_thread(pid: u32) -> Result<bool, ProcError> {
    is_kernel_thread_in(Path::new(PROC_ROOT), pid)
}

fn pid_dir(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string())
}

/// `ENOENT` or `ESRCH`: the process (or the fd) no longer exists.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Maps an I/O error on a file of process `pid` to a [`ProcError`].
fn classify(pid: u32, path: PathBuf, e: io::Error) -> ProcError {
    if is_gone(&e) {
        ProcError::NoSuchProcess(pid)
    } else if e.kind() == io::ErrorKind::PermissionDenied {
        // Covers both EACCES and EPERM.
        ProcError::PermissionDenied { pid, path }
    } else {
        ProcError::Io { path, source: e }
    }
}

fn read_socket_inodes_in(proc_root: &Path, pid: u32) -> Result<HashSet<u64>, ProcError> {
    let fd_dir = pid_dir(proc_root, pid).join("fd");
    let entries = fs::read_dir(&fd_dir).map_err(|e| classify(pid, fd_dir.clone(), e))?;

    let mut inodes = HashSet::new();
    let mut something_vanished = false;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if is_gone(&e) => {
                // The directory itself went away: the process exited.
                something_vanished = true;
                break;
            }
            Err(e) => return Err(classify(pid, fd_dir, e)),
        };
        let link = entry.path();
        match fs::read_link(&link) {
            Ok(target) => {
                if let Some(inode) = socket_inode_from_link(&target) {
                    inodes.insert(inode);
                }
            }
            // The fd was closed between readdir and readlink: skip it.
            Err(e) if is_gone(&e) => something_vanished = true,
            Err(e) => return Err(classify(pid, link, e)),
        }
    }

    // A vanished fd is normal; but if the whole process exited mid-scan the
    // set is meaningless, so report that instead.
    if something_vanished && matches!(fs::symlink_metadata(&fd_dir), Err(ref e) if is_gone(e)) {
        return Err(ProcError::NoSuchProcess(pid));
    }
    Ok(inodes)
}

fn read_status_in(proc_root: &Path, pid: u32) -> Result<ProcStatus, ProcError> {
    let path = pid_dir(proc_root, pid).join("status");
    let bytes = fs::read(&path).map_err(|e| classify(pid, path, e))?;
    parse_status(&String::from_utf8_lossy(&bytes))
}

fn read_pss_in(proc_root: &Path, pid: u32) -> Result<u64, ProcError> {
    let path = pid_dir(proc_root, pid).join("smaps_rollup");
    let bytes = fs::read(&path).map_err(|e| classify(pid, path, e))?;
    parse_smaps_rollup_pss(&String::from_utf8_lossy(&bytes))
}

fn is_kernel_thread_in(proc_root: &Path, pid: u32) -> Result<bool, ProcError> {
    let path = pid_dir(proc_root, pid).join("stat");
    let bytes = fs::read(&path).map_err(|e| classify(pid, path, e))?;
    Ok(parse_stat_flags(&bytes)? & PF_KTHREAD != 0)
}

fn pids_by_comm_in(proc_root: &Path, name: &str) -> Result<Vec<u32>, ProcError> {
    if name.is_empty() {
        return Err(ProcError::EmptyName);
    }
    let full = name.as_bytes();
    let truncated = full.get(..COMM_MAX_BYTES).unwrap_or(full);

    let io_err = |source| ProcError::Io { path: proc_root.to_path_buf(), source };
    let mut pids = Vec::new();
    for entry in fs::read_dir(proc_root).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        // Only the numeric entries are processes ("self", "net", ... are not).
        let Some(pid) = parse_decimal(entry.file_name().as_bytes()).and_then(|v| u32::try_from(v).ok()) else {
            continue;
        };
        let comm_path = entry.path().join("comm");
        let comm = match fs::read(&comm_path) {
            Ok(comm) => comm,
            // Exited since readdir, or hidden from us (e.g. hidepid): skip.
            Err(e) if is_gone(&e) || e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => {
                return Err(ProcError::Io { path: comm_path, source: e });
            }
        };
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        if comm == truncated || comm == full {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A scratch directory removed on drop.
    use crate::test_support::TempTree;

    /// Kills and reaps a child we started, even when the test fails.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    const USER_STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t4276\n\
        Ngid:\t0\nPid:\t4276\nPPid:\t4264\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
        FDSize:\t256\nGroups:\t \nNStgid:\t4276\nNSpid:\t4276\nNSpgid:\t4264\nNSsid:\t3433\n\
        Kthread:\t0\nVmPeak:\t    3060 kB\nVmSize:\t    3060 kB\nVmLck:\t       0 kB\n\
        VmPin:\t       0 kB\nVmHWM:\t    1664 kB\nVmRSS:\t    1664 kB\nRssAnon:\t     112 kB\n\
        RssFile:\t    1552 kB\nRssShmem:\t       0 kB\nVmData:\t     360 kB\nVmStk:\t     132 kB\n\
        VmExe:\t      20 kB\nVmLib:\t    1528 kB\nVmPTE:\t      40 kB\nVmSwap:\t       0 kB\n\
        HugetlbPages:\t       0 kB\nCoreDumping:\t0\nTHP_enabled:\t1\n\
        untag_mask:\t0xffffffffffffffff\nThreads:\t1\nSigQ:\t0/96365\n\
        SigPnd:\t0000000000000000\nCpus_allowed_list:\t0-1\nvoluntary_ctxt_switches:\t0\n\
        nonvoluntary_ctxt_switches:\t0\n";

    const KTHREAD_STATUS: &str = "Name:\tkthreadd\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t2\nNgid:\t0\nPid:\t2\nPPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\n\
        Gid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t \nNStgid:\t2\nNSpid:\t2\nNSpgid:\t0\n\
        NSsid:\t0\nKthread:\t1\nThreads:\t1\nSigQ:\t0/96365\nSigPnd:\t0000000000000000\n";

    fn status(name: &str, tgid: u32, rss: Option<u64>, anon: Option<u64>, threads: u32) -> ProcStatus {
        ProcStatus { name: name.to_owned(), tgid, vm_rss_bytes: rss, rss_anon_bytes: anon, threads }
    }

    #[test]
    fn parse_status_valid_inputs() {
        let cases: &[(&str, &str, ProcStatus)] = &[
            ("real user process", USER_STATUS, status("cat", 4276, Some(1664 * 1024), Some(112 * 1024), 1)),
            ("kernel thread, no VmRSS", KTHREAD_STATUS, status("kthreadd", 2, None, None, 1)),
            ("minimal", "Name:\tx\nTgid:\t1\nThreads:\t3\n", status("x", 1, None, None, 3)),
            ("no trailing newline", "Name:\tx\nTgid:\t1\nThreads:\t3", status("x", 1, None, None, 3)),
            ("any key order", "Threads:\t9\nVmRSS:\t1 kB\nTgid:\t7\nName:\tz\n", status("z", 7, Some(1024), None, 9)),
            (
                "zero rss",
                "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t0 kB\nRssAnon:\t0 kB\n",
                status("a", 1, Some(0), Some(0), 1),
            ),
            (
                "name with spaces and colon",
                "Name:\tmy prog: v2\nTgid:\t1\nThreads:\t1\n",
                status("my prog: v2", 1, None, None, 1),
            ),
            ("name leading blank kept", "Name:\t  sp\nTgid:\t1\nThreads:\t1\n", status("  sp", 1, None, None, 1)),
            (
                "name escapes undone",
                "Name:\ta\\nb\\\\c\\td\\\nTgid:\t1\nThreads:\t1\n",
                status("a\nb\\c\\td\\", 1, None, None, 1),
            ),
            ("name trailing CR kept", "Name:\tcr\r\nTgid:\t1\nThreads:\t1\n", status("cr\r", 1, None, None, 1)),
            ("empty name", "Name:\t\nTgid:\t1\nThreads:\t1\n", status("", 1, None, None, 1)),
            (
                "space instead of tab",
                "Name: x\nTgid: 5\nThreads: 2\nVmRSS: 3 kB\n",
                status("x", 5, Some(3072), None, 2),
            ),
            (
                "first duplicate wins",
                "Name:\ta\nName:\tb\nTgid:\t1\nTgid:\tjunk\nThreads:\t1\n",
                status("a", 1, None, None, 1),
            ),
            ("u32 max tgid", "Name:\ta\nTgid:\t4294967295\nThreads:\t1\n", status("a", u32::MAX, None, None, 1)),
            (
                "largest kB that fits",
                "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t18014398509481983 kB\n",
                status("a", 1, Some(18_014_398_509_481_983 * 1024), None, 1),
            ),
            (
                "garbage lines ignored",
                "\n\n:::\nno colon here\nName:\ta\nTgid:\t1\nThreads:\t1\n",
                status("a", 1, None, None, 1),
            ),
            ("unicode name", "Name:\tnaïve→😀\nTgid:\t1\nThreads:\t1\n", status("naïve→😀", 1, None, None, 1)),
        ];
        for (what, text, want) in cases {
            match parse_status(text) {
                Ok(got) => assert_eq!(&got, want, "case {what:?}"),
                Err(e) => panic!("case {what:?}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn parse_status_malformed_inputs() {
        enum Want {
            Missing(&'static str),
            Invalid(&'static str),
        }
        use Want::*;
        let cases: &[(&str, &str, Want)] = &[
            ("empty", "", Missing("Name")),
            ("only newlines", "\n\n\n", Missing("Name")),
            ("missing name", "Tgid:\t1\nThreads:\t1\n", Missing("Name")),
            ("missing tgid", "Name:\ta\nThreads:\t1\n", Missing("Tgid")),
            ("missing threads", "Name:\ta\nTgid:\t1\n", Missing("Threads")),
            ("truncated before tgid value", "Name:\ta\nTgid:", Invalid("Tgid")),
            ("truncated key", "Name:\ta\nTgi", Missing("Tgid")),
            ("truncated kB", "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t  12", Invalid("VmRSS")),
            ("truncated number", "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t kB", Invalid("VmRSS")),
            ("empty tgid", "Name:\ta\nTgid:\t\nThreads:\t1\n", Invalid("Tgid")),
            ("negative tgid", "Name:\ta\nTgid:\t-1\nThreads:\t1\n", Invalid("Tgid")),
            ("plus sign", "Name:\ta\nTgid:\t+1\nThreads:\t1\n", Invalid("Tgid")),
            ("hex tgid", "Name:\ta\nTgid:\t0x10\nThreads:\t1\n", Invalid("Tgid")),
            ("tgid > u32", "Name:\ta\nTgid:\t4294967296\nThreads:\t1\n", Invalid("Tgid")),
            ("huge tgid", "Name:\ta\nTgid:\t99999999999999999999999999999999\nThreads:\t1\n", Invalid("Tgid")),
            ("two numbers", "Name:\ta\nTgid:\t1 2\nThreads:\t1\n", Invalid("Tgid")),
            ("threads garbage", "Name:\ta\nTgid:\t1\nThreads:\tmany\n", Invalid("Threads")),
            ("rss wrong unit", "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t12 MB\n", Invalid("VmRSS")),
            ("rss extra token", "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t12 kB x\n", Invalid("VmRSS")),
            ("rss negative", "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t-12 kB\n", Invalid("VmRSS")),
            (
                "rss overflows u64",
                "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t99999999999999999999999 kB\n",
                Invalid("VmRSS"),
            ),
            (
                "rss * 1024 overflows",
                "Name:\ta\nTgid:\t1\nThreads:\t1\nVmRSS:\t18014398509481984 kB\n",
                Invalid("VmRSS"),
            ),
            ("anon garbage", "Name:\ta\nTgid:\t1\nThreads:\t1\nRssAnon:\t\u{fffd} kB\n", Invalid("RssAnon")),
        ];
        for (what, text, want) in cases {
            match (parse_status(text), want) {
                (Err(ProcError::MissingField { field, .. }), Missing(f)) if field == *f => {}
                (Err(ProcError::InvalidField { field, .. }), Invalid(f)) if field == *f => {}
                (other, _) => panic!("case {what:?}: unexpected result {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_field_value_is_quoted_and_bounded() {
        let huge = format!("Name:\ta\nTgid:\t{}\nThreads:\t1\n", "9".repeat(100_000));
        match parse_status(&huge) {
            Err(e @ ProcError::InvalidField { .. }) => {
                let msg = e.to_string();
                assert!(msg.len() < 200, "message too long: {} bytes", msg.len());
                assert!(msg.starts_with("malformed /proc/PID/status: invalid Tgid value \"999"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn socket_inode_from_link_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("socket:[12345]", Some(12345)),
            ("socket:[0]", Some(0)),
            ("socket:[007]", Some(7)),
            ("socket:[18446744073709551615]", Some(u64::MAX)),
            ("socket:[18446744073709551616]", None),
            ("socket:[99999999999999999999999999]", None),
            ("socket:[]", None),
            ("socket:[", None),
            ("socket:[123", None),
            ("socket:123]", None),
            ("socket:[12a]", None),
            ("socket:[+12]", None),
            ("socket:[-12]", None),
            ("socket:[ 12]", None),
            ("socket:[12] ", None),
            ("socket:[12]]", None),
            ("Socket:[12]", None),
            ("pipe:[12345]", None),
            ("anon_inode:[eventfd]", None),
            ("anon_inode:[eventpoll]", None),
            ("/dev/null", None),
            ("/tmp/socket:[1]", None),
            ("", None),
        ];
        for (link, want) in cases {
            assert_eq!(socket_inode_from_link(link), *want, "link {link:?}");
            assert_eq!(socket_inode_from_link(OsStr::new(link)), *want, "link {link:?} as OsStr");
            assert_eq!(socket_inode_from_link(Path::new(link)), *want, "link {link:?} as Path");
        }
        let non_utf8 = OsString::from_vec(b"socket:[\xff]".to_vec());
        assert_eq!(socket_inode_from_link(&non_utf8), None);
        let non_utf8_elsewhere = OsString::from_vec(b"/tmp/\xff\xfe".to_vec());
        assert_eq!(socket_inode_from_link(non_utf8_elsewhere), None);
    }

    #[test]
    fn parse_stat_flags_table() {
        let cases: &[(&str, &[u8], Option<u32>)] = &[
            (
                "kthreadd",
                b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 24 0 0 18446744073709551615 0",
                Some(2_129_984),
            ),
            (
                "user",
                b"4296 (cat) R 4290 4290 3433 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 58678 3133440 380\n",
                Some(4_194_304),
            ),
            ("comm with spaces and parens", b"7 (a ) b (c)) S 1 1 1 0 -1 64 0 0\n", Some(64)),
            ("comm with fake fields", b"7 (x) R 1 1 1 0 -1 999 ) S 1 2 3 4 5 6) S 1 1 1 0 -1 5 0\n", Some(5)),
            ("non-utf8 comm", b"7 (\xff\xfe) S 1 1 1 0 -1 42 0\n", Some(42)),
            ("flags is last field", b"7 (x) S 1 1 1 0 -1 42", Some(42)),
            ("u32 max", b"7 (x) S 1 1 1 0 -1 4294967295 0", Some(u32::MAX)),
            ("empty", b"", None),
            ("no parens", b"7 x S 1 1 1 0 -1 42 0", None),
            ("truncated after comm", b"7 (x)", None),
            ("truncated before flags", b"7 (x) S 1 1 1 0 -1", None),
            ("truncated in comm", b"7 (kthre", None),
            ("flags overflow u32", b"7 (x) S 1 1 1 0 -1 4294967296 0", None),
            ("flags huge", b"7 (x) S 1 1 1 0 -1 999999999999999999999999999 0", None),
            ("flags negative", b"7 (x) S 1 1 1 0 -1 -1 0", None),
            ("flags garbage", b"7 (x) S 1 1 1 0 -1 zz 0", None),
        ];
        for (what, stat, want) in cases {
            match (parse_stat_flags(stat), want) {
                (Ok(got), Some(w)) => assert_eq!(got, *w, "case {what:?}"),
                (Err(ProcError::MissingField { .. } | ProcError::InvalidField { .. }), None) => {}
                (other, _) => panic!("case {what:?}: unexpected {other:?}"),
            }
        }
        assert_ne!(2_129_984 & PF_KTHREAD, 0);
        assert_eq!(4_194_304 & PF_KTHREAD, 0);
    }

    #[test]
    fn error_messages_are_operator_one_liners() {
        let cases: Vec<(ProcError, &str)> = vec![
            (ProcError::NoSuchProcess(4242), "no such process: 4242"),
            (
                ProcError::PermissionDenied { pid: 7, path: PathBuf::from("/proc/7/fd") },
                "permission denied reading /proc/7/fd of process 7 (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
            ),
            (ProcError::MissingField { file: STATUS_FILE, field: "Tgid" }, "malformed /proc/PID/status: missing Tgid"),
            (
                ProcError::InvalidField { file: STAT_FILE, field: "flags", value: "zz".into() },
                "malformed /proc/PID/stat: invalid flags value \"zz\"",
            ),
            (ProcError::EmptyName, "process name to search for is empty"),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        let io = ProcError::Io { path: PathBuf::from("/proc/1/fd"), source: io::Error::other("boom") };
        assert_eq!(io.to_string(), "cannot read /proc/1/fd: boom");
    }

    #[test]
    fn classify_maps_errno() {
        let p = || PathBuf::from("/proc/9/fd");
        assert!(matches!(classify(9, p(), io::Error::from_raw_os_error(libc::ENOENT)), ProcError::NoSuchProcess(9)));
        assert!(matches!(classify(9, p(), io::Error::from_raw_os_error(libc::ESRCH)), ProcError::NoSuchProcess(9)));
        match classify(9, p(), io::Error::from_raw_os_error(libc::EACCES)) {
            ProcError::PermissionDenied { pid: 9, path } => assert_eq!(path, p()),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            classify(9, p(), io::Error::from_raw_os_error(libc::EPERM)),
            ProcError::PermissionDenied { pid: 9, .. }
        ));
        assert!(matches!(classify(9, p(), io::Error::from_raw_os_error(libc::EIO)), ProcError::Io { .. }));
    }

    // ---- readers against a fake /proc tree ----

    #[test]
    fn fake_tree_socket_inodes() -> TestResult {
        let tree = TempTree::new("procfs-fd")?;
        let fd = tree.path().join("42").join("fd");
        fs::create_dir_all(&fd)?;
        let links: &[(&str, &[u8])] = &[
            ("0", b"/dev/null"),
            ("1", b"pipe:[77]"),
            ("3", b"socket:[100]"),
            ("4", b"socket:[200]"),
            ("5", b"socket:[100]"),
            ("6", b"socket:[18446744073709551615]"),
            ("7", b"socket:[18446744073709551616]"),
            ("8", b"socket:[12"),
            ("9", b"anon_inode:[eventpoll]"),
            ("10", b"/tmp/\xff\xfe weird"),
            ("11", b"socket:[\xff]"),
        ];
        for (name, target) in links {
            symlink(OsStr::from_bytes(target), fd.join(name))?;
        }
        let got = read_socket_inodes_in(tree.path(), 42)?;
        let want: HashSet<u64> = [100, 200, u64::MAX].into_iter().collect();
        assert_eq!(got, want);

        // A process without any fd.
        fs::create_dir_all(tree.path().join("43").join("fd"))?;
        assert!(read_socket_inodes_in(tree.path(), 43)?.is_empty());

        // A pid that does not exist.
        assert!(matches!(read_socket_inodes_in(tree.path(), 44), Err(ProcError::NoSuchProcess(44))));
        Ok(())
    }

    #[test]
    fn fake_tree_status_and_stat() -> TestResult {
        let tree = TempTree::new("procfs-status")?;
        tree.write("5/status", USER_STATUS.as_bytes())?;
        tree.write("5/stat", b"5 (cat) R 1 1 1 0 -1 4194304 0 0\n")?;
        tree.write("6/status", b"Name:\tbad\xff\xfename\nTgid:\t6\nThreads:\t2\nVmRSS:\t4 kB\n")?;
        tree.write("6/stat", b"6 (bad\xff\xfe) R 1 1 1 0 -1 2129984 0\n")?;
        tree.write("7/status", b"Name:\ttrunc\nTgid:\t7\nThr")?;
        tree.write("7/stat", b"7 (trunc) R 1")?;

        assert_eq!(read_status_in(tree.path(), 5)?.tgid, 4276);
        assert!(!is_kernel_thread_in(tree.path(), 5)?);

        let s = read_status_in(tree.path(), 6)?;
        assert_eq!(s, status("bad\u{fffd}\u{fffd}name", 6, Some(4096), None, 2));
        assert!(is_kernel_thread_in(tree.path(), 6)?);

        assert!(matches!(read_status_in(tree.path(), 7), Err(ProcError::MissingField { field: "Threads", .. })));
        assert!(matches!(is_kernel_thread_in(tree.path(), 7), Err(ProcError::MissingField { field: "flags", .. })));

        assert!(matches!(read_status_in(tree.path(), 8), Err(ProcError::NoSuchProcess(8))));
        assert!(matches!(is_kernel_thread_in(tree.path(), 8), Err(ProcError::NoSuchProcess(8))));
        Ok(())
    }

    /// `/proc/self/smaps_rollup` of a 6.x kernel, cut short.
    const ROLLUP: &str = "55a0c8e6d000-7ffd6b7fe000 ---p 00000000 00:00 0                          [rollup]\n\
        Rss:                5120 kB\n\
        Pss:                1234 kB\n\
        Pss_Dirty:           900 kB\n\
        Pss_Anon:            800 kB\n\
        Pss_File:            434 kB\n\
        Shared_Clean:       3000 kB\n";

    #[test]
    fn parse_smaps_rollup_pss_table() {
        assert_eq!(parse_smaps_rollup_pss(ROLLUP).ok(), Some(1234 * 1024));
        // The first exact `Pss` wins; its parts never stand in for it.
        assert_eq!(parse_smaps_rollup_pss("Pss_Anon: 5 kB\nPss: 7 kB\nPss: 9 kB\n").ok(), Some(7 * 1024));
        assert!(matches!(
            parse_smaps_rollup_pss("Rss: 1 kB\nPss_Anon: 5 kB\n"),
            Err(ProcError::MissingField { field: "Pss", .. })
        ));
        assert!(matches!(parse_smaps_rollup_pss(""), Err(ProcError::MissingField { field: "Pss", .. })));
        for bad in ["Pss: 12\n", "Pss: x kB\n", "Pss: 1 kB extra\n", "Pss: 99999999999999999999 kB\n"] {
            assert!(
                matches!(
                    parse_smaps_rollup_pss(bad),
                    Err(ProcError::InvalidField { file: SMAPS_ROLLUP_FILE, field: "Pss", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fake_tree_pss() -> TestResult {
        let tree = TempTree::new("procfs-pss")?;
        tree.write("5/smaps_rollup", ROLLUP.as_bytes())?;
        tree.write("6/status", USER_STATUS.as_bytes())?;
        assert_eq!(read_pss_in(tree.path(), 5)?, 1234 * 1024);
        // Gone, or (as on kernels before 4.14) no such file.
        assert!(matches!(read_pss_in(tree.path(), 6), Err(ProcError::NoSuchProcess(6))));
        assert!(matches!(read_pss_in(tree.path(), 7), Err(ProcError::NoSuchProcess(7))));
        Ok(())
    }

    #[test]
    fn real_self_pss_is_within_rss() -> TestResult {
        if !smaps_rollup_supported() {
            return Ok(());
        }
        let pss = read_pss(std::process::id())?;
        let rss = read_status(std::process::id())?.vm_rss_bytes.unwrap_or(0);
        assert!(pss > 0, "a running process has a proportional share");
        // Both move while the test runs; PSS never exceeds RSS by more than that.
        assert!(pss <= rss + 4 * 1024 * 1024, "pss {pss} rss {rss}");
        Ok(())
    }

    #[test]
    fn fake_tree_pids_by_comm() -> TestResult {
        let tree = TempTree::new("procfs-comm")?;
        tree.write("1/comm", b"bash\n")?;
        tree.write("10/comm", b"bash\n")?;
        tree.write("2/comm", b"bash \n")?;
        tree.write("3/comm", b"bas\n")?;
        tree.write("4/comm", b"observer-daemon\n")?; // 15 bytes, truncated by the kernel
        tree.write("5/comm", b"\xff\xfe\n")?;
        tree.write("6/comm", b"kworker/0:1-events\n")?; // long kthread name
        tree.write("7/comm", b"")?; // truncated read
        tree.write("8/comm", b"bash")?; // no newline
        // First 15 bytes of "hello-ééééééé": cut in the middle of an 'é'.
        tree.write("9/comm", &"hello-\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}".as_bytes()[..15])?;
        fs::create_dir_all(tree.path().join("11"))?; // vanished: no comm file
        tree.write("self/comm", b"bash\n")?; // not a pid
        tree.write("99999999999/comm", b"bash\n")?; // does not fit u32
        tree.write("-1/comm", b"bash\n")?;
        tree.write("uptime", b"1.0 2.0\n")?;

        let cases: &[(&str, &[u32])] = &[
            ("bash", &[1, 8, 10]),
            ("bas", &[3]),
            ("bash ", &[2]),
            ("observer-daemon", &[4]),
            ("observer-daemon-with-a-long-name", &[4]),
            ("observer-daemo", &[]),
            ("kworker/0:1-events", &[6]),
            ("kworker/0:1-eve", &[]),
            ("hello-\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}", &[9]),
            ("hello-\u{e9}\u{e9}\u{e9}\u{e9}", &[]),
            ("nothing-like-this", &[]),
        ];
        for (name, want) in cases {
            assert_eq!(pids_by_comm_in(tree.path(), name)?, *want, "name {name:?}");
        }
        assert!(matches!(pids_by_comm_in(tree.path(), ""), Err(ProcError::EmptyName)));
        assert!(matches!(pids_by_comm_in(&tree.path().join("missing"), "bash"), Err(ProcError::Io { .. })));
        Ok(())
    }

    // ---- readers against the real /proc ----

    fn nonexistent_pids() -> [u32; 2] {
        // PID_MAX_LIMIT is 4 * 1024 * 1024, so neither can exist.
        [u32::MAX, 4 * 1024 * 1024 + 1]
    }

    #[test]
    fn real_self_status() -> TestResult {
        let me = std::process::id();
        let s = read_status(me)?;
        assert_eq!(s.tgid, me);
        assert!(s.threads >= 1);
        assert!(s.vm_rss_bytes.is_some_and(|b| b > 0 && b % 1024 == 0), "{s:?}");
        assert!(s.rss_anon_bytes.is_some(), "{s:?}");
        let comm = fs::read(format!("/proc/{me}/comm"))?;
        assert_eq!(s.name.as_bytes(), comm.strip_suffix(b"\n").unwrap_or(&comm));
        assert!(!is_kernel_thread(me)?);
        Ok(())
    }

    #[test]
    fn real_nonexistent_pid() {
        for pid in nonexistent_pids() {
            assert!(matches!(read_status(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
            assert!(matches!(read_socket_inodes(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
            assert!(matches!(netns_inode(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
            assert!(matches!(is_kernel_thread(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
        }
    }

    #[test]
    fn real_kernel_thread() -> TestResult {
        // kthreadd is pid 2 on a normal boot, where the tests run (not in a
        // pid namespace: the observer itself needs the host's /proc).
        let comm = fs::read("/proc/2/comm").expect("/proc/2 (kthreadd) exists");
        assert_eq!(comm, b"kthreadd\n", "pid 2 is kthreadd");
        assert!(is_kernel_thread(2)?);
        let s = read_status(2)?;
        assert_eq!(s.name, "kthreadd");
        assert_eq!(s.vm_rss_bytes, None);
        assert_eq!(s.rss_anon_bytes, None);
        assert!(pids_by_comm("kthreadd")?.contains(&2));
        Ok(())
    }

    #[test]
    fn real_socket_inodes_of_self() -> TestResult {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let file = fs::File::open("/proc/self/status")?;
        let inode_of = |fd: i32| fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino());
        use std::os::fd::AsRawFd;
        let tcp_ino = inode_of(tcp.as_raw_fd())?;
        let udp_ino = inode_of(udp.as_raw_fd())?;
        let file_ino = inode_of(file.as_raw_fd())?;

        let inodes = read_socket_inodes(std::process::id())?;
        assert!(inodes.contains(&tcp_ino), "tcp {tcp_ino} not in {inodes:?}");
        assert!(inodes.contains(&udp_ino), "udp {udp_ino} not in {inodes:?}");
        // A regular file's inode number lives in another fs and may collide in
        // value, so only check when it cannot be a socket inode we saw.
        if file_ino != tcp_ino && file_ino != udp_ino {
            let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            assert_eq!(socket_inode_from_link(&link), None);
        }
        Ok(())
    }

    #[test]
    fn real_netns_inode() -> TestResult {
        let me = std::process::id();
        let ino = netns_inode(me)?;
        assert_ne!(ino, 0);
        assert_eq!(ino, fs::metadata("/proc/self/ns/net")?.ino());
        assert_eq!(ino, netns_inode(me)?);
        Ok(())
    }

    /// Starts `sleep` under a long file name (via a symlink), so its comm is
    /// the first 15 bytes of that name.
    fn spawn_named_sleeper(tree: &TempTree, exe_name: &str) -> Result<Option<ChildGuard>, Box<dyn std::error::Error>> {
        let Some(sleep) = ["/bin/sleep", "/usr/bin/sleep"].into_iter().map(Path::new).find(|p| p.exists()) else {
            return Ok(None);
        };
        let link = tree.path().join(exe_name);
        symlink(sleep, &link)?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(&link).arg0("sleep").arg("30").spawn()?;
        Ok(Some(ChildGuard(child)))
    }

    #[test]
    fn real_pids_by_comm_and_vanishing_process() -> TestResult {
        let tree = TempTree::new("procfs-spawn")?;
        let exe_name = format!("obs{:08}-{}", std::process::id(), "a-very-long-process-name");
        let Some(mut child) = spawn_named_sleeper(&tree, &exe_name)? else {
            panic!("no sleep binary (coreutils) to run as the named process");
        };
        let pid = child.0.id();
        let truncated = exe_name.get(..COMM_MAX_BYTES).unwrap_or(&exe_name);

        // Wait for the exec to have replaced the comm.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm = fs::read(format!("/proc/{pid}/comm"))?;
            if comm.strip_suffix(b"\n") == Some(truncated.as_bytes()) {
                break;
            }
            assert!(Instant::now() < deadline, "child never exec'd: comm {comm:?}");
            std::thread::sleep(Duration::from_millis(10));
        }

        assert_eq!(pids_by_comm(&exe_name)?, vec![pid]);
        assert_eq!(pids_by_comm(truncated)?, vec![pid]);
        let s = read_status(pid)?;
        assert_eq!(s.name, truncated);
        assert_eq!(s.tgid, pid);
        assert!(!is_kernel_thread(pid)?);
        assert_eq!(netns_inode(pid)?, netns_inode(std::process::id())?);
        read_socket_inodes(pid)?;

        child.0.kill()?;
        child.0.wait()?;
        // Reaped: the pid is gone (barring immediate pid reuse).
        assert!(matches!(read_status(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
        assert!(matches!(read_socket_inodes(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
        assert!(pids_by_comm(&exe_name)?.is_empty());
        Ok(())
    }

    #[test]
    fn real_pids_by_comm_is_sorted() -> TestResult {
        let me = std::process::id();
        let comm = fs::read(format!("/proc/{me}/comm"))?;
        let comm = String::from_utf8_lossy(comm.strip_suffix(b"\n").unwrap_or(&comm)).into_owned();
        let pids = pids_by_comm(&comm)?;
        assert!(pids.contains(&me), "{me} not in {pids:?}");
        assert!(pids.windows(2).all(|w| w[0] < w[1]), "{pids:?}");
        Ok(())
    }
}
