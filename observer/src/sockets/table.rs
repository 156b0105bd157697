//! The agent's view of the target's sockets, rebuilt at every sweep from the
//! iterator's records (the kernel's truth) and the probes' event state.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use observer_common::{FLAG_APP_CLOSED, SockEvents, SockRecord, tcp_state, timer};

use crate::classify::{self, Class, Observed, Thresholds};
pub use crate::sockets::summary::Summary;
use crate::sockets::{
    entries::Entries,
    state_file::{self, Seed},
};
use crate::target::InodeOwners;
// Keyed by kernel addresses, inodes and PIDs, looked up per record of a walk.
use foldhash::{HashMap as FastMap, HashSet as FastSet};

/// One socket of a target, with the times the agent keeps for it.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub owner: u32,
    pub record: SockRecord,
    pub class: Class,
    /// CLOCK_MONOTONIC ns. Each is a lower bound of how long the condition
    /// has lasted: dated from events, or from the kernel's own stamps.
    pub progress_at: u64,
    pub close_wait_at: Option<u64>,
    pub zero_window_at: Option<u64>,
    /// Latest moment the peer's window is known to have been open (data
    /// moved, or a sweep saw it non-zero): no zero-window episode began
    /// before it.
    pub open_at: u64,
    pub connect_at: Option<u64>,
    /// First sweep that saw the current run of unanswered probes.
    pub probe_seen_at: Option<u64>,
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

    /// What the kernel map should start from for a socket the probes have
    /// not seen: the agent's own estimates, so that tracking it restarts
    /// no clock.
    fn as_events(&self, now: u64) -> SockEvents {
        let r = &self.record;
        SockEvents {
            owner_tgid: self.owner,
            flags: if self.orphan() { FLAG_APP_CLOSED } else { 0 },
            snd_una: r.snd_una,
            total_retrans: r.total_retrans,
            last_progress_ns: if self.unacked() == 0 { now } else { self.progress_at },
            close_wait_since_ns: self.close_wait_at.unwrap_or(0),
            zero_window_since_ns: self.zero_window_at.unwrap_or(0),
            state_since_ns: self.connect_at.or(self.close_wait_at).unwrap_or(0),
            ..SockEvents::default()
        }
    }
}

/// What the sweep wants the kernel side to learn.
#[derive(Debug, Default)]
pub struct SweepActions {
    /// Target sockets the probes do not know yet, with what to start from.
    pub track: Vec<(u64, SockEvents)>,
    /// (netns, port) -> owner of every listening socket of the targets.
    pub listen_ports: HashMap<(u32, u16), u32>,
    /// Sockets the kernel map lost (LRU eviction) though they still exist.
    pub evicted: u64,
}

#[derive(Default)]
pub struct SocketTable {
    socks: Entries,
    /// Length of a jiffy in ns, to date what a socket did before the agent
    /// first saw it; 0 when unknown (then such clocks start at first sight).
    tick_ns: u64,
    generation: u64,
    /// Every process that was a target and still owns a socket here: an
    /// orphan stays its closer's after that process exits.
    known_owners: FastSet<u32>,
    /// Sockets with a file that no target held at the last full read of
    /// the file tables (passed away, or accepted by another process), with
    /// that file's inode.
    disowned: FastMap<u64, u64>,
    /// What a previous observer knew (`--state-file`), taken at first sight.
    seeds: FastMap<u64, Seed>,
    /// Namespaces the next sweep could not read: their sockets stay as they were.
    unread: FastSet<u32>,
    /// Socket inodes of the targets that the last full walk showed are not
    /// TCP sockets (UDP, unix).
    foreign_inodes: FastSet<u64>,
    /// Marked sockets that are not in the table.
    foreign_marked: FastSet<u64>,
    /// When the last sweep ran.
    last_now: u64,
    /// The file tables the last `reown` applied, and the table it left.
    last_reown: Option<Reowned>,
    /// When the earliest class change among the sockets the last sweep read
    /// is due (see `next_change`).
    next_change: Option<u64>,
}

/// A `reown` as it ended: every entry with a file then matched `owners`.
struct Reowned {
    owners: InodeOwners,
    holders_version: u64,
    matched: usize,
}

