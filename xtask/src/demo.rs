//! The README's first command: a misbehaving server in network namespaces,
//! the observer attached to it, and the numbers that matter printed as they
//! change, so a newcomer sees zombies appear. With `--chart` the run is also
//! recorded (one scrape a second) and drawn as a PNG.

mod chart;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How long to run, in seconds (Ctrl-C stops earlier; everything is cleaned up).
    #[arg(long, default_value_t = 90)]
    duration: u64,
    /// Where the observer serves /metrics while the demo runs.
    #[arg(long, default_value = "127.0.0.1:9477")]
    listen: String,
    /// Record the metrics every second and write a PNG chart of RSS,
    /// connections, zombie and stalled sockets and queued bytes here at the end.
    #[arg(long, value_name = "PATH.png")]
    chart: Option<PathBuf>,
}

/// The clients the demo starts: `observer-demo lab` flag, count, what they do.
const CLIENTS: [(&str, &str, &str); 5] = [
    ("--healthy", "3", "healthy"),
    ("--slow", "2", "slow"),
    ("--vanish", "2", "vanishing"),
    ("--halfclose", "2", "half-closed"),
    ("--orphan", "1", "orphaning"),
];
/// The server sends every client a message this often: vanished and slow
/// peers pile it up in the server's user-space queues (its RSS) and in the
/// kernel's send queues, while healthy ones drain it.
const SERVER_INTERVAL_MS: &str = "20";
const SERVER_MESSAGE_BYTES: &str = "4096";
/// Demo thresholds (seconds), lowered so zombies show within the run.
const THRESHOLD_SECS: &str = "5";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Children are ended by PID, and only ours, whatever way we leave.
struct Reaper(Vec<(&'static str, Child)>);

impl Reaper {
    /// The first child that has exited on its own, and how.
    fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(name, child)| match child.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited early ({status}); see its messages above")),
            _ => None,
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            // SIGTERM first: the lab tears its namespaces down on it.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if let Some(path) = &args.chart {
        // Fail before minutes of running, not after.
        if path.parent().is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
            bail!("--chart {}: its directory does not exist", path.display());
        }
    }
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let bin = "target/release";
    let mut reaper = Reaper(Vec::new());
    let lab_secs = args.duration + 30;
    let mut lab = Command::new(format!("{bin}/observer-demo"))
        .arg("lab")
        .args(CLIENTS.iter().flat_map(|(flag, n, _)| [*flag, *n]))
        .args(["--interval-ms", SERVER_INTERVAL_MS, "--message-bytes", SERVER_MESSAGE_BYTES])
        .args(["--duration-secs", &lab_secs.to_string(), "--name", "obsdemo"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting observer-demo lab")?;
    let stdout = lab.stdout.take().context("lab stdout")?;
    reaper.0.push(("observer-demo lab", lab));
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("READY ") => break line,
            Some(Ok(_)) => continue,
            _ => bail!("the demo lab exited before it was ready (see its messages above)"),
        }
    };
    let server_pid = ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("server_pid="))
        .context("READY line without server_pid")?
        .to_string();

    let observer = Command::new(format!("{bin}/observer"))
        .args(["run", "--pid", &server_pid, "--listen", &args.listen])
        .args(["--dead-after", THRESHOLD_SECS, "--close-wait-after", THRESHOLD_SECS])
        .args(["--stall-after", THRESHOLD_SECS, "--interval", "1"])
        .stdin(Stdio::null())
        .spawn()
        .context("starting observer")?;
    reaper.0.push(("observer", observer));

    let clients: Vec<String> = CLIENTS.iter().map(|(_, n, what)| format!("{n} {what}")).collect();
    eprintln!(
        "\ndemo: server pid {server_pid} with {} clients \
         (slow: zero window; vanishing: dead peer; half-closed: CLOSE_WAIT; orphaning: FIN_WAIT1 orphan).\n\
         demo: metrics at http://{}/metrics — zombies show after ~{THRESHOLD_SECS} s (thresholds lowered for the demo).\n\
         demo: running {} s; Ctrl-C to stop early.\n",
        clients.join(", "),
        args.listen,
        args.duration
    );
    let (samples, failure) = watch(args, &mut reaper);
    eprintln!("demo: stopping; cleaning up namespaces and processes");
    drop(reaper);
    if let Some(failure) = failure {
        bail!("{failure}");
    }
    if let Some(path) = &args.chart {
        let title = format!("observer demo: {} clients", clients.join(", "));
        chart::write(path, &title, &samples)?;
        eprintln!("demo: chart of {} samples written to {}", samples.len(), path.display());
    }
    Ok(())
}

/// Scrapes once a second until the duration is over, a signal came or a child
/// died; prints a summary every five seconds. Returns every scrape it got and
/// what went wrong, if anything did.
fn watch(args: &DemoArgs, children: &mut Reaper) -> (Vec<chart::Sample>, Option<String>) {
    let started = Instant::now();
    let end = Duration::from_secs(args.duration);
    let mut samples = Vec::with_capacity(args.duration as usize + 1);
    let mut tick: u64 = 0;
    while !STOP.load(Ordering::Relaxed) && started.elapsed() < end {
        if let Some(failure) = children.exited() {
            return (samples, Some(failure));
        }
        let due = Duration::from_secs(tick + 1);
        if started.elapsed() < due {
            // Short naps, so Ctrl-C is honoured within a quarter second.
            std::thread::sleep((due - started.elapsed()).min(Duration::from_millis(250)));
            continue;
        }
        tick += 1;
        let t = started.elapsed();
        match scrape(&args.listen) {
            Ok(text) => {
                if args.chart.is_some() {
                    samples.push(chart::Sample::from_exposition(t.as_secs_f64(), &text));
                }
                if tick.is_multiple_of(5) {
                    print_summary(t, &text);
                }
            }
            // The observer needs a moment to load; only say so at print time.
            Err(e) if tick.is_multiple_of(5) => eprintln!("demo: scrape failed: {e:#}"),
            Err(_) => {}
        }
    }
    (samples, None)
}

fn scrape(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn value(text: &str, series: &str) -> String {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))).unwrap_or("?").to_string()
}

fn print_summary(t: Duration, text: &str) {
    let mib = |s: String| s.parse::<f64>().map_or(s.clone(), |v| format!("{:.1} MiB", v / 1048576.0));
    println!(
        "[{:>3}s] rss {} | established {} close_wait {} fin_wait1 {} | zombies: dead_peer {} close_wait {} orphaned {} | stalled {} | send-q {} (unsent {}, unacked {}) | retransmits {} rto {} zwp {}",
        t.as_secs(),
        mib(value(text, "observer_target_rss_bytes")),
        value(text, "observer_tcp_sockets{state=\"established\"}"),
        value(text, "observer_tcp_sockets{state=\"close_wait\"}"),
        value(text, "observer_tcp_sockets{state=\"fin_wait1\"}"),
        value(text, "observer_zombie_sockets{reason=\"dead_peer\"}"),
        value(text, "observer_zombie_sockets{reason=\"close_wait\"}"),
        value(text, "observer_zombie_sockets{reason=\"orphaned\"}"),
        value(text, "observer_stalled_sockets{reason=\"zero_window\"}"),
        mib(value(text, "observer_send_queue_bytes")),
        mib(value(text, "observer_unsent_bytes")),
        mib(value(text, "observer_unacked_bytes")),
        value(text, "observer_retransmits_total"),
        value(text, "observer_rto_timeouts_total"),
        value(text, "observer_zero_window_probes_total"),
    );
}
