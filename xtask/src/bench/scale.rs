//! Benchmark 3: a target holding many established loopback sockets. At each
//! level: the observer's sweep duration (as it reports it), the time of a
//! /metrics scrape, the agent's RSS and kernel map memory, against `ss -tin`
//! listing the same sockets (the polling alternative).
//!
//! Both ends live in a network namespace of the benchmark's own, so the
//! 200,000 sockets never slow down anything else on the machine that walks
//! the host's sockets; the observer, on the host, enters it for each sweep
//! as it does for a containerised server.
//!
//! A process may hold at most its hard RLIMIT_NOFILE of descriptors; where
//! that is below the level (and cannot be raised without CAP_SYS_RESOURCE),
//! the sockets are spread over several target processes of one name, watched
//! with `--comm`: the same sockets, the same sweep, a few more /proc reads.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Paths, Plan,
    child::{Child, field, word},
    interrupted,
    netns::{self, Namespaces},
    observer::{Metrics, Observer},
    pause,
    plot::ScalePoint,
    procfs,
    report::Section,
    scale_report,
    scale_trouble::{self, Made},
    stats,
};

pub const TARGET_MS: f64 = 50.0;
pub const TARGET_RSS_MB: f64 = 64.0;
/// What crosses from the kernel to the agent per sweep (added with the
/// incremental data path; absent from older builds).
pub const RECORDS_READ: &str = "observer_sweep_records_read_total";
pub const BYTES_READ: &str = "observer_sweep_read_bytes_total";
const COMM: &str = "obsb-hold";
const SCRAPES: usize = 10;
const SS_RUNS: usize = 3;
const DROPPED: &str = "observer_events_dropped_total";
const ITER_FAILED: &str = "observer_events_dropped_total{reason=\"iterator_write_failed\"}";

/// One target process and the client process holding the other ends.
struct Pair {
    server: Child,
    clients: Child,
    port: u16,
    cap: usize,
    held: usize,
}

/// Per-sweep delta of a counter between two scrapes; None when absent.
fn per_sweep(m0: &Metrics, m1: &Metrics, name: &str, sweeps: f64) -> Option<f64> {
    Some((m1.sum_if_present(name)? - m0.sum_if_present(name)?) / sweeps)
}

impl Pair {
    /// Pair `k` of the run; its clients connect from 127.0.1.`k`.
    fn start(paths: &Paths, ns: &str, k: usize) -> Result<Pair> {
        let mut server = Child::spawn(
            "hold-server",
            paths.worker_cmd_in(ns, &["hold-server", "--listen", "127.0.0.1:0", "--comm", COMM]),
            None,
        )?;
        let line = server.expect("LISTENING", Duration::from_secs(10))?;
        let addr = word(&line, 1).context("address")?.to_string();
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).context("port")?;
        let cap_s: usize = field(&line, "cap").and_then(|c| c.parse().ok()).context("cap")?;
        let source = format!("127.0.1.{}", k + 1);
        let mut clients = Child::spawn(
            "hold-clients",
            paths.worker_cmd_in(ns, &["hold-clients", "--connect", &addr, "--source", &source]),
            None,
        )?;
        let line = clients.expect("READY", Duration::from_secs(10))?;
        let cap_c: usize = field(&line, "cap").and_then(|c| c.parse().ok()).context("cap")?;
        Ok(Pair { server, clients, port, cap: cap_s.min(cap_c), held: 0 })
    }

    fn open(&mut self, n: usize) -> Result<()> {
        let reply = self.clients.request(&format!("open {n}"), "", Duration::from_secs(300))?;
        let total: usize = reply.strip_prefix("OPENED ").and_then(|t| t.parse().ok()).with_context(|| reply.clone())?;
        self.held = total;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let l = self.server.request("count", "HELD", Duration::from_secs(5))?;
            if word(&l, 1).and_then(|w| w.parse::<usize>().ok()) == Some(total) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("server accepted {l:?}, clients opened {total}");
            }
            pause(Duration::from_millis(50))?;
        }
    }
}

