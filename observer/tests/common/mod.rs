//! Shared pieces of the integration tests: starting the real observer and the
//! demo target, scraping /metrics, and reading the kernel's own view with `ss`.
//!
//! Every test loads the real eBPF programs into the running kernel and drives
//! real TCP; they need root (CI runs as root) and run one at a time.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdout, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const OBSERVER: &str = env!("CARGO_BIN_EXE_observer");
pub const DEMO: &str = env!("CARGO_BIN_EXE_observer-demo");

pub fn require_root() {
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "integration tests load eBPF programs and create namespaces: run them as root");
}

/// Whether this kernel lets tracing programs use socket-local storage
/// (Linux 5.11+), read from uname: there the observer must sweep the marked
/// sockets between full walks, and nowhere else.
pub fn marked_sweeps_expected() -> bool {
    kernel_at_least(5, 11)
}

/// Whether the running kernel's release is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Whether settled non-blocking sockets go unread between sends here: marked
/// sweeps, and a kernel (6.5+) where no `tcp_sendpage` queues bytes past the
/// send probe.
pub fn unread_settled_expected() -> bool {
    kernel_at_least(6, 5)
}

/// Checks what the marked sweeps of a window read of settled sockets: a
/// non-blocking server's go unread where the kernel allows it; nothing is
/// ever unread elsewhere, nor for a blocking server's sockets.
pub fn assert_settled_reads(first: &Scrape, last: &Scrape, nonblocking: bool) {
    let series = "observer_sweep_settled_sockets_total{read=\"none\"}";
    let unread = |s: &Scrape| s.get(series).copied().unwrap_or(0.0);
    let (a, b) = (unread(first), unread(last));
    if nonblocking && unread_settled_expected() {
        assert!(b > a, "no settled socket went unread ({a} -> {b}) with a non-blocking server on a 6.5+ kernel");
    } else {
        // A blocking server's own sockets are read; the lab's clients are
        // in other processes, not watched.
        assert_eq!(b, a, "settled sockets went unread where their sends may block or pass the send probe");
    }
}

/// Checks that the sweeps of a window took the path this kernel allows:
/// some marked-socket sweeps where marks exist, none elsewhere.
pub fn assert_sweep_path(first: &Scrape, last: &Scrape) {
    let (a, b) = (metric(first, "observer_marked_sweeps_total"), metric(last, "observer_marked_sweeps_total"));
    if marked_sweeps_expected() {
        assert!(b > a, "no marked-socket sweep among the checked ones ({a} -> {b}) on a kernel that allows them");
    } else {
        assert_eq!(a + b, 0.0, "marked-socket sweeps on a kernel without socket storage for tracing programs");
    }
}

/// A child process ended by PID when the test ends, pass or fail.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the process with SIGTERM (then SIGKILL after 10 s) and waits.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 100 ms until it returns Some, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Observer {
    pub proc: Proc,
    pub addr: String,
}

/// Starts `observer run` with `args` (target included) on a fresh port and
/// waits until /healthz answers.
pub fn start_observer(args: &[&str]) -> Observer {
    start_observer_via(&[], args)
}

/// Like [`start_observer`], run through `wrapper` (e.g. setpriv and its
/// options, which exec the observer in place, keeping its PID).
pub fn start_observer_via(wrapper: &[&str], args: &[&str]) -> Observer {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(OBSERVER);
            c
        }
        None => Command::new(OBSERVER),
    };
    let child = cmd
        .arg("run")
        .args(args)
        .args(["--listen", &addr])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start observer");
    let mut obs = Observer { proc: Proc { child, name: "observer" }, addr };
    wait_for(Duration::from_secs(30), "observer /healthz", || {
        if let Ok(Some(status)) = obs.proc.child.try_wait() {
            panic!("observer exited early: {status}");
        }
        http_get(&obs.addr, "/healthz").ok().filter(|(code, _)| *code == 200)
    });
    let _ = &mut obs;
    obs
}

/// Minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Series -> value from an OpenMetrics text body.
pub type Scrape = BTreeMap<String, f64>;

