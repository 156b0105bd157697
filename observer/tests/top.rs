//! `observer top` on a real terminal: run inside a detached tmux session
//! against the demo lab, read the screen tmux renders, quit with `q`.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;

/// A detached tmux session on a tmux server of its own (`-S`), so the test
/// neither sees nor touches anyone else's sessions. Killed by name on drop.
struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    fn start(name: &str, cols: u16, rows: u16, command: &str) -> Tmux {
        let socket = std::env::temp_dir().join(format!("{name}.tmux"));
        let t = Tmux { socket, session: name.to_string() };
        let out = t.run(&["new-session", "-d", "-s", name, "-x", &cols.to_string(), "-y", &rows.to_string(), command]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux (cargo xtask setup installs it)")
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", &self.session]).status.success()
    }

    /// The visible screen as text, or None once the session is gone.
    fn screen(&self) -> Option<String> {
        let out = self.run(&["capture-pane", "-p", "-t", &self.session]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// PID of the process the pane runs.
    fn pane_pid(&self) -> u32 {
        let out = self.run(&["display-message", "-p", "-t", &self.session, "#{pane_pid}"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("tmux pane_pid")
    }

    fn send_keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", &self.session, keys]);
        assert!(out.status.success(), "tmux send-keys: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-session", "-t", &self.session]);
        // The server exits with its last session but leaves its socket file.
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Files the shell inside tmux leaves behind: top's stderr and exit status.
struct Leftovers {
    stderr: PathBuf,
    status: PathBuf,
}

impl Leftovers {
    fn new(name: &str) -> Leftovers {
        let dir = std::env::temp_dir();
        let l = Leftovers { stderr: dir.join(format!("{name}.stderr")), status: dir.join(format!("{name}.status")) };
        l.remove();
        l
    }
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.stderr);
        let _ = std::fs::remove_file(&self.status);
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One line of top's socket table.
#[derive(Debug)]
struct ScreenRow {
    peer: String,
    state: String,
    unsent: u64,
    unacked: u64,
    backoff: u64,
    class: String,
}

/// The table under the `PEER ...` heading, up to the first blank line.
fn table_rows(screen: &str) -> Vec<ScreenRow> {
    screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PEER"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            let [peer, state, unsent, unacked, backoff, _no_ack, class] = c.as_slice() else { return None };
            Some(ScreenRow {
                peer: peer.to_string(),
                state: state.to_string(),
                unsent: unsent.parse().ok()?,
                unacked: unacked.parse().ok()?,
                backoff: backoff.parse().ok()?,
                class: class.to_string(),
            })
        })
        .collect()
}

/// (state, peer) of the server's connections, from `ss` in its namespace.
fn ss_peers(netns: Option<&str>, port: u16) -> Vec<(String, String)> {
    let filter = format!("( sport = :{port} )");
    let ss = ["ss", "-tnH", "state", "connected", filter.as_str()];
    let out = match netns {
        Some(ns) => Command::new("ip").args(["netns", "exec", ns]).args(ss).output(),
        None => Command::new(ss[0]).args(&ss[1..]).output(),
    }
    .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.len() >= 5).then(|| (c[0].to_string(), c[4].to_string()))
        })
        .collect()
}

#[test]
fn top_under_tmux_shows_the_zombies_and_quits_on_q() {
    require_root();
    let lab =
        start_lab(&["--healthy", "1", "--vanish", "1", "--halfclose", "1", "--slow", "1", "--duration-secs", "120"]);
    let name = format!("obstop{}q", std::process::id());
    let files = Leftovers::new(&name);
    let command = format!(
        "{OBSERVER} top --pid {} --interval 0.5 --dead-after 3 --close-wait-after 3 --stall-after 3 2>{}; echo $? >{}",
        lab.server_pid,
        files.stderr.display(),
        files.status.display()
    );
    let tmux = Tmux::start(&name, 160, 40, &command);

    let start = Instant::now();
    let mut last = String::new();
    let (screen, rows) = loop {
        assert!(tmux.alive(), "observer top ended early: {}\nlast screen:\n{last}", files.stderr());
        if let Some(s) = tmux.screen() {
            let rows = table_rows(&s);
            let has = |class: &str| rows.iter().any(|r| r.class == class);
            if has("dead_peer") && has("close_wait") {
                break (s, rows);
            }
            last = s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no dead_peer and close_wait rows in 30 s; screen:\n{last}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("captured screen:\n{screen}");

    // Header: the target, its memory, the zombies counted.
    assert!(screen.contains(&format!("pid {}", lab.server_pid)), "{screen}");
    assert!(screen.contains("memory   rss "), "{screen}");
    let zombies = screen.lines().find(|l| l.starts_with("zombies")).expect("zombies line");
    assert!(zombies.contains("dead_peer 1") && zombies.contains("close_wait 1"), "{zombies}");

    // Table: the lab's four clients, no listener, most queued bytes first.
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(rows.windows(2).all(|w| w[0].unsent + w[0].unacked >= w[1].unsent + w[1].unacked), "{rows:#?}");
    let dead = rows.iter().find(|r| r.class == "dead_peer").expect("dead_peer row");
    assert!(dead.unacked > 0 && dead.backoff > 0, "a dead peer has unacked data and backs off: {dead:?}");
    let close_wait = rows.iter().find(|r| r.class == "close_wait").expect("close_wait row");
    assert_eq!(close_wait.state, "close_wait");
    assert!(rows.iter().any(|r| r.class == "healthy"), "{rows:#?}");

    // The peers are the kernel's: `ss` in the server's namespace has them in those states.
    let ss = ss_peers(lab.server_netns.as_deref(), lab.port);
    assert!(ss.contains(&("CLOSE-WAIT".into(), close_wait.peer.clone())), "{close_wait:?} not in ss: {ss:?}");
    assert!(ss.contains(&("ESTAB".into(), dead.peer.clone())), "{dead:?} not in ss: {ss:?}");

    tmux.send_keys("q");
    let start = Instant::now();
    while tmux.alive() {
        assert!(start.elapsed() < Duration::from_secs(10), "observer top still running 10 s after q");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(&files.status).unwrap_or_default();
    assert_eq!(status.trim(), "0", "exit status after q; stderr: {}", files.stderr());
}

/// Still running (a zombie waiting for its parent counts as ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"))
}

/// SIGKILLs a process by PID on drop if it is still running: the test's
/// own `observer top`, should it survive its terminal.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if running(self.0) {
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Killing the pane (a closed ssh session, `tmux kill-session`) hangs up the
/// terminal: `top` must end, not linger with its programs in the kernel.
#[test]
fn top_ends_when_its_terminal_goes_away() {
    require_root();
    let lab = start_lab(&["--healthy", "1", "--duration-secs", "120"]);
    let name = format!("obstop{}h", std::process::id());
    let files = Leftovers::new(&name);
    // exec: the pane's process is top itself.
    let command = format!("exec {OBSERVER} top --pid {} --interval 0.5 2>{}", lab.server_pid, files.stderr.display());
    let tmux = Tmux::start(&name, 100, 30, &command);
    let top = KillOnDrop(tmux.pane_pid());
    wait_for(Duration::from_secs(30), "top's first screen", || {
        assert!(tmux.alive(), "observer top ended early: {}", files.stderr());
        tmux.screen().filter(|s| s.contains("1 of 1 sockets shown"))
    });
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", top.0)).unwrap_or_default();
    assert_eq!(comm.trim(), "observer", "the pane runs top itself");

    assert!(tmux.run(&["kill-session", "-t", &name]).status.success());
    let start = Instant::now();
    while running(top.0) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "observer top still running 5 s after its terminal went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
