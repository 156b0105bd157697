//! Everything the observer reads from `/proc`.
//!
//! The `procfs` crate opens and parses the files. This module adds the one
//! rule the observer needs on top, the same for every reader: a process that
//! exits while we look at it is gone, not an error. Every failure becomes a
//! typed error:
//!
//! * the process is gone (`ENOENT` / `ESRCH`)   -> [`ProcError::NoSuchProcess`]
//! * we may not look at it (`EACCES` / `EPERM`) -> [`ProcError::PermissionDenied`]
//! * the kernel wrote what we cannot parse      -> [`ProcError::Malformed`]
//! * anything else                              -> [`ProcError::Io`]
//!
//! The fd-table scan is the exception that does its own reading: `procfs`
//! spends four system calls per descriptor (open, readlink, stat, close) and
//! skips descriptors it cannot read without saying why, where the scan needs
//! one `readlinkat` per descriptor over 100k sockets and must tell a closed
//! descriptor from a vanished process.

use std::{
    collections::HashSet,
    ffi::CStr,
    io::{self, Read},
    path::{Path, PathBuf},
};

use procfs::{
    FromRead,
    process::{Process, SmapsRollup, Stat, StatFlags, StatM},
};
use rustix::fs::{Dir, Mode, OFlags};

/// Mount point of procfs.
const PROC_ROOT: &str = "/proc";

/// `/proc/PID/comm` holds at most `TASK_COMM_LEN - 1` = 15 bytes for user
/// processes; the kernel silently truncates longer names.
pub const COMM_MAX_BYTES: usize = 15;

/// Longest `socket:[INODE]` link (`u64::MAX` in decimal) with room to spare:
/// a link that fills the buffer may have been cut and is never a socket.
const LINK_BUF: usize = 64;

/// Errors from reading `/proc`. `Display` is a one-line message meant for
/// operators.
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
    /// A `/proc` file whose contents `procfs` could not parse.
    #[error("malformed {}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// `pids_by_comm` was given an empty process name.
    #[error("process name to search for is empty")]
    EmptyName,
}

/// Resident memory of one process, from `/proc/PID/statm`: the same page
/// counters as `VmRSS` and `RssAnon` of `status`, without its text (a
/// process name need not be UTF-8, which `procfs`'s `status` parser rejects).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: every resident page, shared ones in full. 0 for a kernel
    /// thread or a zombie (no address space).
    pub rss_bytes: u64,
    /// `RssAnon`: the anonymous part of it (heap, stacks, buffers).
    pub rss_anon_bytes: u64,
}

// ---------------------------------------------------------------------------
// Readers of target processes
// ---------------------------------------------------------------------------

/// Whether process `pid` exists (a zombie still does).
pub fn exists(pid: u32) -> Result<(), ProcError> {
    open(Path::new(PROC_ROOT), pid).map(drop)
}

/// Returns the inodes of all sockets process `pid` has open, from the
/// `socket:[INODE]` targets of `/proc/PID/fd/*`.
///
/// File descriptors closed while we scan are skipped. If the process itself
/// exits during the scan the result is [`ProcError::NoSuchProcess`], not a
/// partial set.
pub fn read_socket_inodes(pid: u32) -> Result<HashSet<u64>, ProcError> {
    read_socket_inodes_in(Path::new(PROC_ROOT), pid)
}

/// Reads `/proc/PID/statm`: the process's resident memory.
pub fn read_memory(pid: u32) -> Result<Memory, ProcError> {
    read_memory_in(Path::new(PROC_ROOT), pid)
}

/// Reads `/proc/PID/smaps_rollup` and returns its `Pss:` in bytes.
///
/// The kernel walks the page tables of the process to produce it, so this
/// costs more than [`read_memory`] (about a millisecond per GiB mapped) and
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
/// than an empty address space: the flag is what the kernel itself checks,
/// whereas a zombie user process has no address space either, which would
/// make it look like a kernel thread. (`Kthread:` in status would do as well
/// but only exists since Linux 6.3.)
pub fn is_kernel_thread(pid: u32) -> Result<bool, ProcError> {
    is_kernel_thread_in(Path::new(PROC_ROOT), pid)
}

// ---------------------------------------------------------------------------
// Readers of the observer itself and of the system
// ---------------------------------------------------------------------------