pub fn parse_metrics(body: &str) -> Scrape {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

impl Observer {
    pub fn scrape(&self) -> Scrape {
        let (code, body) = http_get(&self.addr, "/metrics").expect("scrape /metrics");
        assert_eq!(code, 200, "GET /metrics: {body}");
        parse_metrics(&body)
    }
}

pub fn metric(s: &Scrape, series: &str) -> f64 {
    *s.get(series).unwrap_or_else(|| panic!("no series {series} in scrape"))
}

/// The demo lab: a server process plus clients, in namespaces it made.
pub struct Lab {
    pub proc: Proc,
    pub server_pid: u32,
    pub server_netns: Option<String>,
    pub port: u16,
    /// role -> the address its clients connect from (netns mode).
    pub peers: Vec<(String, String)>,
    _stdout: BufReader<ChildStdout>,
}

impl Lab {
    /// The role whose clients connect from `peer` (`ip:port`).
    pub fn role_of(&self, peer: &str) -> Option<&str> {
        let ip = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
        self.peers.iter().find(|(_, a)| a == ip).map(|(r, _)| r.as_str())
    }
}

pub fn start_lab(args: &[&str]) -> Lab {
    let name = format!("ot{}", std::process::id() % 10000);
    let mut child = Command::new(DEMO)
        .arg("lab")
        .args(["--name", &name])
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start observer-demo lab");
    let mut stdout = BufReader::new(child.stdout.take().expect("lab stdout"));
    let proc = Proc { child, name: "lab" };
    let mut line = String::new();
    let start = Instant::now();
    let ready = loop {
        line.clear();
        let n = stdout.read_line(&mut line).expect("read lab output");
        assert!(n > 0, "lab exited before READY");
        if line.starts_with("READY ") {
            break line.trim().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "lab not ready in time");
    };
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("READY line without {k}: {ready}"))
    };
    let netns = field("server_netns");
    Lab {
        proc,
        server_pid: field("server_pid").parse().expect("server pid"),
        server_netns: (netns != "-").then_some(netns),
        port: field("port").parse().expect("port"),
        peers: ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("peers="))
            .map(|list| {
                list.split(',').filter_map(|p| p.split_once('@')).map(|(r, a)| (r.to_string(), a.to_string())).collect()
            })
            .unwrap_or_default(),
        _stdout: stdout,
    }
}

/// One socket as `ss` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsSocket {
    pub state: String,
    pub send_q: u64,
    pub notsent: u64,
}

/// Non-listening TCP sockets with local port `port`, from `ss -tin` in
/// `netns` (or here): the kernel's own sock_diag view.
pub fn ss_sockets(netns: Option<&str>, port: u16) -> Vec<SsSocket> {
    let filter = format!("( sport = :{port} )");
    let out: Output = match netns {
        Some(ns) => Command::new("ip").args(["netns", "exec", ns, "ss", "-tinH", "state", "all", &filter]).output(),
        None => Command::new("ss").args(["-tinH", "state", "all", &filter]).output(),
    }
    .expect("run ss");
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    parse_ss(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `ss -tinH` output: a line per socket, its `-i` details indented below.
pub fn parse_ss(text: &str) -> Vec<SsSocket> {
    let mut out: Vec<SsSocket> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = out.last_mut() {
                for tok in line.split_whitespace() {
                    if let Some(n) = tok.strip_prefix("notsent:") {
                        last.notsent = n.parse().unwrap_or(0);
                    }
                }
            }
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 3 || cols[0] == "LISTEN" || cols[0] == "TIME-WAIT" {
            // Keep a placeholder so indented detail lines do not attach to
            // the previous socket.
            out.push(SsSocket { state: "skip".into(), send_q: 0, notsent: 0 });
            continue;
        }
        out.push(SsSocket { state: cols[0].to_string(), send_q: cols[2].parse().unwrap_or(0), notsent: 0 });
    }
    out.retain(|s| s.state != "skip");
    out
}

/// The observer's (send queue, unsent, unacked) bytes over all target sockets.
pub fn byte_gauges(m: &Scrape) -> (u64, u64, u64) {
    (
        metric(m, "observer_send_queue_bytes") as u64,
        metric(m, "observer_unsent_bytes") as u64,
        metric(m, "observer_unacked_bytes") as u64,
    )
}

/// The same three as `ss` shows them, summed over `socks`.
pub fn ss_bytes(socks: &[SsSocket]) -> (u64, u64, u64) {
    let send_q: u64 = socks.iter().map(|s| s.send_q).sum();
    let notsent: u64 = socks.iter().map(|s| s.notsent).sum();
    (send_q, notsent, send_q - notsent)
}

pub fn count_state(socks: &[SsSocket], state: &str) -> usize {
    socks.iter().filter(|s| s.state == state).count()
}

/// Waits until a sweep ran after `ss` was read twice with the same result,
/// then checks the observer's byte gauges and state counts against it.
pub fn assert_agrees_with_ss(obs: &Observer, netns: Option<&str>, port: u16) {
    const TRIES: usize = 40;
    // Kept apart, so a failure says whether the observer ever disagreed
    // with a still kernel, or the kernel never held still.
    let (mut last, mut moved) = (String::from("none"), 0);
    for _ in 0..TRIES {
        let before = ss_sockets(netns, port);
        let sweeps = metric(&obs.scrape(), "observer_sweeps_total");
        let m = wait_for(Duration::from_secs(5), "a fresh sweep", || {
            let s = obs.scrape();
            (metric(&s, "observer_sweeps_total") >= sweeps + 2.0).then_some(s)
        });
        let after = ss_sockets(netns, port);
        if before != after {
            moved += 1;
            continue;
        }
        let (got, want) = (byte_gauges(&m), ss_bytes(&after));
        let states = [("established", "ESTAB"), ("close_wait", "CLOSE-WAIT"), ("fin_wait1", "FIN-WAIT-1")];
        let state_mismatch = states.iter().find(|(ours, theirs)| {
            metric(&m, &format!("observer_tcp_sockets{{state=\"{ours}\"}}")) as usize != count_state(&after, theirs)
        });
        if got == want && state_mismatch.is_none() {
            return;
        }
        last = format!(
            "observer (send_q, unsent, unacked) = {got:?}, ss = {want:?}, state mismatch {state_mismatch:?}; ss: {after:?}"
        );
    }
    panic!(
        "observer never agreed with ss in {TRIES} tries ({moved} saw the kernel move meanwhile); last disagreement: {last}"
    );
}

/// Starts `observer-demo server` (or a copy of it at `exe`, for a comm of its
/// own) on a free loopback port; returns it and its address.
pub fn start_demo_server(exe: &std::path::Path, burst: &str) -> (Proc, String) {
    let mut child = Command::new(exe)
        .args(["server", "--listen", "127.0.0.1:0", "--burst", burst])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start demo server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("LISTENING line");
    let addr = line.split_whitespace().nth(1).expect("address in LISTENING line").to_string();
    (Proc { child, name: "server" }, addr)
}

/// `ip:port` with IPv4-mapped IPv6 addresses as IPv4, as `/sockets` prints them.
pub fn canonical(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(std::net::SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", a.port()),
            None => format!("[{}]:{}", a.ip(), a.port()),
        },
        Ok(a) => a.to_string(),
        Err(_) => addr.to_string(),
    }
}

