//! `cleanup`: remove what crashed or killed lab runs left behind.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cli::CleanupArgs;
use crate::{loopnft, netns};

const GRACE: Duration = Duration::from_secs(3);

pub fn run(args: &CleanupArgs) -> Result<()> {
    netns::validate_prefix(&args.name)?;
    let mut removed = 0;
    let mut failed = 0;
    for ns in netns::list()?.into_iter().filter(|n| n.starts_with(&args.name)) {
        // A namespace with live processes would outlive `ip netns delete`.
        let result = stop_processes_in(&ns).and_then(|()| netns::delete(&ns));
        match result {
            Ok(()) => {
                eprintln!("cleanup: removed netns {ns}");
                removed += 1;
            }
            Err(e) => {
                eprintln!("cleanup: {ns}: {e:#}");
                failed += 1;
            }
        }
    }
    let stem = loopnft::table_prefix(&args.name);
    match loopnft::list() {
        Ok(tables) => {
            for table in tables.into_iter().filter(|t| t.starts_with(&stem)) {
                match loopnft::delete(&table) {
                    Ok(()) => {
                        eprintln!("cleanup: removed nft table inet {table}");
                        removed += 1;
                    }
                    Err(e) => {
                        eprintln!("cleanup: {e:#}");
                        failed += 1;
                    }
                }
            }
        }
        Err(e) => eprintln!("cleanup: skipping nft tables: {e:#}"),
    }
    eprintln!("cleanup: {removed} removed, {failed} failed");
    if failed > 0 {
        bail!("{failed} leftover(s) could not be removed");
    }
    Ok(())
}

/// SIGTERM everything inside `ns`, then SIGKILL what is still there after GRACE.
fn stop_processes_in(ns: &str) -> Result<()> {
    let me = std::process::id() as i32;
    let mut signal = libc::SIGTERM;
    let deadline = Instant::now() + GRACE;
    loop {
        let pids: Vec<i32> = netns::pids(ns)?.into_iter().filter(|&p| p != me && p > 1).collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if signal == libc::SIGKILL {
                bail!("processes {pids:?} survive SIGKILL");
            }
            signal = libc::SIGKILL;
        }
        for pid in pids {
            eprintln!(
                "cleanup: {ns}: sending {} to pid {pid}",
                if signal == libc::SIGKILL { "SIGKILL" } else { "SIGTERM" }
            );
            // SAFETY: plain kill(2); errors (already gone) are fine.
            unsafe { libc::kill(pid, signal) };
        }
        thread::sleep(Duration::from_millis(200));
        if signal == libc::SIGKILL && Instant::now() >= deadline + GRACE {
            bail!("processes in {ns} do not exit");
        }
    }
}
