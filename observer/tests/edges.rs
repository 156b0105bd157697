//! Edges of the socket life cycle, each against the kernel's own view: a
//! write after a reset, IPv6 and IPv4-mapped peers, TIME_WAIT.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];

/// `observer-demo server` with extra flags; (process, port).
fn server(args: &[&str]) -> (Proc, u16) {
    let mut child =
        Command::new(DEMO).arg("server").args(args).stdout(Stdio::piped()).spawn().expect("start demo server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("LISTENING line");
    let addr = line.split_whitespace().nth(1).expect("address in LISTENING line");
    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    (Proc { child, name: "server" }, port)
}

/// Clients of one role; returns them and the local address of each connection.
fn clients(connect: &str, role: &str, count: u32, extra: &[&str]) -> (Proc, Vec<String>) {
    let mut child = Command::new(DEMO)
        .args(["client", "--connect", connect, "--role", role, "--count", &count.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start clients");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut locals = Vec::new();
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).expect("client output") > 0, "clients exited early");
        if let Some(a) = line.trim().strip_prefix("LOCAL ") {
            locals.push(canonical(a));
        }
        if line.starts_with("CONNECTED") {
            break;
        }
    }
    (Proc { child, name: "clients" }, locals)
}

/// Entries of the observer's SOCKS map, counted by bpftool (the kernel's view).
fn socks_entries(observer_pid: u32) -> usize {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{observer_pid}/fdinfo")).expect("fdinfo").flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(info.lines().filter_map(|l| l.strip_prefix("map_id:")).filter_map(|v| v.trim().parse::<u32>().ok()));
    }
    let id = ids
        .into_iter()
        .find(|id| {
            let out = Command::new("bpftool").args(["map", "show", "id", &id.to_string()]).output().expect("bpftool");
            String::from_utf8_lossy(&out.stdout).contains("name SOCKS")
        })
        .expect("the observer holds its SOCKS map");
    let out = Command::new("bpftool").args(["-j", "map", "dump", "id", &id.to_string()]).output().expect("bpftool");
    assert!(out.status.success(), "bpftool map dump: {}", String::from_utf8_lossy(&out.stderr));
    // One `"key":` per entry in bpftool's JSON.
    String::from_utf8_lossy(&out.stdout).matches("\"key\"").count()
}

#[test]
fn a_write_after_a_reset_leaves_nothing_in_the_socket_map() {
    require_root();
    // A streaming server blocked writing to readers that never read: its
    // write returns only after the reset, from a socket already closed.
    let (srv, port) = server(&["--listen", "127.0.0.1:0", "--burst", "4096", "--interval-ms", "10"]);
    let pid = srv.pid().to_string();
    let obs = start_observer(&["--pid", &pid, "--interval", "0.2", "--no-pin"]);
    let baseline = socks_entries(obs.proc.pid());
    let addr = format!("127.0.0.1:{port}");
    let (mut c, locals) = clients(&addr, "slow", 20, &["--reset", "--hold-secs", "2"]);
    assert_eq!(locals.len(), 20);
    wait_for(Duration::from_secs(5), "20 connections tracked", || {
        (socks_entries(obs.proc.pid()) >= baseline + 20).then_some(())
    });
    let status = c.child.wait().expect("clients");
    assert!(status.success());
    wait_for(Duration::from_secs(10), "the server's sockets gone", || {
        ss_conns(None).iter().all(|s| !(s.local.ends_with(&format!(":{port}")) && s.state != "LISTEN")).then_some(())
    });
    // Let the server write into the reset sockets a while, then count.
    std::thread::sleep(Duration::from_millis(500));
    let left = wait_for(Duration::from_secs(10), "the map back to its baseline", || {
        let n = socks_entries(obs.proc.pid());
        (n == baseline).then_some(n)
    });
    assert_eq!(left, baseline);
    assert_eq!(metric(&obs.scrape(), "observer_tracked_sockets"), 1.0, "the listener only");
}

