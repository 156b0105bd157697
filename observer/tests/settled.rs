//! A socket that settled (quiet through two sweeps, after which the marked
//! sweeps read little or nothing of it) and then queues bytes: they show
//! from the first sweep that can see them, on every sweep, exactly as `ss`
//! shows them. Non-blocking, the send returns and its probe must wake the
//! socket; blocking, the send still waits in the kernel, and only the
//! socket itself says that bytes were queued.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use common::*;

const CONNECTIONS: usize = 3;
/// Far more than the client's receive buffer and the server's send buffer
/// take at first: bytes stay queued, some unsent.
const BYTES: &str = "8000000";

#[test]
fn a_settled_non_blocking_socket_shows_the_bytes_its_send_queued() {
    queued_after_settling(true);
}

#[test]
fn a_settled_blocking_socket_shows_the_bytes_of_a_send_still_waiting() {
    queued_after_settling(false);
}

fn settled_total(s: &Scrape) -> f64 {
    ["none", "write_seq"]
        .iter()
        .map(|r| s.get(&format!("observer_sweep_settled_sockets_total{{read=\"{r}\"}}")).copied().unwrap_or(0.0))
        .sum()
}

fn queued_after_settling(nonblocking: bool) {
    require_root();
    let n = CONNECTIONS.to_string();
    let mut cmd = Command::new(DEMO);
    cmd.args(["hold", "--connections", &n]);
    if nonblocking {
        cmd.arg("--nonblocking");
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start observer-demo hold");
    let mut stdin: ChildStdin = child.stdin.take().expect("hold stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("hold stdout"));
    let holder = Proc { child, name: "hold" };
    let mut line = String::new();
    stdout.read_line(&mut line).expect("LISTENING line");
    let port: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let pid = holder.pid().to_string();
    let obs = start_observer(&["--pid", &pid, "--interval", "0.5", "--no-pin"]);

    // Settled: a whole sweep passes over every socket of the holder (both
    // ends of each connection) without a record crossing.
    if marked_sweeps_expected() {
        wait_for(Duration::from_secs(30), "every socket settled", || {
            let a = obs.scrape();
            let b = next_look(&obs, metric(&a, "observer_sweeps_total") as u64, None, None).metrics;
            let one_sweep = metric(&b, "observer_sweeps_total") - metric(&a, "observer_sweeps_total") == 1.0;
            (one_sweep && settled_total(&b) - settled_total(&a) >= (2 * CONNECTIONS) as f64).then_some(b)
        });
    }
    let before = obs.scrape();

    writeln!(stdin, "send 0 {BYTES}").and_then(|()| stdin.flush()).expect("tell hold to send");
    if nonblocking {
        line.clear();
        stdout.read_line(&mut line).expect("SENT line");
        assert!(line.starts_with("SENT 0 "), "the non-blocking send returned: {line:?}");
    }

    // Every sweep from here on, while the kernel holds still, says exactly
    // what ss says; the bytes must really be there, or nothing was tested.
    let (mut checked, mut moved) = (0, 0);
    let mut last = metric(&obs.scrape(), "observer_sweeps_total") as u64;
    for _ in 0..40 {
        if checked == 8 {
            break;
        }
        let ss_before = ss_sockets(None, port);
        let look = next_look(&obs, last, None, None);
        last = look.sweep;
        let ss_after = ss_sockets(None, port);
        if ss_before != ss_after {
            moved += 1;
            continue;
        }
        let want = ss_bytes(&ss_after);
        assert!(want.0 > 0 && want.1 > 0, "sweep {}: nothing queued per ss: {ss_after:?}", look.sweep);
        assert_eq!(byte_gauges(&look.metrics), want, "sweep {}: (send_q, unsent, unacked) vs ss", look.sweep);
        checked += 1;
    }
    assert_eq!(checked, 8, "8 sweeps checked while the kernel held still ({moved} saw it move)");
    // Which path the settled sockets took, where the kernel allows a choice.
    assert_settled_reads(&before, &obs.scrape(), nonblocking);
}
