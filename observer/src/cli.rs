//! Command line. Every value is checked here, so a mistake gets a one-line
//! error before anything is loaded into the kernel.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::probes::plan::{Hook, Method};

/// What each class means; `run --help`, `top --help` and the README say the same.
pub const CLASSES: &str = "Classes:
  dead_peer   data outstanding to the peer and nothing heard back for --dead-after:
              unacknowledged data retransmitted with no ACK progress and no ACK at all (RTO
              case), or a zero-window probe left unanswered past the socket's RTO with no ACK
              for --dead-after (a live reader answers every probe at once). Never a
              connection still in SYN_SENT or SYN_RECV.
  orphaned    no file holds the socket (the app closed it), data is still queued, and it
              makes no progress for --dead-after by the same evidence. An orphan draining to
              a live reader, or a FIN awaiting its ACK, is only a state (fin_wait1, last_ack).
              It counts for the process that closed it, also after that process exits.
  close_wait  in CLOSE_WAIT (the peer closed, the app did not) for --close-wait-after,
              dated from the peer's FIN.
  stalled     zero_window: a live peer that reads too slowly (zero window, its probes
              answered) for --stall-after. connect: an outbound connect unanswered for
              --stall-after.

Every age may be understated (a socket first seen mid-stall is dated from the kernel's own
stamps), never overstated. GET /sockets lists the sockets behind every count by address,
pid and inode.";

#[derive(Parser, Debug)]
#[command(
    name = "observer",
    version,
    about = "Finds the dead and stalled TCP sockets of a server process, and the bytes stuck in them, from the kernel's own state.",
    long_about = "Finds the dead and stalled TCP sockets of a server process, and the bytes stuck in them, \
from the kernel's own state, and serves them as Prometheus metrics next to the process's memory.\n\n\
A WebSocket server whose memory climbs while its connection count looks flat usually holds \
zombie sockets. Heap snapshots cannot see these; the kernel can.",
    after_long_help = CLASSES,
    after_help = "Examples:\n  observer run --pid 4242\n  observer run --comm node --listen 127.0.0.1:9477 --dead-after 5\n  observer check --verify"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to the kernel, watch a target process, serve /metrics, /sockets and /healthz.
    #[command(after_long_help = CLASSES)]
    Run(RunArgs),
    /// Live terminal view of the target's sockets, worst first (quit with q).
    #[command(after_long_help = CLASSES)]
    Top(TopArgs),
    /// Print what this kernel offers and which attach method each hook would use.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false)]
pub struct TargetArgs {
    /// PID of the server process to watch.
    #[arg(long, value_parser = parse_pid)]
    pub pid: Option<u32>,
    /// Watch every process with this command name (as in /proc/PID/comm, at most 15
    /// bytes); re-resolved at each sweep, so a restarted server is picked up.
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// Kernel BTF to read struct layouts from.
    #[arg(long, default_value = crate::probes::offsets::DEFAULT_BTF_PATH, value_name = "PATH")]
    pub btf: PathBuf,
    /// Force one attach method for a hook, e.g. `send=raw_tracepoint` (repeatable).
    /// Hooks: send, close, state, timer, retransmit, sockets. Methods: fentry,
    /// fexit, kprobe, tp_btf, raw_tracepoint, iter, sweep. `sockets=sock_diag`
    /// chooses the other backend: no eBPF at all, sockets polled through
    /// sock_diag (see --fallback); it goes with no other forced method.
    #[arg(long = "probe-method", value_name = "HOOK=METHOD", value_parser = parse_forced)]
    pub probe_method: Vec<Forced>,
    /// What to do where the kernel or the sandbox refuses eBPF (no CAP_BPF or
    /// CAP_PERFMON, a seccomp filter, BPF compiled out). `sock_diag`: poll the
    /// kernel's socket diagnostics as `ss` does, with a warning; socket gauges
    /// and zombie classes keep working, but the event counters (retransmits,
    /// RTO timeouts, zero-window and loss probes, connections opened and
    /// closed) are absent from /metrics and observer_probe_info says
    /// method="sock_diag". `none`: exit with the privilege error instead, for
    /// deployments that must not run degraded.
    #[arg(long, value_enum, default_value = "sock_diag", value_name = "MODE")]
    pub fallback: Fallback,
}

