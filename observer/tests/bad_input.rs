//! Bad invocations get one clear line on stderr and a non-zero exit, before
//! anything is attached to the kernel.

mod common;

use std::{net::TcpListener, process::Command};

use common::{OBSERVER, Proc, require_root};

/// (exit code, stderr) of `observer args...`.
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(OBSERVER).args(args).env("RUST_LOG", "off").output().expect("run observer");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_line_error(args: &[&str], code: i32, needle: &str) {
    let (got, stderr) = run(args);
    assert_eq!(got, code, "exit code of {args:?}; stderr: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("error"), "{args:?}: first line should say error: {stderr}");
}

fn sleeper() -> Proc {
    let child = Command::new("sleep").arg("60").spawn().expect("start sleep");
    Proc { child, name: "sleep" }
}

#[test]
fn no_such_pid() {
    require_root();
    // PIDs above pid_max never exist.
    assert_one_line_error(&["run", "--pid", "2147483647"], 1, "no such process: 2147483647");
}

#[test]
fn kernel_thread_is_refused() {
    require_root();
    assert_one_line_error(&["run", "--pid", "2"], 1, "kernel thread");
}

#[test]
fn malformed_values_are_refused_by_the_parser() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--pid", "abc"], "is not a PID"),
        (&["run", "--pid", "-3"], "--pid"),
        (&["run", "--pid", "1", "--listen", "nonsense"], "is not an address"),
        (&["run", "--pid", "1", "--listen", "127.0.0.1:99999"], "is not an address"),
        (&["run", "--pid", "1", "--dead-after", "-5"], "non-negative"),
        (&["run", "--pid", "1", "--dead-after", "5 parsecs"], "is not a duration"),
        (&["run", "--pid", "1", "--close-wait-after", "1000000"], "longer than a day"),
        (&["run", "--pid", "1", "--interval", "0"], "too short"),
        (&["run", "--pid", "1", "--probe-method", "send=uprobe"], "unknown method"),
        (&["run"], "--pid"),
        (&["run", "--pid", "1", "--comm", "node"], "cannot be used with"),
    ];
    for (args, needle) in cases {
        assert_one_line_error(args, 2, needle);
    }
}

#[test]
fn port_in_use() {
    require_root();
    let target = sleeper();
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let pid = target.pid().to_string();
    assert_one_line_error(&["run", "--pid", &pid, "--listen", &addr], 1, &format!("cannot listen on {addr}"));
}

#[test]
fn missing_btf_is_fatal_only_with_fallback_none() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    let args = ["run", "--pid", &pid, "--listen", "127.0.0.1:0", "--fallback", "none", "--btf", "/nonexistent/vmlinux"];
    assert_one_line_error(&args, 1, "cannot read kernel BTF from /nonexistent/vmlinux");
    // Present but not BTF: a directory, and a file of something else.
    for bad in ["/proc", "/etc/hostname"] {
        let args = ["run", "--pid", &pid, "--listen", "127.0.0.1:0", "--fallback", "none", "--btf", bad];
        assert_one_line_error(&args, 1, &format!("cannot read kernel BTF from {bad}"));
    }
}

/// `observer run` on a sleeper with `--btf btf`: its first /metrics, and
/// everything it wrote to stderr until stopped.
fn run_with_btf(btf: &std::path::Path) -> (String, String) {
    let target = sleeper();
    let pid = target.pid().to_string();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let child = Command::new(common::OBSERVER)
        .args(["run", "--pid", &pid, "--listen", &addr, "--no-pin", "--btf"])
        .arg(btf)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start observer");
    let mut obs = Proc { child, name: "observer" };
    let body = common::wait_for(std::time::Duration::from_secs(20), "/metrics", || {
        common::http_get(&addr, "/metrics").ok().filter(|(code, _)| *code == 200).map(|(_, b)| b)
    });
    obs.stop();
    let mut err = String::new();
    use std::io::Read;
    obs.child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    (body, err)
}

/// Without usable BTF the programs cannot be relocated: the observer says so
/// and polls sock_diag, which needs none, instead of giving up.
#[test]
fn missing_btf_degrades_to_sock_diag_with_a_warning() {
    require_root();
    let (body, err) = run_with_btf(std::path::Path::new("/nonexistent/vmlinux"));
    assert!(body.contains("observer_probe_info{hook=\"sockets\",method=\"sock_diag\"} 1"), "{body}");
    assert!(body.contains("observer_target_up 1"), "{body}");
    assert!(!body.contains("observer_retransmits_total"), "event counters absent, not zero");
    assert!(err.contains("cannot read kernel BTF from /nonexistent/vmlinux") && err.contains("sock_diag"), "{err}");
}

