//! Boots the guest under QEMU and collects its serial console.
//!
//! Software emulation (TCG) on purpose: this machine's `/dev/kvm` is itself
//! emulated and fails on kernel code. QEMU's exit status says nothing about
//! the guest; the serial log is the only verdict.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub struct Boot {
    pub serial: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Boots `vmlinuz` with `initrd`, echoing the console (prefixed `guest| `)
/// and saving it to `log`. The guest powers itself off; after `limit` the
/// QEMU process started here is killed.
pub fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, limit: Duration) -> Result<Boot> {
    let args: Vec<String> = [
        "-machine",
        "accel=tcg",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-kernel",
        &vmlinuz.to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-append",
        "console=ttyS0 panic=-1 quiet",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ]
    .map(String::from)
    .into();
    eprintln!("+ qemu-system-x86_64 {}", args.join(" "));
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(printable(&line)).is_err() {
                break;
            }
        }
    });

    let mut file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut serial = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                println!("guest| {line}");
                let _ = writeln!(file, "{line}");
                serial.push_str(&line);
                serial.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if started.elapsed() > limit {
            timed_out = true;
            // Only the QEMU process this function started.
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        let _ = writeln!(file, "{line}");
        serial.push_str(&line);
        serial.push('\n');
    }
    Ok(Boot { serial, elapsed: started.elapsed(), timed_out })
}

/// The console line without carriage returns and terminal control sequences.
fn printable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI sequences (ESC [ ... final byte), as SeaBIOS and the console emit.
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_carriage_returns_and_escapes() {
        assert_eq!(printable(b"VMTEST-RESULT: PASS\r"), "VMTEST-RESULT: PASS");
        assert_eq!(printable(b"\x1b[2J\x1b[01;01HSeaBIOS\x1bc"), "SeaBIOSc");
        assert_eq!(printable(b"a\tb"), "a\tb");
    }
}
