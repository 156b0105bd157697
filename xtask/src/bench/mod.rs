//! `cargo xtask bench`: overhead, agent cost, scale, connection storms and
//! detection latency, each measured against a baseline taken in the same run,
//! written to BENCHMARKS.md (between markers) with a plot under docs/bench/.
//!
//! Benchmarks, not tests: nothing here decides pass or fail for CI; every
//! figure is reported with its target and, when missed, by how much.

mod bpf_stats;
mod child;
mod floor;
mod latency;
mod netns;
mod observer;
mod plot;
mod procfs;
mod report;
mod scale;
mod scale_report;
mod scale_trouble;
mod send_cost;
mod send_path;
mod stats;
mod storm;
mod worker;

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{setup, sh};
use report::{Report, Row, Section, Verdict};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// About two minutes: short windows, socket levels up to 10k, a 10 s storm.
    /// Results go to target/bench/, not BENCHMARKS.md.
    #[arg(long)]
    quick: bool,
    /// Run only some benchmarks (send, scale, storm, latency), comma-separated.
    /// Results go to target/bench/.
    #[arg(long, value_delimiter = ',', value_parser = ["send", "scale", "storm", "latency"])]
    only: Vec<String>,
    /// Use the binaries already in target/release instead of building them.
    #[arg(long)]
    no_build: bool,
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(Subcommand)]
enum Internal {
    /// Helper processes the benchmarks start (not for direct use).
    #[command(hide = true)]
    Worker {
        #[command(subcommand)]
        worker: worker::Worker,
    },
}

/// Where the binaries under test are, and where logs go.
pub struct Paths {
    pub root: PathBuf,
    pub observer: PathBuf,
    pub demo: PathBuf,
    pub worker: PathBuf,
    pub logs: PathBuf,
}

impl Paths {
    fn new() -> Result<Paths> {
        // xtask/ is one level below the workspace root.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
        let release = root.join("target/release");
        let logs = root.join("target/bench/logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Paths {
            observer: release.join("observer"),
            demo: release.join("observer-demo"),
            worker: release.join("xtask"),
            logs,
            root,
        })
    }

    /// `xtask bench worker <args>` from the release build.
    pub fn worker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.worker);
        c.args(["bench", "worker"]).args(args);
        c
    }

    /// The same, inside network namespace `ns` (the PID stays the worker's).
    pub fn worker_cmd_in(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = netns::exec_in(ns, &self.worker);
        c.args(["bench", "worker"]).args(args);
        c
    }
}