#[test]
fn missing_privileges() {
    require_root();
    // Target and observer both run as nobody, so /proc is readable and only
    // the BPF load lacks privilege.
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"])
        .spawn()
        .expect("start sleep as nobody");
    let target = Proc { child, name: "sleep" };
    // Until setpriv has switched user and exec'd, the process is root's.
    common::wait_for(std::time::Duration::from_secs(5), "target running as nobody", || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", target.pid())).ok()?;
        (status.contains("Name:\tsleep") && status.contains("Uid:\t65534")).then_some(())
    });
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(OBSERVER)
        // Without the sock_diag fallback (tests/sock_diag.rs covers it), the
        // refusal must be one clear line.
        .args(["run", "--pid", &target.pid().to_string(), "--listen", "127.0.0.1:0", "--fallback", "none"])
        .env("RUST_LOG", "off")
        .output()
        .expect("run observer as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("missing privileges"), "stderr: {stderr}");
    assert!(stderr.contains("CAP_BPF"), "says which capability: {stderr}");
}

#[test]
fn forced_unavailable_method_is_explained() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    // This kernel has no kprobes; a kernel that has them would accept this,
    // so only assert the failure where the capability is absent.
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("kprobes available here: nothing to refuse");
        return;
    }
    let args = ["run", "--pid", &pid, "--listen", "127.0.0.1:0", "--probe-method", "send=kprobe"];
    assert_one_line_error(&args, 1, "no attach method works for required hook `send`: kprobe: kernel lacks kprobes");
}

#[test]
fn pid_from_another_pid_namespace() {
    require_root();
    // An observer in a container (its own PID namespace) given a host PID
    // sees no such process there, and says so rather than watching whatever
    // holds that number in its own namespace.
    let target = sleeper();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(OBSERVER)
        .args(["run", "--pid", &target.pid().to_string(), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "off")
        .output()
        .expect("run observer in a new PID namespace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(&format!("no such process: {}", target.pid())), "stderr: {stderr}");
}

/// A scratch directory removed (after unmounting whatever the test put on
/// it) when the test ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mounted_at(path: &std::path::Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let p = path.display().to_string();
    mounts.lines().filter(|l| l.split(' ').nth(4) == Some(p.as_str())).map(str::to_string).collect()
}

#[test]
fn pin_dir_with_contents_is_never_mounted_over() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    let dir = Scratch(std::env::temp_dir().join(format!("obs-pins-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("scratch dir");
    let keep = dir.0.join("keep.txt");
    std::fs::write(&keep, "not the observer's").expect("a file");
    let d = dir.0.display().to_string();

    // A plain directory with a file in it, as --pin-dir and as its parent.
    for pin_dir in [d.clone(), format!("{d}/observer")] {
        let args = ["run", "--pid", &pid, "--listen", "127.0.0.1:0", "--pin-dir", &pin_dir];
        assert_one_line_error(&args, 1, &format!("{d} is not a bpf filesystem and is not empty"));
        let (_, stderr) = run(&args);
        assert!(stderr.contains("--no-pin") && stderr.contains("mount -t bpf"), "says what to do: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(mounted_at(&dir.0).is_empty(), "nothing mounted on {d}");
        assert!(keep.exists() && !dir.0.join("observer").exists(), "nothing created or removed");
    }

    // The same on a tmpfs with a file on it.
    let status =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "obs-test", &d]).status().expect("mount tmpfs");
    assert!(status.success());
    std::fs::write(&keep, "on tmpfs").expect("a file on tmpfs");
    assert_one_line_error(&["run", "--pid", &pid, "--listen", "127.0.0.1:0", "--pin-dir", &d], 1, "is not empty");
    let mounts = mounted_at(&dir.0);
    assert_eq!(mounts.len(), 1, "only the tmpfs: {mounts:?}");
    assert!(mounts[0].contains(" - tmpfs "), "{mounts:?}");
    assert!(keep.exists());
}

/// A kernel without an optional field (here `icsk_probes_tstamp`, new in
/// 5.12: this kernel's BTF with that one name changed, every layout intact)
/// runs with the feature off and a warning, instead of aborting.
#[test]
fn a_missing_optional_field_degrades_with_a_warning() {
    require_root();
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let (from, to) = (b"icsk_probes_tstamp\0", b"icsk_probes_tstamX\0");
    let at = btf.windows(from.len()).position(|w| w == from).expect("this kernel has the field");
    let mut patched = btf.clone();
    patched[at..at + to.len()].copy_from_slice(to);
    assert!(patched.windows(from.len()).all(|w| w != from), "the name occurs once");
    let path = std::env::temp_dir().join(format!("observer-btf-{}", std::process::id()));
    std::fs::write(&path, &patched).expect("write patched BTF");
    let (body, err) = run_with_btf(&path);
    let _ = std::fs::remove_file(&path);
    // Still the eBPF programs, not the sock_diag fallback.
    assert!(body.contains("observer_probe_info{hook=\"sockets\",method=\"iter\"} 1"), "{body}");
    assert!(body.contains("observer_retransmits_total"), "event counters present");
    assert!(err.contains("icsk_probes_tstamp"), "a warning names the missing field: {err}");
}
