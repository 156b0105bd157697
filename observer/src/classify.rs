//! Which sockets are zombies or stalled. Pure functions of what the kernel
//! reported and how long it has been so; all thresholds come from flags.

use std::time::Duration;

use observer_common::{tcp_state, timer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ZombieReason {
    /// The peer is gone: data unacknowledged, no ACK progress, the kernel
    /// retransmitting with backoff.
    DeadPeer,
    /// The peer closed; the application never did.
    CloseWait,
    /// The application closed; the kernel still holds unsent or unacked data.
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
    /// A live peer that reads too slowly: zero window, persist timer probing.
    ZeroWindow,
}

impl StallReason {
    pub const ALL: [StallReason; 1] = [StallReason::ZeroWindow];
    pub fn label(self) -> &'static str {
        match self {
            StallReason::ZeroWindow => "zero_window",
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

/// Unanswered zero-window probes after which a silent peer counts as gone
/// rather than slow: a live receiver answers every probe, which resets the
/// kernel's count to zero.
pub const DEAD_PROBES: u8 = 3;

/// What classification looks at for one socket.
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
    pub probes_out: u8,
    pub snd_wnd: u32,
    /// Time since `snd_una` last moved (or since data became outstanding).
    pub no_progress_for: Duration,
    pub close_wait_for: Option<Duration>,
    pub zero_window_for: Option<Duration>,
}

pub fn classify(o: &Observed, t: &Thresholds) -> Class {
    if o.state == tcp_state::LISTEN {
        return Class::Healthy;
    }
    if o.orphan && o.unsent as u64 + o.unacked as u64 > 0 {
        return Class::Zombie(ZombieReason::Orphaned);
    }
    if o.state == tcp_state::CLOSE_WAIT && o.close_wait_for.is_some_and(|d| d >= t.close_wait_after) {
        return Class::Zombie(ZombieReason::CloseWait);
    }
    let retransmitting = o.retransmits > 0 || o.backoff > 0;
    if o.unacked > 0 && retransmitting && o.no_progress_for >= t.dead_after {
        return Class::Zombie(ZombieReason::DeadPeer);
    }
    let zero_window = o.snd_wnd == 0 && o.unsent > 0 && (o.pending == timer::PROBE0 || o.probes_out > 0);
    if zero_window {
        let for_ = o.zero_window_for.unwrap_or_default();
        if o.probes_out >= DEAD_PROBES && for_ >= t.dead_after {
            return Class::Zombie(ZombieReason::DeadPeer);
        }
        if for_ >= t.stall_after {
            return Class::Stalled(StallReason::ZeroWindow);
        }
    }
    Class::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn t() -> Thresholds {
        Thresholds { dead_after: S(5), close_wait_after: S(10), stall_after: S(3) }
    }

    fn est() -> Observed {
        Observed { state: tcp_state::ESTABLISHED, snd_wnd: 65535, ..Default::default() }
    }

    #[test]
    fn idle_and_flowing_sockets_are_healthy() {
        assert_eq!(classify(&est(), &t()), Class::Healthy);
        let flowing = Observed { unacked: 10_000, unsent: 5_000, no_progress_for: S(0), ..est() };
        assert_eq!(classify(&flowing, &t()), Class::Healthy);
    }

    #[test]
    fn dead_peer_needs_unacked_data_backoff_and_time() {
        let dead = Observed { unacked: 4096, retransmits: 4, backoff: 4, pending: timer::RETRANS, no_progress_for: S(6), ..est() };
        assert_eq!(classify(&dead, &t()), Class::Zombie(ZombieReason::DeadPeer));
        assert_eq!(classify(&Observed { no_progress_for: S(4), ..dead }, &t()), Class::Healthy, "too early");
        assert_eq!(classify(&Observed { retransmits: 0, backoff: 0, ..dead }, &t()), Class::Healthy, "no RTO yet");
        assert_eq!(classify(&Observed { unacked: 0, ..dead }, &t()), Class::Healthy, "nothing outstanding");
    }

    #[test]
    fn close_wait_counts_after_its_threshold() {
        let cw = Observed { state: tcp_state::CLOSE_WAIT, close_wait_for: Some(S(11)), ..est() };
        assert_eq!(classify(&cw, &t()), Class::Zombie(ZombieReason::CloseWait));
        assert_eq!(classify(&Observed { close_wait_for: Some(S(9)), ..cw }, &t()), Class::Healthy);
        assert_eq!(classify(&Observed { close_wait_for: None, ..cw }, &t()), Class::Healthy);
    }

    #[test]
    fn orphans_with_data_are_zombies_whatever_else() {
        let o = Observed { state: tcp_state::FIN_WAIT1, orphan: true, unacked: 100, ..est() };
        assert_eq!(classify(&o, &t()), Class::Zombie(ZombieReason::Orphaned));
        let drained = Observed { unacked: 0, unsent: 0, ..o };
        assert_eq!(classify(&drained, &t()), Class::Healthy, "an orphan that delivered everything is just closing");
    }

    #[test]
    fn zero_window_is_a_stall_until_probes_go_unanswered() {
        let slow = Observed { snd_wnd: 0, unsent: 50_000, pending: timer::PROBE0, probes_out: 0, zero_window_for: Some(S(4)), ..est() };
        assert_eq!(classify(&slow, &t()), Class::Stalled(StallReason::ZeroWindow));
        assert_eq!(classify(&Observed { zero_window_for: Some(S(2)), ..slow }, &t()), Class::Healthy);
        let gone = Observed { probes_out: DEAD_PROBES, zero_window_for: Some(S(6)), ..slow };
        assert_eq!(classify(&gone, &t()), Class::Zombie(ZombieReason::DeadPeer));
    }

    #[test]
    fn listeners_are_never_zombies() {
        let l = Observed { state: tcp_state::LISTEN, orphan: true, unsent: 1, ..est() };
        assert_eq!(classify(&l, &t()), Class::Healthy);
    }
}
