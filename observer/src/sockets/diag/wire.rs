//! The bytes of a sock_diag dump: netlink framing, `struct inet_diag_msg`,
//! its attributes and the fields of `struct tcp_info` the agent uses.
//!
//! Pure functions over byte slices, so they are tested on replies captured
//! from a real kernel, and every length the kernel states is checked before
//! it is believed: a short or garbled reply is an error, never a panic.
//! Layouts: include/uapi/linux/{netlink,inet_diag,sock_diag,tcp}.h.

/// `nlmsghdr.nlmsg_type` values.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `nlmsghdr.nlmsg_flags` bits.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// Attribute types of an `inet_diag_msg` reply.
pub const INET_DIAG_INFO: u16 = 2;
pub const INET_DIAG_SKMEMINFO: u16 = 7;

const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
/// `SK_MEMINFO_WMEM_QUEUED` index in the `INET_DIAG_SKMEMINFO` u32 array.
const SK_MEMINFO_WMEM_QUEUED: usize = 5;

/// Byte offsets in `struct tcp_info`; stable ABI, only ever appended to.
mod tcpi {
    pub const RETRANSMITS: usize = 2;
    pub const PROBES: usize = 3;
    pub const BACKOFF: usize = 4;
    /// µs.
    pub const RTO: usize = 8;
    pub const LAST_DATA_RECV: usize = 52;
    pub const LAST_ACK_RECV: usize = 56;
    pub const TOTAL_RETRANS: usize = 100;
    pub const BYTES_ACKED: usize = 120;
    pub const NOTSENT_BYTES: usize = 144;
    /// Linux 5.4 appended `tcpi_snd_wnd`; older kernels send a shorter struct.
    pub const SND_WND: usize = 228;
}
/// tcp_info up to and including `tcpi_notsent_bytes` (Linux 4.6): without
/// it the queue split and the progress marker cannot be known.
pub const TCP_INFO_MIN_LEN: usize = tcpi::NOTSENT_BYTES + 4;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} is {got} bytes, needs at least {need}")]
    Short { what: &'static str, got: usize, need: usize },
    #[error("message header says {claimed} bytes where {left} remain")]
    BadMessageLength { claimed: usize, left: usize },
    #[error("attribute header says {claimed} bytes where {left} remain")]
    BadAttributeLength { claimed: usize, left: usize },
    #[error("unexpected message type {0}")]
    UnexpectedType(u16),
    #[error("reply to request {got}, expected {want}")]
    Sequence { got: u32, want: u32 },
    #[error("the dump was interrupted by a concurrent change")]
    Interrupted,
    #[error("tcp_info from this kernel is {0} bytes; polling sockets needs at least {TCP_INFO_MIN_LEN} (Linux 4.6+)")]
    OldTcpInfo(usize),
}

/// One netlink message of a dump reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A `SOCK_DIAG_BY_FAMILY` reply: one socket's `inet_diag_msg` and attributes.
    Socket(&'a [u8]),
    /// End of the dump.
    Done,
    /// The kernel's answer was an error: a positive errno.
    Error(i32),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The dump request for one address family: every TCP socket in `states`,
/// with `tcp_info` and the socket memory counters attached.
pub fn dump_request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    // struct inet_diag_req_v2
    let ext = (1u8 << (INET_DIAG_INFO - 1)) | (1u8 << (INET_DIAG_SKMEMINFO - 1));
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, ext, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.resize(len, 0); // inet_diag_sockid: all zero, no filter
    b
}

