//! The send-heavy workload: many small writes over many connections, or one
//! bulk stream, switched by the driver so every mode runs in the same process
//! with and without the observer attached.

use std::{
    io::Write,
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};

use super::control;

pub const SMALL: usize = 64;
pub const LARGE: usize = 1024;
pub const BULK: usize = 64 * 1024;

const IDLE: u8 = 0;
const MODE_SMALL: u8 = 1;
const MODE_LARGE: u8 = 2;
const MODE_BULK: u8 = 3;

#[derive(Default)]
struct Counters {
    /// write() calls: each is one tcp_sendmsg.
    sends: AtomicU64,
    bytes: AtomicU64,
}

pub fn run(connect: &str, conns: usize, writers: usize) -> Result<()> {
    let mut many = Vec::with_capacity(conns);
    for i in 0..conns {
        let s = TcpStream::connect(connect).with_context(|| format!("connection {i} to {connect}"))?;
        // Chat and WebSocket servers disable Nagle: every message is a segment.
        s.set_nodelay(true).context("TCP_NODELAY")?;
        many.push(s);
    }
    let mut bulk = Some(TcpStream::connect(connect).with_context(|| format!("bulk connection to {connect}"))?);
    let mode = Arc::new(AtomicU8::new(IDLE));
    let counters = Arc::new(Counters::default());
    // Small writes: the connections split over `writers` threads. Bulk: one
    // stream, written by the first thread only.
    let per = many.len().div_ceil(writers.max(1));
    let mut rest = many;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        let mine = std::mem::replace(&mut rest, tail);
        let (mode, counters, bulk) = (mode.clone(), counters.clone(), bulk.take());
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer(mine, bulk, &mode, &counters))
            .context("starting a writer")?;
    }
    control::say(&format!("READY pid={}", std::process::id()));
    control::serve(|req| match req.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["mode", m] => {
            let v = match *m {
                "small" => MODE_SMALL,
                "large" => MODE_LARGE,
                "bulk" => MODE_BULK,
                _ => IDLE,
            };
            mode.store(v, Ordering::SeqCst);
            "OK".into()
        }
        ["snap"] => format!(
            "SNAP {} {} {}",
            monotonic_ns(),
            counters.sends.load(Ordering::SeqCst),
            counters.bytes.load(Ordering::SeqCst)
        ),
        _ => "ERR unknown request".into(),
    })
}

fn writer(mut many: Vec<TcpStream>, mut bulk: Option<TcpStream>, mode: &AtomicU8, c: &Counters) {
    let small = [b'x'; SMALL];
    let large = [b'y'; LARGE];
    let big = vec![b'z'; BULK];
    loop {
        let (sends, bytes) = match mode.load(Ordering::Relaxed) {
            MODE_SMALL => round(&mut many, &small),
            MODE_LARGE => round(&mut many, &large),
            MODE_BULK if bulk.is_some() => {
                let Some(bulk) = bulk.as_mut() else { return };
                let mut bytes = 0;
                for _ in 0..16 {
                    match bulk.write(&big) {
                        Ok(n) => bytes += n as u64,
                        Err(_) => return,
                    }
                }
                (16, bytes)
            }
            _ => {
                std::thread::sleep(Duration::from_millis(1));
                (0, 0)
            }
        };
        // One update per pass keeps the counters off the hot path.
        c.sends.fetch_add(sends, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One message on every connection; each write() is one send.
fn round(conns: &mut [TcpStream], msg: &[u8]) -> (u64, u64) {
    let mut bytes = 0;
    for s in conns.iter_mut() {
        if let Ok(n) = s.write(msg) {
            bytes += n as u64;
        }
    }
    (conns.len() as u64, bytes)
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
