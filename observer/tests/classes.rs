//! Every class, per socket, on every sweep: a server in its own network
//! namespace with a client namespace per behaviour, and the observer's
//! `/sockets` listing reconciled with `ss` by 4-tuple after each sweep.
//! Expected classes come from how each client behaves (its namespace's
//! address says which), never from the observer's own code.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::*;

const CW_AFTER: f64 = 3.0;
const INTERVAL: f64 = 0.5;
const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];

/// What each role's server-side socket must be once its story has played out.
fn expected(role: &str) -> &'static str {
    match role {
        "healthy" | "drain" => "healthy",
        "slow" => "zero_window",
        "vanish" | "stallgone" => "dead_peer",
        "halfclose" | "idleclose" => "close_wait",
        "orphan" => "orphaned",
        "blackhole" => "connect",
        other => panic!("role {other} has no expectation"),
    }
}

/// Per-socket disagreements between the scenario and the observer in `look`.
fn mismatches(lab: &Lab, look: &Look, skip_idle: bool) -> Vec<String> {
    look.stable()
        .filter(|s| s.state != "LISTEN" && s.state != "TIME-WAIT")
        .filter_map(|s| {
            let role = lab.role_of(&s.peer).unwrap_or_else(|| panic!("socket of no role: {s:?}"));
            if skip_idle && role == "idleclose" {
                return None;
            }
            let got = look.class_of(&s.local, &s.peer);
            (got != expected(role)).then(|| format!("{role} {} {}->{}: observer says {got}", s.state, s.local, s.peer))
        })
        .collect()
}

/// (nstat TcpRetransSegs, observer_retransmits_total) at a sweep during which
/// the kernel's counter did not move, so both describe the same moment.
fn quiet_retransmits(obs: &Observer, ns: &str) -> (u64, u64) {
    for _ in 0..40 {
        let before = nstat(Some(ns), "TcpRetransSegs");
        let last = metric(&obs.scrape(), "observer_sweeps_total") as u64;
        let look = next_look(obs, last, Some(ns), None);
        if nstat(Some(ns), "TcpRetransSegs") == before {
            return (before, metric(&look.metrics, "observer_retransmits_total") as u64);
        }
    }
    panic!("the kernel retransmitted during every one of 40 sweeps");
}

#[test]
fn every_class_holds_per_socket_on_every_sweep() {
    every_class_holds(false);
}

/// The same with a server whose sockets are non-blocking, as event-loop
/// servers' are: where the kernel lets the send probe see every send, a
/// settled socket is then not read at all between sends, and the classes
/// and retransmits must hold all the same.
#[test]
fn every_class_holds_with_a_non_blocking_server() {
    every_class_holds(true);
}