/// Splits one received datagram into messages answering request `seq`.
pub fn messages(datagram: &[u8], seq: u32) -> Result<Vec<Message<'_>>, WireError> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(WireError::Short { what: "netlink message header", got: rest.len(), need: NLMSG_HDRLEN });
        }
        let len = u32_at(rest, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(WireError::BadMessageLength { claimed: len, left: rest.len() });
        }
        let (kind, flags) = (u16_at(rest, 4).unwrap_or(0), u16_at(rest, 6).unwrap_or(0));
        let got = u32_at(rest, 8).unwrap_or(0);
        if got != seq {
            return Err(WireError::Sequence { got, want: seq });
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(WireError::Interrupted);
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        out.push(match kind {
            SOCK_DIAG_BY_FAMILY => Message::Socket(payload),
            NLMSG_DONE => match i32_at(payload, 0) {
                // A dump may end with an error in place of the length.
                Some(e) if e < 0 => Message::Error(-e),
                _ => Message::Done,
            },
            NLMSG_ERROR => {
                let e = i32_at(payload, 0).ok_or(WireError::Short {
                    what: "netlink error message",
                    got: payload.len(),
                    need: 4,
                })?;
                Message::Error(-e)
            }
            other => return Err(WireError::UnexpectedType(other)),
        });
        // The last message of a datagram need not carry its padding.
        rest = rest.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The fields of `struct tcp_info` the agent uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    pub retransmits: u8,
    pub probes: u8,
    pub backoff: u8,
    /// ms since the last segment / the last ACK was received.
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    pub rto_us: u32,
    pub total_retrans: u32,
    pub bytes_acked: u64,
    pub notsent_bytes: u32,
    /// The peer's window; None on kernels whose tcp_info predates it.
    pub snd_wnd: Option<u32>,
}

/// One socket as `inet_diag_msg` and its attributes describe it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: u8,
    pub state: u8,
    /// 0 none, 1 retransmit (RTO, RACK reordering, loss probe), 2 keepalive
    /// or another sk_timer, 3 TIME_WAIT, 4 zero-window probe.
    pub timer: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub cookie: u64,
    /// `write_seq - snd_una` for a connection: ss's Send-Q.
    pub wqueue: u32,
    pub inode: u32,
    /// Absent for TIME_WAIT and request mini-sockets, which are not full sockets.
    pub info: Option<TcpInfo>,
    pub wmem_queued: Option<u32>,
}

/// Decodes one `SOCK_DIAG_BY_FAMILY` payload.
pub fn parse_socket(p: &[u8]) -> Result<DiagSocket, WireError> {
    if p.len() < INET_DIAG_MSG_LEN {
        return Err(WireError::Short { what: "inet_diag_msg", got: p.len(), need: INET_DIAG_MSG_LEN });
    }
    let mut s = DiagSocket {
        family: p[0],
        state: p[1],
        timer: p[2],
        // Ports are big endian on the wire (__be16).
        sport: u16::from_be_bytes([p[4], p[5]]),
        dport: u16::from_be_bytes([p[6], p[7]]),
        ..Default::default()
    };
    s.src.copy_from_slice(&p[8..24]);
    s.dst.copy_from_slice(&p[24..40]);
    let cookie = [u32_at(p, 44).unwrap_or(0), u32_at(p, 48).unwrap_or(0)];
    s.cookie = u64::from(cookie[0]) | u64::from(cookie[1]) << 32;
    s.wqueue = u32_at(p, 60).unwrap_or(0);
    s.inode = u32_at(p, 68).unwrap_or(0);

    let mut attrs = &p[INET_DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0).unwrap_or(0));
        // Masks NLA_F_NESTED and NLA_F_NET_BYTEORDER.
        let kind = u16_at(attrs, 2).unwrap_or(0) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(WireError::BadAttributeLength { claimed: len, left: attrs.len() });
        }
        let value = &attrs[4..len];
        match kind {
            INET_DIAG_INFO => s.info = Some(parse_tcp_info(value)?),
            INET_DIAG_SKMEMINFO => s.wmem_queued = u32_at(value, SK_MEMINFO_WMEM_QUEUED * 4),
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(s)
}

