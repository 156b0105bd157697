//! The receiving end of the send-path workload: reads and discards.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
};

use anyhow::{Context, Result};

use super::control;

pub fn run(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    let addr = listener.local_addr().context("local address")?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || drain(stream));
        }
    });
    control::say(&format!("LISTENING {addr} pid={}", std::process::id()));
    control::serve(|_| "OK".into())
}

fn drain(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}
