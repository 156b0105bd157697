//! Connection storm: a server that greets every connection and closes it
//! when the peer closes (the target), and a generator that keeps N clients
//! connected and replaces the oldest one at a fixed rate.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    control,
    epoll::{Epoll, drain},
    limits,
};

/// A WebSocket server answers the upgrade; a few bytes stand in for it.
const GREETING: &[u8] = b"hello\n";
const LISTENER: u64 = 1 << 32;

pub fn server(listen: &[String], comm: &str) -> Result<()> {
    limits::set_comm(comm)?;
    limits::raise_nofile(110_000);
    let mut listeners = Vec::new();
    for a in listen {
        let l = TcpListener::bind(a).with_context(|| format!("bind {a}"))?;
        limits::deep_backlog(&l);
        l.set_nonblocking(true).context("O_NONBLOCK")?;
        listeners.push(l);
    }
    let addrs: Vec<String> = listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect();
    let ep = Epoll::new()?;
    for l in &listeners {
        ep.add(l.as_raw_fd(), LISTENER | l.as_raw_fd() as u64)?;
    }
    let accepted = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    {
        let (accepted, closed) = (accepted.clone(), closed.clone());
        std::thread::spawn(move || {
            let _keep = listeners;
            event_loop(&ep, &accepted, &closed)
        });
    }
    control::say(&format!("LISTENING {} pid={}", addrs.join(","), std::process::id()));
    control::serve(|req| match req {
        "stats" => format!("STATS {} {}", accepted.load(Ordering::SeqCst), closed.load(Ordering::SeqCst)),
        _ => "ERR unknown request".into(),
    })
}

fn event_loop(ep: &Epoll, accepted: &AtomicU64, closed: &AtomicU64) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 4096];
    loop {
        let ready: Vec<u64> = ep.wait(&mut events).collect();
        for data in ready {
            let fd = data as u32 as i32;
            if data & LISTENER != 0 {
                accept_all(ep, fd, accepted);
            } else if !drain(fd, &mut buf) {
                // EOF or an error: the peer is gone, so is our side.
                ep.close(fd);
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn accept_all(ep: &Epoll, lfd: i32, accepted: &AtomicU64) {
    loop {
        // SAFETY: listening socket fd; no peer address wanted.
        let fd = unsafe {
            libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            return; // EAGAIN (or EMFILE: retried on the next readiness event)
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        // SAFETY: fresh socket fd, constant buffer; 6 bytes always fit.
        unsafe { libc::write(fd, GREETING.as_ptr().cast(), GREETING.len()) };
        if ep.add(fd, fd as u32 as u64).is_err() {
            ep.close(fd);
        }
    }
}

pub fn clients(connect: &[String], n: usize, rate: u32, secs: f64) -> Result<()> {
    control::exit_on_stdin_eof();
    limits::set_comm("obsb-stormcli")?;
    limits::raise_nofile(n as u64 + 1024);
    let addrs: Vec<SocketAddr> =
        connect.iter().map(|a| a.parse().with_context(|| format!("address {a}"))).collect::<Result<_>>()?;
    if addrs.is_empty() || n == 0 {
        bail!("need at least one address and one client");
    }
    let mut slots: Vec<Option<TcpStream>> = Vec::with_capacity(n);
    let (mut connects, mut failed, mut next_addr) = (0u64, 0u64, 0usize);
    let open = |next_addr: &mut usize| {
        let a = addrs[*next_addr % addrs.len()];
        *next_addr += 1;
        TcpStream::connect_timeout(&a, Duration::from_secs(5))
    };
    for _ in 0..n {
        match open(&mut next_addr) {
            Ok(s) => {
                connects += 1;
                slots.push(Some(s));
            }
            Err(_) => {
                failed += 1;
                slots.push(None);
            }
        }
    }
    control::say(&format!("CONNECTED {connects}"));
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        let due = (f64::from(rate) * started.elapsed().as_secs_f64()) as u64;
        while done < due {
            let i = (done % n as u64) as usize;
            if let Some(s) = slots[i].take() {
                close(s);
            }
            match open(&mut next_addr) {
                Ok(s) => {
                    connects += 1;
                    slots[i] = Some(s);
                }
                Err(_) => failed += 1,
            }
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed().as_secs_f64();
    for s in slots.into_iter().flatten() {
        close(s);
    }
    control::say(&format!("DONE connects={connects} failed={failed} churn={done} secs={elapsed:.3}"));
    control::serve(|_| "OK".into())
}

/// Reads the greeting first, so the close is an orderly FIN, not an RST.
fn close(mut s: TcpStream) {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
}
