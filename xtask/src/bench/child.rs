//! Child processes of a benchmark: started with a line protocol on
//! stdin/stdout, ended by PID when dropped, whatever way the benchmark ends.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child as StdChild, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub struct Child {
    pub name: String,
    child: StdChild,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Workers exit when stdin closes; other programs need a signal.
    exits_on_eof: bool,
}

impl Child {
    /// Starts `cmd` with piped stdin/stdout; stderr goes to `log` if given.
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Result<Child> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some(path) = log {
            let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            cmd.stderr(f);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child { name: name.to_string(), child, stdin, lines: rx, exits_on_eof: true })
    }

    /// For programs that ignore stdin: stopping sends SIGTERM at once.
    pub fn signal_only(mut self) -> Child {
        self.exits_on_eof = false;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` (others are skipped).
    pub fn expect(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        match self.try_expect(prefix, limit)? {
            Some(line) => Ok(line),
            None => bail!("{}: no `{prefix}` line within {limit:?}", self.name),
        }
    }

    /// Like `expect`, but a timeout is `None` rather than an error.
    pub fn try_expect(&mut self, prefix: &str, limit: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(Some(line)),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    bail!("{} exited ({status}) before printing `{prefix}`", self.name)
                }
            }
        }
    }

    /// Sends one request line and waits for the reply starting with `prefix`.
    pub fn request(&mut self, req: &str, prefix: &str, limit: Duration) -> Result<String> {
        let stdin = self.stdin.as_mut().context("child without stdin")?;
        writeln!(stdin, "{req}").and_then(|()| stdin.flush()).with_context(|| format!("writing to {}", self.name))?;
        let reply = self.expect(prefix, limit)?;
        Ok(reply)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes stdin (workers exit on that), then SIGTERM, then SIGKILL.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        if self.exits_on_eof && self.wait_exit(Duration::from_secs(2)) {
            return;
        }
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if self.wait_exit(Duration::from_secs(10)) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `key=value` from a line like `LISTENING 127.0.0.1:4000 pid=7 cap=19936`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The n-th whitespace-separated word.
pub fn word(line: &str, n: usize) -> Option<&str> {
    line.split_whitespace().nth(n)
}
