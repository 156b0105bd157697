//! The agent's view of the target's sockets, rebuilt at every sweep from the
//! iterator's records (the kernel's truth) and the probes' event state.

use std::collections::{BTreeMap, HashMap, HashSet};

use observer_common::{SockRecord, tcp_state};

use crate::classify::{self, Class, Observed, StallReason, Thresholds, ZombieReason};

/// One socket of a target, with the times the agent keeps for it.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub owner: u32,
    pub record: SockRecord,
    pub class: Class,
    /// CLOCK_MONOTONIC ns.
    pub progress_at: u64,
    pub close_wait_at: Option<u64>,
    pub zero_window_at: Option<u64>,
    /// The kernel map holds (or was asked to hold) this socket.
    pub kernel_tracked: bool,
    /// The sweep that last saw the socket.
    pub seen: u64,
}

impl Tracked {
    pub fn unsent(&self) -> u32 {
        self.record.write_seq.wrapping_sub(self.record.snd_nxt)
    }
    pub fn unacked(&self) -> u32 {
        self.record.snd_nxt.wrapping_sub(self.record.snd_una)
    }
    pub fn is_listener(&self) -> bool {
        self.record.state == tcp_state::LISTEN
    }
    pub fn orphan(&self) -> bool {
        self.record.inode == 0
    }
}

/// What the sweep wants the kernel side to learn.
#[derive(Debug, Default)]
pub struct SweepActions {
    /// Target sockets the probes do not know yet: (sk, owner, snd_una).
    pub track: Vec<(u64, u32, u32)>,
    /// (netns, port) -> owner of every listening socket of the targets.
    pub listen_ports: HashMap<(u32, u16), u32>,
    /// Sockets the kernel map lost (LRU eviction) though they still exist.
    pub evicted: u64,
}

#[derive(Default)]
pub struct SocketTable {
    socks: HashMap<u64, Tracked>,
    /// Length of a jiffy in ns, to date what a socket did before the agent
    /// first saw it; 0 when unknown (then such clocks start at first sight).
    tick_ns: u64,
    generation: u64,
}

/// Aggregates over the table for one set of owners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub by_state: BTreeMap<u8, u64>,
    pub zombies: BTreeMap<ZombieReason, u64>,
    pub zombie_bytes: BTreeMap<ZombieReason, u64>,
    pub stalled: BTreeMap<StallReason, u64>,
    pub stalled_bytes: BTreeMap<StallReason, u64>,
    pub unsent: u64,
    pub unacked: u64,
    pub tracked: u64,
}

impl Summary {
    fn add(&mut self, t: &Tracked) {
        self.tracked += 1;
        *self.by_state.entry(t.record.state).or_default() += 1;
        if t.is_listener() {
            return;
        }
        let (unsent, unacked) = (t.unsent() as u64, t.unacked() as u64);
        self.unsent += unsent;
        self.unacked += unacked;
        match t.class {
            Class::Zombie(r) => {
                *self.zombies.entry(r).or_default() += 1;
                *self.zombie_bytes.entry(r).or_default() += unsent + unacked;
            }
            Class::Stalled(r) => {
                *self.stalled.entry(r).or_default() += 1;
                *self.stalled_bytes.entry(r).or_default() += unsent + unacked;
            }
            Class::Healthy => {}
        }
    }
}

impl SocketTable {
    pub fn with_tick(tick_ns: u64) -> Self {
        SocketTable { socks: HashMap::new(), tick_ns, generation: 0 }
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.values()
    }

