//! The receiving end of the send-path workload: one thread, reads and
//! discards everything. One thread, not one per connection, so the receiver
//! is woken in batches and the senders' cost per write stays small, as in a
//! real client population.

use std::{net::TcpListener, os::fd::AsRawFd};

use anyhow::{Context, Result};

use super::{control, epoll::Epoll};

const LISTENER: u64 = 1 << 32;

pub fn run(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    listener.set_nonblocking(true).context("O_NONBLOCK")?;
    super::limits::deep_backlog(&listener);
    let addr = listener.local_addr().context("local address")?;
    let ep = Epoll::new()?;
    ep.add(listener.as_raw_fd(), LISTENER)?;
    std::thread::spawn(move || {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 128];
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let ready: Vec<u64> = ep.wait(&mut events).collect();
            for data in ready {
                if data == LISTENER {
                    while let Ok((s, _)) = listener.accept() {
                        let _ = s.set_nonblocking(true);
                        let fd = std::os::fd::IntoRawFd::into_raw_fd(s);
                        if ep.add(fd, fd as u64).is_err() {
                            ep.close(fd);
                        }
                    }
                } else if !super::epoll::drain(data as i32, &mut buf) {
                    ep.close(data as i32);
                }
            }
        }
    });
    control::say(&format!("LISTENING {addr} pid={}", std::process::id()));
    control::serve(|_| "OK".into())
}
