//! The README's first command: a misbehaving server in network namespaces,
//! the observer attached to it, and the numbers that matter printed as they
//! change, so a newcomer sees zombies appear.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
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
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Children are ended by PID, and only ours, whatever way we leave.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
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
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let bin = "target/release";
    let mut reaper = Reaper(Vec::new());
    let lab_secs = args.duration + 30;
    let mut lab = Command::new(format!("{bin}/observer-demo"))
        .args(["lab", "--healthy", "3", "--slow", "2", "--vanish", "2", "--halfclose", "2", "--orphan", "1"])
        .args(["--duration-secs", &lab_secs.to_string(), "--name", "obsdemo"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting observer-demo lab")?;
    let stdout = lab.stdout.take().context("lab stdout")?;
    reaper.0.push(lab);
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
        .args(["--dead-after", "5", "--close-wait-after", "5", "--stall-after", "5", "--interval", "1"])
        .stdin(Stdio::null())
        .spawn()
        .context("starting observer")?;
    reaper.0.push(observer);

    eprintln!(
        "\ndemo: server pid {server_pid} with healthy, slow (zero window), vanishing (dead peer), \
         half-closed (CLOSE_WAIT) and orphaning clients.\n\
         demo: metrics at http://{}/metrics — zombies show after ~5 s (thresholds lowered for the demo).\n\
         demo: running {} s; Ctrl-C to stop early.\n",
        args.listen, args.duration
    );
    let started = Instant::now();
    while !STOP.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(args.duration) {
        std::thread::sleep(Duration::from_millis(250));
        if started.elapsed().as_millis() % 5000 >= 250 {
            continue;
        }
        match scrape(&args.listen) {
            Ok(text) => print_summary(started.elapsed(), &text),
            Err(e) => eprintln!("demo: scrape failed: {e:#}"),
        }
    }
    eprintln!("demo: stopping; cleaning up namespaces and processes");
    drop(reaper);
    Ok(())
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
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or("?")
        .to_string()
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