    /// Replaces the table with the target sockets among `records`.
    /// `inode_owner` maps the socket inodes of every target to its PID;
    /// `targets` are the PIDs being watched.
    pub fn sweep(
        &mut self,
        now: u64,
        records: &[SockRecord],
        inode_owner: &HashMap<u64, u32>,
        targets: &HashSet<u32>,
        thresholds: &Thresholds,
    ) -> SweepActions {
        let mut actions = SweepActions::default();
        // Updated in place and pruned by generation: at 100k sockets a
        // second map per sweep would double the agent's memory.
        self.generation += 1;
        let generation = self.generation;
        for rec in records {
            let prev = self.socks.get(&rec.sk);
            // The file table says who holds a socket; between full scans of
            // it, what the probes recorded for the socket says it; for an
            // orphan nothing holds, only our own memory of it does.
            let from_events = (rec.has_events != 0 && targets.contains(&rec.events.owner_tgid))
                .then_some(rec.events.owner_tgid);
            let owner = if rec.inode != 0 {
                inode_owner.get(&rec.inode).copied().or(from_events)
            } else {
                from_events.or_else(|| prev.map(|p| p.owner).filter(|o| targets.contains(o)))
            };
            let Some(owner) = owner else { continue };
            let t = update(prev, owner, rec, now, self.tick_ns, thresholds);
            if t.is_listener() {
                actions.listen_ports.insert((rec.netns, rec.sport), owner);
            }
            if rec.has_events == 0 {
                if prev.is_some_and(|p| p.kernel_tracked && p.record.has_events != 0) {
                    actions.evicted += 1;
                }
                if !t.is_listener() {
                    actions.track.push((rec.sk, owner, rec.snd_una));
                }
            }
            self.socks.insert(rec.sk, Tracked { seen: generation, ..t });
        }
        self.socks.retain(|_, t| t.seen == generation);
        actions
    }

    pub fn mark_kernel_tracked(&mut self, sk: u64) {
        if let Some(t) = self.socks.get_mut(&sk) {
            t.kernel_tracked = true;
        }
    }

    /// Summary over every socket in the table.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for t in self.socks.values() {
            s.add(t);
        }
        s
    }

    /// One summary per owning process, in a single pass over the table.
    pub fn summary_by_owner(&self) -> HashMap<u32, Summary> {
        let mut by: HashMap<u32, Summary> = HashMap::new();
        for t in self.socks.values() {
            by.entry(t.owner).or_default().add(t);
        }
        by
    }
}

fn earliest(a: Option<u64>, b: u64) -> u64 {
    match a {
        Some(a) if a != 0 => a.min(b),
        _ => b,
    }
}

/// When, on our clock, the kernel's jiffies `stamp` of this record was.
fn dated(rec: &SockRecord, stamp: u32, now: u64, tick_ns: u64) -> u64 {
    if tick_ns == 0 || stamp == 0 {
        return now;
    }
    let age = u64::from(rec.jiffies.wrapping_sub(stamp)) * tick_ns;
    now.saturating_sub(age)
}

