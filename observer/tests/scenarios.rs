//! End-to-end: the real programs in this kernel, a real server with real
//! misbehaving clients, and every number checked against the kernel's own
//! sock_diag view (`ss`) taken around the same sweep.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];

fn zombies(s: &Scrape, reason: &str) -> f64 {
    metric(s, &format!("observer_zombie_sockets{{reason=\"{reason}\"}}"))
}

fn state(s: &Scrape, state: &str) -> f64 {
    metric(s, &format!("observer_tcp_sockets{{state=\"{state}\"}}"))
}

#[test]
fn every_class_in_namespaces_matches_the_kernel() {
    require_root();
    // The lab connects everything before READY, so all these sockets predate
    // the observer: finding them is the iterator's job. The orphan's close
    // comes later, once the observer watches.
    let lab = start_lab(&[
        "--healthy",
        "2",
        "--slow",
        "2",
        "--vanish",
        "2",
        "--halfclose",
        "1",
        "--orphan",
        "1",
        "--orphan-close-after-ms",
        "6000",
        "--duration-secs",
        "150",
    ]);
    let pid = lab.server_pid.to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);

    let first = obs.scrape();
    assert_eq!(metric(&first, "observer_target_up"), 1.0);
    assert_eq!(
        state(&first, "established") + state(&first, "close_wait"),
        8.0,
        "all 8 connections opened before the observer are found"
    );

    // Bounded detection: thresholds are 3 s, sweeps 0.5 s; the orphan is
    // closed at 6 s and dead peers need a few RTOs.
    let s = wait_for(Duration::from_secs(45), "every class reported", || {
        let s = obs.scrape();
        let want = [("dead_peer", 2.0), ("close_wait", 1.0), ("orphaned", 1.0)];
        (want.iter().all(|(r, n)| zombies(&s, r) == *n)
            && metric(&s, "observer_stalled_sockets{reason=\"zero_window\"}") == 2.0)
            .then_some(s)
    });
    assert!(metric(&s, "observer_zombie_queued_bytes{reason=\"dead_peer\"}") > 0.0);
    assert!(metric(&s, "observer_zombie_queued_bytes{reason=\"orphaned\"}") > 0.0);
    assert!(metric(&s, "observer_zombie_queued_bytes{reason=\"zero_window\"}") > 0.0);
    assert!(metric(&s, "observer_target_rss_bytes") > 0.0);
    assert!(metric(&s, "observer_kernel_map_bytes") > 0.0, "map memory reported");
    assert!(metric(&s, "observer_rto_timeouts_total") > 0.0, "timer hook saw RTOs");
    assert!(metric(&s, "observer_retransmits_total") > 0.0, "retransmit hook fired");
    assert!(metric(&s, "observer_zero_window_probes_total") > 0.0, "persist timer seen");
    // Healthy peers are not accused.
    let accused: f64 = ["dead_peer", "close_wait", "orphaned"].iter().map(|r| zombies(&s, r)).sum::<f64>()
        + metric(&s, "observer_stalled_sockets{reason=\"zero_window\"}");
    assert_eq!(accused, 6.0, "exactly the 6 misbehaving peers");

    assert_agrees_with_ss(&obs, lab.server_netns.as_deref(), lab.port);
}

#[test]
fn sidecar_on_loopback_matches_the_kernel() {
    require_root();
    let lab = start_lab(&[
        "--server-loopback",
        "--healthy",
        "2",
        "--slow",
        "1",
        "--halfclose",
        "2",
        "--duration-secs",
        "90",
        // Burst only: on loopback a streaming server keeps a slow reader's
        // queue growing, and the comparison needs a kernel at rest.
        "--interval-ms",
        "0",
    ]);
    let pid = lab.server_pid.to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);
    let s = wait_for(Duration::from_secs(30), "close_wait zombies", || {
        let s = obs.scrape();
        (zombies(&s, "close_wait") == 2.0).then_some(s)
    });
    assert_eq!(zombies(&s, "dead_peer"), 0.0);
    assert_agrees_with_ss(&obs, None, lab.port);
}

#[test]
fn tracked_sockets_return_to_baseline_and_connections_are_counted() {
    require_root();
    let (server, addr) = start_demo_server(std::path::Path::new(DEMO), "4096");

    let pid = server.pid().to_string();
    let obs = start_observer(&["--pid", &pid, "--interval", "0.2"]);
    let baseline = metric(&obs.scrape(), "observer_tracked_sockets");
    assert_eq!(baseline, 1.0, "the listener only");

    const N: usize = 50;
    let status = Command::new(DEMO)
        .args(["client", "--connect", &addr, "--role", "healthy", "--count", &N.to_string(), "--hold-secs", "2"])
        .stdout(Stdio::null())
        .status()
        .expect("run clients");
    assert!(status.success());

    let s = wait_for(Duration::from_secs(20), "tracked sockets back to baseline", || {
        let s = obs.scrape();
        (metric(&s, "observer_tracked_sockets") == baseline
            && metric(&s, "observer_connections_closed_total") == N as f64)
            .then_some(s)
    });
    assert_eq!(metric(&s, "observer_connections_opened_total"), N as f64);
    assert_eq!(state(&s, "established"), 0.0);
    let dropped: f64 = s.iter().filter(|(k, _)| k.starts_with("observer_events_dropped_total")).map(|(_, v)| v).sum();
    assert_eq!(dropped, 0.0, "nothing dropped at this scale");
}
