//! A class that falls due between two intervals gets a sweep of its own:
//! with sweeps 4 s apart, a peer that vanishes is reported by a sweep run
//! for it once `--dead-after` is reached, and that sweep agrees with the
//! kernel's view.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_peer_due_to_be_dead_between_two_intervals_is_reported_by_a_sweep_of_its_own() {
    require_root();
    let lab = start_lab(&["--healthy", "1", "--vanish", "1", "--duration-secs", "90"]);
    let pid = lab.server_pid.to_string();
    let netns = lab.server_netns.as_deref();
    let obs = start_observer(&["--pid", &pid, "--interval", "4", "--dead-after", "6", "--no-pin"]);
    let ss_before = ss_conns(netns);
    // A sweep that sees the peer retransmitting foresees when it turns dead:
    // a regular sweep reports it only if that falls on one, and then the
    // sweep before it foresaw an instant that precedes it. So the sweep that
    // first reports it is a due one. Polled far faster than sweeps run.
    let mut last = (0.0, 0.0);
    let first = wait_for(Duration::from_secs(30), "the vanished peer reported", || {
        let s = obs.scrape();
        let now = (metric(&s, "observer_sweeps_total"), metric(&s, "observer_due_sweeps_total"));
        let reported = metric(&s, "observer_zombie_sockets{reason=\"dead_peer\"}") == 1.0;
        let before = std::mem::replace(&mut last, now);
        if !reported {
            std::thread::sleep(Duration::from_millis(50));
        }
        reported.then_some((before, now))
    });
    let ((sweeps_before, due_before), (sweeps, due)) = first;
    assert_eq!(sweeps, sweeps_before + 1.0, "a sweep went unseen before the report");
    assert_eq!(due, due_before + 1.0, "sweep {sweeps} that first reported the dead peer was a regular one");

    let (sweep, sockets) = listing(&obs);
    let metrics = obs.scrape();
    let look = Look { sweep, metrics, sockets, ss_before, ss: ss_conns(netns), at: std::time::Instant::now() };
    assert_eq!(metric(&look.metrics, "observer_sweeps_total") as u64, sweep, "a sweep ran while looking");
    look.assert_consistent();
    let dead: Vec<_> = look.sockets.iter().filter(|l| l.class == "dead_peer").collect();
    assert_eq!(dead.len(), 1, "{:?}", look.sockets);
    assert_eq!(lab.role_of(&dead[0].peer), Some("vanish"), "{:?} is not the vanished peer", dead[0]);
    let kernel = look.ss.iter().find(|s| s.local == dead[0].local && s.peer == dead[0].peer).expect("in ss");
    assert!(kernel.send_q > 0, "ss shows nothing outstanding for the dead peer: {kernel:?}");
    assert_eq!(look.count("healthy"), 0, "healthy sockets are not listed");
}