fn grow(paths: &Paths, ns: &str, pairs: &mut Vec<Pair>, level: usize) -> Result<()> {
    let mut total: usize = pairs.iter().map(|p| p.held).sum();
    while total < level {
        interrupted()?;
        if pairs.last().is_none_or(|p| p.held >= p.cap) {
            let k = pairs.len();
            pairs.push(Pair::start(paths, ns, k)?);
        }
        let Some(p) = pairs.last_mut() else { bail!("no holder process") };
        let n = (level - total).min(p.cap - p.held);
        p.open(n)?;
        total += n;
    }
    Ok(())
}

/// `ss -tin` over the target's established sockets: (seconds, sockets listed).
fn ss(ns: &str, ports: &[u16], extra: &str) -> Result<(f64, usize)> {
    let filter = ports.iter().map(|p| format!("sport = :{p}")).collect::<Vec<_>>().join(" or ");
    let t0 = Instant::now();
    let out = Command::new("ss")
        .args(["-N", ns, &format!("-tin{extra}H"), "state", "established", &format!("( {filter} )")])
        .output()
        .context("running ss")?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("ss failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // With -i each socket has a second, indented line.
    let n = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty() && !l[0].is_ascii_whitespace()).count();
    Ok((secs, n))
}

/// What one level measured (the report reads it).
pub struct Level {
    pub sockets: usize,
    pub processes: usize,
    pub sweep_ms: Vec<f64>,
    pub sweep_cpu_ms: f64,
    pub scrape_ms: Vec<f64>,
    pub ss_ms: Vec<f64>,
    pub ss_listed: usize,
    pub rss_mb: f64,
    pub hwm_mb: f64,
    pub cpu_pct: f64,
    pub overflows_per_sweep: f64,
    pub other_drops: f64,
    pub map_mb: f64,
    pub maps: usize,
    pub records_per_sweep: Option<f64>,
    pub bytes_per_sweep: Option<f64>,
}

/// The name the observer gives the thread that sweeps.
const SWEEP_THREAD: &str = "sweep";

fn measure(obs: &Observer, ns: &str, pairs: &[Pair], sockets: usize, plan: &Plan) -> Result<Level> {
    let sweeps = plan.scale_sweeps;
    obs.wait_until(Duration::from_secs(60), &format!("{sockets} established target sockets"), |m| {
        m.get("observer_tcp_sockets{state=\"established\"}") == sockets as f64
    })?;
    settle(obs)?;
    // Agent CPU first, over a window without scrapes (they cost CPU too),
    // long enough to hold a full walk (every 60 sweeps) and the file-table
    // reads (every 10): the average the operator pays, not one lucky second.
    let (cpu0, t0) = (procfs::cpu_ns(obs.pid()), Instant::now());
    pause(plan.scale_cpu_window)?;
    let cpu_pct = procfs::cpu_ns(obs.pid()).saturating_sub(cpu0) as f64 / t0.elapsed().as_secs_f64() / 1e7;
    // Then the sweeps themselves, bracketed by sweep boundaries, so their
    // CPU time (unlike their wall time) does not depend on other load. The
    // sweep thread's own: the scrapes that find the boundaries (ten a
    // sweep, each timed below) run on the HTTP threads.
    obs.next_sweeps(1, Duration::from_secs(30))?;
    let (m0, cpu_a) = (obs.scrape()?, procfs::thread_cpu_ns(obs.pid(), SWEEP_THREAD));
    let sweep_ms: Vec<f64> =
        obs.next_sweeps(sweeps, Duration::from_secs(30 + sweeps as u64 * 5))?.iter().map(|s| s * 1e3).collect();
    let sweep_cpu_ms =
        procfs::thread_cpu_ns(obs.pid(), SWEEP_THREAD).saturating_sub(cpu_a) as f64 / sweeps as f64 / 1e6;
    let m1 = obs.scrape()?;
    let sweeps_seen = m1.get("observer_sweeps_total") - m0.get("observer_sweeps_total");
    let overflows_per_sweep = (m1.get(ITER_FAILED) - m0.get(ITER_FAILED)) / sweeps_seen;
    let other_drops = (m1.sum(DROPPED) - m0.sum(DROPPED)) - (m1.get(ITER_FAILED) - m0.get(ITER_FAILED));
    let mut scrape_ms = Vec::new();
    for _ in 0..SCRAPES {
        scrape_ms.push(obs.timed_scrape()?.0 * 1e3);
        pause(Duration::from_millis(100))?;
    }
    let ports: Vec<u16> = pairs.iter().map(|p| p.port).collect();
    let (mut ss_ms, mut ss_listed) = (Vec::new(), 0);
    if sockets > 0 {
        for _ in 0..SS_RUNS {
            let (secs, n) = ss(ns, &ports, "")?;
            ss_ms.push(secs * 1e3);
            ss_listed = n;
        }
    }
    let mb = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / 1048576.0);
    let (memlock, maps) = procfs::map_memlock(obs.pid());
    Ok(Level {
        sockets,
        processes: pairs.len(),
        sweep_ms,
        sweep_cpu_ms,
        scrape_ms,
        ss_ms,
        ss_listed,
        rss_mb: mb(procfs::status_bytes(obs.pid(), "VmRSS")),
        hwm_mb: mb(procfs::status_bytes(obs.pid(), "VmHWM")),
        cpu_pct,
        overflows_per_sweep,
        other_drops,
        map_mb: memlock as f64 / 1048576.0,
        maps,
        records_per_sweep: per_sweep(&m0, &m1, RECORDS_READ, sweeps_seen),
        bytes_per_sweep: per_sweep(&m0, &m1, BYTES_READ, sweeps_seen),
    })
}

