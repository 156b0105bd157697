//! Pinned maps are reused only when they are this build's, as this build
//! would create them; anything else under their names is refused or
//! re-created, never read with the wrong layout.

mod common;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

/// A pin directory on the host's bpffs, removed however the test ends.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool").arg("-j").args(args).output().expect("bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

/// A map pinned at `path`, made by hand (not by an observer).
fn pin_map(path: &Path, kind: &str, key: u32, value: u32, entries: u32, name: &str) {
    let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
    let p = path.display().to_string();
    let spec = ["map", "create", &p, "type", kind, "key", &key, "value", &value, "entries", &entries, "name", name];
    let out = Command::new("bpftool").args(spec).output().expect("bpftool map create");
    assert!(out.status.success(), "bpftool {spec:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn setup(tag: &str) -> (Proc, String, PinDir, PathBuf) {
    let child = Command::new("sleep").arg("60").spawn().expect("sleep");
    let target = Proc { child, name: "sleep" };
    let dir = PinDir(PathBuf::from(format!("/sys/fs/bpf/observer-test-{tag}-{}", std::process::id())));
    let ours = dir.0.join(format!("pid-{}", target.pid()));
    std::fs::create_dir_all(&ours).expect("pin directory on bpffs");
    let pid = target.pid().to_string();
    (target, pid, dir, ours)
}

#[test]
fn a_pinned_map_of_another_layout_is_recreated_with_a_warning() {
    require_root();
    let (_target, pid, dir, ours) = setup("layout");
    // Named like ours, sized and shaped like nothing this build makes.
    pin_map(&ours.join("SOCKS"), "lru_hash", 8, 8, 64, "SOCKS");
    let before = bpftool(&["map", "show", "pinned", &ours.join("SOCKS").display().to_string()]);

    let pin_dir = dir.0.display().to_string();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(OBSERVER)
        .args(["run", "--pid", &pid, "--pin-dir", &pin_dir, "--max-sockets", "4096", "--listen", &addr])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("run observer");
    let mut obs = Proc { child, name: "observer" };
    wait_for(Duration::from_secs(30), "observer /healthz", || {
        http_get(&addr, "/healthz").ok().filter(|(code, _)| *code == 200)
    });
    // While it runs the pin is this build's map.
    let now = bpftool(&["map", "show", "pinned", &ours.join("SOCKS").display().to_string()]);
    assert_ne!(now["id"], before["id"], "a new map, not the hand-made one");
    assert_eq!(now["max_entries"], 4096, "{now}");
    assert_ne!(now["bytes_value"], 8, "{now}");
    let (code, body) = http_get(&addr, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    assert!(body.contains("observer_target_up 1"));

    obs.stop();
    let mut stderr = String::new();
    if let Some(mut e) = obs.child.stderr.take() {
        e.read_to_string(&mut stderr).expect("stderr");
    }
    assert!(stderr.contains("was pinned with another layout"), "warns: {stderr}");
    assert!(stderr.contains("created afresh"), "{stderr}");
}

#[test]
fn a_foreign_map_under_our_name_is_refused_and_left_alone() {
    require_root();
    let (_target, pid, dir, ours) = setup("foreign");
    let pin = ours.join("COUNTERS");
    pin_map(&pin, "hash", 4, 4, 8, "notours");
    let before = bpftool(&["map", "show", "pinned", &pin.display().to_string()]);

    let pin_dir = dir.0.display().to_string();
    let out = Command::new(OBSERVER)
        .args(["run", "--pid", &pid, "--pin-dir", &pin_dir, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "off")
        .output()
        .expect("run observer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("{} is not a map this observer pinned", pin.display())), "{stderr}");
    assert!(stderr.contains("notours"), "says what is there: {stderr}");
    let after = bpftool(&["map", "show", "pinned", &pin.display().to_string()]);
    assert_eq!(after["id"], before["id"], "left alone");
}

#[test]
fn pruning_removes_only_our_maps_of_dead_targets() {
    require_root();
    let (_target, pid, dir, _ours) = setup("prune");
    // A dead target's directory: our map, and a file that is not ours.
    let dead = dir.0.join("pid-4194305");
    std::fs::create_dir_all(&dead).expect("dead target dir");
    pin_map(&dead.join("SOCKS"), "lru_hash", 8, 8, 64, "SOCKS");
    pin_map(&dead.join("OTHER"), "hash", 4, 4, 8, "OTHER");
    // And one whose directory holds only our map: removed with it.
    let gone = dir.0.join("pid-4194306");
    std::fs::create_dir_all(&gone).expect("dead target dir");
    pin_map(&gone.join("COUNTERS"), "hash", 4, 4, 8, "COUNTERS");

    let pin_dir = dir.0.display().to_string();
    let _obs = start_observer(&["--pid", &pid, "--pin-dir", &pin_dir]);
    assert!(!dead.join("SOCKS").exists(), "our map of a dead target is pruned");
    assert!(dead.join("OTHER").exists(), "what is not ours stays");
    assert!(!gone.exists(), "an emptied directory goes");
}

#[test]
fn a_pinned_map_of_this_build_is_reused_across_a_sigkill() {
    require_root();
    let (_target, pid, dir, ours) = setup("reuse");
    let pin_dir = dir.0.display().to_string();
    let start = || {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(OBSERVER)
            .args(["run", "--pid", &pid, "--pin-dir", &pin_dir, "--max-sockets", "2048", "--listen", &addr])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("run observer");
        let obs = Proc { child, name: "observer" };
        wait_for(Duration::from_secs(30), "observer /healthz", || {
            http_get(&addr, "/healthz").ok().filter(|(code, _)| *code == 200)
        });
        obs
    };
    let ids = || {
        ["SOCKS", "COUNTERS"]
            .map(|m| bpftool(&["map", "show", "pinned", &ours.join(m).display().to_string()])["id"].clone())
    };
    let mut first = start();
    let before = ids();
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    first.stop();
    let mut second = start();
    assert_eq!(ids(), before, "the same maps, continued");
    second.stop();
    let mut stderr = String::new();
    if let Some(mut e) = second.child.stderr.take() {
        e.read_to_string(&mut stderr).expect("stderr");
    }
    assert!(!stderr.contains("another layout"), "{stderr}");
    assert!(!ours.exists(), "SIGTERM unpins");
}
