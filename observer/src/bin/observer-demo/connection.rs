//! One server connection: role line, writer and reader threads, and the
//! controller loop that decides when (and whether) the socket is closed.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::outbox::{Outbox, TICK, retryable};
use crate::role::Role;
use crate::server::Config;
use crate::sock;

const ROLE_LINE_TIMEOUT: Duration = Duration::from_secs(10);
const ROLE_LINE_MAX: usize = 256;
const DRAIN_SNDBUF: i32 = 512 * 1024;

pub fn serve(stream: TcpStream, config: &Config) -> Result<()> {
    let accepted = Instant::now();
    let peer = stream.peer_addr().context("peer address")?;
    let Some(role) = read_role(&stream)? else {
        eprintln!("observer-demo server: {peer} closed before sending a role line");
        return Ok(());
    };
    eprintln!("observer-demo server: {peer} role={}", role.name());

    stream.set_read_timeout(Some(TICK)).context("SO_RCVTIMEO")?;
    stream.set_write_timeout(Some(TICK)).context("SO_SNDTIMEO")?;
    // O_NONBLOCK is the file's: the writer's and reader's clones share it.
    let nonblocking = config.stream.nonblocking;
    stream.set_nonblocking(nonblocking).context("O_NONBLOCK")?;
    if role.server_closes() {
        sock::set_linger_off(&stream).context("SO_LINGER")?;
    }
    if role == Role::Drain {
        // Room for a minute of draining at 16 KiB/s once the server closes.
        sock::set_sndbuf(&stream, DRAIN_SNDBUF).context("SO_SNDBUF")?;
    }
    // An idle keep-alive connection: nothing flows either way.
    let sends = role != Role::Idleclose;

    let outbox = Arc::new(Outbox::new());
    let peer_gone = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&stream, &outbox, nonblocking)?;
    let reader = spawn_reader(&stream, &outbox, &peer_gone, nonblocking)?;

    if sends {
        outbox.push_bytes(config.stream.burst, config.stream.message_bytes);
    }
    let close_after = Duration::from_millis(config.stream.orphan_close_after_ms);
    let mut next_message = config.interval.map(|i| accepted + i);
    loop {
        let now = Instant::now();
        if role.server_keeps() {
            // The simulated app bug: EOF and errors are ignored, the fd is kept forever.
        } else if outbox.stopped() || peer_gone.load(Ordering::SeqCst) {
            break;
        }
        if role.server_closes() && now >= accepted + close_after {
            break;
        }
        let due = next_message.filter(|&due| sends && now >= due && !outbox.stopped());
        if let (Some(due), Some(interval)) = (due, config.interval) {
            outbox.push_bytes(config.stream.message_bytes, config.stream.message_bytes);
            next_message = Some(due + interval);
        }
        let nap = next_message.map_or(TICK, |due| due.saturating_duration_since(now).min(TICK));
        thread::sleep(nap.max(Duration::from_millis(1)));
    }

    outbox.stop();
    // Both threads notice the stop flag within one TICK.
    let _ = writer.join();
    let _ = reader.join();
    drop(stream); // close(): with unacked data and a vanished peer -> FIN_WAIT1 orphan
    eprintln!("observer-demo server: {peer} role={} closed", role.name());
    Ok(())
}

/// Reads the first line byte by byte (so nothing after it is consumed).
/// `None` when the peer closed first; a missing or garbled line counts as healthy.
fn read_role(stream: &TcpStream) -> Result<Option<Role>> {
    stream.set_read_timeout(Some(ROLE_LINE_TIMEOUT)).context("SO_RCVTIMEO")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = stream;
    while line.len() < ROLE_LINE_MAX {
        match reader.read(&mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if retryable(&e) => break,
            Err(e) => return Err(e).context("reading the role line"),
        }
    }
    Ok(Some(Role::parse_role_line(&String::from_utf8_lossy(&line))))
}

fn spawn_writer(stream: &TcpStream, outbox: &Arc<Outbox>, nonblocking: bool) -> Result<thread::JoinHandle<()>> {
    let mut stream = stream.try_clone().context("dup socket for the writer")?;
    let outbox = Arc::clone(outbox);
    thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            if outbox.run_writer(&mut stream, nonblocking).is_err() {
                outbox.stop();
            }
        })
        .context("cannot start the writer thread")
}

/// Reads and discards; flags EOF or a socket error as "peer gone".
fn spawn_reader(
    stream: &TcpStream,
    outbox: &Arc<Outbox>,
    peer_gone: &Arc<AtomicBool>,
    nonblocking: bool,
) -> Result<thread::JoinHandle<()>> {
    let mut stream = stream.try_clone().context("dup socket for the reader")?;
    let outbox = Arc::clone(outbox);
    let peer_gone = Arc::clone(peer_gone);
    thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while !outbox.stopped() {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if nonblocking && e.kind() == ErrorKind::WouldBlock => {
                        crate::sock::wait_ready(&stream, libc::POLLIN, TICK);
                    }
                    Err(e) if retryable(&e) => {}
                    Err(_) => break,
                }
            }
            peer_gone.store(true, Ordering::SeqCst);
        })
        .context("cannot start the reader thread")
}
