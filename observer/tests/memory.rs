//! Memory of a cluster of workers: the observer's PSS is what the kernel
//! says, and below the RSS sum, which counts shared pages once per worker.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const WORKERS: usize = 4;
const PRELOAD_MIB: u64 = 32;
const MIB: f64 = 1024.0 * 1024.0;

/// `key:` of a /proc file in bytes (the kernel prints kB), None when the
/// process or the line is gone.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok().map(|kb| kb * 1024)
}

fn pss(pid: u32) -> u64 {
    proc_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss").unwrap_or_else(|| panic!("Pss of {pid}"))
}

fn rss(pid: u32) -> u64 {
    proc_kb(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or_else(|| panic!("VmRSS of {pid}"))
}

/// PIDs whose comm is `name`, sorted.
fn pids_by_comm(name: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name))
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn pss_of_a_worker_cluster_is_the_kernels_and_below_summed_rss() {
    require_root();
    if !std::path::Path::new("/proc/self/smaps_rollup").exists() {
        eprintln!("no smaps_rollup on this kernel: nothing to compare");
        return;
    }
    // A copy of the demo binary under a name of its own, so `--comm` matches
    // only this test's workers.
    let dir = std::env::temp_dir().join(format!("obs-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("obsmemsrv");
    std::fs::copy(DEMO, &exe).expect("copy demo binary");
    let workers = WORKERS.to_string();
    let preload = PRELOAD_MIB.to_string();
    let mut child = Command::new(&exe)
        .args(["server", "--listen", "127.0.0.1:0", "--workers", &workers, "--preload-mib", &preload])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the worker cluster");
    let stdout = child.stdout.take().expect("stdout");
    let server = Proc { child, name: "workers" };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("LISTENING line");
    assert!(line.starts_with("LISTENING"), "{line}");
    let pids = wait_for(Duration::from_secs(10), "every worker forked", || {
        let p = pids_by_comm("obsmemsrv");
        (p.len() == WORKERS).then_some(p)
    });
    assert!(pids.contains(&server.pid()));

    let obs = start_observer(&["--comm", "obsmemsrv", "--interval", "0.2", "--no-pin", "--per-pid"]);
    wait_for(Duration::from_secs(10), "all workers targeted", || {
        (metric(&obs.scrape(), "observer_target_processes") == WORKERS as f64).then_some(())
    });

    // The kernel's numbers move a little while we look (shared library
    // pages are divided among every process on the host mapping them), so
    // the observer's reading must lie between the test's readings just
    // before and just after the scrape, give or take a small margin.
    let tolerance = |a: f64, b: f64| (a - b).abs() + 256.0 * 1024.0 + 0.01 * a.max(b);
    let mut checked = 0;
    for _ in 0..5 {
        let before: u64 = pids.iter().map(|&p| pss(p)).sum();
        let s = obs.scrape();
        let after: u64 = pids.iter().map(|&p| pss(p)).sum();
        let rss_sum: u64 = pids.iter().map(|&p| rss(p)).sum();
        let (before, after) = (before as f64, after as f64);
        let got = metric(&s, "observer_target_pss_bytes");
        let mid = (before + after) / 2.0;
        assert!(
            (got - mid).abs() <= tolerance(before, after),
            "observer PSS {got} vs kernel {before}..{after} (Pss of smaps_rollup summed over {pids:?})"
        );
        // The per-process series add up to the sum of the same scrape.
        let per: f64 = pids.iter().map(|p| metric(&s, &format!("observer_process_pss_bytes{{pid=\"{p}\"}}"))).sum();
        assert_eq!(per, got, "per-pid PSS sums to the total");
        let rss_got = metric(&s, "observer_target_rss_bytes");
        assert!(
            (rss_got - rss_sum as f64).abs() <= tolerance(rss_got, rss_sum as f64),
            "observer RSS {rss_got} vs kernel {rss_sum}"
        );
        // The preloaded memory is counted once per worker in RSS, once in all in PSS.
        let shared = (PRELOAD_MIB * 1024 * 1024) as f64;
        assert!(rss_got - got > 0.5 * shared * (WORKERS - 1) as f64, "PSS {got} not well below summed RSS {rss_got}");
        eprintln!(
            "workers {WORKERS}, preload {PRELOAD_MIB} MiB: PSS observer {:.1} MiB, kernel {:.1}..{:.1} MiB; summed RSS {:.1} MiB",
            got / MIB,
            before / MIB,
            after / MIB,
            rss_got / MIB
        );
        checked += 1;
    }
    assert_eq!(checked, 5);

    // A worker that dies is dropped from the sums without a failed scrape.
    let last = *pids.iter().rfind(|&&p| p != server.pid()).expect("a forked worker");
    unsafe { libc::kill(last as libc::pid_t, libc::SIGKILL) };
    let s = wait_for(Duration::from_secs(10), "the dead worker left the sums", || {
        let s = obs.scrape();
        (!s.contains_key(&format!("observer_process_pss_bytes{{pid=\"{last}\"}}"))).then_some(s)
    });
    assert!(metric(&s, "observer_target_pss_bytes") > 0.0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
