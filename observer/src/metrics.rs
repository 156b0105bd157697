//! The Prometheus metrics the observer exports, all in one registry.
//!
//! Names follow Prometheus conventions: `observer_` prefix, base units in
//! the name, counters ending in `_total`; label values come from small fixed
//! sets (TCP states, zombie reasons, hooks and methods), never from sockets.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use observer_common::tcp_state;

use crate::{
    classify::{StallReason, ZombieReason},
    sockets::table::Summary,
    target::MemorySample,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// What a marked sweep read of a settled socket: `none`, or `write_seq`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabel {
    pub read: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PidLabel {
    pub pid: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PidReasonLabel {
    pub pid: u32,
    pub reason: &'static str,
}

/// Per-process series, only with `--per-pid`: one set per matched process
/// (a cluster of workers), bounded by `--max-pids`.
#[derive(Clone, Default)]
pub struct PerPid {
    pub rss: Family<PidLabel, Gauge>,
    pub pss: Family<PidLabel, Gauge>,
    pub established: Family<PidLabel, Gauge>,
    pub zombies: Family<PidReasonLabel, Gauge>,
    pub send_queue: Family<PidLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    pub hook: &'static str,
    pub method: &'static str,
}

/// Event counters the kernel keeps per process, as exported.
#[derive(Clone, Default)]
pub struct EventCounters {
    pub retransmits: Counter,
    pub rto_timeouts: Counter,
    pub zero_window_probes: Counter,
    pub loss_probes: Counter,
    pub opened: Counter,
    pub closed: Counter,
}

#[derive(Clone, Default)]
pub struct Metrics {
    pub target_up: Gauge,
    pub target_processes: Gauge,
    pub target_rss: Gauge,
    pub target_rss_anon: Gauge,
    pub target_pss: Gauge,
    pub tcp_sockets: Family<StateLabel, Gauge>,
    pub zombie_sockets: Family<ReasonLabel, Gauge>,
    pub stalled_sockets: Family<ReasonLabel, Gauge>,
    pub unsent: Gauge,
    pub unacked: Gauge,
    pub send_queue: Gauge,
    pub zombie_queued: Family<ReasonLabel, Gauge>,
    pub events: EventCounters,
    pub tracked_sockets: Gauge,
    pub events_dropped: Family<ReasonLabel, Counter>,
    pub probe_info: Family<ProbeLabel, Gauge>,
    pub sweeps: Counter,
    pub sweep_errors: Counter,
    /// Sweeps that read only the marked sockets that changed.
    pub marked_sweeps: Counter,
    /// Sweeps run before the interval was up, because a class was due.
    pub due_sweeps: Counter,
    /// Settled sockets the marked sweeps passed over, by what they read.
    pub settled_visits: Family<ReadLabel, Counter>,
    /// Socket records the sweeps read from the kernel, and all bytes read
    /// (records and the alive words of unchanged quiet sockets).
    pub sweep_records_read: Counter,
    pub sweep_bytes_read: Counter,
    pub sweep_duration: Gauge<f64, AtomicU64>,
    pub kernel_map: Gauge,
    pub per_pid: Option<PerPid>,
}

/// Reasons of `observer_events_dropped_total`, kernel side first (indexed
/// like `observer_common::drop_reason`), then the agent's own: sockets
/// evicted from the full socket map, and failed inserts into the maps that
/// tell the probes which processes (`TARGET_TGIDS`, retried every sweep and
/// counted every time) and listening ports (`TARGET_PORTS`) are the
/// target's. `COUNTERS` is filled by the kernel side: `counter_map_full`.
pub const DROP_REASONS: [&str; 7] = [
    "socket_map_full",
    "counter_map_full",
    "kernel_read_failed",
    "iterator_write_failed",
    "socket_map_evicted",
    "pid_map_insert_failed",
    "port_map_insert_failed",
];
pub const DROP_EVICTED: usize = 4;
pub const DROP_PID_MAP: usize = 5;
pub const DROP_PORT_MAP: usize = 6;

impl Metrics {
    /// `events`: whether kernel events are observed at all. Without them
    /// (sock_diag mode) their counters are left out of the registry, so
    /// they are absent rather than a misleading 0. `pss`: whether the kernel
    /// has `/proc/PID/smaps_rollup` (4.14+); without it the PSS gauges are
    /// absent for the same reason.
    pub fn register(&self, events: bool, pss: bool) -> Registry {
        let mut r = Registry::with_prefix("observer");
        r.register("target_up", "1 while at least one target process exists", self.target_up.clone());
        r.register(
            "target_processes",
            "Number of processes matched by the target selector",
            self.target_processes.clone(),
        );
        r.register_with_unit(
            "target_rss",
            "Resident memory of the target (VmRSS), sampled at scrape time",
            Unit::Bytes,
            self.target_rss.clone(),
        );
        r.register_with_unit(
            "target_rss_anon",
            "Anonymous resident memory of the target (RssAnon: heap and buffers), sampled at scrape time",
            Unit::Bytes,
            self.target_rss_anon.clone(),
        );
        if pss {
            r.register_with_unit(
                "target_pss",
                "Proportional resident memory of the target (Pss of smaps_rollup: shared pages divided among the processes mapping them), summed over its processes at scrape time",
                Unit::Bytes,
                self.target_pss.clone(),
            );
        }
        r.register(
            "tcp_sockets",
            "Target TCP sockets by state, orphans the target closed included",
            self.tcp_sockets.clone(),
        );
        r.register(
            "zombie_sockets",
            "Target sockets that will never make progress: dead_peer, close_wait, orphaned",
            self.zombie_sockets.clone(),
        );
        r.register("stalled_sockets", "Target sockets stalled but not dead: zero_window (a live peer reads too slowly), connect (an outbound connect unanswered)", self.stalled_sockets.clone());
        r.register_with_unit(
            "unsent",
            "Bytes written by the target that the kernel has not sent yet, over all its sockets",
            Unit::Bytes,
            self.unsent.clone(),
        );
        r.register_with_unit(
            "unacked",
            "Bytes sent but not acknowledged by the peer, over all target sockets",
            Unit::Bytes,
            self.unacked.clone(),
        );
        r.register_with_unit(
            "send_queue",
            "Unsent plus unacked bytes (ss Send-Q), over all target sockets",
            Unit::Bytes,
            self.send_queue.clone(),
        );
        r.register_with_unit(
            "zombie_queued",
            "Send-queue bytes held in zombie and stalled sockets, by reason",
            Unit::Bytes,
            self.zombie_queued.clone(),
        );
        if events {
            r.register("retransmits", "Segments retransmitted on target sockets", self.events.retransmits.clone());
            r.register(
                "rto_timeouts",
                "Retransmission timeouts (RTO) on target sockets",
                self.events.rto_timeouts.clone(),
            );
            r.register(
                "zero_window_probes",
                "Zero-window (persist timer) probes sent on target sockets",
                self.events.zero_window_probes.clone(),
            );
            r.register("loss_probes", "Tail-loss probes sent on target sockets", self.events.loss_probes.clone());
            r.register(
                "connections_opened",
                "Target connections seen becoming established",
                self.events.opened.clone(),
            );
            r.register(
                "connections_closed",
                "Target connections seen opening, then closing",
                self.events.closed.clone(),
            );
        }
        r.register("tracked_sockets", "Sockets in the observer's table (all targets)", self.tracked_sockets.clone());
        r.register(
            "events_dropped",
            "Events or sockets the observer could not account for, by reason",
            self.events_dropped.clone(),
        );
        r.register("probe_info", "Attach method each hook uses on this kernel (value 1)", self.probe_info.clone());
        r.register("sweeps", "Reconciliation sweeps against the kernel's socket table", self.sweeps.clone());
        r.register("sweep_errors", "Sweeps that failed", self.sweep_errors.clone());
        r.register(
            "due_sweeps",
            "Sweeps run before the interval was up because a socket's class was due to change then (at most three per interval)",
            self.due_sweeps.clone(),
        );
        r.register(
            "marked_sweeps",
            "Sweeps that visited only the marked sockets and read only those that changed, instead of walking every TCP socket of the watched namespaces",
            self.marked_sweeps.clone(),
        );
        r.register(
            "sweep_settled_sockets",
            "Settled sockets the marked sweeps passed over without a record crossing, by what was read of them: none (non-blocking, its sends touch the mark) or write_seq",
            self.settled_visits.clone(),
        );
        r.register(
            "sweep_records_read",
            "Socket records the sweeps read from the kernel",
            self.sweep_records_read.clone(),
        );
        r.register_with_unit(
            "sweep_read",
            "What crossed from the kernel to the agent in the sweeps: records, and one word per unchanged quiet socket",
            Unit::Bytes,
            self.sweep_bytes_read.clone(),
        );
        r.register_with_unit(
            "sweep_duration",
            "Duration of the last sweep",
            Unit::Seconds,
            self.sweep_duration.clone(),
        );
        r.register_with_unit(
            "kernel_map",
            "Kernel memory of the observer's BPF maps (memlock, as the kernel accounts it)",
            Unit::Bytes,
            self.kernel_map.clone(),
        );
        if let Some(p) = &self.per_pid {
            r.register_with_unit(
                "process_rss",
                "Resident memory (VmRSS) of each target process, at scrape time",
                Unit::Bytes,
                p.rss.clone(),
            );
            if pss {
                r.register_with_unit(
                    "process_pss",
                    "Proportional resident memory (Pss) of each target process, at scrape time",
                    Unit::Bytes,
                    p.pss.clone(),
                );
            }
            r.register(
                "process_established_sockets",
                "ESTABLISHED sockets of each target process",
                p.established.clone(),
            );
            r.register("process_zombie_sockets", "Zombie sockets of each target process, by reason", p.zombies.clone());
            r.register_with_unit(
                "process_send_queue",
                "Unsent plus unacked bytes of each target process",
                Unit::Bytes,
                p.send_queue.clone(),
            );
        }
        // Every label value exists from the start, so alerts and dashboards
        // see a 0 rather than no series.
        for (_, s) in tcp_state::NAMES {
            let _ = self.tcp_sockets.get_or_create(&StateLabel { state: s });
        }
        for r in ZombieReason::ALL {
            let _ = self.zombie_sockets.get_or_create(&ReasonLabel { reason: r.label() });
            let _ = self.zombie_queued.get_or_create(&ReasonLabel { reason: r.label() });
        }
        for r in StallReason::ALL {
            let _ = self.stalled_sockets.get_or_create(&ReasonLabel { reason: r.label() });
            let _ = self.zombie_queued.get_or_create(&ReasonLabel { reason: r.label() });
        }
        for reason in DROP_REASONS {
            let _ = self.events_dropped.get_or_create(&ReasonLabel { reason });
        }
        r
    }

    /// Publishes one sweep's summary.
    pub fn publish(&self, s: &Summary) {
        for (n, name) in tcp_state::NAMES {
            let v = s.by_state.get(&n).copied().unwrap_or(0);
            self.tcp_sockets.get_or_create(&StateLabel { state: name }).set(v as i64);
        }
        for r in ZombieReason::ALL {
            let label = ReasonLabel { reason: r.label() };
            self.zombie_sockets.get_or_create(&label).set(*s.zombies.get(&r).unwrap_or(&0) as i64);
            self.zombie_queued.get_or_create(&label).set(*s.zombie_bytes.get(&r).unwrap_or(&0) as i64);
        }
        for r in StallReason::ALL {
            let label = ReasonLabel { reason: r.label() };
            self.stalled_sockets.get_or_create(&label).set(*s.stalled.get(&r).unwrap_or(&0) as i64);
            self.zombie_queued.get_or_create(&label).set(*s.stalled_bytes.get(&r).unwrap_or(&0) as i64);
        }
        self.unsent.set(s.unsent as i64);
        self.unacked.set(s.unacked as i64);
        self.send_queue.set((s.unsent + s.unacked) as i64);
        self.tracked_sockets.set(s.tracked as i64);
    }

    /// Replaces the per-process series with `per` (pid -> its summary), so
    /// exited processes leave no stale series behind.
    pub fn publish_per_pid(&self, per: &[(u32, Summary)]) {
        let Some(p) = &self.per_pid else { return };
        p.established.clear();
        p.zombies.clear();
        p.send_queue.clear();
        for (pid, s) in per {
            let pid = *pid;
            p.established.get_or_create(&PidLabel { pid }).set(*s.by_state.get(&1).unwrap_or(&0) as i64);
            p.send_queue.get_or_create(&PidLabel { pid }).set((s.unsent + s.unacked) as i64);
            for r in ZombieReason::ALL {
                p.zombies
                    .get_or_create(&PidReasonLabel { pid, reason: r.label() })
                    .set(*s.zombies.get(&r).unwrap_or(&0) as i64);
            }
        }
    }

    /// Publishes the memory read at scrape time; per-process series are
    /// replaced, so exited processes leave none behind.
    pub fn publish_memory(&self, m: &MemorySample, max_pids: usize) {
        self.target_rss.set(m.rss as i64);
        self.target_rss_anon.set(m.rss_anon as i64);
        self.target_pss.set(m.pss as i64);
        let Some(per) = &self.per_pid else { return };
        per.rss.clear();
        per.pss.clear();
        for p in m.each.iter().take(max_pids) {
            let label = PidLabel { pid: p.pid };
            per.rss.get_or_create(&label).set(p.rss as i64);
            if let Some(pss) = p.pss {
                per.pss.get_or_create(&label).set(pss as i64);
            }
        }
    }

    pub fn add_dropped(&self, reason_index: usize, n: u64) {
        if n > 0
            && let Some(reason) = DROP_REASONS.get(reason_index)
        {
            self.events_dropped.get_or_create(&ReasonLabel { reason }).inc_by(n);
        }
    }
}

pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::default();
        let r = m.register(true, true);
        let text = encode(&r).expect("encodes");
        for name in [
            "observer_target_rss_bytes",
            "observer_target_pss_bytes",
            "observer_target_up",
            "observer_tcp_sockets{state=\"close_wait\"}",
            "observer_zombie_sockets{reason=\"dead_peer\"}",
            "observer_zombie_sockets{reason=\"orphaned\"}",
            "observer_stalled_sockets{reason=\"zero_window\"}",
            "observer_unsent_bytes",
            "observer_unacked_bytes",
            "observer_send_queue_bytes",
            "observer_zombie_queued_bytes{reason=\"close_wait\"}",
            "observer_retransmits_total",
            "observer_rto_timeouts_total",
            "observer_zero_window_probes_total",
            "observer_connections_opened_total",
            "observer_connections_closed_total",
            "observer_tracked_sockets",
            "observer_events_dropped_total{reason=\"socket_map_full\"}",
            "observer_events_dropped_total{reason=\"pid_map_insert_failed\"}",
            "observer_events_dropped_total{reason=\"port_map_insert_failed\"}",
            "observer_sweep_duration_seconds",
            "observer_kernel_map_bytes",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn publish_sets_sums_and_send_queue() {
        let m = Metrics::default();
        let r = m.register(true, true);
        let mut s = Summary { unsent: 10, unacked: 5, tracked: 3, ..Default::default() };
        s.by_state.insert(8, 2);
        s.zombies.insert(ZombieReason::CloseWait, 2);
        m.publish(&s);
        let text = encode(&r).expect("encodes");
        assert!(text.contains("\nobserver_send_queue_bytes 15\n"));
        assert!(text.contains("\nobserver_tcp_sockets{state=\"close_wait\"} 2\n"));
        assert!(text.contains("\nobserver_zombie_sockets{reason=\"close_wait\"} 2\n"));
        assert!(text.contains("\nobserver_zombie_sockets{reason=\"dead_peer\"} 0\n"));
    }

    #[test]
    fn without_events_their_counters_are_absent_not_zero() {
        let m = Metrics::default();
        let text = encode(&m.register(false, false)).expect("encodes");
        for name in [
            "retransmits",
            "rto_timeouts",
            "zero_window_probes",
            "loss_probes",
            "connections_opened",
            "connections_closed",
        ] {
            assert!(!text.contains(&format!("observer_{name}")), "{name} registered without events:\n{text}");
        }
        assert!(text.contains("\nobserver_send_queue_bytes 0\n"), "gauges stay");
        assert!(!text.contains("observer_target_pss"), "no smaps_rollup, no PSS gauge:\n{text}");
        assert!(text.contains("\nobserver_target_rss_bytes 0\n"));
        assert!(text.contains("\nobserver_zombie_sockets{reason=\"dead_peer\"} 0\n"));
    }

    #[test]
    fn memory_is_published_per_pid_and_replaced() {
        use crate::target::ProcMemory;
        let m = Metrics { per_pid: Some(PerPid::default()), ..Metrics::default() };
        let r = m.register(true, true);
        let p = |pid, rss, pss| ProcMemory { pid, rss, rss_anon: rss / 2, pss };
        let sample =
            MemorySample { each: vec![p(10, 400, Some(100)), p(11, 600, None)], rss: 1000, rss_anon: 500, pss: 100 };
        m.publish_memory(&sample, 64);
        let text = encode(&r).expect("encodes");
        assert!(text.contains("\nobserver_target_pss_bytes 100\n"), "{text}");
        assert!(text.contains("\nobserver_target_rss_bytes 1000\n"));
        assert!(text.contains("\nobserver_process_pss_bytes{pid=\"10\"} 100\n"), "{text}");
        assert!(text.contains("\nobserver_process_rss_bytes{pid=\"11\"} 600\n"));
        assert!(!text.contains("observer_process_pss_bytes{pid=\"11\"}"), "unread PSS is absent, not 0");
        m.publish_memory(&MemorySample { each: vec![p(11, 600, Some(300))], rss: 600, rss_anon: 300, pss: 300 }, 64);
        let text = encode(&r).expect("encodes");
        assert!(!text.contains("pid=\"10\""), "exited process left series behind:\n{text}");
    }
}
