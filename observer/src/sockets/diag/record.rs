//! A sock_diag reply as the `SockRecord` the socket table already knows,
//! so tracking and classification work the same whatever read the kernel.
//!
//! sock_diag reports queue sizes, not sequence numbers. The record gets
//! synthetic ones that reproduce exactly what `ss` shows (Send-Q =
//! `idiag_wqueue`, notsent = `tcpi_notsent_bytes`) and move only when the
//! real ones would: `snd_una` is the low half of `tcpi_bytes_acked`, which
//! the kernel advances by exactly the bytes each ACK acknowledges.

use observer_common::{SockRecord, tcp_state, timer};

use super::wire::DiagSocket;

/// The records' clock: sock_diag gives ages in ms, so `jiffies` and the
/// stamps count milliseconds and the table must date them with this tick.
pub const TICK_NS: u64 = 1_000_000;

/// `inet_diag_msg.idiag_timer` as the kernel's `icsk_pending`
/// (net/ipv4/inet_diag.c, inet_sk_diag_fill): 1 covers RTO, RACK
/// reordering and tail-loss probe alike; 4 is the persist timer.
fn pending(diag_timer: u8) -> u8 {
    match diag_timer {
        1 => timer::RETRANS,
        4 => timer::PROBE0,
        _ => 0,
    }
}

/// `now_ms - age_ms`, kept off 0, which the table reads as "no stamp".
fn stamp(now_ms: u32, age_ms: u32) -> u32 {
    match now_ms.wrapping_sub(age_ms) {
        0 => 1,
        s => s,
    }
}

/// The record for one socket: a full one, or a TIME_WAIT one with only its
/// addresses (counted, never classified); None for request mini-sockets.
pub fn to_record(s: &DiagSocket, netns: u32, now_ms: u32) -> Option<SockRecord> {
    if s.state == tcp_state::TIME_WAIT {
        let r = SockRecord {
            sk: s.cookie,
            netns,
            state: s.state,
            family: s.family,
            sport: s.sport,
            dport: s.dport,
            saddr: s.src,
            daddr: s.dst,
            ..SockRecord::default()
        };
        return Some(r);
    }
    let info = s.info?;
    if s.state == tcp_state::NEW_SYN_RECV {
        return None;
    }
    let mut r = SockRecord {
        sk: s.cookie,
        inode: u64::from(s.inode),
        netns,
        state: s.state,
        family: s.family,
        pending: pending(s.timer),
        backoff: info.backoff,
        retransmits: info.retransmits,
        probes_out: info.probes,
        sport: s.sport,
        dport: s.dport,
        // Without tcpi_snd_wnd the window is unknown: call it open, so no
        // socket is taken for zero-window.
        snd_wnd: info.snd_wnd.unwrap_or(u32::MAX),
        wmem_queued: s.wmem_queued.map_or(0, |w| w as i32),
        saddr: s.src,
        daddr: s.dst,
        jiffies: stamp(now_ms, 0),
        rcv_tstamp: stamp(now_ms, info.last_ack_recv_ms),
        rto: info.rto_us / 1000,
        total_retrans: info.total_retrans,
        // tcp_info does not date the first zero-window probe: such a stall
        // is timed from first sight, which can only understate it.
        probes_tstamp: 0,
        ..SockRecord::default()
    };
    // A listener's wqueue is its accept backlog limit, not bytes.
    if s.state != tcp_state::LISTEN {
        let unsent = info.notsent_bytes.min(s.wqueue);
        let unacked = s.wqueue - unsent;
        r.snd_una = info.bytes_acked as u32;
        r.snd_nxt = r.snd_una.wrapping_add(unacked);
        r.write_seq = r.snd_nxt.wrapping_add(unsent);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::diag::wire::TcpInfo;

    fn est(wqueue: u32, notsent: u32, bytes_acked: u64) -> DiagSocket {
        DiagSocket {
            family: libc::AF_INET as u8,
            state: tcp_state::ESTABLISHED,
            cookie: 77,
            inode: 1234,
            wqueue,
            info: Some(TcpInfo { notsent_bytes: notsent, bytes_acked, snd_wnd: Some(0), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn queues_split_like_ss_and_the_progress_marker_wraps() {
        // bytes_acked past 2^32: only its low half matters, and wrapping
        // arithmetic keeps the split exact.
        let r = to_record(&est(5000, 3000, (1 << 32) + u64::from(u32::MAX) - 100), 9, 1000).expect("full socket");
        assert_eq!(r.snd_nxt.wrapping_sub(r.snd_una), 2000, "unacked = Send-Q - notsent");
        assert_eq!(r.write_seq.wrapping_sub(r.snd_nxt), 3000, "unsent = notsent");
        assert_eq!((r.sk, r.inode, r.netns, r.snd_wnd), (77, 1234, 9, 0));
        // A torn read (notsent past the queue) never invents bytes.
        let torn = to_record(&est(100, 300, 0), 9, 1000).expect("full socket");
        assert_eq!(torn.write_seq.wrapping_sub(torn.snd_una), 100);
    }

    #[test]
    fn ages_become_stamps_on_a_millisecond_clock() {
        let mut s = est(0, 0, 0);
        s.info = Some(TcpInfo { last_ack_recv_ms: 8000, rto_us: 204_000, ..s.info.expect("info") });
        let r = to_record(&s, 0, 10_000).expect("full socket");
        assert_eq!(r.jiffies.wrapping_sub(r.rcv_tstamp), 8000);
        assert_eq!(r.rto, 204, "the RTO in the record's ms ticks");
        // Across the wrap of the ms clock, and never the "no stamp" 0.
        let r = to_record(&s, 0, 3000).expect("full socket");
        assert_eq!(r.jiffies.wrapping_sub(r.rcv_tstamp), 8000);
        assert_ne!(to_record(&s, 0, 8000).expect("full socket").rcv_tstamp, 0);
    }

    #[test]
    fn timers_and_missing_fields() {
        let mut s = est(10, 10, 0);
        for (diag, icsk) in [(0, 0), (1, timer::RETRANS), (2, 0), (4, timer::PROBE0)] {
            s.timer = diag;
            assert_eq!(to_record(&s, 0, 1).expect("full socket").pending, icsk, "idiag_timer {diag}");
        }
        // An old kernel without tcpi_snd_wnd: never a zero window.
        s.info = Some(TcpInfo { snd_wnd: None, ..s.info.expect("info") });
        assert_eq!(to_record(&s, 0, 1).expect("full socket").snd_wnd, u32::MAX);
        // Listeners carry no bytes; mini-sockets are skipped.
        let l = DiagSocket { state: tcp_state::LISTEN, wqueue: 4096, ..s };
        let r = to_record(&l, 0, 1).expect("listener");
        assert_eq!((r.write_seq, r.snd_nxt, r.snd_una), (0, 0, 0));
        assert_eq!(to_record(&DiagSocket { info: None, ..s }, 0, 1), None);
    }
}
