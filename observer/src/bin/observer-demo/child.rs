//! Long-running child processes the lab starts (server, clients): stdout lines
//! arrive on a channel, waits are bounded, and termination is by our own PID.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::signals;

pub struct Managed {
    pub label: String,
    child: Child,
    lines: Receiver<String>,
}

impl Managed {
    /// Starts `cmd` in its own process group (a terminal Ctrl-C reaches only the
    /// lab, which then cleans up in order) with SIGTERM as its parent-death
    /// signal (so a SIGKILLed lab does not leave it running).
    pub fn spawn(label: &str, mut cmd: Command) -> Result<Managed> {
        let line = exec::describe(&cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        cmd.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1); // the lab already died
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {label}: `{line}`"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Managed { label: label.to_string(), child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects stdout lines until one satisfies `done`; returns all of them.
    /// Fails on timeout, on a stop signal, or if the child exits first.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&str) -> Option<T>,
    ) -> Result<(T, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            if signals::requested() {
                bail!("interrupted by {} while waiting for {what} from {}", signals::last_name(), self.label);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} printed no {what} within {} s", self.label, timeout.as_secs());
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(value) = done(&line) {
                        seen.push(line);
                        return Ok((value, seen));
                    }
                    seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = exec::wait_bounded(&mut self.child, Duration::from_secs(2))
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| format!("{e:#}"));
                    bail!("{} exited ({status}) before printing {what}", self.label);
                }
            }
        }
    }

    /// `Some(status)` if the child has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Signals only a child not yet reaped,
    /// so the PID cannot have been reused.
    pub fn terminate(&mut self, grace: Duration) -> Result<()> {
        if self.child.try_wait().context("checking child")?.is_some() {
            return Ok(());
        }
        // SAFETY: plain kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().context("waiting for child")?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().context("SIGKILL")?;
        exec::wait_bounded(&mut self.child, Duration::from_secs(5))?;
        Ok(())
    }
}