/// Growing a level leaves the observer work to finish (walks for the new
/// sockets, giving each an entry in the probes' map): wait for three marked
/// sweeps in a row, where this build and kernel have them, before timing.
fn settle(obs: &Observer) -> Result<()> {
    const MARKED: &str = "observer_marked_sweeps_total";
    let Some(start) = obs.scrape()?.sum_if_present(MARKED) else { return Ok(()) };
    let settled = obs.wait_until(Duration::from_secs(90), "three marked sweeps", |m| {
        m.sum_if_present(MARKED).is_some_and(|n| n >= start + 3.0)
    });
    if let Err(e) = settled {
        eprintln!("bench:   not settled, measuring anyway: {e:#}");
    }
    Ok(())
}

pub fn run(paths: &Paths, plan: &Plan, points: &mut Vec<ScalePoint>) -> Result<Section> {
    netns::remove_stale();
    let ns = format!("{}{}-scale", netns::PREFIX, std::process::id());
    let mut namespaces = Namespaces::new();
    namespaces.add(&ns)?;
    let target = vec!["--comm".to_string(), COMM.to_string()];
    let obs = Observer::start(paths, "scale", &target, &["--interval", "1"])?;
    let mut pairs: Vec<Pair> = Vec::new();
    let mut levels = vec![measure(&obs, &ns, &pairs, 0, plan)?];
    for &level in &plan.scale_levels {
        let t0 = Instant::now();
        grow(paths, &ns, &mut pairs, level)?;
        eprintln!(
            "bench:   {level} connections held by {} target processes ({:.1} s)",
            pairs.len(),
            t0.elapsed().as_secs_f64()
        );
        let l = measure(&obs, &ns, &pairs, level, plan)?;
        eprintln!(
            "bench:   sweep {:.1} ms, scrape {:.2} ms, ss -tin {:.0} ms, RSS {:.1} MB",
            stats::median(&l.sweep_ms),
            stats::median(&l.scrape_ms),
            stats::median(&l.ss_ms),
            l.rss_mb
        );
        levels.push(l);
    }
    // Attribution is what the observer adds over plain ss: `ss -p` is the
    // polling way to get it. Once, at the largest level.
    let ports: Vec<u16> = pairs.iter().map(|p| p.port).collect();
    let ss_p = ss(&ns, &ports, "p").ok();
    // The same sockets held by a blocking server, whose settled sockets
    // keep the write_seq read; then back, for the troubled variant.
    let mut blocking = None;
    if let Some(&level) = plan.scale_levels.last() {
        let result = blocking_variant(&obs, &ns, &mut pairs, level, plan);
        interrupted()?;
        blocking = Some(result.map_err(|e| format!("{e:#}")));
    }
    // Last, as it cannot be undone: the same sockets with a share in trouble.
    // A failure here costs only its own rows, not the levels measured above.
    let mut troubled = None;
    if let (Some(&level), true) = (plan.scale_levels.last(), plan.scale_trouble_share > 0.0) {
        let result = troubled_variant(&obs, &ns, &mut pairs, level, plan);
        interrupted()?;
        troubled = Some(result.map_err(|e| format!("{e:#}")));
    }
    drop(obs);
    drop(pairs);
    drop(namespaces);
    for l in levels.iter().skip(1) {
        points.push(ScalePoint {
            sockets: l.sockets as f64,
            sweep_ms: stats::median(&l.sweep_ms),
            sweep_cpu_ms: l.sweep_cpu_ms,
            scrape_ms: stats::median(&l.scrape_ms),
            ss_ms: stats::median(&l.ss_ms),
            rss_mb: l.rss_mb,
        });
    }
    Ok(scale_report::report(&levels, ss_p, blocking.as_ref(), troubled.as_ref()))
}

