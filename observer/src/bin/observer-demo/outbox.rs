//! Per-connection user-space send queue drained by a writer thread, like a
//! WebSocket server's outgoing message queue: a slow peer makes it (and the
//! server's RSS) grow.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long blocking socket calls and queue waits last before re-checking the stop flag.
pub const TICK: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<Vec<u8>>>,
    ready: Condvar,
    stop: AtomicBool,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        // A panicking writer cannot leave the queue inconsistent: keep going.
        self.queue.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues one message.
    pub fn push(&self, message: Vec<u8>) {
        self.lock().push_back(message);
        self.ready.notify_one();
    }

    /// Queues `total` bytes as messages of at most `chunk` bytes.
    pub fn push_bytes(&self, total: usize, chunk: usize) {
        let chunk = chunk.max(1);
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk);
            self.push(payload(n));
            left -= n;
        }
    }

    /// Asks the writer (and anyone polling) to stop; queued data is abandoned.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let mut queue = self.lock();
        if queue.is_empty() && !self.stopped() {
            queue = match self.ready.wait_timeout(queue, TICK) {
                Ok((q, _)) => q,
                Err(poison) => poison.into_inner().0,
            };
        }
        queue.pop_front()
    }

    /// Writes queued messages until stopped or the socket fails. The stream must
    /// have a write timeout so a full send buffer does not block forever, or
    /// be non-blocking: a full send buffer is then waited for in poll().
    pub fn run_writer(&self, stream: &mut TcpStream, nonblocking: bool) -> io::Result<()> {
        while !self.stopped() {
            let Some(message) = self.pop() else { continue };
            let mut off = 0;
            while off < message.len() {
                if self.stopped() {
                    return Ok(());
                }
                match stream.write(&message[off..]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => off += n,
                    Err(e) if nonblocking && e.kind() == ErrorKind::WouldBlock => {
                        crate::sock::wait_ready(stream, libc::POLLOUT, TICK);
                    }
                    Err(e) if retryable(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Errors that only mean "nothing happened within the socket timeout".
pub fn retryable(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// A message body: printable filler ending in a newline.
fn payload(len: usize) -> Vec<u8> {
    let mut body = vec![b'z'; len];
    if let Some(last) = body.last_mut() {
        *last = b'\n';
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_bytes_splits_into_chunks() {
        let outbox = Outbox::new();
        outbox.push_bytes(2500, 1024);
        let sizes: Vec<usize> = outbox.lock().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1024, 1024, 452]);
    }
}
