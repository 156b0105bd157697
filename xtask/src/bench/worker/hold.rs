//! Many idle established connections: a server that accepts and holds
//! them (the observer's target) and a client process holding the other ends.
//! The server's sockets are non-blocking, as an event-loop server's (Node,
//! Go, nginx) are; `mode blocking` makes them a thread-per-connection
//! server's, whose sends may wait in the kernel.

use std::{
    net::{SocketAddrV4, TcpListener, TcpStream},
    os::fd::FromRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};

use super::{control, limits, trouble::Groups};

/// File descriptors kept free for everything that is not a held connection.
const SPARE_FDS: u64 = 64;
/// More than any one benchmark level needs.
const WANT_FDS: u64 = 110_000;

pub fn server(listen: &str, comm: &str) -> Result<()> {
    limits::set_comm(comm)?;
    let cap = limits::raise_nofile(WANT_FDS).saturating_sub(SPARE_FDS);
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    limits::deep_backlog(&listener);
    let addr = listener.local_addr().context("local address")?;
    let held = Arc::new(AtomicU64::new(0));
    let streams = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
    let nonblocking = Arc::new(AtomicBool::new(true));
    {
        let (held, streams, nonblocking) = (held.clone(), streams.clone(), nonblocking.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                match s {
                    Ok(s) => {
                        // Under the lock, so a mode switch cannot miss it.
                        let mut streams = streams.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = s.set_nonblocking(nonblocking.load(Ordering::SeqCst));
                        streams.push(s);
                        held.fetch_add(1, Ordering::SeqCst);
                    }
                    // EMFILE: the driver keeps within `cap`; back off rather than spin.
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
    }
    control::say(&format!("LISTENING {addr} pid={} cap={cap}", std::process::id()));
    let mut groups = Groups::default();
    control::serve(|req| {
        let mut held_now = streams.lock().unwrap_or_else(|p| p.into_inner());
        match req.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["count"] => format!("HELD {}", held.load(Ordering::SeqCst)),
            ["mode", m @ ("blocking" | "nonblocking")] => {
                let on = *m == "nonblocking";
                nonblocking.store(on, Ordering::SeqCst);
                let failed = held_now.iter().filter(|s| s.set_nonblocking(on).is_err()).count();
                format!("MODE {m} failed={failed}")
            }
            ["pick", n] => n.parse().map_or("ERR bad count".into(), |n| groups.pick(&held_now, n)),
            ["write", g, bytes] => match (g.parse(), bytes.parse()) {
                (Ok(g), Ok(b)) => groups.write(&mut held_now, g, b),
                _ => "ERR bad write".into(),
            },
            _ => "ERR unknown request".into(),
        }
    })
}

pub fn clients(connect: &str, source: Option<std::net::Ipv4Addr>) -> Result<()> {
    limits::set_comm("obsb-conn")?;
    let cap = limits::raise_nofile(WANT_FDS).saturating_sub(SPARE_FDS);
    let server: SocketAddrV4 = connect.parse().with_context(|| format!("address {connect}"))?;
    let mut held: Vec<TcpStream> = Vec::new();
    let mut next_port = FIRST_PORT;
    control::say(&format!("READY pid={} cap={cap}", std::process::id()));
    control::serve(|req| {
        let Some(n) = req.strip_prefix("open ").and_then(|n| n.trim().parse::<usize>().ok()) else {
            return "ERR unknown request".into();
        };
        for _ in 0..n {
            // An explicit source port per connection: past ~10,000 connections
            // to one address, the kernel's search for a free ephemeral port
            // makes each connect() slower than the whole rest of the benchmark.
            let opened = match source {
                Some(ip) => loop {
                    // Ports something else holds (a listener on 0.0.0.0) are skipped.
                    let port = next_port;
                    next_port = next_port.saturating_add(1);
                    match connect_from(SocketAddrV4::new(ip, port), server) {
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port < u16::MAX => continue,
                        other => break other,
                    }
                },
                None => TcpStream::connect(server),
            };
            match opened {
                Ok(s) => held.push(s),
                Err(e) => return format!("ERR after {}: {e}", held.len()),
            }
        }
        format!("OPENED {}", held.len())
    })
}

const FIRST_PORT: u16 = 1024;

/// bind(`from`) then connect(`to`), blocking.
fn connect_from(from: SocketAddrV4, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream as soon as it exists.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is valid and now owned by `stream`, which closes it on every path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (src, dst) = (sockaddr(from), sockaddr(to));
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option buffer. SO_REUSEADDR: a port still in
    // TIME_WAIT from an earlier run may be bound again.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: valid fd, pointers to initialised sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}
