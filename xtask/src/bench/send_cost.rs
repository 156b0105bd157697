//! The kernel's own accounting of the observer's programs while the sender
//! runs: the send program per call on watched and unwatched sockets, set
//! against the floor (an empty program on the same hook, timed on the same
//! calls), and the timer program per call and per second, under load and idle.
//!
//! Separate windows from the throughput rounds: run-time statistics cost two
//! clock reads per program run themselves.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};

use super::{
    Paths, Plan,
    bpf_stats::{self, ProgTotals},
    child::{Child, word},
    floor::Floor,
    observer::Observer,
    pause,
    report::{Row, Section, Verdict, fmt_num, upper},
};

pub const TARGET_WATCHED_NS: f64 = 60.0;
pub const TARGET_UNWATCHED_NS: f64 = 25.0;
/// Program name prefixes of the observer's send and timer hooks (any attach method).
const SEND: &str = "send_";
const TIMER: &str = "timer_";
const WARMUP: Duration = Duration::from_millis(300);
/// Idle timer traffic is a few hundred calls per second: a longer window.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// (monotonic ns, sends, bytes) of the sender so far.
pub fn snap(sender: &mut Child) -> Result<(u64, u64, u64)> {
    let l = sender.request("snap", "SNAP", Duration::from_secs(5))?;
    let n = |i| word(&l, i).and_then(|w| w.parse::<u64>().ok()).with_context(|| format!("bad reply {l:?}"));
    Ok((n(1)?, n(2)?, n(3)?))
}

/// What the kernel accounted during one window.
#[derive(Debug, Clone, Default)]
pub struct CostWindow {
    pub send: ProgTotals,
    pub floor: Option<ProgTotals>,
    pub timer: ProgTotals,
    pub sends: u64,
    pub secs: f64,
}

fn window(sender: &mut Child, observer: u32, floor: Option<&Floor>, length: Duration) -> Result<CostWindow> {
    let names = bpf_stats::jit_names();
    // Only fdinfo reads between the sender's snapshots: the windows match.
    let read = || {
        (
            bpf_stats::prog_stats(&names, observer, SEND),
            floor.map(|f| f.stats(&names)),
            bpf_stats::prog_stats(&names, observer, TIMER),
        )
    };
    let (t0, s0, _) = snap(sender)?;
    let (send0, floor0, timer0) = read();
    pause(length)?;
    let (send1, floor1, timer1) = read();
    let (t1, s1, _) = snap(sender)?;
    Ok(CostWindow {
        send: send1.since(&send0),
        floor: floor1.zip(floor0).map(|(a, b)| a.since(&b)),
        timer: timer1.since(&timer0),
        sends: s1.saturating_sub(s0),
        secs: t1.saturating_sub(t0) as f64 / 1e9,
    })
}

pub struct Costs {
    /// Per mode, the observer watching the sender.
    pub watched: BTreeMap<String, CostWindow>,
    /// 64 B mode, the observer watching another process.
    pub unwatched: CostWindow,
    /// The sender idle, the observer watching it.
    pub idle: CostWindow,
    /// Why there is no floor, if there is none.
    pub floor_error: Option<String>,
}

pub fn measure(paths: &Paths, plan: &Plan, sender: &mut Child, sink: u32, modes: &[&str]) -> Result<Costs> {
    let stats_on = bpf_stats::enable()?;
    let (floor, floor_error) = match Floor::attach(paths) {
        Ok(f) => (Some(f), None),
        Err(e) => {
            eprintln!("bench:   no floor program: {e:#}");
            (None, Some(format!("{e:#}")))
        }
    };
    let obs = super::send_path::attach(paths, sender, "send-stats")?;
    let mut watched = BTreeMap::new();
    for mode in modes {
        sender.request(&format!("mode {mode}"), "OK", Duration::from_secs(5))?;
        pause(WARMUP)?;
        watched.insert(mode.to_string(), window(sender, obs.pid(), floor.as_ref(), plan.send_window)?);
    }
    sender.request("mode idle", "OK", Duration::from_secs(5))?;
    pause(WARMUP)?;
    let idle = window(sender, obs.pid(), floor.as_ref(), IDLE_WINDOW)?;
    drop(obs);

    // The send program runs for every process on the host, watched or not:
    // watch the sink instead, and time the program on the sender's sends.
    let target = vec!["--pid".to_string(), sink.to_string()];
    let obs = Observer::start(paths, "send-other", &target, &["--interval", "1"])?;
    sender.request("mode small", "OK", Duration::from_secs(5))?;
    pause(WARMUP)?;
    let unwatched = window(sender, obs.pid(), floor.as_ref(), plan.send_window)?;
    sender.request("mode idle", "OK", Duration::from_secs(5))?;
    drop(obs);
    drop(floor);
    drop(stats_on);
    Ok(Costs { watched, unwatched, idle, floor_error })
}

fn ns(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{} ns", fmt_num(v)))
}

impl Costs {
    fn floor_text(&self, w: &CostWindow) -> String {
        match (w.floor.as_ref().and_then(ProgTotals::ns_per_run), &self.floor_error) {
            (Some(f), _) => format!("empty program on the same hook: {} ns", fmt_num(f)),
            (None, Some(_)) => "floor n/a (not attached)".into(),
            (None, None) => "floor n/a (never ran)".into(),
        }
    }