/// Switches every holder's sockets to blocking (or back), and waits for the
/// full walk after which the observer's marks know it.
fn set_mode(obs: &Observer, pairs: &mut [Pair], mode: &str) -> Result<()> {
    for p in pairs.iter_mut() {
        let reply = p.server.request(&format!("mode {mode}"), "MODE", Duration::from_secs(30))?;
        if field(&reply, "failed") != Some("0") {
            bail!("switching to {mode}: {reply}");
        }
    }
    const MARKED: &str = "observer_marked_sweeps_total";
    let m = obs.scrape()?;
    let Some(marked) = m.sum_if_present(MARKED) else { return Ok(()) };
    let walks = m.get("observer_sweeps_total") - marked;
    obs.wait_until(Duration::from_secs(120), "a full walk", |m| {
        m.sum_if_present(MARKED).is_some_and(|marked| m.get("observer_sweeps_total") - marked > walks)
    })?;
    Ok(())
}

fn blocking_variant(obs: &Observer, ns: &str, pairs: &mut [Pair], level: usize, plan: &Plan) -> Result<Level> {
    set_mode(obs, pairs, "blocking")?;
    let l = measure(obs, ns, pairs, level, plan)?;
    eprintln!(
        "bench:   blocking server: sweep {:.1} ms, {:.1} ms CPU, agent {:.2}%",
        stats::median(&l.sweep_ms),
        l.sweep_cpu_ms,
        l.cpu_pct
    );
    set_mode(obs, pairs, "nonblocking")?;
    Ok(l)
}

/// Puts a share of the held sockets in trouble, waits for the observer to
/// count them, and measures the level again.
fn troubled_variant(obs: &Observer, ns: &str, pairs: &mut [Pair], level: usize, plan: &Plan) -> Result<(Made, Level)> {
    let mut servers: Vec<(&mut Child, usize)> = pairs.iter_mut().map(|p| (&mut p.server, p.held)).collect();
    let made = scale_trouble::make(ns, &mut servers, plan.scale_trouble_share, obs)?;
    eprintln!(
        "bench:   {} vanished and {} non-reading peers; counted {} dead_peer, {} zero_window after {:.1} s",
        made.vanished, made.slow, made.counted_dead, made.counted_zero_window, made.secs_to_count
    );
    let l = measure(obs, ns, pairs, level, plan)?;
    eprintln!("bench:   sweep {:.1} ms with them", stats::median(&l.sweep_ms));
    Ok((made, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_sweep_reads_are_absent_or_averaged() {
        let m0 = Metrics::parse("observer_sweep_records_read_total 100\n");
        let m1 = Metrics::parse("observer_sweep_records_read_total 400\n");
        assert_eq!(per_sweep(&m0, &m1, RECORDS_READ, 3.0), Some(100.0));
        assert_eq!(per_sweep(&m0, &m1, BYTES_READ, 3.0), None);
    }
}
