//! The marked-socket sweep: a BPF iterator over the `MARKS` socket storage,
//! which visits only the sockets that carry a mark (those a full walk of the
//! namespace or a probe gave one) instead of every socket of every watched
//! namespace, and reads only what changed.
//!
//! aya attaches iterators without a target map only, so the link is made
//! here with `BPF_LINK_CREATE` and its `iter_info`, once; each sweep opens a
//! fresh read of it with `BPF_ITER_CREATE`.

use std::{
    fs::File,
    io::Read,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::{Ebpf, maps::Map, programs::Iter};
use observer_common::{SockRecord, marks};

use super::iter::IterError;

/// Program and map names in the eBPF object.
pub const PROGRAM: &str = "observer_marked";
pub const MAP: &str = "MARKS";

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// The attached iterator.
pub struct MarkedSweeps {
    link: OwnedFd,
    /// Kept between sweeps: fresh pages every second would be zeroed by
    /// the kernel each time.
    buf: Vec<u8>,
}

/// What one marked-socket sweep read.
#[derive(Debug, Default)]
pub struct Marked {
    /// Sockets that are not quiet, or changed since they last crossed.
    pub records: Vec<SockRecord>,
    /// Quiet sockets unchanged since their record last crossed.
    pub alive: Vec<u64>,
    /// Bytes that crossed from the kernel.
    pub bytes: usize,
}

/// `union bpf_attr` as BPF_LINK_CREATE reads it for an iterator.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _rest: [u32; 25],
}

/// `union bpf_attr` as BPF_ITER_CREATE reads it.
#[repr(C)]
#[derive(Default)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
    _rest: [u32; 30],
}

fn bpf(cmd: libc::c_long, attr: *const u8, size: usize) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` points to a zero-padded bpf_attr of `size` bytes.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl MarkedSweeps {
    /// Links the loaded iterator program to the `MARKS` map.
    pub fn attach(ebpf: &Ebpf) -> Result<MarkedSweeps, IterError> {
        let prog: &Iter = ebpf
            .program(PROGRAM)
            .ok_or(IterError::NotLoaded)?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| IterError::Kernel(e.to_string()))?;
        let prog_fd = prog.fd().map_err(|e| IterError::Kernel(e.to_string()))?;
        let Some(Map::SkStorage(map)) = ebpf.map(MAP) else {
            return Err(IterError::Kernel(format!("map {MAP} is missing or not socket storage")));
        };
        let map_fd = map.fd().as_fd().as_raw_fd() as u32;
        let attr = LinkCreate {
            prog_fd: prog_fd.as_fd().as_raw_fd() as u32,
            attach_type: BPF_TRACE_ITER,
            // `union bpf_iter_link_info { struct { __u32 map_fd; } map; }`
            iter_info: std::ptr::addr_of!(map_fd) as u64,
            iter_info_len: size_of::<u32>() as u32,
            ..LinkCreate::default()
        };
        let link = bpf(BPF_LINK_CREATE, std::ptr::addr_of!(attr).cast(), size_of::<LinkCreate>())
            .map_err(|e| IterError::Kernel(format!("linking {PROGRAM} to {MAP}: {e}")))?;
        Ok(MarkedSweeps { link, buf: Vec::new() })
    }

    /// One pass over the marked sockets.
    pub fn read(&mut self) -> Result<Marked, IterError> {
        let attr = IterCreate { link_fd: self.link.as_raw_fd() as u32, ..IterCreate::default() };
        let fd = bpf(BPF_ITER_CREATE, std::ptr::addr_of!(attr).cast(), size_of::<IterCreate>())
            .map_err(|e| IterError::Kernel(format!("opening {PROGRAM}: {e}")))?;
        let mut file = File::from(fd);
        let buf = &mut self.buf;
        buf.clear();
        loop {
            match file.read_to_end(buf) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(IterError::Kernel(format!("reading {PROGRAM}: {e}"))),
            }
        }
        decode(buf)
    }
}

/// Splits the stream into records and alive items (`marks::ALIVE_TAG`).
pub fn decode(buf: &[u8]) -> Result<Marked, IterError> {
    const RECORD: usize = size_of::<SockRecord>();
    let mut out = Marked { bytes: buf.len(), ..Marked::default() };
    let mut at = 0;
    while at < buf.len() {
        let Some(word) = buf.get(at..at + 8) else {
            return Err(IterError::Torn(buf.len() - at));
        };
        let word = u64::from_ne_bytes(word.try_into().map_err(|_| IterError::Torn(buf.len() - at))?);
        if !marks::starts_record(word) {
            let Some(sk) = buf.get(at + 8..at + 16) else {
                return Err(IterError::Torn(buf.len() - at));
            };
            out.alive.push(u64::from_ne_bytes(sk.try_into().map_err(|_| IterError::Torn(buf.len() - at))?));
            at += 16;
            continue;
        }
        let Some(chunk) = buf.get(at..at + RECORD) else {
            return Err(IterError::Torn(buf.len() - at));
        };
        // SAFETY: SockRecord is plain old data of exactly RECORD bytes, and
        // read_unaligned makes no alignment assumption about the buffer.
        out.records.push(unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<SockRecord>()) });
        at += RECORD;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(rec: &SockRecord) -> &[u8] {
        // SAFETY: viewing a POD value as bytes.
        unsafe { std::slice::from_raw_parts((rec as *const SockRecord).cast::<u8>(), size_of::<SockRecord>()) }
    }

    #[test]
    fn decodes_records_between_alive_words_and_rejects_torn_ones() {
        let a = SockRecord { sk: 0xffff_8880_1234_5678, inode: 42, state: 1, ..Default::default() };
        let alive = 0xffff_8880_dead_b000u64;
        let mut buf = Vec::new();
        for item in [&[marks::ALIVE_TAG, alive][..], &[], &[marks::ALIVE_TAG, alive + 64]] {
            if item.is_empty() {
                buf.extend_from_slice(bytes(&a));
            }
            for w in item {
                buf.extend_from_slice(&w.to_ne_bytes());
            }
        }
        let out = decode(&buf).expect("whole items");
        assert_eq!(out.records, vec![a]);
        assert_eq!(out.alive, vec![alive, alive + 64]);
        assert_eq!(out.bytes, buf.len());
        assert!(matches!(decode(&buf[..buf.len() - 3]), Err(IterError::Torn(_))));
        assert!(matches!(decode(&buf[..12]), Err(IterError::Torn(_))));
        assert!(matches!(decode(&buf[..40]), Err(IterError::Torn(_))));
    }
}
