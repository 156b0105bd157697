//! Bounded everything: the HTTP endpoint under idle, slow and malformed
//! clients, many idle ones, and descriptor exhaustion; and the kernel socket map smaller than the target's socket count.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

fn sleeper() -> Proc {
    Proc { child: Command::new("sleep").arg("120").spawn().expect("sleep"), name: "sleep" }
}

#[test]
fn scrapes_get_through_while_bad_clients_hold_connections() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    let obs = start_observer(&["--pid", &pid, "--no-pin"]);

    // 200 clients that connect and say nothing, 20 that dribble a header
    // byte at a time, 20 that send garbage.
    let idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(&obs.addr).expect("connect")).collect();
    let mut slow: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&obs.addr).expect("connect")).collect();
    for s in &mut slow {
        s.write_all(b"GET /met").expect("partial request");
    }
    for _ in 0..20 {
        let mut g = TcpStream::connect(&obs.addr).expect("connect");
        g.write_all(b"\x00\xff\r\n\r\nNOT HTTP AT ALL\r\n\r\n").expect("garbage");
        g.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = Vec::new();
        let _ = g.read_to_end(&mut buf);
        assert!(
            buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
            "garbage gets 400 or a close: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    for _ in 0..5 {
        let t = Instant::now();
        let (code, body) = http_get(&obs.addr, "/metrics").expect("scrape while clients hold connections");
        assert_eq!(code, 200);
        assert!(body.contains("observer_target_up 1"));
        assert!(t.elapsed() < Duration::from_secs(2), "scrape took {:?}", t.elapsed());
    }
    // Only the two endpoints exist.
    assert_eq!(http_get(&obs.addr, "/").expect("GET /").0, 404);
    assert_eq!(http_get(&obs.addr, "/debug/pprof").expect("GET other").0, 404);
    assert_eq!(http_get(&obs.addr, "/healthz").expect("healthz").0, 200);

    // Idle clients are let go after the header timeout.
    let mut idle = idle;
    let first = &mut idle[0];
    first.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"), "closed or timed out");
    assert!(t.elapsed() < Duration::from_secs(8), "idle connection held for {:?}", t.elapsed());
    drop(slow);
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS line");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS kB") * 1024
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat; after the comm the count starts at 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn idle_clients_cost_little_memory_and_scrapes_still_answer() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    let obs = start_observer(&["--pid", &pid, "--no-pin"]);
    let me = obs.proc.pid();
    // Warm up what scrapes allocate once (blocking pool thread, buffers).
    for _ in 0..5 {
        obs.scrape();
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss(me);
    let fds = open_fds(me);

    const IDLE: usize = 512;
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| TcpStream::connect(&obs.addr).expect("connect")).collect();
    // (Sweeps open a few descriptors of their own now and then.)
    let accepted = (0..25).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let n = open_fds(me).saturating_sub(fds);
        (n + 8 >= IDLE).then_some(n)
    });
    assert!(accepted.is_some(), "{} of {IDLE} idle clients accepted in 2.5 s", open_fds(me).saturating_sub(fds));
    let t = Instant::now();
    let (code, body) = http_get(&obs.addr, "/metrics").expect("scrape next to 512 idle clients");
    assert_eq!(code, 200);
    assert!(body.contains("observer_target_up 1"));
    assert!(t.elapsed() < Duration::from_secs(2), "scrape took {:?}", t.elapsed());
    let during = rss(me);
    let grown = during.saturating_sub(before);
    eprintln!(
        "observer RSS with {IDLE} idle clients: {:.2} MiB before, {:.2} MiB during (+{:.0} KiB, {:.1} KiB a client)",
        before as f64 / 1048576.0,
        during as f64 / 1048576.0,
        grown as f64 / 1024.0,
        grown as f64 / 1024.0 / IDLE as f64
    );
    // About 1.4 KiB a client here (a socket and a small task); handing each
    // to hyper at once cost ~10 KiB a client (its read buffer).
    assert!(grown < 2 * 1024 * 1024, "{IDLE} idle clients cost {grown} bytes of RSS");
    drop(idle);
}

#[test]
fn running_out_of_descriptors_backs_off_instead_of_spinning() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    let obs = start_observer(&["--pid", &pid, "--no-pin"]);
    let me = obs.proc.pid();
    // Leave the observer a handful of free descriptors (soft limit only),
    // far fewer than its connection slots: accept then fails with EMFILE
    // while clients wait in the backlog.
    let limit = (open_fds(me) + 8).to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &me.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("prlimit");
    assert!(status.success());
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(&obs.addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0) = (Instant::now(), cpu_ticks(me));
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let busy = (cpu_ticks(me) - c0) as f64 / hz / t0.elapsed().as_secs_f64();
    eprintln!("observer CPU while accept fails with EMFILE: {:.1}% of a core", busy * 100.0);
    assert!(busy < 0.2, "accept loop spins: {:.0}% of a core", busy * 100.0);
    // Once the clients are gone the observer serves again.
    drop(held);
    wait_for(Duration::from_secs(10), "scrapes answered again", || {
        http_get(&obs.addr, "/metrics").ok().filter(|(code, _)| *code == 200)
    });
}

#[test]
fn a_full_socket_map_is_counted_not_hidden() {
    require_root();
    let (server, addr) = start_demo_server(std::path::Path::new(DEMO), "1024");

    let pid = server.pid().to_string();
    // The smallest map the flag allows, against 200 connections.
    let obs = start_observer(&["--pid", &pid, "--no-pin", "--max-sockets", "64", "--interval", "0.2"]);
    let clients = Command::new(DEMO)
        .args(["client", "--connect", &addr, "--role", "healthy", "--count", "200", "--hold-secs", "6"])
        .stdout(Stdio::null())
        .spawn()
        .expect("clients");
    let clients = Proc { child: clients, name: "clients" };
    let s = wait_for(Duration::from_secs(20), "evictions counted, gauges still whole", || {
        let s = obs.scrape();
        (metric(&s, "observer_tcp_sockets{state=\"established\"}") == 200.0
            && metric(&s, "observer_events_dropped_total{reason=\"socket_map_evicted\"}") > 0.0)
            .then_some(s)
    });
    // The iterator stays the source of truth: every socket is still counted.
    assert_eq!(metric(&s, "observer_tracked_sockets"), 201.0);
    assert_eq!(metric(&s, "observer_target_up"), 1.0);
    drop(clients);
}
