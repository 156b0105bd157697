//! Which sockets are zombies or stalled. Pure functions of what the kernel
//! reported and how long it has been so; all thresholds come from flags.
//!
//! The definitions (README and `observer run --help` say the same):
//! - `dead_peer`: a synchronized connection with data outstanding that hears
//!   nothing back for `--dead-after`: unacknowledged data retransmitted with
//!   no ACK progress (RTO case), or a zero-window probe left unanswered for
//!   longer than the socket's RTO with no ACK since (persist case: a live
//!   reader answers every probe at once). SYN_SENT / SYN_RECV never are.
//! - `orphaned`: no file holds the socket, data is still queued, and it
//!   makes no progress for `--dead-after` by the same evidence. A draining
//!   orphan, or a FIN awaiting its ACK, is a state, never a zombie.
//! - `close_wait`: CLOSE_WAIT for `--close-wait-after`.
//! - stalled `zero_window`: zero window, probes answered, for `--stall-after`.
//! - stalled `connect`: an outbound connect unanswered for `--stall-after`.

use std::time::Duration;

use observer_common::{tcp_state, timer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ZombieReason {
    /// The peer is gone: data outstanding, nothing heard back.
    DeadPeer,
    /// The peer closed; the application never did.
    CloseWait,
    /// The application closed; the kernel holds queued data it cannot deliver.
    Orphaned,
}

impl ZombieReason {
    pub const ALL: [ZombieReason; 3] = [ZombieReason::DeadPeer, ZombieReason::CloseWait, ZombieReason::Orphaned];
    pub fn label(self) -> &'static str {
        match self {
            ZombieReason::DeadPeer => "dead_peer",
            ZombieReason::CloseWait => "close_wait",
            ZombieReason::Orphaned => "orphaned",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StallReason {
    /// A live peer that reads too slowly: zero window, probes answered.
    ZeroWindow,
    /// An outbound connect the peer does not answer (SYN_SENT).
    Connect,
}

impl StallReason {
    pub const ALL: [StallReason; 2] = [StallReason::ZeroWindow, StallReason::Connect];
    pub fn label(self) -> &'static str {
        match self {
            StallReason::ZeroWindow => "zero_window",
            StallReason::Connect => "connect",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Healthy,
    Zombie(ZombieReason),
    Stalled(StallReason),
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Healthy => "healthy",
            Class::Zombie(r) => r.label(),
            Class::Stalled(r) => r.label(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub dead_after: Duration,
    pub close_wait_after: Duration,
    pub stall_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            dead_after: Duration::from_secs(10),
            close_wait_after: Duration::from_secs(30),
            stall_after: Duration::from_secs(10),
        }
    }
}

/// What classification looks at for one socket. Every age is a lower bound:
/// it may understate how long something has lasted, never overstate it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub state: u8,
    /// No process holds the socket any more.
    pub orphan: bool,
    pub unsent: u32,
    pub unacked: u32,
    /// `icsk_retransmits`: consecutive RTO timeouts without progress.
    pub retransmits: u8,
    pub backoff: u8,
    pub pending: u8,
    /// Zero-window probes sent since the last ACK.
    pub probes_out: u8,
    pub snd_wnd: u32,
    /// The socket's retransmission timeout: what the kernel itself allows
    /// for an answer.
    pub rto: Duration,
    /// Time since `snd_una` last moved while data was outstanding.
    pub no_progress_for: Duration,
    /// Time since the last ACK was received.
    pub silent_for: Duration,
    /// How long the latest zero-window probe has gone unanswered.
    pub probe_unanswered_for: Option<Duration>,
    pub close_wait_for: Option<Duration>,
    pub zero_window_for: Option<Duration>,
    pub connect_for: Option<Duration>,
}

impl Observed {
    fn synchronized(&self) -> bool {
        matches!(
            self.state,
            tcp_state::ESTABLISHED
                | tcp_state::CLOSE_WAIT
                | tcp_state::FIN_WAIT1
                | tcp_state::CLOSING
                | tcp_state::LAST_ACK
        )
    }

    fn zero_window(&self) -> bool {
        self.snd_wnd == 0 && self.unsent > 0 && (self.pending == timer::PROBE0 || self.probes_out > 0)
    }

    /// Retransmitting unacknowledged data, and neither ACK progress nor any
    /// ACK at all for `dead_after`.
    fn rto_silent(&self, t: &Thresholds) -> bool {
        self.unacked > 0
            && (self.retransmits > 0 || self.backoff > 0)
            && self.no_progress_for >= t.dead_after
            && self.silent_for >= t.dead_after
    }

    /// A zero-window probe older than the socket's RTO is still unanswered,
    /// and no ACK came for `dead_after`.
    fn probe_silent(&self, t: &Thresholds) -> bool {
        self.zero_window()
            && self.probes_out >= 1
            && self.probe_unanswered_for.is_some_and(|d| d >= self.rto)
            && self.silent_for >= t.dead_after
    }

    fn queued(&self) -> bool {
        self.unsent as u64 + self.unacked as u64 > 0
    }
}

pub fn classify(o: &Observed, t: &Thresholds) -> Class {
    match o.state {
        tcp_state::LISTEN | tcp_state::SYN_RECV | tcp_state::NEW_SYN_RECV => return Class::Healthy,
        tcp_state::SYN_SENT => {
            return if o.connect_for.is_some_and(|d| d >= t.stall_after) {
                Class::Stalled(StallReason::Connect)
            } else {
                Class::Healthy
            };
        }
        _ => {}
    }
    let silent = o.synchronized() && (o.rto_silent(t) || o.probe_silent(t));
    if o.orphan && o.queued() && silent {
        return Class::Zombie(ZombieReason::Orphaned);
    }
    if o.state == tcp_state::CLOSE_WAIT && o.close_wait_for.is_some_and(|d| d >= t.close_wait_after) {
        return Class::Zombie(ZombieReason::CloseWait);
    }
    if silent {
        return Class::Zombie(ZombieReason::DeadPeer);
    }
    if o.zero_window() && o.zero_window_for.is_some_and(|d| d >= t.stall_after) {
        return Class::Stalled(StallReason::ZeroWindow);
    }
    Class::Healthy
}

/// How long until `o`'s class changes if the kernel shows nothing new, or
/// None when time alone changes nothing (a healthy flowing socket, one
/// already a zombie for good). Classes change only where an age reaches
/// its threshold, so those instants are the only ones to try.
pub fn next_change(o: &Observed, t: &Thresholds) -> Option<Duration> {
    let class = classify(o, t);
    let ages = [
        (t.dead_after, Some(o.no_progress_for)),
        (t.dead_after, Some(o.silent_for)),
        (o.rto, o.probe_unanswered_for),
        (t.close_wait_after, o.close_wait_for),
        (t.stall_after, o.zero_window_for),
        (t.stall_after, o.connect_for),
    ];
    // Runs for every record a sweep reads: sorted in place, not collected.
    let mut gaps = ages.map(|(threshold, age)| age.filter(|&a| a < threshold).map(|a| threshold - a));
    gaps.sort_unstable();
    gaps.into_iter().flatten().find(|&d| classify(&o.aged(d), t) != class)
}

impl Observed {
    /// The same socket `d` later, nothing else having happened.
    fn aged(&self, d: Duration) -> Observed {
        let later = |age: Option<Duration>| age.map(|a| a + d);
        Observed {
            no_progress_for: self.no_progress_for + d,
            silent_for: self.silent_for + d,
            probe_unanswered_for: later(self.probe_unanswered_for),
            close_wait_for: later(self.close_wait_for),
            zero_window_for: later(self.zero_window_for),
            connect_for: later(self.connect_for),
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn t() -> Thresholds {
        Thresholds { dead_after: S(5), close_wait_after: S(10), stall_after: S(3) }
    }

    fn est() -> Observed {
        Observed { state: tcp_state::ESTABLISHED, snd_wnd: 65535, rto: MS(204), ..Default::default() }
    }

    fn rto_dead() -> Observed {
        Observed {
            unacked: 4096,
            retransmits: 4,
            backoff: 4,
            pending: timer::RETRANS,
            no_progress_for: S(6),
            silent_for: S(6),
            ..est()
        }
    }

    /// A peer that stopped reading: zero window, persist timer armed.
    fn zero_window() -> Observed {
        Observed { snd_wnd: 0, unsent: 50_000, pending: timer::PROBE0, zero_window_for: Some(S(4)), ..est() }
    }

    #[test]
    fn idle_and_flowing_sockets_are_healthy() {
        assert_eq!(classify(&est(), &t()), Class::Healthy);
        let flowing = Observed { unacked: 10_000, unsent: 5_000, ..est() };
        assert_eq!(classify(&flowing, &t()), Class::Healthy);
    }

    #[test]
    fn dead_peer_needs_outstanding_data_retransmissions_and_silence() {
        assert_eq!(classify(&rto_dead(), &t()), Class::Zombie(ZombieReason::DeadPeer));
        assert_eq!(classify(&Observed { no_progress_for: S(4), ..rto_dead() }, &t()), Class::Healthy, "too early");
        assert_eq!(classify(&Observed { silent_for: S(1), ..rto_dead() }, &t()), Class::Healthy, "ACKs still come");
        assert_eq!(classify(&Observed { retransmits: 0, backoff: 0, ..rto_dead() }, &t()), Class::Healthy);
        assert_eq!(classify(&Observed { unacked: 0, ..rto_dead() }, &t()), Class::Healthy, "nothing outstanding");
    }

    #[test]
    fn handshakes_are_never_dead_and_a_stuck_connect_is_a_stall() {
        let syn = Observed { state: tcp_state::SYN_SENT, connect_for: Some(S(4)), ..rto_dead() };
        assert_eq!(classify(&syn, &t()), Class::Stalled(StallReason::Connect));
        assert_eq!(classify(&Observed { connect_for: Some(S(2)), ..syn }, &t()), Class::Healthy);
        let recv = Observed { state: tcp_state::SYN_RECV, ..rto_dead() };
        assert_eq!(classify(&recv, &t()), Class::Healthy);
    }

    #[test]
    fn close_wait_counts_after_its_threshold() {
        let cw = Observed { state: tcp_state::CLOSE_WAIT, close_wait_for: Some(S(11)), ..est() };
        assert_eq!(classify(&cw, &t()), Class::Zombie(ZombieReason::CloseWait));
        assert_eq!(classify(&Observed { close_wait_for: Some(S(9)), ..cw }, &t()), Class::Healthy);
        assert_eq!(classify(&Observed { close_wait_for: None, ..cw }, &t()), Class::Healthy);
    }

    #[test]
    fn orphans_are_zombies_only_without_progress() {
        let stuck = Observed { state: tcp_state::FIN_WAIT1, orphan: true, ..rto_dead() };
        assert_eq!(classify(&stuck, &t()), Class::Zombie(ZombieReason::Orphaned));
        let draining = Observed { no_progress_for: MS(300), silent_for: MS(10), ..stuck };
        assert_eq!(classify(&draining, &t()), Class::Healthy, "a draining orphan is a state");
        let fin =
            Observed { unacked: 1, retransmits: 0, backoff: 0, no_progress_for: MS(20), silent_for: S(30), ..stuck };
        assert_eq!(classify(&fin, &t()), Class::Healthy, "a FIN awaiting its ACK");
        let drained = Observed { unacked: 0, unsent: 0, ..stuck };
        assert_eq!(classify(&drained, &t()), Class::Healthy);
    }

    #[test]
    fn zero_window_is_a_stall_while_probes_are_answered() {
        let slow = zero_window();
        assert_eq!(classify(&slow, &t()), Class::Stalled(StallReason::ZeroWindow));
        assert_eq!(classify(&Observed { zero_window_for: Some(S(2)), ..slow }, &t()), Class::Healthy);
        // Probes far apart (backoff): the last ACK is old, but the one probe
        // just sent is younger than the RTO — the reader may yet answer.
        let waiting = Observed { probes_out: 1, probe_unanswered_for: Some(MS(50)), silent_for: S(60), ..slow };
        assert_eq!(classify(&waiting, &t()), Class::Stalled(StallReason::ZeroWindow));
    }

    #[test]
    fn one_unanswered_probe_older_than_the_rto_is_a_dead_peer() {
        let gone = Observed { probes_out: 1, probe_unanswered_for: Some(MS(300)), silent_for: S(6), ..zero_window() };
        assert_eq!(classify(&gone, &t()), Class::Zombie(ZombieReason::DeadPeer));
        assert_eq!(classify(&Observed { silent_for: S(2), ..gone }, &t()), Class::Stalled(StallReason::ZeroWindow));
        assert_eq!(
            classify(&Observed { probe_unanswered_for: None, ..gone }, &t()),
            Class::Stalled(StallReason::ZeroWindow)
        );
        let orphan = Observed { orphan: true, state: tcp_state::FIN_WAIT1, ..gone };
        assert_eq!(classify(&orphan, &t()), Class::Zombie(ZombieReason::Orphaned));
    }

    #[test]
    fn the_next_change_is_where_the_first_threshold_that_matters_is_reached() {
        // Retransmitting for 4 s, ACKs silent for 4.5 s: dead at 5 s of both.
        let dying = Observed { no_progress_for: S(4), silent_for: MS(4500), ..rto_dead() };
        assert_eq!(next_change(&dying, &t()), Some(S(1)));
        assert_eq!(classify(&dying.aged(MS(999)), &t()), Class::Healthy);
        // Flowing, nothing retransmitted: time alone changes nothing.
        let flowing = Observed { unacked: 10_000, no_progress_for: S(4), silent_for: S(4), ..est() };
        assert_eq!(next_change(&flowing, &t()), None);
        assert_eq!(next_change(&rto_dead(), &t()), None, "dead stays dead");
        let slow = Observed { zero_window_for: Some(MS(2500)), ..zero_window() };
        assert_eq!(next_change(&slow, &t()), Some(MS(500)));
        let cw = Observed { state: tcp_state::CLOSE_WAIT, close_wait_for: Some(S(7)), ..est() };
        assert_eq!(next_change(&cw, &t()), Some(S(3)));
        // A probe unanswered past the RTO with the ACKs silent 5 s: the
        // stall turns dead when the later of the two is reached.
        let probing =
            Observed { probes_out: 1, probe_unanswered_for: Some(MS(100)), silent_for: MS(4800), ..zero_window() };
        assert_eq!(classify(&probing, &t()), Class::Stalled(StallReason::ZeroWindow));
        assert_eq!(next_change(&probing, &t()), Some(MS(200)));
    }

    #[test]
    fn listeners_are_never_zombies() {
        let l = Observed { state: tcp_state::LISTEN, orphan: true, ..rto_dead() };
        assert_eq!(classify(&l, &t()), Class::Healthy);
    }
}
