//! The observer under test: started as `observer run`, read over /metrics
//! with a plain HTTP/1.0 GET, stopped by PID when dropped.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{Paths, child::Child};

pub struct Observer {
    pub proc: Child,
    pub addr: String,
}

/// Series (name with labels) -> value.
#[derive(Debug, Default, Clone)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(body: &str) -> Metrics {
        Metrics(
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of a series; NaN when the observer does not export it.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(f64::NAN)
    }

    /// Sum over all label values of a metric family; None when the observer
    /// exports no series of it (an older or newer build).
    pub fn sum_if_present(&self, name: &str) -> Option<f64> {
        let mut series = self.family(name).peekable();
        series.peek()?;
        Some(series.map(|(_, v)| v).sum())
    }

    fn family<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a String, &'a f64)> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
    }

    /// Sum over all label values of a metric family.
    pub fn sum(&self, name: &str) -> f64 {
        self.family(name).map(|(_, v)| v).sum()
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("local address")?.port())
}

impl Observer {
    /// `observer run <target...> <extra...>`, ready once /metrics answers
    /// (the agent sweeps once before it serves).
    pub fn start(paths: &Paths, label: &str, target: &[String], extra: &[&str]) -> Result<Observer> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&paths.observer);
        cmd.arg("run").args(target).args(["--listen", &addr]).args(extra).env("RUST_LOG", "warn");
        let log = paths.logs.join(format!("observer-{label}.log"));
        let proc = Child::spawn(&format!("observer ({label})"), cmd, Some(&log))?.signal_only();
        let mut obs = Observer { proc, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if obs.scrape().is_ok() {
                return Ok(obs);
            }
            if !obs.proc.alive() {
                bail!("observer exited during start-up; see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("observer not serving /metrics after 60 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn scrape(&self) -> Result<Metrics> {
        self.timed_scrape().map(|(_, m)| m)
    }

    /// One full GET /metrics (connect to last byte) and its duration in seconds.
    pub fn timed_scrape(&self) -> Result<(f64, Metrics)> {
        let t0 = Instant::now();
        let body = http_get(&self.addr, "/metrics")?;
        let secs = t0.elapsed().as_secs_f64();
        Ok((secs, Metrics::parse(&body)))
    }

    /// Polls every 50 ms until `ok` holds; the last scrape on success.
    pub fn wait_until(&self, limit: Duration, what: &str, mut ok: impl FnMut(&Metrics) -> bool) -> Result<Metrics> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(m) = self.scrape() {
                if ok(&m) {
                    return Ok(m);
                }
                last = Some(m);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tracked = last.map_or(f64::NAN, |m| m.get("observer_tracked_sockets"));
        bail!("timed out after {limit:?} waiting for {what} (tracked sockets {tracked})")
    }

    /// Durations (s) of the next `n` sweeps, as the observer reports them.
    pub fn next_sweeps(&self, n: usize, limit: Duration) -> Result<Vec<f64>> {
        let mut seen = self.scrape()?.get("observer_sweeps_total");
        let mut out = Vec::new();
        let deadline = Instant::now() + limit;
        while out.len() < n {
            if Instant::now() > deadline {
                bail!("only {} sweeps in {limit:?}", out.len());
            }
            std::thread::sleep(Duration::from_millis(100));
            let m = self.scrape()?;
            let sweeps = m.get("observer_sweeps_total");
            if sweeps > seen {
                // With a 100 ms poll and a sweep interval of ≥ 0.5 s we see every sweep.
                seen = sweeps;
                out.push(m.get("observer_sweep_duration_seconds"));
            }
        }
        Ok(out)
    }
}

/// Minimal HTTP/1.0 GET returning the body of a 200 response.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        bail!("GET {path}: status {code}");
    }
    Ok(raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_series_and_sums_families() {
        let m = Metrics::parse(
            "# HELP x y\nobserver_tracked_sockets 3\nobserver_events_dropped_total{reason=\"a\"} 1\n\
             observer_events_dropped_total{reason=\"b\"} 2\n# EOF\n",
        );
        assert_eq!(m.get("observer_tracked_sockets"), 3.0);
        assert_eq!(m.sum("observer_events_dropped_total"), 3.0);
        assert!(m.get("missing").is_nan());
        assert_eq!(m.sum_if_present("observer_events_dropped_total"), Some(3.0));
        assert_eq!(m.sum_if_present("observer_events_dropped"), None);
    }
}