    /// A send-program row: its ns per call against the floor on the same calls.
    fn send_row(&self, figure: &str, w: &CostWindow, limit: f64) -> Row {
        let Some(per_run) = w.send.ns_per_run() else {
            return Row::new(figure, format!("≤ {limit} ns"), format!("n/a (no program named {SEND}*)"))
                .verdict(Verdict::Missed("not measured".into()));
        };
        let floor = w.floor.as_ref().and_then(ProgTotals::ns_per_run);
        let above = floor.map_or(String::new(), |f| format!(" ({:+.0} above the floor)", per_run - f));
        let ratio = floor.map_or("—".into(), |f| format!("{:.1}× floor", per_run / f));
        Row::new(figure, format!("≤ {limit} ns"), format!("{per_run:.0} ns{above}"))
            .baseline(self.floor_text(w), ratio)
            .verdict(upper(per_run, limit, "ns"))
    }

    /// `floor_of`: the window whose floor to show (idle has no sends, so no floor of its own).
    fn timer_row(&self, figure: &str, w: &CostWindow, floor_of: &CostWindow) -> Row {
        let per_s = w.timer.runs as f64 / w.secs.max(1e-9);
        let measured = match w.timer.ns_per_run() {
            Some(n) => {
                format!("{n:.0} ns per call, {} calls/s ({} ns of CPU per s)", fmt_num(per_s), fmt_num(n * per_s))
            }
            None => format!("n/a (no program named {TIMER}* ran)"),
        };
        let floor = floor_of.floor.as_ref().and_then(ProgTotals::ns_per_run);
        let ratio = match (w.timer.ns_per_run(), floor) {
            (Some(t), Some(f)) => format!("{:.1}× floor", t / f),
            _ => "—".into(),
        };
        Row::new(figure, "measured (no target)", measured).baseline(self.floor_text(floor_of), ratio)
    }

    /// Rows and details; `cpu_per_send` is the workload's CPU per 64 B send
    /// with no program attached, from the throughput rounds.
    pub fn report(&self, s: &mut Section, cpu_per_send: Option<f64>) {
        if let Some(w) = self.watched.get("small") {
            s.rows.push(self.send_row("Send program, watched sockets: ns per call (64 B mode)", w, TARGET_WATCHED_NS));
            if let (Some(per_run), Some(c)) = (w.send.ns_per_run(), cpu_per_send) {
                // On a CPU-bound machine throughput scales by c / (c + per_run);
                // unlike the measured ratio this barely moves with other load.
                let implied = c / (c + per_run);
                s.rows.push(
                    Row::new(
                        "Throughput ratio implied by that CPU cost (64 B mode)",
                        format!("≥ {}", super::send_path::TARGET_RATIO),
                        format!("{implied:.3}"),
                    )
                    .baseline(format!("{c:.0} + {per_run:.0} ns per send"), format!("{implied:.3}"))
                    .at_least(implied, super::send_path::TARGET_RATIO, "×"),
                );
            }
        }
        s.rows.push(self.send_row(
            "Send program, unwatched sockets: ns per call (64 B sends of a process not watched)",
            &self.unwatched,
            TARGET_UNWATCHED_NS,
        ));
        let small = self.watched.get("small").unwrap_or(&self.unwatched);
        let timer_name = small.timer.names.join(", ");
        s.rows.push(self.timer_row(&format!("Timer program ({timer_name}), during 64 B sends"), small, small));
        s.rows.push(self.timer_row(&format!("Timer program ({timer_name}), sender idle"), &self.idle, small));

        for (mode, w) in &self.watched {
            s.details.push(format!(
                "{mode} mode, kernel run-time statistics: send program ({}) ran {} times for {} sends ({:.2} runs per \
                 send; {} calls skipped as recursion), {} per run; floor ran {} times, {} per run; timer program {} \
                 calls, {} per call",
                w.send.names.join(", "),
                w.send.runs,
                w.sends,
                w.send.runs as f64 / w.sends.max(1) as f64,
                w.send.misses,
                ns(w.send.ns_per_run()),
                w.floor.as_ref().map_or(0, |f| f.runs),
                ns(w.floor.as_ref().and_then(ProgTotals::ns_per_run)),
                w.timer.runs,
                ns(w.timer.ns_per_run()),
            ));
        }
        let u = &self.unwatched;
        s.details.push(format!(
            "unwatched, 64 B mode: send program ran {} times for {} sends ({} skipped as recursion), {} per run; floor \
             ran {} times, {} per run",
            u.send.runs,
            u.sends,
            u.send.misses,
            ns(u.send.ns_per_run()),
            u.floor.as_ref().map_or(0, |f| f.runs),
            ns(u.floor.as_ref().and_then(ProgTotals::ns_per_run)),
        ));
        s.details.push(format!(
            "the floor is `bench_floor_send` (an empty tp_btf program on `sock_send_length` in the observer's own \
             object), attached by the benchmark next to the observer's send program and timed on the same calls: it \
             is what any program on this hook costs here, the statistics' own clock reads included, so the figure \
             above the floor is the observer's own work; the targets apply to the raw figure{}",
            self.floor_error.as_ref().map_or(String::new(), |e| format!(" (not attached in this run: {e})"))
        ));
        if small.timer.names.iter().any(|n| n.contains("tp_btf")) {
            s.details.push(
                "the timer program is attached as tp_btf `timer_expire_entry` here, which sees every kernel timer that \
                 expires on the machine, not only the target's: its calls per second are the whole machine's timer \
                 rate, and its cost per call is paid for each"
                    .into(),
            );
        }
    }
}
