//! Benchmark 5: how long after a peer vanishes the observer counts it as a
//! `dead_peer` zombie. A server in one namespace streams to clients in
//! another; the clients are cut off one by one (nft drops every packet of
//! one client port), staggered so the cuts fall at every phase of the sweep
//! interval, while /metrics is polled every 25 ms.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Paths, Plan,
    child::{Child, field, word},
    netns::{self, Namespaces},
    observer::{Metrics, Observer, http_get},
    pause,
    report::{Row, Section, upper},
    stats,
};

const DEAD_AFTER_S: f64 = 5.0;
const INTERVAL_S: f64 = 1.0;
const POLL: Duration = Duration::from_millis(25);
const DEAD: &str = "observer_zombie_sockets{reason=\"dead_peer\"}";
/// RFC 2544 benchmarking range, inside our own namespaces only.
const SERVER_IP: &str = "198.18.250.1";
const TABLE: &str = "obsbench";

pub fn run(paths: &Paths, plan: &Plan) -> Result<Section> {
    netns::remove_stale();
    let base = format!("{}{}", netns::PREFIX, std::process::id());
    let (srv, cli) = (format!("{base}-srv"), format!("{base}-cli"));
    let mut ns = Namespaces::new();
    ns.add(&srv)?;
    ns.add(&cli)?;
    ns.link((&srv, "s-obsb", &format!("{SERVER_IP}/30")), (&cli, "c-obsb", "198.18.250.2/30"))?;
    netns::nft(
        &cli,
        &format!(
            "table inet {TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept; }}\n \
             chain output {{ type filter hook output priority 0; policy accept; }}\n}}\n"
        ),
    )?;

    // The demo server streams 1 KiB to every client each 100 ms, so a vanished
    // peer has unacknowledged data within 100 ms of the cut.
    let mut server_cmd = netns::exec_in(&srv, &paths.demo);
    server_cmd.args([
        "server",
        "--listen",
        "0.0.0.0:0",
        "--burst",
        "0",
        "--interval-ms",
        "100",
        "--message-bytes",
        "1024",
    ]);
    let mut server =
        Child::spawn("demo server", server_cmd, Some(&paths.logs.join("latency-server.log")))?.signal_only();
    let line = server.expect("LISTENING", Duration::from_secs(10))?;
    let port = word(&line, 1).and_then(|a| a.rsplit(':').next()).context("server port")?.to_string();
    let server_pid = field(&line, "pid").context("server pid")?.to_string();

    let mut client_cmd = netns::exec_in(&cli, &paths.demo);
    client_cmd.args(["client", "--connect", &format!("{SERVER_IP}:{port}"), "--role", "vanish"]);
    client_cmd.args(["--count", &plan.latency_peers.to_string()]);
    let mut clients =
        Child::spawn("demo clients", client_cmd, Some(&paths.logs.join("latency-clients.log")))?.signal_only();
    let mut ports = Vec::new();
    while ports.len() < plan.latency_peers {
        let l = clients.expect("LOCAL", Duration::from_secs(20))?;
        ports.push(l.rsplit(':').next().context("client port")?.to_string());
    }
    clients.expect("CONNECTED", Duration::from_secs(10))?;

    let target = vec!["--pid".to_string(), server_pid];
    let dead_after = format!("{DEAD_AFTER_S}");
    let interval = format!("{INTERVAL_S}");
    let obs = Observer::start(paths, "latency", &target, &["--interval", &interval, "--dead-after", &dead_after])?;
    obs.wait_until(Duration::from_secs(20), "every client connection to be tracked", |m| {
        m.get("observer_tcp_sockets{state=\"established\"}") == plan.latency_peers as f64
    })?;
    pause(Duration::from_secs(2))?;
    if obs.scrape()?.get(DEAD) != 0.0 {
        bail!("dead peers counted before any was cut off");
    }

    let samples = Mutex::new(Vec::<(Instant, f64)>::new());
    let stop = AtomicBool::new(false);
    let cut_at = std::thread::scope(|scope| -> Result<Vec<Instant>> {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(body) = http_get(&obs.addr, "/metrics") {
                    let v = Metrics::parse(&body).get(DEAD);
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), v));
                }
                std::thread::sleep(POLL);
            }
        });
        let result = cut_off(&cli, &ports, plan.latency_stagger).and_then(|cut_at| {
            let limit = Duration::from_secs_f64(DEAD_AFTER_S + 3.0 * INTERVAL_S + 10.0);
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                let counted = samples.lock().unwrap_or_else(|p| p.into_inner()).last().map_or(0.0, |s| s.1);
                if counted >= ports.len() as f64 {
                    break;
                }
                pause(POLL)?;
            }
            Ok(cut_at)
        });
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    drop(obs);
    drop(clients);
    drop(server);
    drop(ns);
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(report(plan, &cut_at, &samples))
}