/// Durations and sizes of one run.
pub struct Plan {
    pub send_rounds: usize,
    pub send_window: Duration,
    pub scale_levels: Vec<usize>,
    pub scale_sweeps: usize,
    /// Agent CPU is averaged over this long at each level.
    pub scale_cpu_window: Duration,
    /// Share of the largest level's sockets put in trouble for its variant.
    pub scale_trouble_share: f64,
    pub storm_secs: f64,
    pub storm_clients: usize,
    pub storm_rate: u32,
    pub latency_peers: usize,
    pub latency_stagger: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                send_rounds: 3,
                send_window: Duration::from_millis(500),
                scale_levels: vec![1_000, 10_000],
                scale_sweeps: 3,
                scale_cpu_window: Duration::from_secs(5),
                scale_trouble_share: 0.01,
                storm_secs: 10.0,
                storm_clients: 2_000,
                storm_rate: 1_500,
                latency_peers: 20,
                latency_stagger: Duration::from_millis(110),
            }
        } else {
            Plan {
                send_rounds: 10,
                send_window: Duration::from_secs(1),
                scale_levels: vec![1_000, 10_000, 50_000, 100_000],
                scale_sweeps: 10,
                scale_cpu_window: Duration::from_secs(60),
                scale_trouble_share: 0.01,
                storm_secs: 60.0,
                storm_clients: 2_000,
                storm_rate: 1_500,
                latency_peers: 50,
                latency_stagger: Duration::from_millis(150),
            }
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Sleeps, but gives up at once on Ctrl-C so every guard can clean up.
pub fn pause(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn main(args: BenchArgs) -> Result<()> {
    if let Some(Internal::Worker { worker }) = args.internal {
        return worker::run(worker);
    }
    if !setup::is_root() {
        bail!("benchmarks load eBPF programs and create network namespaces: run as root");
    }
    if !args.no_build {
        setup::ensure()?;
        sh::run("cargo", &["build", "--release", "--package", "observer", "--bins", "--package", "xtask"])?;
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let paths = Paths::new()?;
    let plan = Plan::new(args.quick);
    let all = args.only.is_empty();
    let want = |name: &str| all || args.only.iter().any(|o| o == name);
    let official = all && !args.quick;
    let out_dir = if official { paths.root.clone() } else { paths.root.join("target/bench") };
    let plot_rel = if official { "docs/bench/scale.png" } else { "scale.png" };

    let started = Instant::now();
    let mut sections = Vec::new();
    let mut scale_points = Vec::new();
    type Bench<'a> = (&'a str, &'a str, Box<dyn FnOnce(&mut Vec<plot::ScalePoint>) -> Result<Section> + 'a>);
    let benches: Vec<Bench> = vec![
        ("send", "Send-path overhead and agent cost", Box::new(|_| send_path::run(&paths, &plan))),
        ("scale", "Scale: many established sockets", Box::new(|pts| scale::run(&paths, &plan, pts))),
        ("storm", "Connection storm", Box::new(|_| storm::run(&paths, &plan))),
        ("latency", "Detection latency of vanished peers", Box::new(|_| latency::run(&paths, &plan))),
    ];
    for (name, title, f) in benches {
        if !want(name) {
            continue;
        }
        eprintln!("\nbench: {title} ...");
        let t0 = Instant::now();
        let load0 = loadavg();
        let mut section = f(&mut scale_points).unwrap_or_else(|e| Section {
            title: title.to_string(),
            rows: vec![
                Row::new(title, "runs", format!("failed: {e:#}")).verdict(Verdict::Missed("did not run".into())),
            ],
            details: vec![],
        });
        section.title = title.to_string();
        section.details.push(format!(
            "took {:.0} s; load average (1 min) {load0} at the start, {} at the end, on {} CPUs: other work on the \
             machine shows up as noise in every figure",
            t0.elapsed().as_secs_f64(),
            loadavg(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        ));
        eprintln!("bench: {title} done in {:.0} s", t0.elapsed().as_secs_f64());
        sections.push(section);
        if interrupted().is_err() {
            break;
        }
    }

    let mut plot = None;
    if scale_points.len() >= 2 {
        let png = out_dir.join(plot_rel);
        if let Some(dir) = png.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        match plot::scale(&png, &scale_points, scale::TARGET_MS, scale::TARGET_RSS_MB) {
            Ok(()) => plot = Some(plot_rel.to_string()),
            Err(e) => eprintln!("bench: no plot: {e:#}"),
        }
    }
    let mut command = "cargo xtask bench".to_string();
    if args.quick {
        command.push_str(" --quick");
    }
    if !all {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    let report = Report { command, date: now_utc(), machine: machine(), sections, plot };
    let text = report.render();
    println!("\n{text}");
    let md = out_dir.join("BENCHMARKS.md");
    report::write_between_markers(&md, &text, "# Benchmarks\n")?;
    eprintln!("bench: wrote {} in {:.0} s total", md.display(), started.elapsed().as_secs_f64());
    interrupted()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn now_utc() -> String {
    sh::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn machine() -> String {
    let kernel = sh::output("uname", &["-r"]).map(|s| s.trim().to_string()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let mem_gib = procfs::meminfo_kb("MemTotal").map_or(0.0, |kb| kb as f64 / 1048576.0);
    format!("Linux {kernel}, {cpus} × {model}, {mem_gib:.0} GiB")
}
