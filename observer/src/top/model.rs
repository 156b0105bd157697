//! What `observer top` shows, as plain data: built from the agent's table
//! after a sweep, rendered by `view`. Kept free of terminal types so the
//! screen can be tested from hand-made models.

use std::time::Duration;

use observer_common::tcp_state;

use crate::{
    classify::Class,
    sockets::table::{Summary, Tracked},
};

/// One non-listening socket of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub owner: u32,
    pub peer: String,
    pub state: &'static str,
    pub unsent: u64,
    pub unacked: u64,
    pub backoff: u8,
    /// Time since `snd_una` last moved; None when nothing is outstanding,
    /// because then there is no ACK to wait for.
    pub no_ack_for: Option<Duration>,
    pub class: Class,
}

impl Row {
    pub fn queued(&self) -> u64 {
        self.unsent + self.unacked
    }

    pub fn from_tracked(t: &Tracked, now_ns: u64) -> Row {
        let unacked = u64::from(t.unacked());
        Row {
            owner: t.owner,
            peer: peer(t.record.family, &t.record.daddr, t.record.dport),
            state: tcp_state::name(t.record.state),
            unsent: u64::from(t.unsent()),
            unacked,
            backoff: t.record.backoff,
            no_ack_for: (unacked > 0).then(|| Duration::from_nanos(now_ns.saturating_sub(t.progress_at))),
            class: t.class,
        }
    }
}

pub use crate::sockets::listing::endpoint as peer;

/// Everything on one screen.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// How the target was chosen, e.g. `pid 4242` or `comm "node"`.
    pub target: String,
    /// The processes that matched at the last sweep.
    pub pids: Vec<u32>,
    pub interval: Duration,
    /// (VmRSS, RssAnon) in bytes, summed over `pids`.
    pub rss: Option<(u64, u64)>,
    pub summary: Summary,
    /// Worst first: most queued bytes at the top.
    pub rows: Vec<Row>,
    /// Why the last sweep failed, if it did.
    pub error: Option<String>,
}

/// Rows of every non-listening socket, most queued bytes first; ties keep a
/// stable order so the screen does not shuffle between refreshes.
pub fn rows<'a>(sockets: impl Iterator<Item = &'a Tracked>, now_ns: u64) -> Vec<Row> {
    let mut rows: Vec<Row> = sockets.filter(|t| !t.is_listener()).map(|t| Row::from_tracked(t, now_ns)).collect();
    sort(&mut rows);
    rows
}

pub fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| b.queued().cmp(&a.queued()).then_with(|| a.peer.cmp(&b.peer)).then(a.owner.cmp(&b.owner)));
}

#[cfg(test)]
mod tests {
    use observer_common::{SockRecord, tcp_state};

    use super::*;
    use crate::classify::ZombieReason;

    use std::net::{Ipv4Addr, Ipv6Addr};

    const SEC: u64 = 1_000_000_000;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;

    fn tracked(sk: u64, state: u8, port: u16, unsent: u32, unacked: u32, progress_at: u64, class: Class) -> Tracked {
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        let record = SockRecord {
            sk,
            inode: sk,
            state,
            family: AF_INET,
            dport: port,
            snd_una: 1000,
            snd_nxt: 1000 + unacked,
            write_seq: 1000 + unacked + unsent,
            backoff: 3,
            daddr,
            ..Default::default()
        };
        Tracked {
            owner: 42,
            record,
            class,
            progress_at,
            close_wait_at: None,
            zero_window_at: None,
            open_at: 0,
            connect_at: None,
            probe_seen_at: None,
            kernel_tracked: true,
            seen: 0,
        }
    }

    #[test]
    fn rows_skip_listeners_and_put_most_queued_first() {
        let now = 100 * SEC;
        let socks = [
            tracked(1, tcp_state::LISTEN, 0, 0, 0, now, Class::Healthy),
            tracked(2, tcp_state::ESTABLISHED, 5001, 10, 0, now, Class::Healthy),
            tracked(3, tcp_state::ESTABLISHED, 5002, 70_000, 30_000, 88 * SEC, Class::Zombie(ZombieReason::DeadPeer)),
            tracked(4, tcp_state::CLOSE_WAIT, 5003, 500, 0, now, Class::Zombie(ZombieReason::CloseWait)),
        ];
        let rows = rows(socks.iter(), now);
        let ports: Vec<&str> = rows.iter().map(|r| r.peer.rsplit(':').next().unwrap_or("")).collect();
        assert_eq!(ports, ["5002", "5003", "5001"]);
        assert_eq!(rows[0].peer, "198.18.0.2:5002");
        assert_eq!((rows[0].unsent, rows[0].unacked, rows[0].queued()), (70_000, 30_000, 100_000));
        assert_eq!(rows[0].no_ack_for, Some(Duration::from_secs(12)));
        assert_eq!(rows[1].state, "close_wait");
        assert_eq!(rows[1].no_ack_for, None, "nothing unacknowledged, nothing to wait for");
    }

    #[test]
    fn peers_of_both_families() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(peer(AF_INET, &v4, 80), "127.0.0.1:80");
        assert_eq!(peer(AF_INET6, &Ipv6Addr::LOCALHOST.octets(), 443), "[::1]:443");
        let mapped = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        assert_eq!(peer(AF_INET6, &mapped, 9), "10.1.2.3:9");
        assert_eq!(peer(1, &v4, 9), "family 1");
    }
}
