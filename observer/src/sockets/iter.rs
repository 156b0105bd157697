//! Runs the TCP socket iterator and decodes its output.
//!
//! A BPF TCP iterator walks the network namespace of the task that creates
//! it, so for a target in another namespace (a container watched from the
//! host) the reading thread enters that namespace just for the creation.

use std::{fs::File, io::Read, os::fd::AsRawFd};

use aya::{Ebpf, programs::Iter};
use observer_common::SockRecord;

use crate::probes::loader::ITER_PROGRAM;

#[derive(Debug, thiserror::Error)]
pub enum IterError {
    #[error("socket iterator program is not loaded")]
    NotLoaded,
    #[error("socket iterator: {0}")]
    Kernel(String),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("socket iterator output is {0} bytes, not a whole number of records")]
    Torn(usize),
}

/// Reads every full TCP socket of the current (or given) network namespace.
pub fn read_sockets(ebpf: &mut Ebpf, netns: Option<&File>) -> Result<Vec<SockRecord>, IterError> {
    let prog: &mut Iter = ebpf
        .program_mut(ITER_PROGRAM)
        .ok_or(IterError::NotLoaded)?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| IterError::Kernel(e.to_string()))?;
    let link_id = prog.attach().map_err(|e| IterError::Kernel(e.to_string()))?;
    let link = prog.take_link(link_id).map_err(|e| IterError::Kernel(e.to_string()))?;
    let mut file = match netns {
        None => link.into_file().map_err(|e| IterError::Kernel(e.to_string()))?,
        Some(ns) => in_netns(ns, || link.into_file().map_err(|e| IterError::Kernel(e.to_string())))??,
    };
    read_records(&mut file)
}

/// Decodes while reading, a chunk at a time, so a sweep of 100k sockets
/// never holds the raw bytes and the records at once.
fn read_records(file: &mut File) -> Result<Vec<SockRecord>, IterError> {
    const SIZE: usize = size_of::<SockRecord>();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut out = Vec::new();
    loop {
        let n = match file.read(&mut chunk[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IterError::Kernel(format!("reading: {e}"))),
        };
        filled += n;
        let whole = filled - filled % SIZE;
        out.extend(decode(&chunk[..whole])?);
        chunk.copy_within(whole..filled, 0);
        filled -= whole;
    }
    if filled != 0 {
        return Err(IterError::Torn(filled));
    }
    Ok(out)
}

/// Splits iterator output into records.
pub fn decode(buf: &[u8]) -> Result<Vec<SockRecord>, IterError> {
    const SIZE: usize = size_of::<SockRecord>();
    if !buf.len().is_multiple_of(SIZE) {
        return Err(IterError::Torn(buf.len()));
    }
    Ok(buf
        .chunks_exact(SIZE)
        // SAFETY: SockRecord is plain old data of exactly SIZE bytes, and
        // read_unaligned makes no alignment assumption about the buffer.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<SockRecord>()) })
        .collect())
}

/// Runs `f` with this thread inside the network namespace `ns`, then returns.
/// A network namespace is per thread, so nothing else in the process moves.
pub(crate) fn in_netns<T>(ns: &File, f: impl FnOnce() -> T) -> Result<T, IterError> {
    let own = File::open("/proc/thread-self/ns/net")
        .map_err(|source| IterError::Netns { path: "/proc/thread-self/ns/net".into(), source })?;
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
    fn go(mut self) -> Result<(), IterError> {
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

fn setns(ns: &File, what: &str) -> Result<(), IterError> {
    // SAFETY: setns with a valid fd and CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(IterError::Netns { path: what.into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_whole_records_and_rejects_torn_ones() {
        let rec = SockRecord { sk: 0xffff_8880_1234_5678, inode: 42, state: 1, sport: 80, ..Default::default() };
        let mut buf = Vec::new();
        for _ in 0..3 {
            // SAFETY: viewing a POD value as bytes.
            buf.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&rec as *const SockRecord).cast::<u8>(), size_of::<SockRecord>())
            });
        }
        let out = decode(&buf).expect("whole records");
        assert_eq!(out, vec![rec; 3]);
        assert!(matches!(decode(&buf[..buf.len() - 1]), Err(IterError::Torn(_))));
        assert_eq!(decode(&[]).expect("empty is fine"), vec![]);
    }
}