/// One `--probe-method`: a method of the attach plan, or the sock_diag backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forced {
    Method(Hook, Method),
    SockDiag,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    #[value(name = "sock_diag")]
    SockDiag,
    None,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Address to serve /metrics and /healthz on.
    #[arg(long, default_value = "0.0.0.0:9477", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// bpffs directory where per-socket state is pinned while running, so a
    /// restarted observer (after a crash or SIGKILL) continues where it was;
    /// removed on a clean shutdown.
    #[arg(long, default_value = "/sys/fs/bpf/observer", value_name = "PATH")]
    pub pin_dir: std::path::PathBuf,
    /// Do not pin anything in bpffs. Without --state-file, a restart then
    /// restarts the clocks the kernel does not keep itself (see --state-file).
    #[arg(long)]
    pub no_pin: bool,
    /// File where the agent keeps, after every sweep, the clocks only it knows
    /// for the sockets that have one (since when CLOSE_WAIT, since when no ACK
    /// progress, since when a connect is unanswered, who closed an orphan), and
    /// reads them back at start: a restarted observer, pinned or not, reports
    /// from its first sweep what the last one did. Written atomically; grows
    /// with sockets in trouble, not with connections; ignored after a reboot.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<std::path::PathBuf>,
    /// Also export per-process series with a `pid` label (process_rss_bytes,
    /// process_established_sockets, process_zombie_sockets, process_send_queue_bytes)
    /// for a target of several processes (`--comm` matching a cluster of workers).
    /// Off by default: PIDs churn, and every one is a new series.
    #[arg(long)]
    pub per_pid: bool,
    /// Most processes given per-process series with --per-pid.
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_pids: u32,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// How often the kernel is read, and when a socket counts as a zombie.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Seconds between reconciliation sweeps against the kernel's socket table.
    /// A socket whose class is due to change sooner gets a sweep of its own
    /// then, no closer than a quarter of this to the last.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_interval, allow_hyphen_values = true)]
    pub interval: Duration,
    /// Silence after which a peer is gone: a connection with data outstanding
    /// that hears nothing back this long (unacknowledged data retransmitted with
    /// no ACK, or a zero-window probe unanswered past its RTO and no ACK this
    /// long) is a `dead_peer` zombie; an app-closed socket as stuck is `orphaned`.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_threshold, allow_hyphen_values = true)]
    pub dead_after: Duration,
    /// A socket in CLOSE_WAIT this long after the peer's FIN (peer closed, app did
    /// not) is a `close_wait` zombie.
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = parse_threshold, allow_hyphen_values = true)]
    pub close_wait_after: Duration,
    /// A live peer advertising a zero window this long (its probes answered) is
    /// stalled `zero_window`; an outbound connect unanswered this long is stalled
    /// `connect`.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_threshold, allow_hyphen_values = true)]
    pub stall_after: Duration,
    /// Capacity of the kernel's table of tracked sockets (LRU beyond it; evictions are counted).
    #[arg(long, default_value = "131072", value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    pub max_sockets: u32,
}

impl TargetArgs {
    pub fn selector(&self) -> crate::target::Selector {
        match (&self.pid, &self.comm) {
            (Some(pid), _) => crate::target::Selector::Pid(*pid),
            // clap's group makes exactly one of the two present.
            (None, Some(comm)) => crate::target::Selector::Comm(comm.clone()),
            (None, None) => crate::target::Selector::Pid(0),
        }
    }
}

impl SweepArgs {
    pub fn thresholds(&self) -> crate::classify::Thresholds {
        crate::classify::Thresholds {
            dead_after: self.dead_after,
            close_wait_after: self.close_wait_after,
            stall_after: self.stall_after,
        }
    }
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also load every method's program (without attaching) to show the verifier accepts it.
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn parse_pid(s: &str) -> Result<u32, String> {
    let pid: i64 = s.trim().parse().map_err(|_| format!("`{s}` is not a PID (a positive integer)"))?;
    if pid <= 0 || pid > i64::from(i32::MAX) {
        return Err(format!("{pid} is not a valid PID"));
    }
    Ok(pid as u32)
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('/') || s.contains('\n') {
        return Err(format!("`{s}` is not a process name"));
    }
    Ok(s.to_string())
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("`{s}` is not an address like 0.0.0.0:9477 or [::1]:9477"))
}

/// Seconds as a plain number (`5`, `0.5`) or with a unit (`500ms`, `5s`, `2m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a duration (seconds, e.g. 5 or 500ms)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{s}` is not a duration: must be a non-negative number of seconds"));
    }
    let secs = v * scale;
    if secs > 86_400.0 {
        return Err(format!("`{s}` is longer than a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_threshold(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(50) {
        return Err(format!("`{s}` is too short a sweep interval (at least 0.05 s)"));
    }
    Ok(d)
}

fn parse_forced(s: &str) -> Result<Forced, String> {
    let (h, m) = s.split_once('=').ok_or_else(|| format!("`{s}` is not HOOK=METHOD"))?;
    let hooks = || Hook::ALL.map(Hook::name).join(", ");
    let hook = Hook::parse(h).ok_or_else(|| format!("unknown hook `{h}` ({})", hooks()))?;
    if (hook, m) == (Hook::Sockets, "sock_diag") {
        return Ok(Forced::SockDiag);
    }
    let method = Method::parse(m).ok_or_else(|| {
        let methods = Method::ALL.map(Method::name).join(", ");
        format!("unknown method `{m}` ({methods}; sock_diag for sockets)")
    })?;
    Ok(Forced::Method(hook, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [("5", 5.0), ("0.5", 0.5), ("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), (" 3 ", 3.0)];
        for (s, secs) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs_f64(secs)), "{s}");
        }
        for bad in ["", "-1", "abc", "NaN", "inf", "5x", "1e9", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_interval("0").is_err());
    }

    #[test]
    fn pids_and_forced_methods() {
        assert_eq!(parse_pid("42"), Ok(42));
        for bad in ["0", "-5", "x", "99999999999"] {
            assert!(parse_pid(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_forced("send=kprobe"), Ok(Forced::Method(Hook::Send, Method::Kprobe)));
        assert_eq!(parse_forced("sockets=sock_diag"), Ok(Forced::SockDiag));
        assert!(parse_forced("send=sock_diag").is_err(), "sock_diag is a backend, not a method of send");
        assert!(parse_forced("send=tracepoint").is_err(), "classic tracepoints are gone");
        assert!(parse_forced("send").is_err());
        assert!(parse_forced("sned=kprobe").is_err());
        assert!(parse_forced("send=uprobe").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