/// One socket's next state from its previous one and a fresh record.
fn update(prev: Option<&Tracked>, owner: u32, rec: &SockRecord, now: u64, tick_ns: u64, th: &Thresholds) -> Tracked {
    let ev = (rec.has_events != 0).then_some(&rec.events);
    let unacked = rec.snd_nxt.wrapping_sub(rec.snd_una);
    let unsent = rec.write_seq.wrapping_sub(rec.snd_nxt);

    let mut progress_at = match prev {
        Some(p) if p.record.snd_una == rec.snd_una && unacked != 0 => p.progress_at,
        // Moved since the last sweep: the last ACK, not this sweep, is when.
        Some(_) => dated(rec, rec.rcv_tstamp, now, tick_ns),
        // First sight: trust the probes if they saw it, else the socket's own
        // stamp of the last ACK it received. No progress can be more recent
        // than that ACK, so the stall is never overstated.
        None => match ev {
            Some(e) if e.last_progress_ns != 0 => e.last_progress_ns,
            _ => dated(rec, rec.rcv_tstamp, now, tick_ns),
        },
    };
    if let Some(e) = ev {
        progress_at = progress_at.max(e.last_progress_ns);
    }
    if unacked == 0 {
        progress_at = now;
    }

    let close_wait_at = (rec.state == tcp_state::CLOSE_WAIT).then(|| {
        // The FIN that caused CLOSE_WAIT was the last segment received, or
        // came before it: dating from that stamp can only understate.
        let seen = prev.and_then(|p| p.close_wait_at).unwrap_or_else(|| dated(rec, rec.lrcvtime, now, tick_ns));
        match ev {
            Some(e) if e.close_wait_since_ns != 0 => e.close_wait_since_ns.min(seen),
            _ => seen,
        }
    });
    let zero_window_at = (rec.snd_wnd == 0 && unsent > 0).then(|| {
        // The kernel stamps the first probe of a zero-window episode.
        let seen = prev.and_then(|p| p.zero_window_at).unwrap_or_else(|| dated(rec, rec.probes_tstamp, now, tick_ns));
        earliest(ev.map(|e| e.zero_window_since_ns), seen)
    });

    let since = |at: u64| std::time::Duration::from_nanos(now.saturating_sub(at));
    let observed = Observed {
        state: rec.state,
        orphan: rec.inode == 0,
        unsent,
        unacked,
        retransmits: rec.retransmits,
        backoff: rec.backoff,
        pending: rec.pending,
        probes_out: rec.probes_out,
        snd_wnd: rec.snd_wnd,
        no_progress_for: since(progress_at),
        close_wait_for: close_wait_at.map(since),
        zero_window_for: zero_window_at.map(since),
    };
    Tracked {
        owner,
        record: *rec,
        class: classify::classify(&observed, th),
        progress_at,
        close_wait_at,
        zero_window_at,
        kernel_tracked: rec.has_events != 0 || prev.is_some_and(|p| p.kernel_tracked),
        seen: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn rec(sk: u64, inode: u64, state: u8) -> SockRecord {
        SockRecord { sk, inode, state, snd_wnd: 65535, ..Default::default() }
    }

    fn owners(pairs: &[(u64, u32)]) -> HashMap<u64, u32> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn keeps_only_target_sockets_and_attributes_orphans_through_history() {
        let mut table = SocketTable::default();
        let targets = HashSet::from([100]);
        let th = Thresholds::default();
        let mine = rec(1, 11, tcp_state::ESTABLISHED);
        let other = rec(2, 22, tcp_state::ESTABLISHED);
        let actions = table.sweep(SEC, &[mine, other], &owners(&[(11, 100)]), &targets, &th);
        assert_eq!(table.len(), 1);
        assert_eq!(actions.track, vec![(1, 100, 0)]);
        // The app closes it: no inode any more, data still queued.
        let orphan = SockRecord { inode: 0, state: tcp_state::FIN_WAIT1, snd_nxt: 500, write_seq: 501, ..mine };
        table.sweep(2 * SEC, &[orphan], &owners(&[]), &targets, &th);
        let t = table.sockets().next().expect("orphan still attributed");
        assert_eq!(t.class, Class::Zombie(ZombieReason::Orphaned));
        // Destroyed: gone from the iterator, gone from the table.
        table.sweep(3 * SEC, &[], &owners(&[]), &targets, &th);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn dead_peer_after_no_progress() {
        let mut table = SocketTable::default();
        let targets = HashSet::from([7]);
        let th = Thresholds { dead_after: std::time::Duration::from_secs(5), ..Default::default() };
        let inodes = owners(&[(9, 7)]);
        let mut r = SockRecord { snd_una: 1000, snd_nxt: 9000, write_seq: 20000, retransmits: 3, backoff: 3, ..rec(5, 9, tcp_state::ESTABLISHED) };
        table.sweep(SEC, &[r], &inodes, &targets, &th);
        table.sweep(4 * SEC, &[r], &inodes, &targets, &th);
        assert_eq!(table.summary().zombies.get(&ZombieReason::DeadPeer), None);
        table.sweep(7 * SEC, &[r], &inodes, &targets, &th);
        let s = table.summary();
        assert_eq!(s.zombies.get(&ZombieReason::DeadPeer), Some(&1));
        assert_eq!(s.zombie_bytes.get(&ZombieReason::DeadPeer), Some(&19000));
        assert_eq!((s.unsent, s.unacked), (11000, 8000));
        // An ACK arrives: progress resets the clock.
        r.snd_una = 2000;
        table.sweep(8 * SEC, &[r], &inodes, &targets, &th);
        assert_eq!(table.summary().zombies.get(&ZombieReason::DeadPeer), None);
    }

    #[test]
    fn sockets_found_late_are_dated_by_the_kernels_own_stamps() {
        // A 4 ms jiffy; the socket last heard an ACK 2000 jiffies (8 s) ago.
        let mut table = SocketTable::with_tick(4_000_000);
        let targets = HashSet::from([7]);
        let th = Thresholds { dead_after: std::time::Duration::from_secs(5), close_wait_after: std::time::Duration::from_secs(5), stall_after: std::time::Duration::from_secs(5) };
        let dead = SockRecord { snd_una: 10, snd_nxt: 500, write_seq: 500, backoff: 4, retransmits: 4, jiffies: 3000, rcv_tstamp: 1000, ..rec(1, 9, tcp_state::ESTABLISHED) };
        let cw = SockRecord { jiffies: 3000, lrcvtime: 1000, ..rec(2, 8, tcp_state::CLOSE_WAIT) };
        let zw = SockRecord { snd_wnd: 0, write_seq: 900, snd_nxt: 100, snd_una: 100, pending: 3, jiffies: 3000, probes_tstamp: 1000, ..rec(3, 6, tcp_state::ESTABLISHED) };
        let owners_ = owners(&[(9, 7), (8, 7), (6, 7)]);
        table.sweep(100 * SEC, &[dead, cw, zw], &owners_, &targets, &th);
        let s = table.summary();
        assert_eq!(s.stalled.get(&StallReason::ZeroWindow), Some(&1));
        assert_eq!(s.zombies.get(&ZombieReason::DeadPeer), Some(&1), "a restarted observer sees the old stall at once");
        assert_eq!(s.zombies.get(&ZombieReason::CloseWait), Some(&1));
        // Without a tick length nothing is dated: clocks start now.
        let mut table = SocketTable::default();
        table.sweep(100 * SEC, &[dead, cw, zw], &owners_, &targets, &th);
        assert!(table.summary().zombies.is_empty());
        assert!(table.summary().stalled.is_empty());
    }

    #[test]
    fn eviction_from_the_kernel_map_is_noticed() {
        let mut table = SocketTable::default();
        let targets = HashSet::from([7]);
        let th = Thresholds::default();
        let inodes = owners(&[(9, 7)]);
        let tracked = SockRecord { has_events: 1, ..rec(5, 9, tcp_state::ESTABLISHED) };
        assert_eq!(table.sweep(SEC, &[tracked], &inodes, &targets, &th).evicted, 0);
        let lost = SockRecord { has_events: 0, ..tracked };
        let actions = table.sweep(2 * SEC, &[lost], &inodes, &targets, &th);
        assert_eq!(actions.evicted, 1);
        assert_eq!(actions.track.len(), 1, "re-tracked");
    }

    #[test]
    fn listeners_register_ports_and_carry_no_bytes() {
        let mut table = SocketTable::default();
        let targets = HashSet::from([7]);
        let l = SockRecord { netns: 4026531840, sport: 8080, write_seq: 5, ..rec(1, 3, tcp_state::LISTEN) };
        let a = table.sweep(SEC, &[l], &owners(&[(3, 7)]), &targets, &Thresholds::default());
        assert_eq!(a.listen_ports.get(&(4026531840, 8080)), Some(&7));
        assert!(a.track.is_empty());
        let s = table.summary();
        assert_eq!((s.tracked, s.unsent), (1, 0));
    }
}
