//! `client`: N connections of one role, held until told to stop.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::cli::ClientArgs;
use crate::proto;
use crate::role::Role;
use crate::signals;
use crate::sock;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer of `slow` clients (the kernel doubles it), so the window closes fast.
const SLOW_RCVBUF: i32 = 4096;
/// `drain` clients: a small buffer read 4 KiB every 250 ms (16 KiB/s).
const DRAIN_RCVBUF: i32 = 8192;
const DRAIN_READ: usize = 4096;
const DRAIN_EVERY: Duration = Duration::from_millis(250);

pub fn run(args: &ClientArgs) -> Result<()> {
    signals::install().context("cannot install signal handlers")?;
    let addr = resolve(&args.connect)?;
    let role = args.role;

    let mut conns = Vec::with_capacity(args.count as usize);
    let mut out = std::io::stdout().lock();
    for i in 1..=args.count {
        if signals::requested() {
            return Ok(());
        }
        let stream = open(addr, role, Duration::from_millis(args.fin_after_ms))
            .with_context(|| format!("connection {i} to {addr}"))?;
        let local = stream.local_addr().context("local address")?;
        writeln!(out, "{}", proto::local_line(local)).context("cannot write to stdout")?;
        conns.push(stream);
    }
    writeln!(out, "{}", proto::connected_line(args.count))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);

    let deadline = args.hold_secs.map(|s| Instant::now() + Duration::from_secs(s));
    while !signals::requested() && deadline.is_none_or(|d| Instant::now() < d) {
        thread::sleep(Duration::from_millis(100));
    }
    if args.reset {
        for c in &conns {
            sock::set_linger_reset(c).context("SO_LINGER")?;
        }
    }
    drop(conns);
    Ok(())
}

fn resolve(target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target}"))?
        .next()
        .ok_or_else(|| anyhow!("{target} resolves to no address"))
}

/// Connects, sends the role line and starts whatever the role does with the socket.
fn open(addr: SocketAddr, role: Role, fin_after: Duration) -> Result<TcpStream> {
    let rcvbuf = match role {
        r if r.never_reads() => Some(SLOW_RCVBUF),
        Role::Drain => Some(DRAIN_RCVBUF),
        _ => None,
    };
    let mut stream = sock::connect(addr, rcvbuf, CONNECT_TIMEOUT).context("connect")?;
    stream.write_all(role.role_line().as_bytes()).context("sending the role line")?;
    if role == Role::Halfclose {
        stream.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")?;
    }
    if role == Role::Idleclose {
        let stream = stream.try_clone().context("dup socket for the closer")?;
        thread::Builder::new()
            .name("idle".into())
            .spawn(move || {
                thread::sleep(fin_after);
                let _ = stream.shutdown(Shutdown::Write);
            })
            .context("cannot start the idle thread")?;
    }
    if role == Role::Drain {
        let mut reader = stream.try_clone().context("dup socket for the reader")?;
        thread::Builder::new()
            .name("drain".into())
            .spawn(move || {
                let mut buf = [0u8; DRAIN_READ];
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {
                    thread::sleep(DRAIN_EVERY);
                }
            })
            .context("cannot start a reader thread")?;
    }
    if role.reads() {
        let mut reader = stream.try_clone().context("dup socket for the reader")?;
        thread::Builder::new()
            .name("discard".into())
            .spawn(move || {
                let mut buf = [0u8; 65536];
                // Read and discard until EOF or error; vanished peers just block here.
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            })
            .context("cannot start a reader thread")?;
    }
    Ok(stream)
}
