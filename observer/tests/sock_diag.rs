//! No BPF at all: the observer polls the kernel's socket diagnostics
//! (netlink sock_diag, what `ss` reads) instead of loading programs. Forced
//! here with `--probe-method sockets=sock_diag`, and reached on its own by an
//! unprivileged observer the kernel refuses BPF to. The gauges and zombie
//! classes must still be right; the event counters must be absent, not zero.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];

/// Counters only kernel events can feed.
const EVENT_COUNTERS: [&str; 6] = [
    "observer_retransmits_total",
    "observer_rto_timeouts_total",
    "observer_zero_window_probes_total",
    "observer_loss_probes_total",
    "observer_connections_opened_total",
    "observer_connections_closed_total",
];

fn zombies(s: &Scrape, reason: &str) -> f64 {
    metric(s, &format!("observer_zombie_sockets{{reason=\"{reason}\"}}"))
}

fn stalled(s: &Scrape) -> f64 {
    metric(s, "observer_stalled_sockets{reason=\"zero_window\"}")
}

fn assert_sock_diag_mode(s: &Scrape) {
    assert_eq!(metric(s, "observer_probe_info{hook=\"sockets\",method=\"sock_diag\"}"), 1.0);
    for hook in ["send", "close", "state", "timer", "retransmit"] {
        assert_eq!(
            metric(s, &format!("observer_probe_info{{hook=\"{hook}\",method=\"none\"}}")),
            1.0,
            "{hook} attached"
        );
    }
    for name in EVENT_COUNTERS {
        assert!(!s.keys().any(|k| k.starts_with(name)), "{name} exported without events: {s:?}");
    }
}

#[test]
fn forced_sock_diag_reports_every_class_in_namespaces() {
    require_root();
    // As in scenarios.rs: everything connects before the observer starts;
    // the app closes the orphan 6 s later, while the observer watches. An
    // orphan has no inode, and sock_diag keeps no owner for it: it is
    // attributed because the same socket (same cookie) was seen with the
    // target's inode before the close.
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
    let mut args = vec!["--pid", pid.as_str(), "--probe-method", "sockets=sock_diag"];
    args.extend_from_slice(FAST);
    let obs = start_observer(&args);

    let first = obs.scrape();
    assert_sock_diag_mode(&first);
    let found = metric(&first, "observer_tcp_sockets{state=\"established\"}")
        + metric(&first, "observer_tcp_sockets{state=\"close_wait\"}");
    assert_eq!(found, 8.0, "all 8 connections opened before the observer are found");

    let s = wait_for(Duration::from_secs(45), "every class reported", || {
        let s = obs.scrape();
        let want = [("dead_peer", 2.0), ("close_wait", 1.0), ("orphaned", 1.0)];
        (want.iter().all(|(r, n)| zombies(&s, r) == *n) && stalled(&s) == 2.0).then_some(s)
    });
    for reason in ["dead_peer", "orphaned", "zero_window"] {
        assert!(metric(&s, &format!("observer_zombie_queued_bytes{{reason=\"{reason}\"}}")) > 0.0, "{reason} bytes");
    }
    let accused: f64 =
        ["dead_peer", "close_wait", "orphaned"].iter().map(|r| zombies(&s, r)).sum::<f64>() + stalled(&s);
    assert_eq!(accused, 6.0, "exactly the 6 misbehaving peers");
    assert_sock_diag_mode(&s);

    assert_agrees_with_ss(&obs, lab.server_netns.as_deref(), lab.port);
}

const NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/// Runs the demo binary as nobody; setpriv execs it in place, keeping the PID.
fn demo_as_nobody(args: &[&str], stdout: Stdio) -> Proc {
    let child = Command::new(NOBODY[0])
        .args(&NOBODY[1..])
        .arg(DEMO)
        .args(args)
        .stdout(stdout)
        .stdin(Stdio::null())
        .spawn()
        .expect("start demo as nobody");
    Proc { child, name: "demo" }
}

#[test]
fn unprivileged_observer_falls_back_to_sock_diag() {
    require_root();
    // Server and clients as nobody on loopback: an observer running as the
    // same user reads their /proc without any capability.
    let mut server = demo_as_nobody(&["server", "--listen", "127.0.0.1:0"], Stdio::piped());
    let mut line = String::new();
    let stdout = server.child.stdout.take().expect("server stdout");
    BufReader::new(stdout).read_line(&mut line).expect("LISTENING line");
    let addr = line.split_whitespace().nth(1).expect("address in LISTENING line").to_string();
    let port: u16 = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("server status");
    assert!(status.contains("Uid:\t65534"), "server runs as nobody");
    let _clients: Vec<Proc> = [("halfclose", "2"), ("slow", "1"), ("healthy", "1")]
        .iter()
        .map(|(role, n)| {
            let args = ["client", "--connect", &addr, "--role", role, "--count", n, "--hold-secs", "90"];
            demo_as_nobody(&args, Stdio::null())
        })
        .collect();

    // No capability at all, and no flag: the kernel refuses BPF, the
    // observer says so and polls sock_diag.
    let obs_addr = format!("127.0.0.1:{}", free_port());
    let pid = server.pid().to_string();
    let child = Command::new(NOBODY[0])
        .args(&NOBODY[1..])
        .args(["--inh-caps=-all", "--bounding-set=-all", OBSERVER, "run", "--pid", &pid, "--listen", &obs_addr])
        .args(FAST)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start observer as nobody");
    let mut obs = Observer { proc: Proc { child, name: "observer" }, addr: obs_addr };
    wait_for(Duration::from_secs(30), "observer /healthz", || {
        if let Ok(Some(status)) = obs.proc.child.try_wait() {
            let mut err = String::new();
            let _ = obs.proc.child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("observer exited early: {status}: {err}");
        }
        http_get(&obs.addr, "/healthz").ok().filter(|(code, _)| *code == 200)
    });

    let s = wait_for(Duration::from_secs(30), "close_wait and zero_window as nobody", || {
        let s = obs.scrape();
        (zombies(&s, "close_wait") == 2.0 && stalled(&s) == 1.0).then_some(s)
    });
    assert_eq!(zombies(&s, "dead_peer") + zombies(&s, "orphaned"), 0.0, "healthy peers are not accused");
    assert_eq!(metric(&s, "observer_target_up"), 1.0);
    assert_sock_diag_mode(&s);
    assert_agrees_with_ss(&obs, None, port);

    obs.proc.stop();
    let mut err = String::new();
    obs.proc.child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    let warning = err.lines().find(|l| l.contains("sock_diag")).unwrap_or_else(|| panic!("no fallback warning: {err}"));
    assert!(warning.contains("WARN") && warning.contains("missing privileges"), "says why: {warning}");
    assert!(warning.contains("event counters are absent"), "says what is lost: {warning}");
}

#[test]
fn sock_diag_cannot_be_combined_with_forced_probes() {
    require_root();
    let target = Proc { child: Command::new("sleep").arg("30").spawn().expect("sleep"), name: "sleep" };
    let pid = target.pid().to_string();
    let out = Command::new(OBSERVER)
        .args(["run", "--pid", &pid, "--listen", "127.0.0.1:0", "--no-pin"])
        .args(["--probe-method", "sockets=sock_diag", "--probe-method", "send=tp_btf"])
        .env("RUST_LOG", "off")
        .output()
        .expect("run observer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("send=tp_btf cannot go with sockets=sock_diag"), "{stderr}");
}