/// Cuts every client off in turn; returns when each cut was in force.
fn cut_off(cli: &str, ports: &[String], stagger: Duration) -> Result<Vec<Instant>> {
    let start = Instant::now();
    let mut cut_at = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let slot = start + stagger * i as u32;
        pause(slot.saturating_duration_since(Instant::now()))?;
        netns::nft(
            cli,
            &format!(
                "add rule inet {TABLE} output tcp sport {p} drop\nadd rule inet {TABLE} input tcp dport {p} drop\n"
            ),
        )?;
        // The rule is in force once nft returns; the latency counts from here.
        cut_at.push(Instant::now());
    }
    Ok(cut_at)
}

fn report(plan: &Plan, cut_at: &[Instant], samples: &[(Instant, f64)]) -> Section {
    // The k-th peer cut off is taken as the k-th one counted: every peer has
    // the same threshold, so they are detected in the order they vanished.
    // The count changed between two polls; the midpoint is the estimate
    // (± half a poll period).
    let mut latencies = Vec::new();
    for (k, cut) in cut_at.iter().enumerate() {
        let Some(i) = samples.iter().position(|(_, v)| *v >= (k + 1) as f64) else { continue };
        let seen = samples[i].0;
        let before = if i > 0 { samples[i - 1].0.max(*cut) } else { *cut };
        let mid = before + seen.saturating_duration_since(before) / 2;
        latencies.push(mid.saturating_duration_since(*cut).as_secs_f64());
    }
    let bound = DEAD_AFTER_S + INTERVAL_S;
    let mut s = Section::default();
    let q = |p| stats::quantile(&latencies, p).unwrap_or(f64::NAN);
    let missing = cut_at.len() - latencies.len();
    let measured = format!(
        "median {:.2} s (min {:.2}, p90 {:.2}, max {:.2}){}",
        q(0.5),
        q(0.0),
        q(0.9),
        q(1.0),
        if missing > 0 { format!("; {missing} never counted") } else { String::new() }
    );
    let worst = if missing > 0 { f64::INFINITY } else { q(1.0) };
    s.rows.push(
        Row::new(
            format!("Detection latency, {} vanished peers (`--dead-after 5 --interval 1`)", cut_at.len()),
            format!("≤ dead-after + 1 interval = {bound:.0} s"),
            measured,
        )
        .baseline("30 s application heartbeat", format!("{:.2}", q(0.5) / 30.0))
        .verdict(upper(worst, bound, "s")),
    );
    s.details.push(format!(
        "{} clients in their own namespace, cut off {:.0} ms apart with an nft drop of their port (both directions); \
         the server streams 1 KiB per client each 100 ms; /metrics polled every {} ms, each figure is the midpoint \
         between the last poll before the count rose and the first after (± half a poll)",
        cut_at.len(),
        plan.latency_stagger.as_secs_f64() * 1e3,
        POLL.as_millis()
    ));
    s.details.push(format!(
        "all latencies (s): {}",
        latencies.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join(" ")
    ));
    s
}