fn every_class_holds(nonblocking: bool) {
    require_root();
    let mut lab_args = vec![
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
        "--drain",
        "2",
        "--stallgone",
        "2",
        "--stallgone-after-ms",
        "5000",
        "--idleclose",
        "1",
        "--idle-fin-after-ms",
        "7000",
        "--blackhole",
        "2",
        "--burst",
        "1048576",
        "--orphan-close-after-ms",
        "6000",
        "--duration-secs",
        "170",
    ];
    if nonblocking {
        // Messages far enough apart for sockets to settle between them: the
        // next one, to a peer that vanished meanwhile, must be noticed.
        lab_args.extend(["--nonblocking", "--interval-ms", "1500"]);
    }
    let lab = start_lab(&lab_args);
    let ns = lab.server_netns.clone().expect("the lab runs the server in a namespace");
    let pid = lab.server_pid.to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);

    // Settling: every socket reaches its class, and until then the idle
    // connection closed by its client is no zombie before CLOSE_WAIT has
    // lasted --close-wait-after (counted from its FIN, not its last data).
    let mut last_estab: Option<Instant> = None;
    let mut first_cw: Option<Instant> = None;
    let mut idle_checks = (0, 0);
    let mut last = 0;
    let mut ss = None;
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let look = next_look(&obs, last, Some(&ns), ss.take());
        look.assert_consistent();
        last = look.sweep;
        ss = Some(look.ss.clone());
        let idle = look.ss.iter().find(|s| lab.role_of(&s.peer) == Some("idleclose")).expect("idle connection");
        match idle.state.as_str() {
            "ESTAB" => last_estab = Some(look.at),
            "CLOSE-WAIT" => {
                first_cw.get_or_insert(look.at);
            }
            other => panic!("idle connection in {other}"),
        }
        let class = look.class_of(&idle.local, &idle.peer);
        if last_estab.is_some_and(|t| look.at < t + Duration::from_secs_f64(CW_AFTER)) {
            assert_eq!(
                class, "healthy",
                "sweep {}: idle connection a zombie before its FIN is {CW_AFTER} s old",
                look.sweep
            );
            idle_checks.0 += 1;
        }
        if first_cw.is_some_and(|t| look.at >= t + Duration::from_secs_f64(CW_AFTER + INTERVAL + 0.5)) {
            assert_eq!(class, "close_wait", "sweep {}: idle connection in CLOSE_WAIT past the threshold", look.sweep);
            idle_checks.1 += 1;
        }
        if mismatches(&lab, &look, false).is_empty() && idle_checks.1 > 0 {
            break;
        }
        assert!(Instant::now() < settle_deadline, "not settled after 60 s: {:?}", mismatches(&lab, &look, false));
    }
    assert!(idle_checks.0 >= 3, "the idle connection was checked before its FIN aged ({idle_checks:?})");

    // The window: every sweep, every socket, exactly.
    let (kernel_before, ours_before) = quiet_retransmits(&obs, &ns);
    let want: BTreeMap<&str, usize> =
        [("dead_peer", 4), ("close_wait", 2), ("orphaned", 1), ("zero_window", 2), ("connect", 2)].into();
    let mut draining_seen = 0;
    let mut scrapes: Vec<Scrape> = Vec::new();
    let checked = every_sweep(&obs, 12, Some(&ns), |look| {
        scrapes.push(look.metrics.clone());
        let bad = mismatches(&lab, look, false);
        assert!(bad.is_empty(), "sweep {}: {bad:#?}", look.sweep);
        for (class, n) in &want {
            assert_eq!(look.count(class), *n, "sweep {}: {class} sockets", look.sweep);
        }
        draining_seen += look
            .ss
            .iter()
            .filter(|s| lab.role_of(&s.peer) == Some("drain") && s.state == "FIN-WAIT-1" && s.send_q > 0)
            .count();
    });
    assert!(draining_seen > 0, "the drain orphans were draining during the window (sweeps {checked:?})");
    // The checks above covered marked-socket sweeps where the kernel has them.
    assert_sweep_path(&scrapes[0], &scrapes[scrapes.len() - 1]);
    assert_settled_reads(&scrapes[0], &scrapes[scrapes.len() - 1], nonblocking);

    // Retransmitted segments: the kernel's own count for the namespace
    // (only the server sends there), over the same stretch.
    let mut after = quiet_retransmits(&obs, &ns);
    let until = Instant::now() + Duration::from_secs(30);
    while after.0 == kernel_before && Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
        after = quiet_retransmits(&obs, &ns);
    }
    assert!(after.0 > kernel_before, "the kernel retransmitted meanwhile");
    assert_eq!(after.1 - ours_before, after.0 - kernel_before, "observer_retransmits_total vs TcpRetransSegs");
}

#[test]
fn a_crashed_workers_orphans_stay_its_zombies() {
    require_root();
    let lab = start_lab(&[
        "--server-comm",
        "obscrashsrv",
        "--allow-server-exit",
        "--healthy",
        "1",
        "--vanish",
        "2",
        "--orphan",
        "1",
        "--orphan-close-after-ms",
        "2000",
        "--duration-secs",
        "120",
    ]);
    let ns = lab.server_netns.clone().expect("server namespace");
    let mut args = vec!["--comm", "obscrashsrv", "--no-pin"];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);
    wait_for(Duration::from_secs(40), "the dead peers and the orphan", || {
        let look = next_look(&obs, 0, Some(&ns), None);
        (look.count("dead_peer") == 2 && look.count("orphaned") == 1).then_some(())
    });
    // The worker crashes: the kernel closes every socket it held, and those
    // with data queued to vanished peers become orphans that retransmit on.
    // SAFETY: the server is this test's lab's child, signalled by PID.
    unsafe { libc::kill(lab.server_pid as libc::pid_t, libc::SIGKILL) };
    let crashed = lab.server_pid;
    wait_for(Duration::from_secs(20), "the crash's orphans classified", || {
        let look = next_look(&obs, 0, Some(&ns), None);
        (look.count("orphaned") == 3 && metric(&look.metrics, "observer_target_up") == 0.0).then_some(())
    });
    every_sweep(&obs, 10, Some(&ns), |look| {
        assert_eq!(metric(&look.metrics, "observer_target_up"), 0.0);
        for s in look.stable().filter(|s| s.state != "TIME-WAIT" && s.state != "LISTEN") {
            assert!(s.pids.is_empty(), "no process holds {s:?} after the crash");
            let role = lab.role_of(&s.peer).expect("a role");
            let want = if role == "healthy" { "healthy" } else { "orphaned" };
            assert_eq!(look.class_of(&s.local, &s.peer), want, "sweep {}: {role} {s:?}", look.sweep);
        }
        assert_eq!(look.count("orphaned"), 3, "sweep {}", look.sweep);
        assert!(
            look.sockets.iter().all(|l| l.pid == crashed),
            "sweep {}: attributed to the crashed worker",
            look.sweep
        );
    });
}