/// One socket of `ss -tinpH state all`: the kernel's view, by 4-tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsConn {
    pub state: String,
    pub send_q: u64,
    pub local: String,
    pub peer: String,
    /// PIDs holding it (`users:((..,pid=N,..))`); empty for an orphan.
    pub pids: Vec<u32>,
}

/// Every TCP socket in `netns` (or here), TIME-WAIT and listeners included.
pub fn ss_conns(netns: Option<&str>) -> Vec<SsConn> {
    let args = ["-tinpH", "state", "all"];
    let out: Output = match netns {
        Some(ns) => Command::new("ip").args(["netns", "exec", ns, "ss"]).args(args).output(),
        None => Command::new("ss").args(args).output(),
    }
    .expect("run ss");
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 5 {
                return None;
            }
            let pids = l
                .split("pid=")
                .skip(1)
                .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .collect();
            Some(SsConn {
                state: cols[0].to_string(),
                send_q: cols[2].parse().unwrap_or(0),
                local: canonical(cols[3]),
                peer: canonical(cols[4]),
                pids,
            })
        })
        .collect()
}

/// One line of `/sockets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub class: String,
    pub state: String,
    pub pid: u32,
    pub local: String,
    pub peer: String,
    pub unsent: u64,
    pub unacked: u64,
}

/// `/sockets`: (the sweep it describes, its lines).
pub fn listing(obs: &Observer) -> (u64, Vec<Listed>) {
    let (code, body) = http_get(&obs.addr, "/sockets").expect("GET /sockets");
    assert_eq!(code, 200, "GET /sockets: {body}");
    let sweep = body
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# sweep "))
        .and_then(|l| l.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sweep number in /sockets: {body}"));
    let rows = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 8, "malformed /sockets line {l:?}");
            Listed {
                class: c[0].into(),
                state: c[1].into(),
                pid: c[2].parse().expect("pid"),
                local: c[3].into(),
                peer: c[4].into(),
                unsent: c[5].parse().expect("unsent"),
                unacked: c[6].parse().expect("unacked"),
            }
        })
        .collect();
    (sweep, rows)
}

/// What the observer said after one sweep, /metrics and /sockets alike, and
/// what `ss` showed right after reading them.
pub struct Look {
    pub sweep: u64,
    pub metrics: Scrape,
    pub sockets: Vec<Listed>,
    /// `ss` before the sweep began and after it was read: a socket in the
    /// same state in both was in that state during the sweep.
    pub ss_before: Vec<SsConn>,
    pub ss: Vec<SsConn>,
    /// When the look was complete (the sweep ran before it).
    pub at: Instant,
}