/// Kernel memory of the BPF maps this process holds, from its own fdinfo
/// (`memlock:` of every fd that is a map); 0 when it cannot be read.
pub fn own_map_memory() -> u64 {
    let Ok(fds) = std::fs::read_dir(Path::new(PROC_ROOT).join("self").join("fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// This boot's random id (`/proc/sys/kernel/random/boot_id`), empty when it
/// cannot be read.
pub fn boot_id() -> String {
    procfs::sys::kernel::random::boot_id().map(|s| s.trim().to_owned()).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The rule: gone is gone
// ---------------------------------------------------------------------------

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

/// Maps an error of the `procfs` crate on a file of process `pid`.
fn from_procfs(pid: u32, path: PathBuf, e: procfs::ProcError) -> ProcError {
    match e {
        procfs::ProcError::NotFound(_) => ProcError::NoSuchProcess(pid),
        procfs::ProcError::PermissionDenied(_) => ProcError::PermissionDenied { pid, path },
        procfs::ProcError::Io(source, _) => classify(pid, path, source),
        other @ (procfs::ProcError::Incomplete(_)
        | procfs::ProcError::Other(_)
        | procfs::ProcError::InternalError(_)) => ProcError::Malformed { path, reason: other.to_string() },
    }
}

fn pid_dir(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string())
}

/// A handle on `/proc/PID`: the files read through it are those of this
/// process even if its pid is reused meanwhile.
fn open(proc_root: &Path, pid: u32) -> Result<Process, ProcError> {
    let dir = pid_dir(proc_root, pid);
    Process::new_with_root(dir.clone()).map_err(|e| from_procfs(pid, dir, e))
}

/// Reads a whole file of the process and parses it with `procfs`. The read
/// is ours so that an error while reading keeps its errno: `procfs`'s own
/// parsers turn a mid-read `ESRCH` (a zombie's `smaps_rollup`) into
/// "incomplete", which would hide that the process is gone.
fn read_parsed<T: FromRead>(proc_root: &Path, pid: u32, file: &str) -> Result<T, ProcError> {
    let process = open(proc_root, pid)?;
    let path = pid_dir(proc_root, pid).join(file);
    let bytes = read_file(&process, pid, &path, file)?;
    T::from_read(bytes.as_slice()).map_err(|e| from_procfs(pid, path, e))
}

fn read_file(process: &Process, pid: u32, path: &Path, file: &str) -> Result<Vec<u8>, ProcError> {
    let mut f = process.open_relative(file).map_err(|e| from_procfs(pid, path.to_path_buf(), e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| classify(pid, path.to_path_buf(), e))?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// Readers, against any procfs root (tests use a fake one)
// ---------------------------------------------------------------------------

fn read_memory_in(proc_root: &Path, pid: u32) -> Result<Memory, ProcError> {
    let statm: StatM = read_parsed(proc_root, pid, "statm")?;
    let page = procfs::page_size();
    // statm's `shared` is RssFile + RssShmem: what is left of the resident
    // pages is RssAnon, as the kernel computes it for `status`.
    let anon = statm.resident.saturating_sub(statm.shared);
    Ok(Memory { rss_bytes: statm.resident.saturating_mul(page), rss_anon_bytes: anon.saturating_mul(page) })
}

fn read_pss_in(proc_root: &Path, pid: u32) -> Result<u64, ProcError> {
    let rollup: SmapsRollup = read_parsed(proc_root, pid, "smaps_rollup")?;
    // `procfs` keeps the values in bytes; only the exact key `Pss` counts
    // (`Pss_Anon`, `Pss_Dirty`, ... are parts of it).
    rollup.memory_map_rollup.iter().find_map(|m| m.extension.map.get("Pss").copied()).ok_or_else(|| {
        ProcError::Malformed { path: pid_dir(proc_root, pid).join("smaps_rollup"), reason: "no Pss".into() }
    })
}

fn is_kernel_thread_in(proc_root: &Path, pid: u32) -> Result<bool, ProcError> {
    let stat: Stat = read_parsed(proc_root, pid, "stat")?;
    Ok(stat.flags & StatFlags::PF_KTHREAD.bits() != 0)
}

fn read_socket_inodes_in(proc_root: &Path, pid: u32) -> Result<HashSet<u64>, ProcError> {
    let fd_path = pid_dir(proc_root, pid).join("fd");
    let dir_fd = rustix::fs::open(&fd_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| classify(pid, fd_path.clone(), e.into()))?;
    let entries = Dir::read_from(&dir_fd).map_err(|e| classify(pid, fd_path.clone(), e.into()))?;

    let mut inodes = HashSet::new();
    let mut something_vanished = false;
    let mut link = [0u8; LINK_BUF];
    for entry in entries {
        let entry = match entry.map_err(io::Error::from) {
            Ok(entry) => entry,
            Err(e) if is_gone(&e) => {
                // The directory itself went away: the process exited.
                something_vanished = true;
                break;
            }
            Err(e) => return Err(classify(pid, fd_path, e)),
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        // Relative to the open directory: no path walk through /proc per fd.
        match rustix::fs::readlinkat_raw(&dir_fd, name, &mut link[..]).map_err(io::Error::from) {
            Ok(len) if len < LINK_BUF => {
                if let Some(inode) = link.get(..len).and_then(socket_inode_from_link) {
                    inodes.insert(inode);
                }
            }
            Ok(_) => {}
            // The fd was closed between readdir and readlink: skip it.
            Err(e) if is_gone(&e) => something_vanished = true,
            Err(e) => return Err(classify(pid, fd_entry_path(&fd_path, name), e)),
        }
    }

    // A vanished fd is normal; but if the whole process exited mid-scan the
    // set is meaningless, so report that instead.
    if something_vanished && matches!(std::fs::symlink_metadata(&fd_path), Err(ref e) if is_gone(e)) {
        return Err(ProcError::NoSuchProcess(pid));
    }
    Ok(inodes)
}

fn fd_entry_path(fd_path: &Path, name: &CStr) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    fd_path.join(std::ffi::OsStr::from_bytes(name.to_bytes()))
}

fn pids_by_comm_in(proc_root: &Path, name: &str) -> Result<Vec<u32>, ProcError> {
    if name.is_empty() {
        return Err(ProcError::EmptyName);
    }
    let full = name.as_bytes();
    let truncated = full.get(..COMM_MAX_BYTES).unwrap_or(full);

    let io_err = |e: procfs::ProcError| ProcError::Io { path: proc_root.to_path_buf(), source: io::Error::other(e) };
    let mut pids = Vec::new();
    // `procfs` lists only the numeric entries ("self", "net", ... are not processes).
    for process in procfs::process::all_processes_with_root(proc_root).map_err(io_err)? {
        let process = match process {
            Ok(process) => process,
            // Exited since readdir: skip.
            Err(procfs::ProcError::NotFound(_) | procfs::ProcError::PermissionDenied(_)) => continue,
            Err(e) => return Err(io_err(e)),
        };
        let Ok(pid) = u32::try_from(process.pid) else { continue };
        let comm_path = pid_dir(proc_root, pid).join("comm");
        let comm = match read_file(&process, pid, &comm_path, "comm") {
            Ok(comm) => comm,
            // Exited since readdir, or hidden from us (e.g. hidepid): skip.
            Err(ProcError::NoSuchProcess(_) | ProcError::PermissionDenied { .. }) => continue,
            Err(e) => return Err(e),
        };
        // Bytes, not text: a comm need not be UTF-8, and 15 bytes of a name
        // may end inside a character.
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        if comm == truncated || comm == full {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Returns the inode number from an fd link target such as `socket:[12345]`,
/// or `None` for anything else (files, pipes, anon inodes, malformed text,
/// numbers that do not fit in a `u64`). Bytes, because a file's path need not
/// be UTF-8 (which `procfs`'s `FDTarget` requires).
pub fn socket_inode_from_link(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use crate::test_support::TempTree;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Kills and reaps a child we started, even when the test fails.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `/proc/PID/stat` of a user process and of kthreadd on a 6.x kernel,
    /// with the comm and the flags (field 9) to fill in.
    fn stat_line(pid: u32, comm: &[u8], flags: u32) -> Vec<u8> {
        let mut line = format!("{pid} (").into_bytes();
        line.extend_from_slice(comm);
        line.extend_from_slice(
            format!(
                ") S 0 0 0 0 -1 {flags} 0 0 0 0 0 1 0 0 20 0 1 0 25 0 0 18446744073709551615 0 0 0 0 0 0 0 \
                 2147483647 0 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            )
            .as_bytes(),
        );
        line
    }

    #[test]
    fn error_messages_are_operator_one_liners() {
        let cases: Vec<(ProcError, &str)> = vec![
            (ProcError::NoSuchProcess(4242), "no such process: 4242"),
            (
                ProcError::PermissionDenied { pid: 7, path: PathBuf::from("/proc/7/fd") },
                "permission denied reading /proc/7/fd of process 7 (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
            ),
            (
                ProcError::Malformed { path: PathBuf::from("/proc/7/statm"), reason: "no Pss".into() },
                "malformed /proc/7/statm: no Pss",
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

    #[test]
    fn procfs_errors_keep_the_rule() {
        let p = || PathBuf::from("/proc/9/stat");
        assert!(matches!(from_procfs(9, p(), procfs::ProcError::NotFound(None)), ProcError::NoSuchProcess(9)));
        assert!(matches!(
            from_procfs(9, p(), procfs::ProcError::Io(io::Error::from_raw_os_error(libc::ESRCH), None)),
            ProcError::NoSuchProcess(9)
        ));
        assert!(matches!(
            from_procfs(9, p(), procfs::ProcError::PermissionDenied(None)),
            ProcError::PermissionDenied { pid: 9, .. }
        ));
        assert!(matches!(from_procfs(9, p(), procfs::ProcError::Incomplete(None)), ProcError::Malformed { .. }));
    }

    #[test]
    fn socket_inode_from_link_table() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"socket:[12345]", Some(12345)),
            (b"socket:[0]", Some(0)),
            (b"socket:[007]", Some(7)),
            (b"socket:[18446744073709551615]", Some(u64::MAX)),
            (b"socket:[18446744073709551616]", None),
            (b"socket:[99999999999999999999999999]", None),
            (b"socket:[]", None),
            (b"socket:[", None),
            (b"socket:[123", None),
            (b"socket:123]", None),
            (b"socket:[12a]", None),
            (b"socket:[+12]", None),
            (b"socket:[-12]", None),
            (b"socket:[ 12]", None),
            (b"socket:[12] ", None),
            (b"socket:[12]]", None),
            (b"Socket:[12]", None),
            (b"pipe:[12345]", None),
            (b"anon_inode:[eventfd]", None),
            (b"anon_inode:[eventpoll]", None),
            (b"/dev/null", None),
            (b"/tmp/socket:[1]", None),
            (b"", None),
            (b"socket:[\xff]", None),
            (b"/tmp/\xff\xfe", None),
        ];
        for (link, want) in cases {
            assert_eq!(socket_inode_from_link(link), *want, "link {:?}", String::from_utf8_lossy(link));
        }
    }

    // ---- readers against a fake /proc tree ----

    #[test]
    fn fake_tree_socket_inodes() -> TestResult {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
        let tree = TempTree::new("procfs-fd")?;
        let fd = tree.path().join("42").join("fd");
        fs::create_dir_all(&fd)?;
        let long = format!("socket:[1{}]", "0".repeat(LINK_BUF));
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
            // Longer than the buffer: cut, so never taken for a socket.
            ("12", long.as_bytes()),
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
    fn fake_tree_memory_and_stat() -> TestResult {
        let page = procfs::page_size();
        let tree = TempTree::new("procfs-statm")?;
        tree.write("5/statm", b"765 443 414 5 0 123 0\n")?;
        tree.write("5/stat", &stat_line(5, b"cat", 4_194_304))?;
        tree.write("6/statm", b"0 0 0 0 0 0 0\n")?;
        tree.write("6/stat", &stat_line(6, b"bad\xff\xfe) (x", 2_129_984))?;
        tree.write("7/statm", b"765 443")?;
        tree.write("7/stat", b"7 (trunc) R 1")?;

        assert_eq!(read_memory_in(tree.path(), 5)?, Memory { rss_bytes: 443 * page, rss_anon_bytes: 29 * page });
        assert!(!is_kernel_thread_in(tree.path(), 5)?);
        assert_eq!(read_memory_in(tree.path(), 6)?, Memory::default());
        assert!(is_kernel_thread_in(tree.path(), 6)?, "a comm with ')' and bad bytes does not hide the flags");

        assert!(matches!(read_memory_in(tree.path(), 7), Err(ProcError::Malformed { .. })));
        assert!(matches!(is_kernel_thread_in(tree.path(), 7), Err(ProcError::Malformed { .. })));

        assert!(matches!(read_memory_in(tree.path(), 8), Err(ProcError::NoSuchProcess(8))));
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
    fn fake_tree_pss() -> TestResult {
        let tree = TempTree::new("procfs-pss")?;
        tree.write("5/smaps_rollup", ROLLUP.as_bytes())?;
        tree.write("6/statm", b"1 1 1 1 0 1 0\n")?;
        tree.write("9/smaps_rollup", ROLLUP.replace("Pss:  ", "Xss:  ").as_bytes())?;
        assert_eq!(read_pss_in(tree.path(), 5)?, 1234 * 1024);
        // Gone, or (as on kernels before 4.14) no such file.
        assert!(matches!(read_pss_in(tree.path(), 6), Err(ProcError::NoSuchProcess(6))));
        assert!(matches!(read_pss_in(tree.path(), 7), Err(ProcError::NoSuchProcess(7))));
        // Its parts never stand in for it.
        assert!(matches!(read_pss_in(tree.path(), 9), Err(ProcError::Malformed { .. })));
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

    /// A named field of our own `/proc/self/status`, in bytes.
    fn own_status_kb(field: &str) -> Option<u64> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
        line.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok().map(|kb| kb * 1024)
    }

    #[test]
    fn real_self_memory_is_what_status_says() -> TestResult {
        let me = std::process::id();
        // Pages come and go while the test runs: read until both sides agree
        // on one instant, which they do at once on an idle process.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let before = (own_status_kb("VmRSS"), own_status_kb("RssAnon"));
            let m = read_memory(me)?;
            let after = (own_status_kb("VmRSS"), own_status_kb("RssAnon"));
            if before == after && before == (Some(m.rss_bytes), Some(m.rss_anon_bytes)) {
                break;
            }
            assert!(Instant::now() < deadline, "statm {m:?}, status {before:?} / {after:?}");
        }
        assert!(!is_kernel_thread(me)?);
        exists(me)?;
        Ok(())
    }

    #[test]
    fn real_self_pss_is_within_rss() -> TestResult {
        if !smaps_rollup_supported() {
            return Ok(());
        }
        let pss = read_pss(std::process::id())?;
        let rss = read_memory(std::process::id())?.rss_bytes;
        assert!(pss > 0, "a running process has a proportional share");
        // Both move while the test runs; PSS never exceeds RSS by more than that.
        assert!(pss <= rss + 4 * 1024 * 1024, "pss {pss} rss {rss}");
        Ok(())
    }

    #[test]
    fn real_nonexistent_pid() {
        for pid in nonexistent_pids() {
            assert!(matches!(exists(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
            assert!(matches!(read_memory(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
            assert!(matches!(read_pss(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
            assert!(matches!(read_socket_inodes(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
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
        assert_eq!(read_memory(2)?, Memory::default());
        assert!(pids_by_comm("kthreadd")?.contains(&2));
        Ok(())
    }

    /// A zombie has no address space: its memory reads as none, and its
    /// `smaps_rollup` fails with `ESRCH` in the middle of the read, which is
    /// "gone", not a malformed file.
    #[test]
    fn real_zombie() -> TestResult {
        let child = ChildGuard(Command::new("true").spawn()?);
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(format!("/proc/{pid}/stat"))?.split(' ').nth(2) != Some("Z") {
            assert!(Instant::now() < deadline, "child never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        exists(pid)?;
        assert!(!is_kernel_thread(pid)?, "a zombie is no kernel thread");
        assert_eq!(read_memory(pid)?, Memory::default());
        if smaps_rollup_supported() {
            assert!(matches!(read_pss(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
        }
        Ok(())
    }

    #[test]
    fn real_socket_inodes_of_self() -> TestResult {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let file = fs::File::open("/proc/self/status")?;
        let inode_of = |fd: i32| fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino());
        let tcp_ino = inode_of(tcp.as_raw_fd())?;
        let udp_ino = inode_of(udp.as_raw_fd())?;
        let file_ino = inode_of(file.as_raw_fd())?;

        let inodes = read_socket_inodes(std::process::id())?;
        assert!(inodes.contains(&tcp_ino), "tcp {tcp_ino} not in {inodes:?}");
        assert!(inodes.contains(&udp_ino), "udp {udp_ino} not in {inodes:?}");
        // A regular file's inode number lives in another fs and may collide in
        // value, so only check when it cannot be a socket inode we saw.
        if file_ino != tcp_ino && file_ino != udp_ino {
            use std::os::unix::ffi::OsStrExt;
            let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            assert_eq!(socket_inode_from_link(link.as_os_str().as_bytes()), None);
        }
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
        exists(pid)?;
        assert!(read_memory(pid)?.rss_bytes > 0);
        assert!(!is_kernel_thread(pid)?);
        read_socket_inodes(pid)?;

        child.0.kill()?;
        child.0.wait()?;
        // Reaped: the pid is gone (barring immediate pid reuse).
        assert!(matches!(exists(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
        assert!(matches!(read_memory(pid), Err(ProcError::NoSuchProcess(p)) if p == pid));
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

    #[test]
    fn real_boot_id() {
        let id = boot_id();
        assert_eq!(id.len(), 36, "{id:?}");
        assert_eq!(id, boot_id());
    }
}