impl SocketTable {
    pub fn with_tick(tick_ns: u64) -> Self {
        SocketTable { tick_ns, ..SocketTable::default() }
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn sockets(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.values()
    }

    /// (kernel address, socket) pairs.
    pub fn entries(&self) -> impl Iterator<Item = (&u64, &Tracked)> {
        self.socks.iter()
    }

    /// Continues from what an earlier observer knew: each seed stands in for
    /// the previous sweep of its socket, if that socket is still there.
    pub fn seed(&mut self, seeds: HashMap<u64, Seed>) {
        self.known_owners.extend(seeds.values().map(|s| s.owner));
        self.seeds.extend(seeds);
    }

    /// Namespaces the coming sweep could not read (entering one failed):
    /// its sockets are kept as last seen rather than dropped as gone.
    pub fn keep_unread(&mut self, netns: &HashSet<u32>) {
        self.unread = netns.iter().copied().collect();
    }

    /// Whether a socket the probes attribute to a target has a file that
    /// the last read of the file tables did not see: then who holds it must
    /// be read again before trusting the probes (it may have been accepted
    /// by another process on the same port).
    pub fn needs_owner_scan(&self, records: &[SockRecord], inode_owner: &InodeOwners, targets: &HashSet<u32>) -> bool {
        records.iter().any(|r| {
            r.inode != 0
                && r.has_events != 0
                && targets.contains(&r.events.owner_tgid)
                && !inode_owner.contains_key(&r.inode)
                && !self.disowned.contains_key(&r.sk)
        })
    }

    /// Processes whose sockets the probes should attribute: the targets,
    /// and former targets that still own orphans.
    pub fn known_owners(&self) -> &FastSet<u32> {
        &self.known_owners
    }

    /// Replaces the table with the target sockets among `records`, a full
    /// walk of the watched namespaces. `inode_owner` maps the socket inodes
    /// of every target to its PID, read afresh when `full_scan`; `targets`
    /// are the PIDs being watched.
    pub fn sweep(
        &mut self,
        now: u64,
        records: &[SockRecord],
        inode_owner: &InodeOwners,
        targets: &HashSet<u32>,
        full_scan: bool,
        thresholds: &Thresholds,
    ) -> SweepActions {
        let mut actions = SweepActions::default();
        // Updated in place and pruned by generation: at 100k sockets a
        // second map per sweep would double the agent's memory.
        self.generation += 1;
        self.next_change = None;
        self.known_owners.extend(targets.iter().copied());
        if full_scan {
            self.disowned.clear();
        }
        let listeners = listener_owners(records, inode_owner);
        self.socks.reserve(records.len().saturating_sub(self.socks.len()));
        for rec in records {
            self.absorb(rec, now, inode_owner, &listeners, full_scan, thresholds, &mut actions);
        }
        // Inodes of the targets that are no TCP socket of theirs (UDP,
        // unix): known, so a later file-table read does not ask for a walk.
        if full_scan {
            let tcp: HashSet<u64> = records.iter().map(|r| r.inode).collect();
            self.foreign_inodes = inode_owner.keys().copied().filter(|i| !tcp.contains(i)).collect();
        }
        let unread = std::mem::take(&mut self.unread);
        self.finish(targets, &unread);
        // Marked sockets that are not the targets' (a listener of another
        // process, a socket given away): the marked sweeps count them too.
        self.foreign_marked =
            records.iter().filter(|r| r.marked != 0 && !self.socks.contains_key(&r.sk)).map(|r| r.sk).collect();
        self.last_now = now;
        actions
    }

    /// A marked-socket sweep (`sockets::marked`): `records` are the marked
    /// sockets that are not settled; `settled` how many settled ones the
    /// kernel passed over, which cross as nothing and stand as they are.
    /// `gone` are marked sockets that closed before the read, `closing`
    /// those that closed during it (either counted as settled or not).
    /// None when the count disagrees with the table (a close the probes
    /// could not queue, a mark the table does not know): then only a walk
    /// can tell. Only valid while every entry is marked ([`Self::all_marked`]).
    #[allow(clippy::too_many_arguments)]
    pub fn merge(
        &mut self,
        now: u64,
        records: &[SockRecord],
        settled: u64,
        gone: &[u64],
        closing: &[u64],
        inode_owner: &InodeOwners,
        targets: &HashSet<u32>,
        thresholds: &Thresholds,
    ) -> Option<SweepActions> {
        for sk in gone {
            self.socks.remove(sk);
            self.foreign_marked.remove(sk);
        }
        let crossed: HashSet<u64> = records.iter().map(|r| r.sk).collect();
        let quiet_here = |sk: &u64| !crossed.contains(sk);
        // Counted from what crossed, not over the table: that is the cost of a sweep.
        let crossed_in = |set_has: &dyn Fn(&u64) -> bool| crossed.iter().filter(|sk| set_has(sk)).count();
        let expected = self.socks.len() - crossed_in(&|sk| self.socks.contains_key(sk)) + self.foreign_marked.len()
            - crossed_in(&|sk| self.foreign_marked.contains(sk));
        let maybe = closing.iter().filter(|sk| quiet_here(sk)).count();
        let settled = settled as usize;
        if settled > expected || settled + maybe < expected {
            return None;
        }
        for sk in closing {
            self.socks.remove(sk);
            self.foreign_marked.remove(sk);
        }
        let mut actions = SweepActions::default();
        self.generation += 1;
        // Only what crossed can change by time alone: a settled socket is
        // quiet, and a quiet socket is healthy however long it stays so.
        self.next_change = None;
        self.known_owners.extend(targets.iter().copied());
        let listeners = listener_owners(records, inode_owner);
        for rec in records {
            if self.socks.get(&rec.sk).is_some_and(|t| t.record.quiet()) {
                // Settled since it last crossed, so quiet at the last sweep:
                // nothing was outstanding and the window was open then.
                let last = self.last_now;
                self.socks.modify(&rec.sk, |t| {
                    t.progress_at = t.progress_at.max(last);
                    t.open_at = t.open_at.max(last);
                });
            }
            self.absorb(rec, now, inode_owner, &listeners, false, thresholds, &mut actions);
            if self.socks.contains_key(&rec.sk) {
                self.foreign_marked.remove(&rec.sk);
            } else if rec.marked != 0 {
                self.foreign_marked.insert(rec.sk);
            }
        }
        // Listening sockets are never quiet, so all of them crossed.
        for t in self.socks.listeners() {
            actions.listen_ports.insert((t.record.netns, t.record.sport), t.owner);
        }
        let owning = self.socks.by_owner();
        self.known_owners.retain(|p| targets.contains(p) || owning.contains_key(p));
        self.last_now = now;
        Some(actions)
    }

    /// Applies a fresh read of the targets' file tables to the table
    /// without a walk: a socket whose file no target holds any more is no
    /// longer theirs. True when the tables show a socket the table does not
    /// know (handed over, or missed): then only a full walk can tell.
    pub fn reown(&mut self, inode_owner: &InodeOwners) -> bool {
        // One a target holds again is not in the table: it counts as unknown below.
        self.disowned.retain(|_, inode| !inode_owner.contains_key(inode));
        // Counted, not collected: a socket's inode is its own while it lives
        // (one per socket file), so the tables show an unknown socket exactly
        // when they hold more inodes than the table and the targets' other
        // files account for. At 96k sockets a set of them cost as much as
        // the kernel's read of the tables.
        let foreign = self.foreign_inodes.iter().filter(|i| inode_owner.contains_key(i)).count();
        // Idle servers' tables rarely change between reads: then nothing
        // moved or went, and the pass below (a cache miss per entry, 150 ms
        // at 96k sockets) is skipped for a comparison of the file tables.
        if let Some(last) = &self.last_reown
            && last.holders_version == self.socks.holders_version()
            && last.owners == *inode_owner
        {
            return inode_owner.len() > last.matched + foreign;
        }
        let mut matched = 0;
        let (mut moved, mut gone) = (Vec::new(), Vec::new());
        for (sk, t) in self.socks.iter().filter(|(_, t)| t.record.inode != 0) {
            match inode_owner.get(&t.record.inode) {
                Some(&pid) => {
                    matched += 1;
                    if pid != t.owner {
                        moved.push((*sk, pid));
                    }
                }
                None => gone.push(*sk),
            }
        }
        for (sk, pid) in moved {
            self.socks.modify(&sk, |t| t.owner = pid);
        }
        for sk in gone {
            if let Some(t) = self.socks.remove(&sk) {
                self.disowned.insert(sk, t.record.inode);
                if t.record.marked != 0 {
                    self.foreign_marked.insert(sk);
                }
            }
        }
        self.last_reown =
            Some(Reowned { owners: inode_owner.clone(), holders_version: self.socks.holders_version(), matched });
        inode_owner.len() > matched + foreign
    }

    /// Room for `n` sockets in all.
    pub fn reserve(&mut self, n: usize) {
        self.socks.reserve(n.saturating_sub(self.socks.len()));
    }

    /// Whether a walk's record can concern the table. Not when a file of a
    /// process that is no target holds the socket, no probe saw it, it
    /// carries no mark and neither the table nor a seed knows it: no rule
    /// of the sweep would give it an owner.
    pub fn may_concern(&self, rec: &SockRecord, inode_owner: &InodeOwners) -> bool {
        rec.inode == 0
            || inode_owner.contains_key(&rec.inode)
            || rec.has_events != 0
            || rec.marked != 0
            || rec.state == tcp_state::LISTEN
            || self.socks.contains_key(&rec.sk)
            || self.seeds.contains_key(&rec.sk)
    }

    /// Whether every socket of the table carries a mark, so that a
    /// marked-socket sweep sees all of them (TIME_WAIT sockets never do).
    pub fn all_marked(&self) -> bool {
        self.socks.all_marked()
    }

    /// One record's socket into the table, if a target owns it.
    #[allow(clippy::too_many_arguments)]
    fn absorb(
        &mut self,
        rec: &SockRecord,
        now: u64,
        inode_owner: &InodeOwners,
        listeners: &HashMap<(u32, u16), Option<u32>>,
        full_scan: bool,
        thresholds: &Thresholds,
        actions: &mut SweepActions,
    ) {
        let seeded = match self.seeds.remove(&rec.sk) {
            Some(s) if state_file::matches(&s, rec) && !self.socks.contains_key(&rec.sk) => {
                Some(state_file::as_tracked(&s, rec))
            }
            _ => None,
        };
        let prev = self.socks.get(&rec.sk).or(seeded.as_ref());
        let known = |pid: &u32| self.known_owners.contains(pid);
        let from_events = (rec.has_events != 0).then_some(rec.events.owner_tgid).filter(known);
        let owner = if rec.inode != 0 {
            // A file holds it: the file tables say whose it is. Between
            // their full reads, a socket they have not seen yet (a new
            // connection) is the probes' to attribute.
            match inode_owner.get(&rec.inode) {
                Some(&pid) => Some(pid),
                None if full_scan => {
                    if from_events.is_some() || prev.is_some() {
                        self.disowned.insert(rec.sk, rec.inode);
                    }
                    None
                }
                None if self.disowned.contains_key(&rec.sk) => None,
                None => from_events,
            }
        } else if rec.has_events != 0 && rec.events.flags & FLAG_APP_CLOSED != 0 {
            // Closed: its owner is the process that closed it, if that
            // was (or is) a target; one that was handed the socket and
            // closed it is not ours.
            from_events
        } else {
            // Not accepted yet, or orphaned before the probes saw it
            // (closed before this observer started, and no pinned
            // state): the target listening on its port accepted it.
            from_events
                .or_else(|| prev.map(|p| p.owner).filter(known))
                .or_else(|| listeners.get(&(rec.netns, rec.sport)).copied().flatten())
        };
        let Some(owner) = owner else { return };
        let (t, changes_at) = update(prev, owner, rec, now, self.tick_ns, thresholds);
        self.next_change = self.next_change.into_iter().chain(changes_at).min();
        if t.is_listener() {
            actions.listen_ports.insert((rec.netns, rec.sport), owner);
        }
        if rec.has_events == 0 {
            if prev.is_some_and(|p| p.kernel_tracked && p.record.has_events != 0) {
                actions.evicted += 1;
            }
            if !t.is_listener() && rec.state != tcp_state::TIME_WAIT {
                actions.track.push((rec.sk, t.as_events(now)));
            }
        }
        self.socks.insert(rec.sk, Tracked { seen: self.generation, ..t });
    }

    /// Drops what this sweep did not see (except in namespaces it could not
    /// read) and owners nothing is left of.
    fn finish(&mut self, targets: &HashSet<u32>, unread: &FastSet<u32>) {
        let generation = self.generation;
        self.socks.retain(|_, t| t.seen == generation || unread.contains(&t.record.netns));
        // A seed not matched at the first sweep is of a socket that is gone.
        self.seeds.clear();
        let owning = self.socks.by_owner();
        self.known_owners.retain(|p| targets.contains(p) || owning.contains_key(p));
    }

    /// When the earliest class change among the sockets the last sweep read
    /// is due, if nothing else happens (CLOCK_MONOTONIC ns).
    pub fn next_change(&self) -> Option<u64> {
        self.next_change
    }

    pub fn mark_kernel_tracked(&mut self, sk: u64) {
        self.socks.modify(&sk, |t| t.kernel_tracked = true);
    }

    /// Summary over every socket in the table.
    pub fn summary(&self) -> Summary {
        self.socks.total().clone()
    }

    /// One summary per owning process.
    pub fn summary_by_owner(&self) -> HashMap<u32, Summary> {
        self.socks.by_owner().iter().map(|(&pid, s)| (pid, s.clone())).collect()
    }

    /// The sockets in trouble, and those with a clock worth keeping: the
    /// few a sweep lists and pins, found without a pass over the table.
    pub fn notable(&self) -> impl Iterator<Item = (&u64, &Tracked)> {
        self.socks.notable()
    }
}

/// (netns, port) -> the target listening there; None where a process we do
/// not watch listens on the same port too (then no guess is made).
fn listener_owners(records: &[SockRecord], inode_owner: &InodeOwners) -> HashMap<(u32, u16), Option<u32>> {
    let mut by_port: HashMap<(u32, u16), Option<u32>> = HashMap::new();
    for r in records.iter().filter(|r| r.state == tcp_state::LISTEN) {
        let owner = inode_owner.get(&r.inode).copied();
        by_port.entry((r.netns, r.sport)).and_modify(|o| *o = o.zip(owner).map(|(a, b)| a.min(b))).or_insert(owner);
    }
    by_port
}

/// When, on our clock, the kernel's jiffies `stamp` of this record was;
/// `now` when there is no stamp (the age is then understated, never made up).
fn dated(rec: &SockRecord, stamp: u32, now: u64, tick_ns: u64) -> u64 {
    if tick_ns == 0 || stamp == 0 {
        return now;
    }
    let age = u64::from(rec.jiffies.wrapping_sub(stamp)) * tick_ns;
    now.saturating_sub(age)
}

/// Least time a persist timer backed off `backoff` times has been probing:
/// each interval is at least the 200 ms RTO floor doubled per backoff, and
/// at most the 120 s RTO ceiling.
fn persist_lower_bound(backoff: u8) -> u64 {
    const RTO_MIN_NS: u64 = 200_000_000;
    const RTO_MAX_NS: u64 = 120_000_000_000;
    (0..u32::from(backoff).min(64)).map(|i| RTO_MIN_NS.checked_shl(i).unwrap_or(u64::MAX).min(RTO_MAX_NS)).sum()
}

/// One socket's next state from its previous one and a fresh record, and
/// when its class changes if nothing else happens (CLOCK_MONOTONIC ns).
fn update(
    prev: Option<&Tracked>,
    owner: u32,
    rec: &SockRecord,
    now: u64,
    tick_ns: u64,
    th: &Thresholds,
) -> (Tracked, Option<u64>) {
    let ev = (rec.has_events != 0).then_some(&rec.events);
    let unacked = rec.snd_nxt.wrapping_sub(rec.snd_una);
    let unsent = rec.write_seq.wrapping_sub(rec.snd_nxt);
    // No ACK can be more recent than the socket's stamp of the last one.
    let last_ack = dated(rec, rec.rcv_tstamp, now, tick_ns);
    let rto = u64::from(rec.rto) * tick_ns;
    let una_moved = prev.is_some_and(|p| p.record.snd_una != rec.snd_una);

    let mut progress_at = match prev {
        Some(p) if !una_moved && unacked != 0 => p.progress_at,
        // Moved since the last sweep: the last ACK, not this sweep, is when.
        Some(_) => last_ack,
        // First sight: trust the probes if they saw it, else the last ACK.
        None => match ev {
            Some(e) if e.last_progress_ns != 0 => e.last_progress_ns,
            _ => last_ack,
        },
    };
    if let Some(e) = ev {
        progress_at = progress_at.max(e.last_progress_ns);
    }
    // `snd_una` moves only on an ACK, which stamps `rcv_tstamp`: progress
    // is never later than the last ACK, however late a probe dated it.
    progress_at = progress_at.min(last_ack);
    if unacked == 0 {
        progress_at = now;
    }

    let close_wait_at = (rec.state == tcp_state::CLOSE_WAIT).then(|| {
        let event = ev.map(|e| e.close_wait_since_ns).filter(|&t| t != 0);
        // The FIN's own ACK field stamped `rcv_tstamp`; any later ACK only
        // makes the estimate younger.
        let seen = prev.and_then(|p| p.close_wait_at).unwrap_or(last_ack);
        event.map_or(seen, |e| e.min(seen))
    });

    let open_at = if rec.snd_wnd != 0 || unsent == 0 {
        now
    } else if una_moved {
        // Data moved since the last sweep: the window was open then, so the
        // episode began no earlier than the ACK that moved it.
        last_ack
    } else {
        prev.map_or(0, |p| p.open_at)
    };
    let zero_window_at = (rec.snd_wnd == 0 && unsent > 0).then(|| {
        let floor = open_at;
        let first_sight = if rec.probes_tstamp != 0 {
            // The kernel stamps the first probe of a zero-window episode.
            dated(rec, rec.probes_tstamp, now, tick_ns)
        } else if rec.pending == timer::PROBE0 {
            now.saturating_sub(persist_lower_bound(rec.backoff))
        } else {
            now
        };
        let known = if una_moved { None } else { prev.and_then(|p| p.zero_window_at) };
        let event = ev.map(|e| e.zero_window_since_ns).filter(|&t| t != 0 && t >= floor);
        [known, event].into_iter().flatten().fold(first_sight, u64::min).max(floor)
    });

    let connect_at = (rec.state == tcp_state::SYN_SENT).then(|| {
        match (ev.map(|e| e.state_since_ns).filter(|&t| t != 0), prev.and_then(|p| p.connect_at)) {
            (Some(e), _) => e,
            (None, Some(p)) => p,
            // A SYN retransmitted n times has waited at least half its
            // current RTO (the earlier timeouts add up to that much).
            (None, None) if rec.retransmits > 0 => now.saturating_sub(rto / 2),
            (None, None) => now,
        }
    });

    // A run of unanswered zero-window probes; any ACK ends it.
    let probe_seen_at = (rec.probes_out >= 1).then(|| {
        prev.filter(|p| p.record.probes_out >= 1 && p.record.rcv_tstamp == rec.rcv_tstamp)
            .and_then(|p| p.probe_seen_at)
            .unwrap_or(now)
    });
    let probe_unanswered_for = probe_seen_at.map(|seen| {
        // Lower bounds of the oldest unanswered probe's age; the largest wins.
        let by_event = ev.map_or(0, |e| if e.last_probe_ns != 0 { now.saturating_sub(e.last_probe_ns) } else { 0 });
        // The socket's last send or receive was that probe or later.
        let by_stamp = if rec.mstamp_us != 0 { rec.ktime_us.saturating_sub(rec.mstamp_us) * 1000 } else { 0 };
        // A second probe goes out only after the first waited a full RTO.
        let by_count = if rec.probes_out >= 2 { rto } else { 0 };
        Duration::from_nanos(by_event.max(by_stamp).max(by_count).max(now.saturating_sub(seen)))
    });

    let since = |at: u64| Duration::from_nanos(now.saturating_sub(at));
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
        rto: Duration::from_nanos(rto),
        no_progress_for: since(progress_at),
        silent_for: since(last_ack),
        probe_unanswered_for,
        close_wait_for: close_wait_at.map(since),
        zero_window_for: zero_window_at.map(since),
        connect_for: connect_at.map(since),
    };
    // A tick late: the kernel's stamps are jiffies, so an age read then may
    // still fall short by one.
    let changes_at = classify::next_change(&observed, th).map(|d| now + d.as_nanos() as u64 + tick_ns);
    let tracked = Tracked {
        owner,
        record: *rec,
        class: classify::classify(&observed, th),
        progress_at,
        close_wait_at,
        zero_window_at,
        open_at,
        connect_at,
        probe_seen_at,
        kernel_tracked: rec.has_events != 0 || prev.is_some_and(|p| p.kernel_tracked),
        seen: 0,
    };
    (tracked, changes_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{StallReason, ZombieReason};
    use observer_common::FLAG_APP_CLOSED;

    const SEC: u64 = 1_000_000_000;
    /// A 4 ms jiffy, as with CONFIG_HZ=250.
    const TICK: u64 = 4_000_000;

    fn rec(sk: u64, inode: u64, state: u8) -> SockRecord {
        SockRecord { sk, inode, state, snd_wnd: 65535, rto: 51, ..Default::default() }
    }

    fn owners(pairs: &[(u64, u32)]) -> InodeOwners {
        pairs.iter().copied().collect()
    }

    fn th() -> Thresholds {
        let s = Duration::from_secs;
        Thresholds { dead_after: s(5), close_wait_after: s(5), stall_after: s(5) }
    }

    fn class_of(table: &SocketTable, sk: u64) -> Option<Class> {
        table.sockets().find(|t| t.record.sk == sk).map(|t| t.class)
    }

    #[test]
    fn keeps_only_target_sockets_and_attributes_orphans_to_their_closer() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([100]);
        let mine = rec(1, 11, tcp_state::ESTABLISHED);
        let other = rec(2, 22, tcp_state::ESTABLISHED);
        let actions = table.sweep(SEC, &[mine, other], &owners(&[(11, 100)]), &targets, true, &th());
        assert_eq!(table.len(), 1);
        assert_eq!(actions.track.len(), 1);
        assert_eq!((actions.track[0].0, actions.track[0].1.owner_tgid), (1, 100));
        // The target closes it: no inode any more, a FIN and data queued.
        let closed = SockEvents { owner_tgid: 100, flags: FLAG_APP_CLOSED, ..Default::default() };
        let orphan = SockRecord {
            inode: 0,
            state: tcp_state::FIN_WAIT1,
            snd_nxt: 500,
            write_seq: 501,
            has_events: 1,
            events: closed,
            ..mine
        };
        table.sweep(2 * SEC, &[orphan], &owners(&[]), &targets, false, &th());
        assert_eq!(table.len(), 1, "still the target's");
        // Its closer exits (a crashed worker): the orphan stays its.
        table.sweep(3 * SEC, &[orphan], &owners(&[]), &HashSet::new(), true, &th());
        assert_eq!(table.sockets().next().map(|t| t.owner), Some(100));
        // Destroyed: gone from the iterator, gone from the table, and the
        // exited owner is forgotten.
        table.sweep(4 * SEC, &[], &owners(&[]), &HashSet::new(), true, &th());
        assert_eq!(table.len(), 0);
        assert!(table.known_owners().is_empty());
    }

