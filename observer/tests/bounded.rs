//! Bounded everything: the HTTP endpoint under idle, slow and malformed
//! clients, and the kernel socket map smaller than the target's socket count.

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
        assert!(buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"), "garbage gets 400 or a close: {:?}", String::from_utf8_lossy(&buf));
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