impl Look {
    /// The observer's class of the socket `local`→`peer`: listed, or healthy.
    pub fn class_of(&self, local: &str, peer: &str) -> &str {
        self.sockets.iter().find(|l| l.local == local && l.peer == peer).map_or("healthy", |l| l.class.as_str())
    }

    /// Sockets `ss` showed in the same state before and after the sweep.
    pub fn stable(&self) -> impl Iterator<Item = &SsConn> {
        self.ss
            .iter()
            .filter(|s| self.ss_before.iter().any(|b| b.local == s.local && b.peer == s.peer && b.state == s.state))
    }

    pub fn count(&self, class: &str) -> usize {
        self.sockets.iter().filter(|l| l.class == class).count()
    }

    /// The gauges of the same sweep say what the listing says.
    pub fn assert_consistent(&self) {
        for reason in ["dead_peer", "close_wait", "orphaned"] {
            let gauge = metric(&self.metrics, &format!("observer_zombie_sockets{{reason=\"{reason}\"}}"));
            assert_eq!(gauge as usize, self.count(reason), "sweep {}: zombie gauge {reason} vs /sockets", self.sweep);
        }
        for reason in ["zero_window", "connect"] {
            let gauge = metric(&self.metrics, &format!("observer_stalled_sockets{{reason=\"{reason}\"}}"));
            assert_eq!(gauge as usize, self.count(reason), "sweep {}: stalled gauge {reason} vs /sockets", self.sweep);
        }
        // Every listed socket is one the kernel has, in the same state
        // where that state held all through the sweep.
        for l in &self.sockets {
            let known = |v: &[SsConn]| v.iter().any(|s| s.local == l.local && s.peer == l.peer);
            assert!(
                known(&self.ss) || known(&self.ss_before),
                "sweep {}: listed {l:?} is not in ss: {:?}",
                self.sweep,
                self.ss
            );
            if let Some(s) = self.stable().find(|s| s.local == l.local && s.peer == l.peer) {
                assert_eq!(ss_state(&l.state), s.state, "sweep {}: state of {l:?}", self.sweep);
            }
        }
    }
}

/// `ss`'s spelling of one of the observer's state labels.
pub fn ss_state(ours: &str) -> String {
    match ours {
        "established" => "ESTAB".into(),
        "syn_sent" => "SYN-SENT".into(),
        "syn_recv" => "SYN-RECV".into(),
        other => other.to_uppercase().replace('_', "-").replace("WAIT1", "WAIT-1").replace("WAIT2", "WAIT-2"),
    }
}

fn sweeps(s: &Scrape) -> u64 {
    metric(s, "observer_sweeps_total") as u64
}

/// The next sweep after `after`, seen whole: a /metrics scrape and a
/// /sockets listing of that same sweep, then `ss` in `netns`. `ss_before`
/// is `ss` read before that sweep began (the last look's), or read now.
pub fn next_look(obs: &Observer, after: u64, netns: Option<&str>, ss_before: Option<Vec<SsConn>>) -> Look {
    let ss_before = ss_before.unwrap_or_else(|| ss_conns(netns));
    wait_for(Duration::from_secs(10), "a fresh sweep seen whole", || {
        let before = obs.scrape();
        if sweeps(&before) <= after {
            std::thread::sleep(Duration::from_millis(30));
            return None;
        }
        let (sweep, sockets) = listing(obs);
        let metrics = obs.scrape();
        (sweeps(&before) == sweep && sweeps(&metrics) == sweep).then(|| Look {
            sweep,
            metrics,
            sockets,
            ss_before: ss_before.clone(),
            ss: ss_conns(netns),
            at: Instant::now(),
        })
    })
}

/// Calls `check` on every sweep for at least `n` sweeps in a row (one may be
/// missed only if a look takes longer than a sweep interval; the count is of
/// sweeps actually checked).
pub fn every_sweep(obs: &Observer, n: usize, netns: Option<&str>, mut check: impl FnMut(&Look)) -> Vec<u64> {
    let mut last = sweeps(&obs.scrape());
    let mut checked = Vec::new();
    let mut ss = None;
    while checked.len() < n {
        let look = next_look(obs, last, netns, ss.take());
        look.assert_consistent();
        check(&look);
        last = look.sweep;
        checked.push(look.sweep);
        ss = Some(look.ss);
    }
    checked
}

/// A counter of the kernel's TCP MIB in `netns`, by `nstat` (absolute, the
/// history file left alone).
pub fn nstat(netns: Option<&str>, counter: &str) -> u64 {
    let args = ["-asz", counter];
    let out = match netns {
        Some(ns) => Command::new("ip").args(["netns", "exec", ns, "nstat"]).args(args).output(),
        None => Command::new("nstat").args(args).output(),
    }
    .expect("run nstat");
    assert!(out.status.success(), "nstat failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == counter).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or(0)
}
