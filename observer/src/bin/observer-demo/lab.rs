//! `lab`: the whole scenario, set up step by step; `Resources` undoes it.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::child::Managed;
use crate::cli::LabArgs;
use crate::resources::Resources;
use crate::role::Role;
use crate::topology::Topology;
use crate::{loopnft, netns, proto, signals};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-netns: the server gives up on vanished peers after minutes, not ~15.
const SERVER_TCP_RETRIES2: &str = "8";
const SLOW_TCP_RMEM: &str = "4096 4096 4096";

/// One started group of clients.
struct ClientGroup {
    role: Role,
    count: u32,
    pid: u32,
    ns: Option<String>,
    target: std::net::SocketAddr,
}

pub fn run(args: &LabArgs) -> Result<()> {
    signals::install().context("cannot install signal handlers")?;
    netns::validate_prefix(&args.name)?;
    let roles = planned_roles(args);
    if args.server_loopback && (args.stallgone > 0 || args.blackhole > 0) {
        bail!("--stallgone and --blackhole need namespaces: drop --server-loopback");
    }
    if args.netem.is_some() && (args.server_loopback || !roles.iter().any(|(r, _)| *r == Role::Healthy)) {
        bail!("--netem impairs the healthy clients' link: it needs namespaces and --healthy N");
    }
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let pid = std::process::id();
    let topo = Topology::new(&args.name, pid, args.server_loopback);

    let mut res = Resources::default();
    match &topo.server_ns {
        Some(_) => build_namespaces(&mut res, &topo, &roles, args.blackhole > 0, args.netem.as_deref())?,
        None => {
            let table = loopnft::table_name(&args.name, pid);
            loopnft::create(&table)?;
            res.loop_table = Some(table);
        }
    }
    let server_exe = match &args.server_comm {
        Some(name) => {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                bail!("--server-comm {name:?}: 1 to 15 characters, no '/' (the kernel keeps 15 of a process name)");
            }
            let dir = std::env::temp_dir().join(format!("{}-{pid}-exe", args.name));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            res.exe_dir = Some(dir.clone());
            let copy = dir.join(name);
            std::fs::copy(&exe, &copy).with_context(|| format!("cannot copy the executable to {}", copy.display()))?;
            copy
        }
        None => exe.clone(),
    };
    let (server_pid, port) = start_server(&mut res, &topo, &server_exe, args)?;
    if let Some(path) = &args.server_pid_file {
        std::fs::write(path, format!("{server_pid}\n")).with_context(|| format!("cannot write {}", path.display()))?;
        res.pid_file = Some(path.clone());
    }

    // Vanishing roles last, each cut off right after it connects, so the orphan
    // peers are gone before the server closes them.
    let mut groups = Vec::new();
    let ordered = roles.iter().filter(|(r, _)| !r.vanishes()).chain(roles.iter().filter(|(r, _)| r.vanishes()));
    for &(role, count) in ordered {
        let started = Instant::now();
        groups.push(start_clients(&mut res, &topo, &exe, role, count, port, args.idle_fin_after_ms)?);
        if role == Role::Orphan && started.elapsed() >= Duration::from_millis(args.stream.orphan_close_after_ms) {
            eprintln!(
                "lab: warning: orphan peers vanished only after {:?}; the server may have closed first",
                started.elapsed()
            );
        }
    }

    let total: u32 = roles.iter().map(|(_, n)| n).sum();
    let peers: Vec<(&str, std::net::IpAddr)> = match topo.server_ns {
        Some(_) => {
            let mut p: Vec<_> = roles.iter().map(|(r, _)| (r.name(), netns::link_addrs(*r).1.into())).collect();
            if args.blackhole > 0 {
                p.push(("blackhole", netns::BLACKHOLE_ADDRS.1.into()));
            }
            p
        }
        None => Vec::new(),
    };
    // Stallgone peers vanish once their window has long been zero.
    let later: Vec<(Instant, String)> = groups
        .iter()
        .filter(|g| g.role.vanishes_later())
        .filter_map(|g| g.ns.clone())
        .map(|ns| (Instant::now() + Duration::from_millis(args.stallgone_after_ms), ns))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proto::ready_line_with_peers(server_pid, topo.server_ns.as_deref(), port, total, &peers))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);
    summary(&topo, server_pid, port, &groups, args);

    let outcome = wait(&mut res, args.duration_secs.map(Duration::from_secs), later, args.allow_server_exit);
    eprintln!("lab: cleaning up");
    drop(res);
    eprintln!("lab: done");
    outcome
}

