//! The main scenario as an unprivileged user holding only the capabilities
//! the README lists, and the agent giving up what it no longer needs.

mod common;

use std::time::Duration;

use common::*;

/// Bits of CapEff in /proc/PID/status.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("hex caps")
}

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;

#[test]
fn runs_as_nobody_with_only_the_documented_capabilities() {
    require_root();
    let lab =
        start_lab(&["--healthy", "1", "--vanish", "1", "--halfclose", "1", "--slow", "1", "--duration-secs", "90"]);
    let caps = "+bpf,+perfmon,+sys_ptrace,+dac_read_search,+sys_admin";
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
    ];
    let pid = lab.server_pid.to_string();
    let obs = start_observer_via(
        &wrapper,
        &[
            "--pid",
            &pid,
            "--no-pin",
            "--dead-after",
            "3",
            "--close-wait-after",
            "3",
            "--stall-after",
            "3",
            "--interval",
            "0.5",
        ],
    );
    let uid = std::fs::read_to_string(format!("/proc/{}/status", obs.proc.pid())).expect("status");
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65534")), "runs as nobody");

    let s = wait_for(Duration::from_secs(40), "classes as nobody", || {
        let s = obs.scrape();
        let z = |r: &str| metric(&s, &format!("observer_zombie_sockets{{reason=\"{r}\"}}"));
        (z("dead_peer") == 1.0
            && z("close_wait") == 1.0
            && metric(&s, "observer_stalled_sockets{reason=\"zero_window\"}") == 1.0)
            .then_some(s)
    });
    // With exactly the documented capabilities every hook gets the method
    // root gets on this kernel: the timer hook included, which needs no
    // /proc/kallsyms (and so no CAP_SYSLOG) to pick out TCP's timers.
    let check = std::process::Command::new(common::OBSERVER).arg("check").output().expect("observer check as root");
    let text = String::from_utf8_lossy(&check.stdout);
    let plan: Vec<(String, String)> = text
        .lines()
        .skip_while(|l| !l.starts_with("attach plan"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("    "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    assert!(plan.len() >= 6, "root's plan: {text}");
    for (hook, method) in &plan {
        let series = format!("observer_probe_info{{hook=\"{hook}\",method=\"{method}\"}}");
        assert_eq!(s.get(&series).copied(), Some(1.0), "as nobody, {hook} uses root's {method}");
    }
    // The timer hook works without CAP_SYSLOG: the vanished peer's RTOs
    // and the slow reader's zero-window probes are counted.
    wait_for(Duration::from_secs(30), "RTO and zero-window probe counters as nobody", || {
        let s = obs.scrape();
        (metric(&s, "observer_rto_timeouts_total") >= 1.0 && metric(&s, "observer_zero_window_probes_total") >= 1.0)
            .then_some(())
    });
    // After start-up only what sweeps need is left: ptrace and
    // dac_read_search to read the target's fds, sys_admin to enter its namespace (another netns here).
    assert_eq!(
        effective_caps(obs.proc.pid()),
        CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH | CAP_SYS_ADMIN,
        "capabilities dropped after load"
    );
}
