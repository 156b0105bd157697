//! Running short external commands (`ip`, `nft`, `sysctl`) with a timeout.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd`, feeding `stdin` if given; returns stdout. Fails with the
/// command line and its stderr when it exits non-zero or takes too long.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let line = describe(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run `{line}`"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).with_context(|| format!("writing to `{line}`"))?;
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT).with_context(|| format!("`{line}`"))?;
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        let reason = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no error output");
        bail!("`{line}` failed ({status}): {}", reason.trim());
    }
    Ok(out)
}

/// Waits for `child`, killing it after `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", timeout.as_secs());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}