/// Role counts asked for; one client of each role if none was given.
fn planned_roles(args: &LabArgs) -> Vec<(Role, u32)> {
    let counts =
        [args.healthy, args.slow, args.vanish, args.halfclose, args.orphan, args.drain, args.stallgone, args.idleclose];
    let all_zero = counts.iter().all(|&n| n == 0);
    Role::ALL.into_iter().zip(counts).map(|(r, n)| (r, if all_zero { 1 } else { n })).filter(|&(_, n)| n > 0).collect()
}

fn build_namespaces(
    res: &mut Resources,
    topo: &Topology,
    roles: &[(Role, u32)],
    blackhole: bool,
    netem: Option<&str>,
) -> Result<()> {
    let Some(srv) = topo.server_ns.as_deref() else {
        return Ok(());
    };
    netns::add(srv)?;
    res.namespaces.push(srv.to_string());
    netns::lo_up(srv)?;
    netns::sysctl(srv, "net.ipv4.tcp_retries2", SERVER_TCP_RETRIES2)?;
    for &(role, _) in roles {
        let Some(ns) = topo.client_ns(role) else {
            continue;
        };
        netns::add(&ns)?;
        res.namespaces.push(ns.clone());
        netns::lo_up(&ns)?;
        netns::link(srv, &ns, role)?;
        if role.never_reads() {
            netns::sysctl(&ns, "net.ipv4.tcp_rmem", SLOW_TCP_RMEM)?;
        }
        if let (Some(args), Role::Healthy) = (netem, role) {
            // Both directions: data and ACKs alike are delayed and lost.
            netns::netem(srv, &netns::server_ifname(role), args)?;
            netns::netem(&ns, &netns::client_ifname(role), args)?;
        }
    }
    if blackhole {
        let ns = format!("{}-bh", topo.base);
        netns::add(&ns)?;
        res.namespaces.push(ns.clone());
        netns::link_named(srv, &ns, ("s-bh", "c-bh"), netns::BLACKHOLE_ADDRS)?;
        netns::drop_all(&ns)?;
    }
    Ok(())
}

fn start_server(res: &mut Resources, topo: &Topology, exe: &Path, args: &LabArgs) -> Result<(u32, u16)> {
    let mut cmd = Topology::command(topo.server_ns.as_deref(), exe);
    cmd.arg("server").args(["--listen", topo.listen_addr()]);
    cmd.args(["--burst", &args.stream.burst.to_string()]);
    cmd.args(["--message-bytes", &args.stream.message_bytes.to_string()]);
    cmd.args(["--interval-ms", &args.interval_ms.to_string()]);
    cmd.args(["--orphan-close-after-ms", &args.stream.orphan_close_after_ms.to_string()]);
    if args.stream.nonblocking {
        cmd.arg("--nonblocking");
    }
    if args.blackhole > 0 {
        cmd.args(["--connect-out", &format!("{}:9", netns::BLACKHOLE_ADDRS.1)]);
        cmd.args(["--connect-out-count", &args.blackhole.to_string()]);
    }
    let server = res.server.insert(Managed::spawn("server", cmd)?);
    let ((addr, pid), _) = server.wait_for("LISTENING line", STARTUP_TIMEOUT, proto::parse_listening)?;
    if pid != server.pid() {
        bail!("server reported pid {pid} but the started process is {}", server.pid());
    }
    Ok((pid, addr.port()))
}

