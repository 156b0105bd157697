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

    let samples = Mutex::new(Vec::<Poll>::new());
    let stop = AtomicBool::new(false);
    let cut_at = std::thread::scope(|scope| -> Result<Vec<Cut>> {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if let Ok(body) = http_get(&obs.addr, "/metrics") {
                    let answered = Instant::now();
                    let dead = Metrics::parse(&body).get(DEAD);
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(Poll { sent, answered, dead });
                }
                std::thread::sleep(POLL);
            }
        });
        let result = cut_off(&cli, &ports, plan.latency_stagger).and_then(|cut_at| {
            let limit = Duration::from_secs_f64(DEAD_AFTER_S + 3.0 * INTERVAL_S + 10.0);
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                let counted = samples.lock().unwrap_or_else(|p| p.into_inner()).last().map_or(0.0, |s| s.dead);
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

/// One poll of /metrics: the gauge was rendered between `sent` and `answered`.
struct Poll {
    sent: Instant,
    answered: Instant,
    dead: f64,
}

/// One cut-off: nft ran from `begun` to `done`; its rule came in force at the end.
struct Cut {
    begun: Instant,
    done: Instant,
}

/// Cuts every client off in turn; returns when each cut came in force.
fn cut_off(cli: &str, ports: &[String], stagger: Duration) -> Result<Vec<Cut>> {
    let start = Instant::now();
    let mut cut_at = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let slot = start + stagger * i as u32;
        pause(slot.saturating_duration_since(Instant::now()))?;
        let begun = Instant::now();
        netns::nft(
            cli,
            &format!(
                "add rule inet {TABLE} output tcp sport {p} drop\nadd rule inet {TABLE} input tcp dport {p} drop\n"
            ),
        )?;
        // nft commits the rule in one batch just before it exits.
        cut_at.push(Cut { begun, done: Instant::now() });
    }
    Ok(cut_at)
}

fn midpoint(a: Instant, b: Instant) -> Instant {
    a + b.saturating_duration_since(a) / 2
}

/// Latencies (s) of each cut-off peer: (estimate, upper bound).
///
/// The k-th peer cut off is taken as the k-th one counted: every peer has the
/// same threshold, and its clock starts at its last ACK, which falls within
/// one server send interval (100 ms) before its cut; cuts further apart than
/// that are therefore detected in the order they were made.
///
/// Unbiased: the count rose after the last poll that did not show it was
/// rendered (no earlier than that poll was sent) and before the first poll
/// that did was answered; the estimate is the midpoint of that interval. The
/// cut came in force when nft committed its one netlink batch, at the end of
/// its run (start-up, parsing and the ruleset cache come first), so it is
/// dated by nft's return, late only by its exit. The upper bound, from the
/// start of nft to the answer that showed the count, can only overstate.
fn latencies(cut_at: &[Cut], samples: &[Poll]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for (k, cut) in cut_at.iter().enumerate() {
        let Some(i) = samples.iter().position(|p| p.dead >= (k + 1) as f64) else { continue };
        let seen = &samples[i];
        let not_yet = if i > 0 { samples[i - 1].sent.max(cut.begun) } else { cut.begun };
        let detected = midpoint(not_yet, seen.answered);
        out.push((
            detected.saturating_duration_since(cut.done).as_secs_f64(),
            seen.answered.saturating_duration_since(cut.begun).as_secs_f64(),
        ));
    }
    out
}

fn report(plan: &Plan, cut_at: &[Cut], samples: &[Poll]) -> Section {
    let both = latencies(cut_at, samples);
    let latencies: Vec<f64> = both.iter().map(|l| l.0).collect();
    let upper_bounds: Vec<f64> = both.iter().map(|l| l.1).collect();
    let bound = DEAD_AFTER_S + INTERVAL_S;
    let mut s = Section::default();
    let q = |p| stats::quantile(&latencies, p).unwrap_or(f64::NAN);
    let missing = cut_at.len() - latencies.len();
    let measured = format!(
        "p100 (max) {:.2} s (upper bound {:.2}; median {:.2}, p90 {:.2}, min {:.2}){}",
        q(1.0),
        stats::max(&upper_bounds),
        q(0.5),
        q(0.9),
        q(0.0),
        if missing > 0 { format!("; {missing} never counted") } else { String::new() }
    );
    let worst = if missing > 0 { f64::INFINITY } else { q(1.0) };
    s.rows.push(
        Row::new(
            format!("Detection latency at p100, {} vanished peers (`--dead-after 5 --interval 1`)", cut_at.len()),
            format!("≤ dead-after + 1 interval = {bound:.0} s"),
            measured,
        )
        .baseline("30 s application heartbeat", format!("{:.2}", q(1.0) / 30.0))
        .verdict(upper(worst, bound, "s")),
    );
    let nft_ms: Vec<f64> =
        cut_at.iter().map(|c| c.done.saturating_duration_since(c.begun).as_secs_f64() * 1e3).collect();
    let poll_ms: Vec<f64> =
        samples.iter().map(|p| p.answered.saturating_duration_since(p.sent).as_secs_f64() * 1e3).collect();
    s.details.push(format!(
        "{} clients in their own namespace, cut off {:.0} ms apart with an nft drop of their port (both directions); \
         the server streams 1 KiB per client each 100 ms; /metrics polled every {} ms",
        cut_at.len(),
        plan.latency_stagger.as_secs_f64() * 1e3,
        POLL.as_millis()
    ));
    s.details.push(format!(
        "each latency runs from the return of the nft run that cut the peer off (nft commits its rules in one \
         netlink batch at the end of its run, which took {:.1} ms at the median) to the middle of the interval in \
         which the count rose (from sending the last poll that did not show it to the answer of the first that did: \
         one poll period and two scrapes, a scrape taking {:.1} ms at the median), so it is unbiased to ± half that \
         interval; the upper bound runs from the start of nft to that answer and can only overstate. The k-th peer cut is paired with the k-th count, valid as the cuts ({:.0} ms apart) are further \
         apart than the server's send interval (100 ms)",
        stats::median(&nft_ms),
        stats::median(&poll_ms),
        plan.latency_stagger.as_secs_f64() * 1e3,
    ));
    s.details.push(format!(
        "all latencies (s): {}",
        latencies.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join(" ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_runs_from_the_cut_to_the_middle_of_the_poll_gap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let cut = Cut { begun: at(0), done: at(10) };
        // Polls sent every 30 ms, answered 2 ms later; the count rises between
        // the poll sent at 6010 ms and the one answered at 6042 ms.
        let polls: Vec<Poll> = (0..300)
            .map(|i| Poll { sent: at(10 + 30 * i), answered: at(12 + 30 * i), dead: if i >= 201 { 1.0 } else { 0.0 } })
            .collect();
        let got = latencies(&[cut], &polls);
        let (estimate, upper) = got[0];
        // Not yet: sent at 6010; seen: answered at 6042; midpoint 6026, minus the cut at 10.
        assert!((estimate - 6.016).abs() < 1e-6, "{estimate}");
        assert!((upper - 6.042).abs() < 1e-6, "{upper}");
        assert!(latencies(&[Cut { begun: at(0), done: at(1) }], &polls[..100]).is_empty());
    }
}
