//! Idempotent setup: each step checks for its result first and skips itself.
//!
//! The recipe and versions are the ones verified on this kind of machine
//! (Debian 12, Linux 6.18): bpf-linker's LLVM must match rustc's (22), and
//! the eBPF crate builds with nightly's `-Z build-std=core`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::sh;

const LLVM_MAJOR: &str = "22";
const APT_PACKAGES: &[(&str, &str)] = &[
    // (package, a file it installs, to tell whether it is there)
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("nftables", "/usr/sbin/nft"),
    ("iproute2", "/usr/sbin/ss"),
    ("curl", "/usr/bin/curl"),
    ("tmux", "/usr/bin/tmux"),
    ("bpftool", "/usr/sbin/bpftool"),
    // prometheus and promtool for observer/tests/prometheus.rs.
    ("prometheus", "/usr/bin/promtool"),
    // The font the demo chart and the benchmark plot draw their text with.
    ("fonts-dejavu-core", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
];

pub fn ensure() -> Result<()> {
    apt_packages()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> =
        APT_PACKAGES.iter().filter(|(_, file)| !Path::new(file).exists()).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, "cargo xtask setup")?;
    if missing.contains(&"prometheus") {
        stop_packaged_prometheus();
    }
    Ok(())
}

/// The package's postinst starts a system Prometheus on :9090 where
/// services may start (systemd hosts, no policy-rc.d). The tests run their
/// own on a free port; the one we just installed must not keep running.
fn stop_packaged_prometheus() {
    if sh::ok("service", &["prometheus", "stop"]) {
        eprintln!("+ service prometheus stop (only the binaries are needed)");
    }
}

/// Installs Debian packages without questions (CI has no stdin); `task`
/// names what needs them, for the error a non-root user gets.
pub fn apt_install(packages: &[&str], task: &str) -> Result<()> {
    if !is_root() {
        bail!("{task} needs the packages {}: install them or run as root", packages.join(" "));
    }
    sh::run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    eprintln!("+ apt-get {}", args.join(" "));
    let status = std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot start apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", packages.join(" "));
    }
    Ok(())
}

/// Nightly with rust-src (the eBPF crate's `-Z build-std=core`) and clippy
/// (linting that crate for its target); rustfmt and clippy on the default
/// toolchain for the rest.
fn nightly_with_rust_src() -> Result<()> {
    let installed =
        sh::output("rustup", &["component", "list", "--installed", "--toolchain", "nightly"]).unwrap_or_default();
    let has = |c: &str| installed.lines().any(|l| l.starts_with(c));
    if !(has("rust-src") && has("clippy")) {
        if !sh::ok("rustup", &["run", "nightly", "rustc", "--version"]) {
            sh::run("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"])?;
        }
        sh::run("rustup", &["component", "add", "rust-src", "clippy", "--toolchain", "nightly"])?;
    }
    let default = sh::output("rustup", &["component", "list", "--installed"]).unwrap_or_default();
    if !(default.lines().any(|l| l.starts_with("clippy")) && default.lines().any(|l| l.starts_with("rustfmt"))) {
        sh::run("rustup", &["component", "add", "clippy", "rustfmt"])?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if let Ok(v) = sh::output("bpf-linker", &["--version"])
        && !v.trim().is_empty()
    {
        return Ok(());
    }
    // LLVM_PREFIX: without it the build finds Debian's default LLVM 14 and
    // fails at the final link.
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    let feature = format!("llvm-{LLVM_MAJOR}");
    eprintln!("+ LLVM_PREFIX={prefix} cargo install bpf-linker --locked --no-default-features --features {feature}");
    let status = std::process::Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features", &feature])
        .env("LLVM_PREFIX", &prefix)
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot start cargo install")?;
    if !status.success() {
        bail!("installing bpf-linker failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    sh::output("id", &["-u"]).is_ok_and(|s| s.trim() == "0")
}