fn start_clients(
    res: &mut Resources,
    topo: &Topology,
    exe: &Path,
    role: Role,
    count: u32,
    port: u16,
    fin_after_ms: u64,
) -> Result<ClientGroup> {
    let ns = topo.client_ns(role);
    let target = topo.server_addr(role, port);
    let mut cmd = Topology::command(ns.as_deref(), exe);
    cmd.arg("client").args(["--connect", &target.to_string(), "--role", role.name()]);
    cmd.args(["--count", &count.to_string()]);
    cmd.args(["--fin-after-ms", &fin_after_ms.to_string()]);
    let label = format!("{} client", role.name());
    res.clients.push(Managed::spawn(&label, cmd)?);
    let Some(client) = res.clients.last_mut() else { bail!("internal: client not recorded") };
    let (_, lines) = client.wait_for("CONNECTED line", STARTUP_TIMEOUT, proto::parse_connected)?;
    let pid = client.pid();
    if role.vanishes() {
        match (&ns, &res.loop_table) {
            (Some(ns), _) => netns::drop_all(ns)?,
            (None, Some(table)) => {
                let ports: Vec<u16> = lines.iter().filter_map(|l| proto::parse_local(l)).map(|a| a.port()).collect();
                loopnft::drop_ports(table, &ports)?;
            }
            (None, None) => bail!("internal: no way to make {label} vanish"),
        }
    }
    Ok(ClientGroup { role, count, pid, ns, target })
}

fn summary(topo: &Topology, server_pid: u32, port: u16, groups: &[ClientGroup], args: &LabArgs) {
    let where_ = topo.server_ns.as_deref().unwrap_or("the current namespace (127.0.0.1)");
    eprintln!("lab: server pid {server_pid} in {where_}, port {port}");
    for g in groups {
        let ns = g.ns.as_deref().unwrap_or("-");
        let note = match g.role {
            Role::Slow if g.ns.is_some() => "never reads, tcp_rmem capped",
            Role::Slow => "never reads, SO_RCVBUF 4096",
            Role::Vanish => "vanished (nft drops all its packets)",
            Role::Orphan => "vanished; server closes it -> orphan FIN_WAIT1",
            Role::Halfclose => "sent FIN; server keeps CLOSE_WAIT",
            Role::Healthy if args.netem.is_some() => "reads everything, over a netem link",
            Role::Healthy => "reads everything",
            Role::Drain => "reads 16 KiB/s; server closes it -> orphan draining to a live reader",
            Role::Stallgone => "never reads, vanishes later while its window is zero",
            Role::Idleclose => "idle, then sends FIN; server keeps CLOSE_WAIT",
        };
        eprintln!(
            "lab:   {:<9} x{:<3} pid {:<7} netns {ns:<22} -> {}  {note}",
            g.role.name(),
            g.count,
            g.pid,
            g.target
        );
    }
    match &topo.server_ns {
        Some(ns) => eprintln!("lab: inspect with: ip netns exec {ns} ss -tinm"),
        None => eprintln!("lab: inspect with: ss -tinm 'sport = :{port}'"),
    }
    match args.duration_secs {
        Some(s) => eprintln!("lab: running for {s} s (SIGINT/SIGTERM stops early)"),
        None => eprintln!("lab: running until SIGINT/SIGTERM"),
    }
}

/// Waits for the duration or a stop signal; fails if a child dies meanwhile.
fn wait(
    res: &mut Resources,
    duration: Option<Duration>,
    mut later: Vec<(Instant, String)>,
    allow_server_exit: bool,
) -> Result<()> {
    let deadline = duration.map(|d| Instant::now() + d);
    loop {
        for (_, ns) in later.iter().filter(|(at, _)| Instant::now() >= *at) {
            netns::drop_all(ns)?;
            eprintln!("lab: {ns} vanished");
        }
        later.retain(|(at, _)| Instant::now() < *at);
        if signals::requested() {
            eprintln!("lab: {} received", signals::last_name());
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let server = res.server.iter_mut().filter(|_| !allow_server_exit);
        for p in server.chain(res.clients.iter_mut()) {
            if let Some(status) = p.exited() {
                bail!("{} (pid {}) exited unexpectedly ({status})", p.label, p.pid());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