#[test]
fn ipv6_and_v4_mapped_peers_and_time_wait_match_the_kernel() {
    require_root();
    // One dual-stack listener: IPv6 peers, and IPv4 peers seen as ::ffff:a.b.c.d.
    let (srv, port) = server(&["--listen", "[::]:0", "--burst", "4096", "--orphan-close-after-ms", "300"]);
    let pid = srv.pid().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);
    let (v6, v4) = (format!("[::1]:{port}"), format!("127.0.0.1:{port}"));
    let (_a, half6) = clients(&v6, "halfclose", 2, &[]);
    let (_b, half4) = clients(&v4, "halfclose", 2, &[]);
    let (_c, _) = clients(&v6, "healthy", 1, &[]);
    let (_d, _) = clients(&v4, "healthy", 1, &[]);
    // The server closes these first; when they exit, its side is TIME_WAIT.
    let (mut e, _) = clients(&v4, "drain", 2, &["--hold-secs", "1"]);
    let (mut f, _) = clients(&v6, "drain", 2, &["--hold-secs", "1"]);
    assert!(e.child.wait().expect("clients").success() && f.child.wait().expect("clients").success());
    let half: BTreeSet<String> = half6.into_iter().chain(half4).collect();
    let mine = |s: &SsConn| s.local.ends_with(&format!(":{port}"));
    wait_for(Duration::from_secs(20), "TIME_WAIT and CLOSE_WAIT in place", || {
        let ss = ss_conns(None);
        let tw = ss.iter().filter(|s| mine(s) && s.state == "TIME-WAIT").count();
        let (_, listed) = listing(&obs);
        (tw == 4 && listed.iter().filter(|l| l.class == "close_wait").count() == 4).then_some(())
    });
    let states = ["ESTAB", "CLOSE-WAIT", "TIME-WAIT", "LISTEN", "FIN-WAIT-2"];
    let mut compared = 0;
    every_sweep(&obs, 10, None, |look| {
        for s in look.stable().filter(|s| mine(s) && s.state != "LISTEN" && s.state != "TIME-WAIT") {
            let want = if half.contains(&s.peer) { "close_wait" } else { "healthy" };
            assert_eq!(look.class_of(&s.local, &s.peer), want, "sweep {}: {s:?}", look.sweep);
        }
        let ours: Vec<&SsConn> = look.ss.iter().filter(|s| mine(s)).collect();
        let before: Vec<&SsConn> = look.ss_before.iter().filter(|s| mine(s)).collect();
        if ours == before {
            for st in states {
                let label = match st {
                    "ESTAB" => "established".to_string(),
                    other => other.to_lowercase().replace('-', "_").replace("wait_2", "wait2"),
                };
                let got = metric(&look.metrics, &format!("observer_tcp_sockets{{state=\"{label}\"}}")) as usize;
                assert_eq!(got, ours.iter().filter(|s| s.state == st).count(), "sweep {}: {st} sockets", look.sweep);
            }
            compared += 1;
        }
    });
    assert!(compared >= 5, "state counts compared on {compared} of 10 sweeps");
}

#[test]
fn sockets_given_away_are_not_the_targets_and_shared_ones_count_once() {
    require_root();
    let mut child = Command::new(DEMO)
        .args(["handoff", "--listen", "127.0.0.1:0", "--pass", "3", "--share", "2", "--keep", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start handoff server");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let srv = Proc { child, name: "handoff" };
    let mut line = String::new();
    out.read_line(&mut line).expect("LISTENING line");
    let addr = line.split_whitespace().nth(1).expect("address").to_string();
    let port = addr.rsplit(':').next().expect("port").to_string();
    let pid = srv.pid().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(FAST);
    // Watching before the connections arrive: the probes first attribute
    // every accepted connection to the listener's owner.
    let obs = start_observer(&args);
    // Half-closed clients: every server socket ends in CLOSE_WAIT, and only
    // those the server still holds are its zombies.
    let (_c, _) = clients(&addr, "halfclose", 7, &[]);
    line.clear();
    out.read_line(&mut line).expect("HANDED line");
    assert!(line.starts_with("HANDED"), "{line}");
    let target = srv.pid();
    let held = |ss: &[SsConn]| -> BTreeSet<(String, String)> {
        ss.iter()
            .filter(|s| s.local.ends_with(&format!(":{port}")) && s.state == "CLOSE-WAIT" && s.pids.contains(&target))
            .map(|s| (s.local.clone(), s.peer.clone()))
            .collect()
    };
    let listed = |l: &[Listed]| -> BTreeSet<(String, String)> {
        l.iter().filter(|l| l.class == "close_wait").map(|l| (l.local.clone(), l.peer.clone())).collect()
    };
    wait_for(Duration::from_secs(30), "the server's own CLOSE_WAIT sockets listed", || {
        let ss = ss_conns(None);
        let (_, l) = listing(&obs);
        (held(&ss).len() == 4 && listed(&l) == held(&ss)).then_some(())
    });
    let all_cw =
        |ss: &[SsConn]| ss.iter().filter(|s| s.local.ends_with(&format!(":{port}")) && s.state == "CLOSE-WAIT").count();
    every_sweep(&obs, 10, None, |look| {
        assert_eq!(all_cw(&look.ss), 7, "sweep {}: the scenario holds (7 CLOSE_WAIT sockets in all)", look.sweep);
        assert_eq!(
            listed(&look.sockets),
            held(&look.ss),
            "sweep {}: zombies are exactly what the target holds",
            look.sweep
        );
        assert_eq!(metric(&look.metrics, "observer_tcp_sockets{state=\"close_wait\"}"), 4.0, "sweep {}", look.sweep);
    });
}
