//! The marked-socket sweep: a BPF iterator over the `MARKS` socket storage,
//! which visits only the sockets that carry a mark (those a full walk of the
//! namespace or a probe gave one) instead of every socket of every watched
//! namespace, and reads only what changed.
//!
//! aya attaches iterators without a target map only, so the link is made
//! here with `BPF_LINK_CREATE` and its `iter_info`, once; each sweep opens a
//! fresh read of it with `BPF_ITER_CREATE`. Records cross by the `CROSSED`
//! ring, and by the read when the ring is full.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, RingBuf},
    programs::Iter,
};
use observer_common::SockRecord;

use super::iter::{IterError, decode, read_records};

use observer_common::names::{CROSSED, MARKED_PROGRAM as PROGRAM, MARKS as MAP};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// The attached iterator, and the ring most of its records cross by.
pub struct MarkedSweeps {
    link: OwnedFd,
    crossed: RingBuf<MapData>,
}

/// What one marked-socket sweep read.
#[derive(Debug, Default)]
pub struct Marked {
    /// Sockets that are not settled.
    pub records: Vec<SockRecord>,
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
    pub fn attach(ebpf: &mut Ebpf) -> Result<MarkedSweeps, IterError> {
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
        let crossed = ebpf
            .take_map(CROSSED)
            .ok_or_else(|| IterError::Kernel(format!("map {CROSSED} is missing")))
            .and_then(|m| RingBuf::try_from(m).map_err(|e| IterError::Kernel(format!("map {CROSSED}: {e}"))))?;
        Ok(MarkedSweeps { link, crossed })
    }

    /// The records in the ring, in the order they were written.
    fn drain_ring(&mut self) -> Result<Vec<SockRecord>, IterError> {
        let mut out = Vec::new();
        while let Some(item) = self.crossed.next() {
            out.extend(decode::<SockRecord>(&item)?);
        }
        Ok(out)
    }

    /// One pass over the marked sockets, decoded a read at a time: the
    /// first sweeps after a walk carry every socket (none settled yet).
    pub fn read(&mut self) -> Result<Marked, IterError> {
        let attr = IterCreate { link_fd: self.link.as_raw_fd() as u32, ..IterCreate::default() };
        let fd = bpf(BPF_ITER_CREATE, std::ptr::addr_of!(attr).cast(), size_of::<IterCreate>())
            .map_err(|e| IterError::Kernel(format!("opening {PROGRAM}: {e}")))?;
        let read = read_records(&mut File::from(fd), &|_| true);
        // The program runs only while this thread reads, so once the read
        // ends every record it put in the ring is there. Drained also when
        // the read failed: none of them may pass for the next sweep's.
        let ring = self.drain_ring();
        let mut records: Vec<SockRecord> = read?;
        records.extend(ring?);
        let bytes = records.len() * size_of::<SockRecord>();
        Ok(Marked { records, bytes })
    }
}
