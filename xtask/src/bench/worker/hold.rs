//! Many idle established connections: a server that accepts and holds
//! them (the observer's target) and a client process holding the other ends.

use std::{
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};

use super::{control, limits};

/// File descriptors kept free for everything that is not a held connection.
const SPARE_FDS: u64 = 64;
/// More than any one benchmark level needs.
const WANT_FDS: u64 = 110_000;

pub fn server(listen: &str, comm: &str) -> Result<()> {
    limits::set_comm(comm)?;
    let cap = limits::raise_nofile(WANT_FDS).saturating_sub(SPARE_FDS);
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    let addr = listener.local_addr().context("local address")?;
    let held = Arc::new(AtomicU64::new(0));
    let streams = Arc::new(Mutex::new(Vec::new()));
    {
        let (held, streams) = (held.clone(), streams.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                match s {
                    Ok(s) => {
                        streams.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                        held.fetch_add(1, Ordering::SeqCst);
                    }
                    // EMFILE: the driver keeps within `cap`; back off rather than spin.
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
    }
    control::say(&format!("LISTENING {addr} pid={} cap={cap}", std::process::id()));
    control::serve(|req| match req {
        "count" => format!("HELD {}", held.load(Ordering::SeqCst)),
        _ => "ERR unknown request".into(),
    })
}

pub fn clients(connect: &str) -> Result<()> {
    limits::set_comm("obsb-conn")?;
    let cap = limits::raise_nofile(WANT_FDS).saturating_sub(SPARE_FDS);
    let mut held: Vec<TcpStream> = Vec::new();
    control::say(&format!("READY pid={} cap={cap}", std::process::id()));
    control::serve(|req| {
        let Some(n) = req.strip_prefix("open ").and_then(|n| n.trim().parse::<usize>().ok()) else {
            return "ERR unknown request".into();
        };
        for _ in 0..n {
            match TcpStream::connect(connect) {
                Ok(s) => held.push(s),
                Err(e) => return format!("ERR after {}: {e}", held.len()),
            }
        }
        format!("OPENED {}", held.len())
    })
}
