//! A live peer far away on a lossy link (300 ms RTT and 1% loss: netem
//! `delay 150ms loss 1%` on both ends of its link) retransmits now and then
//! but keeps hearing ACKs: it is never `dead_peer` or `orphaned`, while the
//! vanished peers beside it are `dead_peer`, on every sweep.
//!
//! Needs sch_netem. `cargo xtask test` leaves this test out, saying so and
//! counting it skipped, on a kernel without it, and runs it in the QEMU
//! guests (whose kernels have it). Run directly without netem, it fails.

mod common;

use std::{process::Command, time::Duration};

use common::*;

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];
const HEALTHY: usize = 4;
const VANISH: usize = 2;

/// Per socket of `role` in `ns`, from `ss -ti`: (peer, smoothed RTT in ms,
/// segments retransmitted over its life).
fn link_stats(lab: &Lab, ns: &str, role: &str) -> Vec<(String, f64, u64)> {
    // `state all`: with one state asked for, ss leaves the state column out.
    let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-tinH", "state", "all"]).output().expect("run ss");
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut stats = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            current = (cols.first() == Some(&"ESTAB"))
                .then(|| cols.get(4).map(|p| canonical(p)))
                .flatten()
                .filter(|p| lab.role_of(p) == Some(role));
            continue;
        }
        let Some(peer) = current.take() else { continue };
        let mut rtt = 0.0;
        let mut retrans = 0;
        for tok in line.split_whitespace() {
            if let Some(v) = tok.strip_prefix("rtt:") {
                rtt = v.split('/').next().and_then(|r| r.parse().ok()).unwrap_or(0.0);
            }
            // `retrans:<unacked now>/<total>`, shown once there was one.
            if let Some(v) = tok.strip_prefix("retrans:") {
                retrans = v.rsplit('/').next().and_then(|r| r.parse().ok()).unwrap_or(0);
            }
        }
        stats.push((peer, rtt, retrans));
    }
    stats
}

#[test]
fn netem_live_peers_at_300ms_rtt_with_loss_stay_healthy_beside_dead_ones() {
    require_root();
    // The healthy clients stream (a message every 10 ms on top of the
    // burst), so the lossy link keeps losing and retransmitting segments.
    let lab = start_lab(&[
        "--healthy",
        "4",
        "--vanish",
        "2",
        "--netem",
        "delay 150ms loss 1%",
        "--interval-ms",
        "10",
        "--duration-secs",
        "150",
    ]);
    let ns = lab.server_netns.clone().expect("the lab runs the server in a namespace");
    let pid = lab.server_pid.to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);

    wait_for(Duration::from_secs(40), "the vanished peers classed dead_peer", || {
        let look = next_look(&obs, 0, Some(&ns), None);
        (look.count("dead_peer") == VANISH).then_some(())
    });
    let slow = link_stats(&lab, &ns, "healthy");
    assert_eq!(slow.len(), HEALTHY, "the slow-link connections are up: {slow:?}");
    assert!(slow.iter().all(|(_, rtt, _)| *rtt >= 300.0), "every slow link has a 300 ms RTT: {slow:?}");
    let retrans_before: u64 = slow.iter().map(|(_, _, r)| r).sum();

    let checked = every_sweep(&obs, 12, Some(&ns), |look| {
        let mut roles = (0, 0);
        for s in look.stable().filter(|s| s.state != "LISTEN" && s.state != "TIME-WAIT") {
            let role = lab.role_of(&s.peer).unwrap_or_else(|| panic!("socket of no role: {s:?}"));
            let want = match role {
                "healthy" => {
                    roles.0 += 1;
                    "healthy"
                }
                "vanish" => {
                    roles.1 += 1;
                    "dead_peer"
                }
                other => panic!("role {other} is not in this lab"),
            };
            assert_eq!(look.class_of(&s.local, &s.peer), want, "sweep {}: {role} {s:?}", look.sweep);
        }
        assert_eq!(roles, (HEALTHY, VANISH), "sweep {}: (slow-link, vanished) connections in ss", look.sweep);
        assert_eq!(look.count("dead_peer"), VANISH, "sweep {}: dead_peer sockets", look.sweep);
        assert_eq!(look.count("orphaned"), 0, "sweep {}: orphaned sockets", look.sweep);
        assert_eq!(
            look.sockets.len(),
            VANISH,
            "sweep {}: only the vanished peers listed: {:?}",
            look.sweep,
            look.sockets
        );
    });

    // The links were what they claim while the sweeps were checked: slow,
    // and lossy enough that the kernel retransmitted on them meanwhile.
    let after = link_stats(&lab, &ns, "healthy");
    assert_eq!(after.len(), HEALTHY, "{after:?}");
    assert!(after.iter().all(|(_, rtt, _)| *rtt >= 300.0), "every slow link kept its 300 ms RTT: {after:?}");
    let retrans_after: u64 = after.iter().map(|(_, _, r)| r).sum();
    assert!(
        retrans_after > retrans_before,
        "the slow links retransmitted during the sweeps {checked:?} ({retrans_before} -> {retrans_after}: {after:?})"
    );
}
