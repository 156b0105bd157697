//! Network namespaces: telling them apart (the inode of their nsfs file),
//! holding one open, and running code inside one before coming back.
//!
//! A socket iterator or a sock_diag socket answers for the namespace of the
//! thread that creates it, so reading a target in a container from the host
//! means entering its namespace for that moment only.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("entering network namespace {what}: {source}")]
    Enter { what: &'static str, source: io::Error },
    #[error("opening network namespace {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
}

/// The namespace file of the calling thread: after `setns` a thread may be
/// in another namespace than the process's main thread.
const OWN: &str = "/proc/thread-self/ns/net";

fn of_pid(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("ns").join("net")
}

/// The namespace of `pid`, by inode; equal inodes mean the same namespace.
/// `ENOENT` when the process is gone.
pub fn inode_of(pid: u32) -> io::Result<u64> {
    // `metadata` follows the magic link to the nsfs inode.
    std::fs::metadata(of_pid(pid)).map(|m| m.ino())
}

/// The calling thread's namespace, by inode.
pub fn own_inode() -> io::Result<u64> {
    std::fs::metadata(OWN).map(|m| m.ino())
}

/// A handle on the namespace of `pid`, for entering it. Kept open, it keeps
/// the namespace readable after the last process in it exits.
pub fn open(pid: u32) -> io::Result<File> {
    File::open(of_pid(pid))
}

/// Runs `f` with this thread inside the network namespace `ns`, then returns.
/// A network namespace is per thread, so nothing else in the process moves.
pub fn inside<T>(ns: &File, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let own = File::open(OWN).map_err(|source| NetnsError::Open { path: OWN.into(), source })?;
    setns(ns, "target namespace")?;
    // Back on every path, a panic in `f` included.
    let back = Back(Some(own));
    let out = f();
    back.go()?;
    Ok(out)
}

/// The thread's own namespace, re-entered when dropped.
struct Back(Option<File>);

impl Back {
    /// Going back can only fail if the kernel lost our own namespace, which
    /// would leave this thread in the wrong place: report it loudly.
    fn go(mut self) -> Result<(), NetnsError> {
        match self.0.take() {
            Some(own) => setns(&own, "own namespace"),
            None => Ok(()),
        }
    }
}

impl Drop for Back {
    fn drop(&mut self) {
        if let Some(own) = self.0.take()
            && setns(&own, "own namespace").is_err()
        {
            // Unwinding with the thread in a target's namespace: every later
            // read would be of the wrong sockets. Nothing sane is left to do.
            eprintln!("observer: cannot return to its own network namespace");
            std::process::abort();
        }
    }
}

fn setns(ns: &File, what: &'static str) -> Result<(), NetnsError> {
    // SAFETY: setns with a valid fd and CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter { what, source: io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_own_namespace() -> io::Result<()> {
        let me = std::process::id();
        let ino = inode_of(me)?;
        assert_ne!(ino, 0);
        assert_eq!(ino, own_inode()?);
        assert_eq!(ino, open(me)?.metadata()?.ino());
        Ok(())
    }

    #[test]
    fn a_missing_process_has_no_namespace() {
        // PID_MAX_LIMIT is 4 * 1024 * 1024: this pid cannot exist.
        let pid = 4 * 1024 * 1024 + 1;
        assert_eq!(inode_of(pid).map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
        assert_eq!(open(pid).map(drop).map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
    }

    /// Entering a namespace moves only this thread, and it comes back; a
    /// new namespace of its own is another inode while inside.
    #[test]
    fn enters_and_returns() -> Result<(), Box<dyn std::error::Error>> {
        let home = own_inode()?;
        let other = std::thread::spawn(|| -> io::Result<File> {
            // SAFETY: unshare only affects this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            File::open(OWN)
        })
        .join()
        .map_err(|_| "thread panicked")??;
        let inside_ino = inside(&other, own_inode)??;
        assert_eq!(inside_ino, other.metadata()?.ino());
        assert_ne!(inside_ino, home);
        assert_eq!(own_inode()?, home, "back home afterwards");
        Ok(())
    }
}
