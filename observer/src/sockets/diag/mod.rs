//! Reads the target's sockets through the kernel's socket diagnostics
//! (netlink NETLINK_SOCK_DIAG, what `ss` uses) instead of the BPF iterator:
//! the fallback where the kernel or the sandbox forbids BPF entirely. It
//! sees the same queues, states and timers, but no events between sweeps.
//!
//! Like the iterator, the socket answers for the network namespace it was
//! created in, so for a target in another namespace it is created there.

mod netlink;
mod record;
mod wire;

use std::{fs::File, io, os::unix::fs::MetadataExt};

use observer_common::{SockRecord, tcp_state};

pub use self::record::TICK_NS;
use self::wire::{Message, WireError};
use crate::{
    clock::monotonic_ns,
    netns::{self, NetnsError},
};

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag: opening a NETLINK_SOCK_DIAG socket: {0}")]
    Open(io::Error),
    #[error("sock_diag: {what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error("sock_diag: the kernel refused the dump: {0}")]
    Refused(io::Error),
    #[error("sock_diag: malformed reply: {0}")]
    Malformed(#[from] WireError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Every state but NEW_SYN_RECV (bit n is TCP state n): the
/// sockets the iterator reports too (TIME_WAIT ones by their addresses only).
const STATES: u32 = 0xffe & !(1 << tcp_state::NEW_SYN_RECV);

/// Reads every full TCP socket of the current (or given) network namespace.
pub fn read_sockets(netns: Option<&File>) -> Result<Vec<SockRecord>, DiagError> {
    let (mut sock, ns_inode) = match netns {
        None => (netlink::NetlinkSocket::open().map_err(DiagError::Open)?, netns::own_inode().unwrap_or(0)),
        Some(ns) => {
            let sock = netns::inside(ns, netlink::NetlinkSocket::open)?;
            (sock.map_err(DiagError::Open)?, ns.metadata().map_or(0, |m| m.ino()))
        }
    };
    let now_ms = (monotonic_ns() / TICK_NS) as u32;
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        sock.send(&wire::dump_request(family, STATES, seq))
            .map_err(|source| DiagError::Io { what: "sending the dump request", source })?;
        loop {
            let datagram = sock.recv().map_err(|source| DiagError::Io { what: "reading the dump", source })?;
            if decode(datagram, seq, ns_inode as u32, now_ms, &mut out)? {
                break;
            }
        }
    }
    Ok(out)
}

/// Appends the full sockets of one reply datagram to `out`; true once the
/// dump is complete.
fn decode(datagram: &[u8], seq: u32, netns: u32, now_ms: u32, out: &mut Vec<SockRecord>) -> Result<bool, DiagError> {
    for m in wire::messages(datagram, seq)? {
        match m {
            Message::Socket(p) => out.extend(record::to_record(&wire::parse_socket(p)?, netns, now_ms)),
            Message::Done => return Ok(true),
            Message::Error(errno) => return Err(DiagError::Refused(io::Error::from_raw_os_error(errno))),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        io::Write,
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
        time::Duration,
    };

    use super::*;
    use crate::{
        classify::{StallReason, Thresholds, ZombieReason},
        sockets::table::SocketTable,
    };

    const SEC: u64 = 1_000_000_000;
    const CAPTURED: [(&[u8], u32); 4] = [
        (include_bytes!("testdata/ipv4.0.bin"), 1),
        (include_bytes!("testdata/ipv4.1.bin"), 1),
        (include_bytes!("testdata/ipv6.0.bin"), 2),
        (include_bytes!("testdata/ipv6.1.bin"), 2),
    ];

    /// The captured dump through the unchanged socket table: the kernel's
    /// own ages date what happened before the first sweep.
    #[test]
    fn captured_sockets_classify_through_the_table() {
        let mut records = Vec::new();
        let done: Vec<bool> = CAPTURED
            .iter()
            .map(|(d, seq)| decode(d, *seq, 4026531840, 123_456, &mut records).expect("decodes"))
            .collect();
        assert_eq!(done, [false, true, false, true]);
        assert!(records.iter().all(|r| r.inode != 0 && r.has_events == 0), "mini-sockets skipped");
        let owners: crate::target::InodeOwners = records.iter().map(|r| (r.inode, 7)).collect();
        let targets = HashSet::from([7]);
        let secs = |s| Duration::from_secs(s);
        let th = Thresholds { dead_after: secs(2), close_wait_after: secs(2), stall_after: secs(2) };
        let mut table = SocketTable::with_tick(TICK_NS);
        table.sweep(100 * SEC, &records, &owners, &targets, true, &th);
        let s = table.summary();
        // ss -tinoemH at capture time: Send-Q 2174976 + 3000, notsent 2174976 + 952.
        assert_eq!((s.unsent, s.unacked), (2_174_976 + 952, 2048));
        assert_eq!(s.zombies.get(&ZombieReason::DeadPeer), Some(&1), "silent for 2.5 s, backed off");
        assert_eq!(s.zombies.get(&ZombieReason::CloseWait), Some(&1), "FIN received 2.5 s ago");
        assert_eq!(s.stalled.get(&StallReason::ZeroWindow), None, "a zero window is timed from first sight");
        table.sweep(103 * SEC, &records, &owners, &targets, false, &th);
        assert_eq!(table.summary().stalled.get(&StallReason::ZeroWindow), Some(&1));
    }

    fn inode(fd: &impl AsRawFd) -> u64 {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and stat buffer.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino
    }

    /// The live kernel: a listener and a connection made here are found
    /// with their inodes, ports and queued bytes, also through setns.
    #[test]
    fn reads_this_processes_sockets_from_the_kernel() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        c.write_all(&[1; 1000]).expect("write");
        let port = l.local_addr().expect("addr").port();
        let own = File::open("/proc/thread-self/ns/net").expect("own netns");
        for ns in [None, Some(&own)] {
            let records = read_sockets(ns).expect("sock_diag dump");
            let find = |ino| records.iter().find(|r| r.inode == ino).unwrap_or_else(|| panic!("inode {ino} missing"));
            let lr = find(inode(&l));
            assert_eq!((lr.state, lr.sport), (tcp_state::LISTEN, port));
            let sr = find(inode(&s));
            assert_eq!((sr.state, sr.sport, sr.family), (tcp_state::ESTABLISHED, port, libc::AF_INET as u8));
            assert_eq!(&sr.saddr[..4], &[127, 0, 0, 1]);
            let cr = find(inode(&c));
            assert_eq!(cr.dport, port);
            // Whenever the ACK comes: acknowledged (bytes_acked counts the
            // SYN too) plus still queued is what was written.
            let queued = cr.write_seq.wrapping_sub(cr.snd_una);
            assert_eq!(cr.snd_una - 1 + queued, 1000, "{cr:?}");
            assert_eq!(cr.netns as u64, own.metadata().expect("stat").ino());
            assert!(cr.sk != 0 && cr.sk != sr.sk && sr.sk != lr.sk, "cookies tell sockets apart");
        }
    }
}