    #[test]
    fn a_walk_without_the_records_it_may_drop_ends_in_the_same_table() {
        let targets = HashSet::from([100]);
        let fds = owners(&[(11, 100), (44, 100)]);
        let events = SockEvents { owner_tgid: 100, ..Default::default() };
        let records = [
            rec(1, 11, tcp_state::ESTABLISHED),
            // Another process's socket, its peer: nothing of the targets.
            rec(2, 22, tcp_state::ESTABLISHED),
            // A connection accepted before anyone holds it, on the target's port.
            SockRecord { sport: 80, ..rec(3, 0, tcp_state::ESTABLISHED) },
            SockRecord { sport: 80, ..rec(4, 44, tcp_state::LISTEN) },
            // Attributed by the probes, its file not read yet.
            SockRecord { has_events: 1, events, ..rec(5, 55, tcp_state::ESTABLISHED) },
            SockRecord { marked: 1, ..rec(6, 66, tcp_state::ESTABLISHED) },
        ];
        let mut all = SocketTable::with_tick(TICK);
        let mut kept = SocketTable::with_tick(TICK);
        for (now, full) in [(SEC, true), (2 * SEC, false)] {
            all.sweep(now, &records, &fds, &targets, full, &th());
            let wanted: Vec<SockRecord> = records.iter().filter(|r| kept.may_concern(r, &fds)).copied().collect();
            assert_eq!(wanted.len(), records.len() - 1, "only the other process's socket goes");
            kept.sweep(now, &wanted, &fds, &targets, full, &th());
            let view = |t: &SocketTable| {
                let mut v: Vec<(u64, u32, Class)> = t.sockets().map(|t| (t.record.sk, t.owner, t.class)).collect();
                v.sort_by_key(|e| e.0);
                v
            };
            assert_eq!(view(&all), view(&kept));
            assert_eq!(all.summary(), kept.summary());
        }
    }

