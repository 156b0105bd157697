//! `cargo xtask vmtest`: the attach methods this kernel refuses (fentry,
//! fexit, kprobe) exercised for real inside a QEMU guest booting Debian's 6.1
//! cloud kernel, with the same static `observer` binary run on the host for
//! comparison.
//!
//! The guest (`init.sh`) loads every program through `observer check
//! --verify`, then runs `observer run` once per method set against loopback
//! traffic and checks that each attached program fired and the counters
//! moved. This side checks the guest's plan and verifier table and prints
//! both kernels' plans side by side.

mod cpio;
mod deps;
mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::sh;
use report::{Check, Guest, Tally};

/// A passing guest runs ~70 s under TCG, a failing one up to ~6 min (every
/// refused load is verified to the end); this bounds a hung guest.
const BOOT_LIMIT: Duration = Duration::from_secs(480);
const HOOKS: [&str; 6] = ["send", "close", "state", "timer", "retransmit", "sockets"];
/// What a kernel with BTF, trampolines and kprobes must choose by itself.
const EXPECTED_GUEST_PLAN: [(&str, &str); 6] = [
    ("send", "fexit"),
    ("close", "fentry"),
    ("state", "tp_btf"),
    ("timer", "fentry"),
    ("retransmit", "fentry"),
    ("sockets", "iter"),
];

/// How aya refuses a program whose attach point is not in the kernel's BTF.
const ABSENT: &str = "refused: unknown BTF type";

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

pub fn run() -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    let cache = target.join("vmtest");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    deps::ensure()?;
    let kernel = kernel::ensure(&cache)?;
    let bins = static_binaries(&root, &target)?;
    let initrd = cache.join("initramfs.cpio");
    initramfs::write(&initrd, &kernel, &bins)?;

    let host_release = sh::output("uname", &["-r"]).map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into());
    let (host_ok, host_text) = host_check(&bins.observer);
    println!("vmtest: `observer check --verify` on the host ({host_release}):");
    for line in host_text.lines() {
        println!("host| {line}");
    }

    let serial_log = cache.join("serial.log");
    let boot = qemu::boot(&kernel.vmlinuz, &initrd, &serial_log, BOOT_LIMIT)?;
    println!(
        "vmtest: guest ran {:.1} s{}; console saved in {}",
        boot.elapsed.as_secs_f64(),
        if boot.timed_out { " and was killed at the time limit" } else { "" },
        serial_log.display()
    );
    let guest = Guest::parse(&boot.serial);
    let host = Check::parse(&host_text);

    let mut tally = Tally::default();
    check_guest(&mut tally, &guest, &kernel.release);
    tally.check(host_ok, &format!("{host_release}: observer check --verify exits 0 (required hooks have a method)"));

    let guest_release = guest.kernel.clone().unwrap_or_else(|| kernel.release.clone());
    println!("vmtest: attach plan per kernel (observer check):");
    print!(
        "{}",
        report::side_by_side(&HOOKS, &[(&format!("{host_release} (host)"), &host), (&format!("{guest_release} (qemu)"), &guest.check)])
    );

    let guest_passed = guest.checks.iter().filter(|(ok, _)| *ok).count() as u32;
    let guest_failed = guest.checks.len() as u32 - guest_passed;
    let (passed, failed) = (tally.passed + guest_passed, tally.failed + guest_failed);
    println!("vmtest: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("vmtest failed (guest console: {})", serial_log.display());
    }
    Ok(())
}

/// Checks on what the guest printed; its own `VMTEST-CHECK` lines are
/// counted by the caller.
fn check_guest(t: &mut Tally, g: &Guest, release: &str) {
    t.check(g.kernel.as_deref() == Some(release), &format!("guest booted {release} (reported {:?})", g.kernel));
    t.check(g.result == Some(true), &format!("guest result marker says PASS (got {:?})", g.result));
    for cap in ["trampolines", "kprobes"] {
        t.check(g.check.capability(cap) == Some(true), &format!("{release}: capability {cap} detected"));
    }
    t.check(!g.check.verifier.is_empty(), &format!("{release}: verifier table printed"));
    for row in &g.check.verifier {
        let what = format!("{release}: verifier accepts {} {} {}: {}", row.hook, row.method, row.target, row.verdict);
        if row.verdict.starts_with(ABSENT) {
            // The kernel lacks the attach point (e.g. sock_send_length came
            // with 6.3): a fact about the kernel, not a defect of the program.
            println!("vmtest: note {what}");
        } else {
            t.check(row.verdict == "loads", &what);
        }
    }
    for (hook, want) in EXPECTED_GUEST_PLAN {
        let got = g.check.method_of(hook);
        t.check(got == Some(want), &format!("{release}: plan picks {want} for {hook} (got {})", got.unwrap_or("-")));
    }
}

/// The same binary the guest runs, on this kernel: (exit status ok, output).
fn host_check(observer: &Path) -> (bool, String) {
    match Command::new(observer).args(["check", "--verify"]).stdin(Stdio::null()).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
        Err(e) => (false, format!("cannot start {}: {e}", observer.display())),
    }
}

/// Statically linked (musl) observer and demo: the guest has no libc.
/// The eBPF object is built for the BPF target by build.rs either way.
fn static_binaries(root: &Path, target: &Path) -> Result<initramfs::Binaries> {
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", deps::MUSL_TARGET, "--package", "observer", "--bins"])
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("building the static binaries failed: {status}");
    }
    let dir = target.join(deps::MUSL_TARGET).join("release");
    Ok(initramfs::Binaries { observer: dir.join("observer"), demo: dir.join("observer-demo") })
}
