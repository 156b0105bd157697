//! Network namespaces a benchmark creates, deleted when the guard drops.

use std::process::Command;

use anyhow::{Result, bail};

/// Prefix of every namespace the benchmarks create: `obsb<pid>-<role>`.
pub const PREFIX: &str = "obsb";

pub struct Namespaces(Vec<String>);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Namespaces {
    pub fn new() -> Namespaces {
        Namespaces(Vec::new())
    }

    /// Creates `name` with its loopback up; deleted on drop from now on.
    pub fn add(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.0.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// A veth pair between two of our namespaces, addressed and up.
    pub fn link(&self, (a, a_if, a_cidr): (&str, &str, &str), (b, b_if, b_cidr): (&str, &str, &str)) -> Result<()> {
        ip(&["-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b])?;
        ip(&["-n", a, "addr", "add", a_cidr, "dev", a_if])?;
        ip(&["-n", b, "addr", "add", b_cidr, "dev", b_if])?;
        ip(&["-n", a, "link", "set", a_if, "up"])?;
        ip(&["-n", b, "link", "set", b_if, "up"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            if let Err(e) = ip(&["netns", "delete", ns]) {
                eprintln!("bench: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces left by a benchmark run that was killed (its PID is gone).
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for name in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

/// `cmd` run inside `ns` (after `ip netns exec`'s exec, the PID is the program's).
pub fn exec_in(ns: &str, program: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs an nft script inside `ns`.
pub fn nft(ns: &str, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