fn parse_tcp_info(v: &[u8]) -> Result<TcpInfo, WireError> {
    if v.len() < TCP_INFO_MIN_LEN {
        return Err(WireError::OldTcpInfo(v.len()));
    }
    let u32_ = |at| u32_at(v, at).unwrap_or(0);
    Ok(TcpInfo {
        retransmits: v[tcpi::RETRANSMITS],
        probes: v[tcpi::PROBES],
        backoff: v[tcpi::BACKOFF],
        last_data_recv_ms: u32_(tcpi::LAST_DATA_RECV),
        last_ack_recv_ms: u32_(tcpi::LAST_ACK_RECV),
        rto_us: u32_(tcpi::RTO),
        total_retrans: u32_(tcpi::TOTAL_RETRANS),
        bytes_acked: u64_at(v, tcpi::BYTES_ACKED).unwrap_or(0),
        notsent_bytes: u32_(tcpi::NOTSENT_BYTES),
        snd_wnd: u32_at(v, tcpi::SND_WND),
    })
}

#[cfg(test)]
mod tests {
    //! On replies recorded from Linux 6.18 by `testdata/capture.py`, checked
    //! against `ss -tinoemH` taken at the same moment (`testdata/ss.txt`).

    use std::collections::HashMap;

    use super::*;

    const IPV4: [&[u8]; 2] = [include_bytes!("testdata/ipv4.0.bin"), include_bytes!("testdata/ipv4.1.bin")];
    const IPV6: [&[u8]; 2] = [include_bytes!("testdata/ipv6.0.bin"), include_bytes!("testdata/ipv6.1.bin")];
    const SS: &str = include_str!("testdata/ss.txt");

    /// What ss printed for one socket, keyed by its cookie (`sk:` in hex).
    #[derive(Debug, Default)]
    struct Ss {
        state: String,
        send_q: u32,
        local_port: u16,
        peer_port: u16,
        timer: String,
        inode: u32,
        backoff: u8,
        notsent: u32,
        snd_wnd: u32,
    }

    fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        line.split_whitespace().find_map(|t| t.strip_prefix(key))
    }

    fn port(addr: &str) -> u16 {
        addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)
    }

    fn ss_view() -> HashMap<u64, Ss> {
        let mut out = HashMap::new();
        let mut last = None;
        for line in SS.lines() {
            if line.starts_with(char::is_whitespace) {
                if let Some(s) = last.and_then(|c| out.get_mut(&c)) {
                    let s: &mut Ss = s;
                    s.backoff = field(line, "backoff:").map_or(0, |v| v.parse().expect("backoff"));
                    s.notsent = field(line, "notsent:").map_or(0, |v| v.parse().expect("notsent"));
                    // ss leaves a zero window out.
                    s.snd_wnd = field(line, "snd_wnd:").map_or(0, |v| v.parse().expect("snd_wnd"));
                }
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            let cookie = u64::from_str_radix(field(line, "sk:").expect("sk: column"), 16).expect("hex cookie");
            let timer = field(line, "timer:(").map_or("", |t| t.split(',').next().unwrap_or(""));
            out.insert(
                cookie,
                Ss {
                    state: cols[0].to_string(),
                    send_q: cols[2].parse().expect("Send-Q"),
                    local_port: port(cols[3]),
                    peer_port: port(cols[4]),
                    timer: timer.to_string(),
                    inode: field(line, "ino:").expect("ino:").parse().expect("inode"),
                    ..Default::default()
                },
            );
            last = Some(cookie);
        }
        out
    }

    fn parse_dump(datagrams: &[&[u8]], seq: u32) -> (Vec<DiagSocket>, bool) {
        let mut socks = Vec::new();
        let mut done = false;
        for d in datagrams {
            for m in messages(d, seq).expect("well-formed reply") {
                match m {
                    Message::Socket(p) => socks.push(parse_socket(p).expect("well-formed socket")),
                    Message::Done => done = true,
                    Message::Error(e) => panic!("error {e} in a captured dump"),
                }
            }
        }
        (socks, done)
    }

    #[test]
    fn request_has_the_kernels_layout() {
        let r = dump_request(10, 0xfbe, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(&r[16..20], &[10, 6, 0b0100_0010, 0], "family, TCP, INFO and SKMEMINFO");
        assert_eq!(u32_at(&r, 20), Some(0xfbe));
        assert!(r[24..].iter().all(|b| *b == 0), "no socket filter");
    }

    #[test]
    fn captured_dumps_match_ss() {
        let ss = ss_view();
        let (v4, done4) = parse_dump(&IPV4, 1);
        let (v6, done6) = parse_dump(&IPV6, 2);
        assert!(done4 && done6, "both dumps end with NLMSG_DONE");
        assert!(v4.iter().all(|s| s.family == libc::AF_INET as u8));
        assert!(v6.iter().all(|s| s.family == libc::AF_INET6 as u8));
        let all: Vec<&DiagSocket> = v4.iter().chain(&v6).collect();
        assert_eq!(all.len(), ss.len(), "one reply per socket ss lists");
        for s in all {
            let want = ss.get(&s.cookie).unwrap_or_else(|| panic!("cookie {:x} unknown to ss", s.cookie));
            assert_eq!((s.sport, s.dport, s.inode), (want.local_port, want.peer_port, want.inode), "{want:?}");
            let timer = ["", "on", "keepalive", "timewait", "persist"][usize::from(s.timer)];
            assert_eq!(timer, want.timer, "{want:?}");
            let Some(info) = s.info else {
                assert_eq!(
                    (want.state.as_str(), s.inode),
                    ("FIN-WAIT-2", 0),
                    "only the TIME_WAIT mini-socket lacks tcp_info"
                );
                continue;
            };
            assert!(info.snd_wnd.is_some(), "6.18 sends tcpi_snd_wnd");
            if want.state == "LISTEN" {
                assert_eq!(s.state, observer_common::tcp_state::LISTEN);
                continue;
            }
            assert_eq!(
                (s.wqueue, info.notsent_bytes, info.backoff, info.snd_wnd.unwrap_or(1)),
                (want.send_q, want.notsent, want.backoff, want.snd_wnd),
                "{want:?}"
            );
        }
    }

    #[test]
    fn the_situations_the_observer_classifies_are_visible() {
        let (v4, _) = parse_dump(&IPV4, 1);
        // The zero-window sender: persist timer, no window, bytes not sent.
        let zw = v4.iter().find(|s| s.timer == 4).expect("a socket probing a zero window");
        let info = zw.info.expect("tcp_info");
        assert_eq!(info.snd_wnd, Some(0));
        assert!(info.notsent_bytes > 0 && info.notsent_bytes == zw.wqueue);
        // The dead peer: RTO armed, backed off, unacknowledged bytes, no progress.
        let dead = v4.iter().find(|s| s.timer == 1).expect("a socket retransmitting");
        let info = dead.info.expect("tcp_info");
        assert!(info.backoff >= 2 && info.retransmits >= 2, "{info:?}");
        assert!(dead.wqueue > info.notsent_bytes, "bytes in flight");
        assert_eq!(info.bytes_acked, 0, "the peer never acknowledged data");
        assert!(info.last_ack_recv_ms > 2000, "silent since the drop began: {info:?}");
        // The peer closed, the app did not.
        assert_eq!(v4.iter().filter(|s| s.state == observer_common::tcp_state::CLOSE_WAIT).count(), 1);
        assert!(dead.wmem_queued.is_some_and(|w| w > 0));
    }

    /// Every prefix of a real reply, and every single-byte corruption of it,
    /// decodes or fails with an error: no panic, no endless loop.
    #[test]
    fn truncated_or_corrupted_replies_are_errors_not_panics() {
        let d = IPV4[0];
        let first_len = u32_at(d, 0).expect("header") as usize;
        for cut in 1..d.len() {
            let r = messages(&d[..cut], 1).and_then(|ms| {
                ms.into_iter().try_for_each(|m| match m {
                    Message::Socket(p) => parse_socket(p).map(drop),
                    _ => Ok(()),
                })
            });
            if cut < first_len {
                assert!(r.is_err(), "a reply cut to {cut} bytes inside its first message was accepted");
            }
        }
        let mut state = 0x2545_f491_u32;
        for i in 0..d.len() {
            let mut bad = d.to_vec();
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            bad[i] ^= (state as u8) | 1;
            if let Ok(ms) = messages(&bad, 1) {
                for m in ms {
                    if let Message::Socket(p) = m {
                        let _ = parse_socket(p);
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_pieces_get_specific_errors() {
        let d = IPV4[0];
        assert!(matches!(messages(&d[..10], 1), Err(WireError::Short { .. })));
        assert!(matches!(messages(&d[..100], 1), Err(WireError::BadMessageLength { .. })));
        assert_eq!(messages(d, 9), Err(WireError::Sequence { got: 1, want: 9 }));
        let mut zero_len = d.to_vec();
        zero_len[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(messages(&zero_len, 1), Err(WireError::BadMessageLength { claimed: 0, .. })));
        let mut intr = d.to_vec();
        intr[6] |= NLM_F_DUMP_INTR as u8;
        assert_eq!(messages(&intr, 1), Err(WireError::Interrupted));
        let mut unknown = d.to_vec();
        unknown[4..6].copy_from_slice(&99u16.to_ne_bytes());
        assert_eq!(messages(&unknown, 1), Err(WireError::UnexpectedType(99)));

        let first = u32_at(d, 0).expect("header") as usize;
        let payload = &d[NLMSG_HDRLEN..first];
        assert!(matches!(parse_socket(&payload[..40]), Err(WireError::Short { what: "inet_diag_msg", .. })));
        // An attribute claiming more than is left.
        let mut long_attr = payload.to_vec();
        long_attr[INET_DIAG_MSG_LEN..INET_DIAG_MSG_LEN + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(matches!(parse_socket(&long_attr), Err(WireError::BadAttributeLength { .. })));
        // A tcp_info from before Linux 4.6.
        let mut short_info = Vec::from(&payload[..INET_DIAG_MSG_LEN]);
        short_info.extend_from_slice(&(4u16 + 100).to_ne_bytes());
        short_info.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        short_info.extend_from_slice(&[0; 100]);
        assert_eq!(parse_socket(&short_info), Err(WireError::OldTcpInfo(100)));
        // A 5.3-era tcp_info without tcpi_snd_wnd parses, window unknown.
        let mut no_wnd = Vec::from(&payload[..INET_DIAG_MSG_LEN]);
        no_wnd.extend_from_slice(&(4u16 + tcpi::SND_WND as u16).to_ne_bytes());
        no_wnd.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        no_wnd.extend_from_slice(&vec![0; tcpi::SND_WND]);
        assert_eq!(parse_socket(&no_wnd).expect("parses").info.expect("info").snd_wnd, None);
        // A kernel error in place of the dump: nlmsgerr carries -errno.
        let err = [
            &20u32.to_ne_bytes()[..],
            &NLMSG_ERROR.to_ne_bytes(),
            &0u16.to_ne_bytes(),
            &1u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &(-libc::EPERM).to_ne_bytes(),
        ]
        .concat();
        assert_eq!(messages(&err, 1), Ok(vec![Message::Error(libc::EPERM)]));
    }

    fn decode_all(bytes: &[u8]) {
        if let Ok(ms) = messages(bytes, 1) {
            for m in ms {
                if let Message::Socket(p) = m {
                    let _ = parse_socket(p);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            decode_all(&bytes);
            let _ = parse_socket(&bytes);
        }

        #[test]
        fn damaged_real_replies_decode_or_fail_cleanly(
            cut in 0usize..4000,
            flips in proptest::collection::vec((0usize..4000, 1u8..=255), 0..8),
        ) {
            let mut d = IPV4[0].to_vec();
            for (at, x) in flips {
                let n = d.len();
                d[at % n] ^= x;
            }
            d.truncate(cut.min(d.len()));
            decode_all(&d);
        }
    }
}