    fn marked(sk: u64, inode: u64, state: u8) -> SockRecord {
        SockRecord { marked: 1, ..rec(sk, inode, state) }
    }

    #[test]
    fn a_marked_sweep_keeps_settled_sockets_updates_those_that_crossed_and_drops_the_closed() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([100]);
        let fds = owners(&[(11, 100), (22, 100), (33, 100)]);
        let (a, b, c) = (
            marked(1, 11, tcp_state::ESTABLISHED),
            marked(2, 22, tcp_state::ESTABLISHED),
            marked(3, 33, tcp_state::ESTABLISHED),
        );
        table.sweep(SEC, &[a, b, c], &fds, &targets, true, &th());
        assert!(table.all_marked());
        // 1 stays quiet (alive), 2 gets data stuck, its last ACK at 1 s;
        // 3 closed without a trace.
        let stuck = |t: u64| SockRecord {
            snd_nxt: 1000,
            write_seq: 1000,
            retransmits: 3,
            jiffies: 1000 + (t * SEC / TICK) as u32,
            rcv_tstamp: 1000 + (SEC / TICK) as u32,
            ..b
        };
        let merged = table.merge(2 * SEC, &[stuck(2)], 1, &[3], &[], &fds, &targets, &th());
        assert!(merged.is_some());
        assert_eq!(table.len(), 2, "the closed socket is gone");
        // A settled socket the probes never said closed, and the count
        // disagrees: only a walk can tell.
        assert!(table.merge(3 * SEC, &[stuck(3)], 0, &[], &[], &fds, &targets, &th()).is_none());
        // One that closed during the read may or may not have been counted.
        let mut t2 = SocketTable::with_tick(TICK);
        t2.sweep(SEC, &[a, b], &fds, &targets, true, &th());
        assert!(t2.merge(2 * SEC, &[], 1, &[], &[2], &fds, &targets, &th()).is_some());
        assert_eq!(t2.len(), 1);
        // The peer of 2 stays silent: dead once the record keeps crossing.
        table.merge(5 * SEC, &[stuck(5)], 1, &[], &[], &fds, &targets, &th());
        assert_eq!(class_of(&table, 2), Some(Class::Healthy), "silent for 4 s");
        table.merge(7 * SEC, &[stuck(7)], 1, &[], &[], &fds, &targets, &th());
        // Settled all along, it crosses again with data outstanding: its
        // progress clock starts at the last sweep, not at its last crossing.
        let busy = SockRecord { snd_nxt: 10, write_seq: 10, jiffies: 3000, rcv_tstamp: 3000, ..a };
        table.merge(8 * SEC, &[stuck(8), busy], 0, &[], &[], &fds, &targets, &th());
        assert_eq!(table.sockets().find(|t| t.record.sk == 1).map(|t| t.progress_at), Some(7 * SEC));
        assert_eq!(class_of(&table, 2), Some(Class::Zombie(ZombieReason::DeadPeer)));
        assert_eq!(class_of(&table, 1), Some(Class::Healthy));
        // A TIME_WAIT socket (the listener's) carries no mark: only walks see it.
        let tw = SockRecord { marked: 0, ..rec(4, 0, tcp_state::TIME_WAIT) };
        let listener = marked(5, 55, tcp_state::LISTEN);
        let fds = owners(&[(11, 100), (22, 100), (55, 100)]);
        table.sweep(10 * SEC, &[a, stuck(10), listener, tw], &fds, &targets, true, &th());
        assert_eq!(table.len(), 4);
        assert!(!table.all_marked());
    }

    #[test]
    fn file_tables_read_between_walks_reown_and_ask_for_a_walk_only_for_unknown_sockets() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([100, 200]);
        let (a, b) = (marked(1, 11, tcp_state::ESTABLISHED), marked(2, 22, tcp_state::ESTABLISHED));
        // Inode 99 is the target's unix socket: no TCP record shows it.
        table.sweep(SEC, &[a, b], &owners(&[(11, 100), (22, 100), (99, 100)]), &targets, true, &th());
        // 1 went to process 200 (fork, then the parent closed it), 2 to a
        // process nobody watches: reowned and dropped, no walk needed.
        assert!(!table.reown(&owners(&[(11, 200), (99, 100)])));
        assert_eq!(table.sockets().map(|t| (t.record.sk, t.owner)).collect::<Vec<_>>(), vec![(1, 200)]);
        // A socket handed over from outside (inode 55): only a walk shows it.
        assert!(table.reown(&owners(&[(11, 200), (99, 100), (55, 100)])));
    }

    #[test]
    fn a_file_table_read_like_the_last_gives_what_a_full_pass_gives() {
        let targets = HashSet::from([100, 200]);
        let first = owners(&[(11, 100), (22, 100), (99, 100)]);
        // (what changes between the two reads, the second read)
        type Change = fn(&mut SocketTable);
        let unchanged: Change = |_| {};
        let new_socket: Change = |t| {
            // Swept in between, with a file the tables do not show.
            let c = marked(3, 33, tcp_state::ESTABLISHED);
            t.sweep(2 * SEC, &[c], &owners(&[(33, 200)]), &HashSet::from([100, 200]), false, &th());
        };
        let cases: [(Change, InodeOwners); 4] = [
            (unchanged, first.clone()),
            (unchanged, owners(&[(11, 200), (99, 100)])),
            (new_socket, first.clone()),
            (unchanged, owners(&[(11, 100), (22, 100), (99, 100), (55, 100)])),
        ];
        for (i, (change, second)) in cases.into_iter().enumerate() {
            let run = |full_pass: bool| {
                let mut table = SocketTable::with_tick(TICK);
                let (a, b) = (marked(1, 11, tcp_state::ESTABLISHED), marked(2, 22, tcp_state::ESTABLISHED));
                table.sweep(SEC, &[a, b], &first, &targets, true, &th());
                table.reown(&first);
                change(&mut table);
                if full_pass {
                    table.last_reown = None;
                }
                let unknown = table.reown(&second);
                let mut held: Vec<(u64, u32)> = table.sockets().map(|t| (t.record.sk, t.owner)).collect();
                held.sort_unstable();
                (unknown, held)
            };
            assert_eq!(run(false), run(true), "case {i}");
        }
    }

    #[test]
    fn a_socket_closed_by_another_process_is_not_the_targets() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([100]);
        let s = rec(1, 11, tcp_state::ESTABLISHED);
        table.sweep(SEC, &[s], &owners(&[(11, 100)]), &targets, true, &th());
        // Passed with SCM_RIGHTS: the next full read finds no target holding it.
        table.sweep(2 * SEC, &[s], &owners(&[]), &targets, true, &th());
        assert_eq!(table.len(), 0);
        // ... and the probes' memory of its first owner does not bring it back.
        let ev = SockEvents { owner_tgid: 100, ..Default::default() };
        let s2 = SockRecord { has_events: 1, events: ev, ..s };
        assert!(!table.needs_owner_scan(&[s2], &owners(&[]), &targets));
        table.sweep(3 * SEC, &[s2], &owners(&[]), &targets, false, &th());
        assert_eq!(table.len(), 0);
        // The receiver closes it: the closer is not a target.
        let ev = SockEvents { owner_tgid: 555, flags: FLAG_APP_CLOSED, ..Default::default() };
        let gone = SockRecord { inode: 0, state: tcp_state::FIN_WAIT1, has_events: 1, events: ev, ..s };
        table.sweep(4 * SEC, &[gone], &owners(&[]), &targets, false, &th());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_new_socket_the_file_tables_have_not_seen_asks_for_a_scan() {
        let table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([100]);
        let ev = SockEvents { owner_tgid: 100, ..Default::default() };
        let new = SockRecord { has_events: 1, events: ev, ..rec(1, 11, tcp_state::ESTABLISHED) };
        assert!(table.needs_owner_scan(&[new], &owners(&[]), &targets));
        assert!(!table.needs_owner_scan(&[new], &owners(&[(11, 100)]), &targets));
    }

    #[test]
    fn dead_peer_after_no_progress_and_silence() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let inodes = owners(&[(9, 7)]);
        // The last ACK came at jiffy 1000; sweeps at 1 s, 4 s and 7 s.
        let at = |s: u64| SockRecord {
            snd_una: 1000,
            snd_nxt: 9000,
            write_seq: 20000,
            retransmits: 3,
            backoff: 3,
            jiffies: 1000 + (s * SEC / TICK) as u32,
            rcv_tstamp: 1000,
            ..rec(5, 9, tcp_state::ESTABLISHED)
        };
        table.sweep(SEC, &[at(0)], &inodes, &targets, true, &th());
        table.sweep(4 * SEC, &[at(3)], &inodes, &targets, false, &th());
        assert_eq!(table.summary().zombies.get(&ZombieReason::DeadPeer), None);
        table.sweep(7 * SEC, &[at(6)], &inodes, &targets, false, &th());
        let s = table.summary();
        assert_eq!(s.zombies.get(&ZombieReason::DeadPeer), Some(&1));
        assert_eq!(s.zombie_bytes.get(&ZombieReason::DeadPeer), Some(&19000));
        assert_eq!((s.unsent, s.unacked), (11000, 8000));
        // An ACK arrives: progress resets the clock.
        let acked = SockRecord { snd_una: 2000, rcv_tstamp: at(7).jiffies, ..at(7) };
        table.sweep(8 * SEC, &[acked], &inodes, &targets, false, &th());
        assert_eq!(table.summary().zombies.get(&ZombieReason::DeadPeer), None);
    }

    #[test]
    fn progress_a_probe_dated_late_is_never_after_the_last_ack() {
        // The write timer saw `snd_una` moved at 2 s, at its first look since
        // the ACK that moved it, which the socket stamped at 1 s.
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let inodes = owners(&[(9, 7)]);
        let events = SockEvents { owner_tgid: 7, last_progress_ns: 2 * SEC, ..Default::default() };
        let at = |s: u64| SockRecord {
            snd_una: 1000,
            snd_nxt: 9000,
            write_seq: 9000,
            retransmits: 3,
            backoff: 3,
            jiffies: 1000 + (s * SEC / TICK) as u32,
            rcv_tstamp: 1000,
            has_events: 1,
            events,
            ..rec(5, 9, tcp_state::ESTABLISHED)
        };
        table.sweep(SEC, &[at(0)], &inodes, &targets, true, &th());
        table.sweep(5 * SEC, &[at(4)], &inodes, &targets, false, &th());
        assert_eq!(class_of(&table, 5), Some(Class::Healthy), "4 s of silence");
        table.sweep(6 * SEC, &[at(5)], &inodes, &targets, false, &th());
        assert_eq!(class_of(&table, 5), Some(Class::Zombie(ZombieReason::DeadPeer)), "5 s since the last ACK");
    }

    #[test]
    fn sockets_found_late_are_dated_by_the_kernels_own_stamps() {
        // The socket last heard an ACK 2000 jiffies (8 s) ago.
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let dead = SockRecord {
            snd_una: 10,
            snd_nxt: 500,
            write_seq: 500,
            backoff: 4,
            retransmits: 4,
            jiffies: 3000,
            rcv_tstamp: 1000,
            ..rec(1, 9, tcp_state::ESTABLISHED)
        };
        let cw = SockRecord { jiffies: 3000, rcv_tstamp: 1000, ..rec(2, 8, tcp_state::CLOSE_WAIT) };
        let zw = SockRecord {
            snd_wnd: 0,
            write_seq: 900,
            snd_nxt: 100,
            snd_una: 100,
            pending: 3,
            jiffies: 3000,
            probes_tstamp: 1000,
            ..rec(3, 6, tcp_state::ESTABLISHED)
        };
        let owners_ = owners(&[(9, 7), (8, 7), (6, 7)]);
        let actions = table.sweep(100 * SEC, &[dead, cw, zw], &owners_, &targets, true, &th());
        let s = table.summary();
        assert_eq!(s.stalled.get(&StallReason::ZeroWindow), Some(&1));
        assert_eq!(s.zombies.get(&ZombieReason::DeadPeer), Some(&1), "a restarted observer sees the old stall at once");
        assert_eq!(s.zombies.get(&ZombieReason::CloseWait), Some(&1));
        // What the agent hands the probes carries those dates, not "now".
        let dead_ev = actions.track.iter().find(|(sk, _)| *sk == 1).map(|(_, e)| *e).expect("tracked");
        assert_eq!(dead_ev.last_progress_ns, 92 * SEC);
        // Tracked by the probes from that, the next sweep still says so.
        let again: Vec<SockRecord> = [dead, cw, zw]
            .iter()
            .map(|r| {
                let ev = actions.track.iter().find(|(sk, _)| *sk == r.sk).map(|(_, e)| *e).expect("tracked");
                SockRecord { has_events: 1, events: ev, jiffies: r.jiffies + 250, ..*r }
            })
            .collect();
        table.sweep(101 * SEC, &again, &owners_, &targets, false, &th());
        assert_eq!(table.summary(), s);
        // Without a tick length nothing is dated: clocks start now.
        let mut table = SocketTable::default();
        table.sweep(100 * SEC, &[dead, cw, zw], &owners_, &targets, true, &th());
        assert!(table.summary().zombies.is_empty());
        assert!(table.summary().stalled.is_empty());
    }

    #[test]
    fn an_unanswered_probe_is_dead_only_once_older_than_the_rto() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let inodes = owners(&[(6, 7)]);
        // Zero window for 60 s, probes far apart; the last ACK answered
        // the previous probe 20 s ago; one probe went out 100 ms ago.
        let zw = SockRecord {
            snd_wnd: 0,
            write_seq: 900,
            snd_nxt: 100,
            snd_una: 100,
            pending: 3,
            probes_out: 1,
            backoff: 9,
            jiffies: 20_000,
            rcv_tstamp: 15_000,
            probes_tstamp: 5_000,
            ktime_us: 50_000_000,
            mstamp_us: 49_900_000,
            ..rec(3, 6, tcp_state::ESTABLISHED)
        };
        table.sweep(100 * SEC, &[zw], &inodes, &targets, true, &th());
        assert_eq!(class_of(&table, 3), Some(Class::Stalled(StallReason::ZeroWindow)), "younger than the RTO");
        // 300 ms later, still unanswered: more than its 204 ms RTO.
        let later = SockRecord { jiffies: 20_075, ktime_us: 50_300_000, ..zw };
        table.sweep(100 * SEC + 300_000_000, &[later], &inodes, &targets, false, &th());
        assert_eq!(class_of(&table, 3), Some(Class::Zombie(ZombieReason::DeadPeer)));
        // A restarted observer seeing it first then agrees at once.
        let mut fresh = SocketTable::with_tick(TICK);
        fresh.sweep(100 * SEC, &[later], &inodes, &targets, true, &th());
        assert_eq!(class_of(&fresh, 3), Some(Class::Zombie(ZombieReason::DeadPeer)));
        // The reader answers: no probe out, an ACK just now.
        let answered = SockRecord { probes_out: 0, rcv_tstamp: 20_100, jiffies: 20_100, ..later };
        table.sweep(101 * SEC, &[answered], &inodes, &targets, false, &th());
        assert_eq!(class_of(&table, 3), Some(Class::Stalled(StallReason::ZeroWindow)));
    }

    #[test]
    fn a_draining_orphan_and_a_fin_awaiting_its_ack_are_not_zombies() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let closed = SockEvents { owner_tgid: 7, flags: FLAG_APP_CLOSED, ..Default::default() };
        let base = SockRecord {
            inode: 0,
            state: tcp_state::FIN_WAIT1,
            has_events: 1,
            events: closed,
            snd_una: 0,
            snd_nxt: 64_000,
            write_seq: 500_000,
            ..rec(4, 0, tcp_state::FIN_WAIT1)
        };
        for i in 0..20u32 {
            // ACKs keep coming and snd_una moves 16 KiB a second.
            let j = 1000 + i * 250;
            let r = SockRecord {
                snd_una: i * 16_384,
                snd_nxt: i * 16_384 + 64_000,
                jiffies: j,
                rcv_tstamp: j - 10,
                retransmits: 0,
                ..base
            };
            table.sweep(u64::from(i + 1) * SEC, &[r], &owners(&[]), &targets, false, &th());
            assert_eq!(class_of(&table, 4), Some(Class::Healthy), "second {i}");
        }
    }

    #[test]
    fn a_window_that_keeps_opening_is_no_stall_whatever_the_probes_recorded() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        // An older build's probes stamped a zero-window episode long ago and
        // never saw the window open (an orphan sends nothing); a sweep finds
        // the window closed each time, but data moves every other sweep.
        let ev = SockEvents { owner_tgid: 7, flags: FLAG_APP_CLOSED, zero_window_since_ns: SEC, ..Default::default() };
        for i in 0..20u32 {
            let j = 1000 + i * 125;
            let una = (i / 2) * 8192;
            let r = SockRecord {
                inode: 0,
                snd_wnd: 0,
                pending: 3,
                snd_una: una,
                snd_nxt: una,
                write_seq: una + 400_000,
                jiffies: j,
                rcv_tstamp: j - 5,
                has_events: 1,
                events: ev,
                ..rec(4, 0, tcp_state::FIN_WAIT1)
            };
            table.sweep(10 * SEC + u64::from(i) * SEC / 2, &[r], &owners(&[]), &targets, false, &th());
            // From the first movement on, the stale stamp is known stale.
            if i >= 2 {
                assert_eq!(class_of(&table, 4), Some(Class::Healthy), "sweep {i}");
            }
        }
    }

    #[test]
    fn close_wait_is_dated_from_the_fin_not_from_the_last_data() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        // Idle for a minute, then the client's FIN 1 s ago: rcv_tstamp is
        // the FIN's ACK field, 250 jiffies back.
        let cw = SockRecord { jiffies: 30_000, rcv_tstamp: 29_750, ..rec(2, 8, tcp_state::CLOSE_WAIT) };
        table.sweep(100 * SEC, &[cw], &owners(&[(8, 7)]), &targets, true, &th());
        assert_eq!(class_of(&table, 2), Some(Class::Healthy));
        let later = SockRecord { jiffies: 30_000 + 1500, ..cw };
        table.sweep(106 * SEC, &[later], &owners(&[(8, 7)]), &targets, false, &th());
        assert_eq!(class_of(&table, 2), Some(Class::Zombie(ZombieReason::CloseWait)));
    }

    #[test]
    fn a_connect_that_nobody_answers_is_a_stall_never_a_dead_peer() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let syn = SockRecord {
            snd_una: 0,
            snd_nxt: 1,
            write_seq: 1,
            retransmits: 3,
            backoff: 3,
            rto: 2000,
            jiffies: 9000,
            rcv_tstamp: 1,
            ..rec(9, 5, tcp_state::SYN_SENT)
        };
        table.sweep(100 * SEC, &[syn], &owners(&[(5, 7)]), &targets, true, &th());
        // Retransmitted 3 times with an 8 s RTO now: at least 4 s old.
        assert_eq!(class_of(&table, 9), Some(Class::Healthy));
        table.sweep(101 * SEC + SEC / 2, &[syn], &owners(&[(5, 7)]), &targets, false, &th());
        assert_eq!(class_of(&table, 9), Some(Class::Stalled(StallReason::Connect)));
    }

    #[test]
    fn an_orphan_nobody_saw_closed_belongs_to_the_only_listener_on_its_port() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let listener = SockRecord { netns: 1, sport: 80, ..rec(1, 3, tcp_state::LISTEN) };
        let orphan = SockRecord { netns: 1, sport: 80, snd_nxt: 10, ..rec(2, 0, tcp_state::FIN_WAIT1) };
        let outbound = SockRecord { netns: 1, sport: 40000, ..rec(3, 0, tcp_state::FIN_WAIT1) };
        table.sweep(SEC, &[listener, orphan, outbound], &owners(&[(3, 7)]), &targets, true, &th());
        assert_eq!(table.len(), 2, "the listener and its orphan");
        // Someone else listens on the port too: no guess.
        let theirs = SockRecord { sk: 9, inode: 99, ..listener };
        let mut table = SocketTable::with_tick(TICK);
        table.sweep(SEC, &[listener, theirs, orphan], &owners(&[(3, 7)]), &targets, true, &th());
        assert_eq!(table.len(), 1, "the listener only");
    }

    #[test]
    fn eviction_from_the_kernel_map_is_noticed() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let inodes = owners(&[(9, 7)]);
        let tracked = SockRecord { has_events: 1, ..rec(5, 9, tcp_state::ESTABLISHED) };
        assert_eq!(table.sweep(SEC, &[tracked], &inodes, &targets, true, &th()).evicted, 0);
        let lost = SockRecord { has_events: 0, ..tracked };
        let actions = table.sweep(2 * SEC, &[lost], &inodes, &targets, false, &th());
        assert_eq!(actions.evicted, 1);
        assert_eq!(actions.track.len(), 1, "re-tracked");
    }

    #[test]
    fn listeners_register_ports_and_carry_no_bytes() {
        let mut table = SocketTable::with_tick(TICK);
        let targets = HashSet::from([7]);
        let l = SockRecord { netns: 4026531840, sport: 8080, write_seq: 5, ..rec(1, 3, tcp_state::LISTEN) };
        let a = table.sweep(SEC, &[l], &owners(&[(3, 7)]), &targets, true, &th());
        assert_eq!(a.listen_ports.get(&(4026531840, 8080)), Some(&7));
        assert!(a.track.is_empty());
        let s = table.summary();
        assert_eq!((s.tracked, s.unsent), (1, 0));
    }

    #[test]
    fn persist_bound_saturates_at_the_rto_ceiling() {
        assert_eq!(persist_lower_bound(0), 0);
        assert_eq!(persist_lower_bound(3), 1_400_000_000);
        assert_eq!(persist_lower_bound(20) - persist_lower_bound(19), 120 * SEC);
    }
}
