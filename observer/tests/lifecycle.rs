//! The observer outlives its target and survives its own restarts.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];

fn server(exe: &Path) -> (Proc, String) {
    start_demo_server(exe, "4096")
}

fn classes(s: &Scrape) -> Vec<(String, f64)> {
    s.iter()
        .filter(|(k, _)| {
            k.starts_with("observer_zombie_sockets")
                || k.starts_with("observer_stalled_sockets")
                || k.starts_with("observer_tcp_sockets")
                || k.starts_with("observer_zombie_queued_bytes")
                || *k == "observer_send_queue_bytes"
                || *k == "observer_tracked_sockets"
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[test]
fn restarted_by_comm_and_gauges_drop_when_the_target_exits() {
    require_root();
    // A copy of the demo binary under a name of its own, so `--comm` matches
    // only this test's server.
    let dir = std::env::temp_dir().join(format!("obs-life-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("obslifesrv");
    std::fs::copy(DEMO, &exe).expect("copy demo binary");

    let (mut first, addr) = server(&exe);
    let obs = start_observer(&["--comm", "obslifesrv", "--interval", "0.2", "--no-pin"]);
    let status = Command::new(DEMO)
        .args(["client", "--connect", &addr, "--role", "healthy", "--count", "5", "--hold-secs", "1"])
        .stdout(Stdio::null())
        .status()
        .expect("clients");
    assert!(status.success());
    let before = wait_for(Duration::from_secs(10), "5 connections counted", || {
        let s = obs.scrape();
        (metric(&s, "observer_connections_closed_total") == 5.0).then_some(s)
    });
    assert_eq!(metric(&before, "observer_target_up"), 1.0);
    assert!(!before.keys().any(|k| k.contains("pid=")), "no pid label unless asked");

    first.stop();
    let gone = wait_for(Duration::from_secs(10), "target_up 0", || {
        let s = obs.scrape();
        (metric(&s, "observer_target_up") == 0.0).then_some(s)
    });
    assert_eq!(metric(&gone, "observer_tracked_sockets"), 0.0, "gauges drop to zero");
    assert_eq!(metric(&gone, "observer_tcp_sockets{state=\"listen\"}"), 0.0);
    assert_eq!(metric(&gone, "observer_connections_opened_total"), 5.0, "counters stay");

    let (second, addr) = server(&exe);
    let back = wait_for(Duration::from_secs(10), "new PID picked up", || {
        let s = obs.scrape();
        (metric(&s, "observer_target_up") == 1.0 && metric(&s, "observer_tcp_sockets{state=\"listen\"}") == 1.0)
            .then_some(s)
    });
    assert_eq!(metric(&back, "observer_target_processes"), 1.0);
    let status = Command::new(DEMO)
        .args(["client", "--connect", &addr, "--role", "healthy", "--count", "3", "--hold-secs", "1"])
        .stdout(Stdio::null())
        .status()
        .expect("clients");
    assert!(status.success());
    wait_for(Duration::from_secs(10), "counters continue across the target restart", || {
        let s = obs.scrape();
        (metric(&s, "observer_connections_opened_total") == 8.0).then_some(())
    });
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_observer_restarts_where_it_was_and_sigterm_leaves_nothing() {
    require_root();
    let lab = start_lab(&[
        "--healthy",
        "1",
        "--vanish",
        "1",
        "--halfclose",
        "1",
        "--slow",
        "1",
        "--orphan",
        "1",
        "--orphan-close-after-ms",
        "4000",
        "--duration-secs",
        "120",
    ]);
    let pid = lab.server_pid.to_string();
    let pin_dir = format!("/sys/fs/bpf/observer-test-{}", std::process::id());
    // Removed however the test ends (bpffs entries outlive the process).
    struct RemoveDir(String);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(pin_dir.clone());
    let mut args = vec!["--pid", pid.as_str(), "--pin-dir", pin_dir.as_str()];
    args.extend_from_slice(FAST);

    // What a SIGKILLed observer of a target long gone left behind.
    let dead = Path::new(&pin_dir).join("pid-4194305");
    let _ = std::fs::create_dir_all(&dead);
    let mut first = start_observer(&args);
    assert!(!dead.exists(), "pins of targets that no longer exist are pruned at start");
    let settled = wait_for(Duration::from_secs(40), "every class seen", || {
        let s = first.scrape();
        let z = |r: &str| metric(&s, &format!("observer_zombie_sockets{{reason=\"{r}\"}}"));
        (z("dead_peer") == 1.0 && z("close_wait") == 1.0 && z("orphaned") == 1.0).then_some(s)
    });
    // SIGKILL: no chance to clean up; the pinned state stays behind.
    unsafe { libc::kill(first.proc.pid() as libc::pid_t, libc::SIGKILL) };
    first.proc.stop();
    let pinned = Path::new(&pin_dir).join(format!("pid-{pid}"));
    assert!(pinned.join("SOCKS").exists(), "state pinned in {}", pinned.display());

    let second = start_observer(&args);
    // start_observer returns after the first sweep: no waiting for thresholds.
    let after = second.scrape();
    let (a, b) = (classes(&settled), classes(&after));
    let differing: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
    // Queued bytes of a still-streaming server may move; zombie counts may not.
    assert!(
        differing.iter().all(|((k, _), _)| k.contains("bytes")),
        "numbers changed across the restart: {differing:?}"
    );

    // SIGTERM: detach and unpin everything. Other observers may run on this
    // host, so look at the programs this one loaded, by id.
    let mut second = second;
    let ours = programs_of(second.proc.pid());
    assert!(ours.len() >= 3, "bpftool lists the observer's programs: {ours:?}");
    let status = second.proc.stop().expect("observer exit status");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!pinned.exists(), "nothing stays pinned");
    // The kernel frees a program after an RCU grace period, not at exit.
    for id in ours {
        wait_for(Duration::from_secs(10), &format!("program {id} unloaded after SIGTERM"), || {
            let out = Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().expect("bpftool");
            (!out.status.success()).then_some(())
        });
    }
}

/// Ids of the BPF programs `pid` holds open, from its fdinfo.
fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return ids };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        ids.extend(
            info.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn a_cluster_of_workers_is_aggregated_and_split_by_pid_only_when_asked() {
    require_root();
    let dir = std::env::temp_dir().join(format!("obs-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("obsworker");
    std::fs::copy(DEMO, &exe).expect("copy demo binary");
    let (a, addr_a) = server(&exe);
    let (b, addr_b) = server(&exe);
    let obs = start_observer(&["--comm", "obsworker", "--interval", "0.2", "--no-pin", "--per-pid"]);
    let clients = |addr: &str, n: &str| {
        let child = Command::new(DEMO)
            .args(["client", "--connect", addr, "--role", "healthy", "--count", n, "--hold-secs", "8"])
            .stdout(Stdio::null())
            .spawn()
            .expect("clients");
        Proc { child, name: "clients" }
    };
    let _ca = clients(&addr_a, "3");
    let _cb = clients(&addr_b, "5");
    let est = |s: &Scrape, pid: u32| s.get(&format!("observer_process_established_sockets{{pid=\"{pid}\"}}")).copied();
    let s = wait_for(Duration::from_secs(10), "both workers counted", || {
        let s = obs.scrape();
        (metric(&s, "observer_tcp_sockets{state=\"established\"}") == 8.0
            && est(&s, a.pid()) == Some(3.0)
            && est(&s, b.pid()) == Some(5.0))
        .then_some(s)
    });
    assert_eq!(metric(&s, "observer_target_processes"), 2.0);
    assert_eq!(metric(&s, "observer_tcp_sockets{state=\"listen\"}"), 2.0, "aggregated over workers");
    assert!(metric(&s, &format!("observer_process_rss_bytes{{pid=\"{}\"}}", a.pid())) > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
