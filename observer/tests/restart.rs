//! A restarted observer, with pinned state or with `--no-pin --state-file`
//! (how the shipped unit and sidecar run), reports every class that holds in
//! the kernel on its first full sweep and every sweep after.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::*;

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];

/// Class per (local, peer) of the sockets `ss` shows stable around a look.
fn classes(look: &Look) -> BTreeMap<(String, String), String> {
    look.stable()
        .filter(|s| s.state != "LISTEN" && s.state != "TIME-WAIT")
        .map(|s| ((s.local.clone(), s.peer.clone()), look.class_of(&s.local, &s.peer).to_string()))
        .collect()
}

fn restart(pins: bool) {
    require_root();
    let lab = start_lab(&[
        "--healthy",
        "1",
        "--slow",
        "1",
        "--vanish",
        "1",
        "--halfclose",
        "1",
        "--orphan",
        "1",
        "--stallgone",
        "1",
        "--stallgone-after-ms",
        "3000",
        "--blackhole",
        "1",
        "--orphan-close-after-ms",
        "4000",
        "--duration-secs",
        "150",
    ]);
    let ns = lab.server_netns.clone().expect("server namespace");
    let pid = lab.server_pid.to_string();
    let pin_dir = format!("/sys/fs/bpf/observer-restart-{}", std::process::id());
    struct RemoveDir(String);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(pin_dir.clone());
    let state_dir = std::env::temp_dir().join(format!("observer-state-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let _cleanup_state = RemoveDir(state_dir.display().to_string());
    let state_file = state_dir.join("state").display().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    if pins {
        args.extend(["--pin-dir", pin_dir.as_str()]);
    } else {
        args.extend(["--no-pin", "--state-file", state_file.as_str()]);
    }
    args.extend_from_slice(FAST);

    let mut first = start_observer(&args);
    // Settled: every misbehaving peer has its class (and the blackholed
    // connect has retried for a while).
    let want = ["dead_peer", "dead_peer", "close_wait", "orphaned", "zero_window", "connect"];
    let before = wait_for(Duration::from_secs(60), "every class seen", || {
        let look = next_look(&first, 0, Some(&ns), None);
        let mut got: Vec<String> = look.sockets.iter().map(|l| l.class.clone()).collect();
        got.sort();
        let mut w: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        w.sort();
        (got == w).then_some(look)
    });
    let before = classes(&before);
    unsafe { libc::kill(first.proc.pid() as libc::pid_t, libc::SIGKILL) };
    first.proc.stop();
    if pins {
        assert!(Path::new(&pin_dir).join(format!("pid-{pid}")).join("SOCKS").exists(), "state pinned");
    }

    // start_observer returns once the first sweep is done: that sweep and
    // every one after it must say what the kernel still says.
    let ss_at_start = ss_conns(Some(&ns));
    let second = start_observer(&args);
    let first_look = next_look(&second, 0, Some(&ns), Some(ss_at_start));
    assert_eq!(first_look.sweep, 1, "the look is of the first sweep");
    let mut looks = vec![first_look];
    let mut ss = Some(looks[0].ss.clone());
    let mut last = 1;
    while looks.len() < 11 {
        let look = next_look(&second, last, Some(&ns), ss.take());
        last = look.sweep;
        ss = Some(look.ss.clone());
        looks.push(look);
    }
    for look in &looks {
        look.assert_consistent();
        let now = classes(look);
        for (conn, class) in &now {
            if let Some(was) = before.get(conn) {
                assert_eq!(
                    class,
                    was,
                    "sweep {} after the restart ({}): {conn:?}",
                    look.sweep,
                    if pins { "pins" } else { "no pins" }
                );
            }
        }
        let kept = now.keys().filter(|c| before.contains_key(*c)).count();
        assert!(
            kept + 1 >= before.len(),
            "sweep {}: the sockets outlived the restart ({kept} of {})",
            look.sweep,
            before.len()
        );
    }
}

#[test]
fn restart_with_pins_keeps_every_class_from_the_first_sweep() {
    restart(true);
}

#[test]
fn restart_with_a_state_file_and_no_pins_keeps_every_class_from_the_first_sweep() {
    restart(false);
}
