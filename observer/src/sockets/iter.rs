//! Runs the TCP socket iterator and decodes its output.
//!
//! A BPF TCP iterator walks the network namespace of the task that creates
//! it, so for a target in another namespace (a container watched from the
//! host) the reading thread enters that namespace just for the creation.

use std::{fs::File, io::Read};

use aya::{Ebpf, programs::Iter};
use observer_common::{SockRecord, names::ITER_PROGRAM};

use crate::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum IterError {
    #[error("socket iterator program is not loaded")]
    NotLoaded,
    #[error("socket iterator: {0}")]
    Kernel(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("socket iterator output is {0} bytes, not a whole number of records")]
    Torn(usize),
}

/// Reads the full TCP sockets of the current (or given) network namespace
/// that `keep` wants.
pub fn read_sockets(
    ebpf: &mut Ebpf,
    netns: Option<&File>,
    keep: &dyn Fn(&SockRecord) -> bool,
) -> Result<Vec<SockRecord>, IterError> {
    read_iterator(ebpf, ITER_PROGRAM, netns, keep)
}

/// Links the loaded iterator program `name` afresh (in `netns`, which
/// decides what a namespace-bound iterator walks), and reads what `keep` wants.
pub fn read_iterator<T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    netns: Option<&File>,
    keep: &dyn Fn(&T) -> bool,
) -> Result<Vec<T>, IterError> {
    let prog: &mut Iter = ebpf
        .program_mut(name)
        .ok_or(IterError::NotLoaded)?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| IterError::Kernel(e.to_string()))?;
    let link_id = prog.attach().map_err(|e| IterError::Kernel(e.to_string()))?;
    let link = prog.take_link(link_id).map_err(|e| IterError::Kernel(e.to_string()))?;
    let mut file = match netns {
        None => link.into_file().map_err(|e| IterError::Kernel(e.to_string()))?,
        Some(ns) => netns::inside(ns, || link.into_file().map_err(|e| IterError::Kernel(e.to_string())))??,
    };
    read_records(&mut file, keep)
}

/// Decodes an iterator's output while reading, a chunk at a time, keeping
/// what `keep` wants: a sweep of 100k sockets never holds the raw bytes
/// and the records at once, nor records nobody asked for.
pub fn read_records<T: aya::Pod>(file: &mut File, keep: &dyn Fn(&T) -> bool) -> Result<Vec<T>, IterError> {
    let size = size_of::<T>();
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
        let whole = filled - filled % size;
        out.extend(decode::<T>(&chunk[..whole])?.into_iter().filter(|r| keep(r)));
        chunk.copy_within(whole..filled, 0);
        filled -= whole;
    }
    if filled != 0 {
        return Err(IterError::Torn(filled));
    }
    Ok(out)
}

/// Splits iterator output into records.
pub fn decode<T: aya::Pod>(buf: &[u8]) -> Result<Vec<T>, IterError> {
    let size = size_of::<T>();
    if !buf.len().is_multiple_of(size) {
        return Err(IterError::Torn(buf.len()));
    }
    Ok(buf
        .chunks_exact(size)
        // SAFETY: T is plain old data (aya::Pod) of exactly `size` bytes, and
        // read_unaligned makes no alignment assumption about the buffer.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<T>()) })
        .collect())
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
        let out: Vec<SockRecord> = decode(&buf).expect("whole records");
        assert_eq!(out, vec![rec; 3]);
        assert!(matches!(decode::<SockRecord>(&buf[..buf.len() - 1]), Err(IterError::Torn(_))));
        assert_eq!(decode::<SockRecord>(&[]).expect("empty is fine"), vec![]);
    }
}
