//! `cargo xtask vmtest`: the attach methods this kernel refuses (fentry,
//! fexit, kprobe) and older kernels' limits exercised for real inside QEMU
//! guests booting Debian's cloud kernels (12's 6.1 and 11's 5.10, one after
//! the other), with the same static `observer` binary run on the host for
//! comparison.
//!
//! Each guest (`init.sh`) loads every program through `observer check
//! --verify`, then runs `observer run` once per method set against loopback
//! traffic and checks that each attached program fired and the counters
//! moved, and runs it as root and as `nobody` against traffic whose counts
//! it compares with the kernel's own socket table. This side checks each
//! guest's plan and verifier table against its kernel's build options and
//! prints every kernel's plan side by side.

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

/// A passing guest runs a few minutes under TCG plus its integration tests,
/// a failing one longer (every refused load is verified to the end, every
/// failing test runs into its own timeouts); this bounds a hung guest.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// Integration tests (observer/tests/*.rs) each guest runs, test by test.
pub const GUEST_TESTS: &[&str] = &["classes", "settled", "restart", "edges", "long_rtt"];
const HOOKS: [&str; 6] = ["send", "close", "state", "timer", "retransmit", "sockets"];

/// How aya refuses a program whose attach point is not in the kernel's BTF.
const ABSENT: &str = "refused: unknown BTF type";

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Checks counted over the host and every guest.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
}

/// Number of guests `run` boots (for a caller that reports them skipped).
pub const GUESTS: usize = kernel::MATRIX.len();

/// Boots every guest of the matrix in turn and prints one summary line over
/// all of them; an error only when the run could not happen at all.
pub fn run() -> Result<Summary> {
    let root = workspace_root();
    let target = target_dir(&root);
    let cache = target.join("vmtest");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    deps::ensure()?;
    let bins = static_binaries(&root, &target)?;

    let host_release = sh::output("uname", &["-r"]).map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into());
    let (host_ok, host_text) = host_check(&bins.observer);
    println!("vmtest: `observer check --verify` on the host ({host_release}):");
    for line in host_text.lines() {
        println!("host| {line}");
    }
    let mut tally = Tally::default();
    tally.check(host_ok, &format!("{host_release}: observer check --verify exits 0 (required hooks have a method)"));
    let mut columns = vec![(format!("{host_release} (host)"), Check::parse(&host_text))];

    let mut lines = Vec::new();
    let mut test_lines = Vec::new();
    for source in kernel::MATRIX {
        let before = (tally.passed, tally.failed);
        let timing = match run_guest(source, &cache, &bins, &mut tally, &mut test_lines) {
            Ok((release, check, elapsed)) => {
                columns.push((format!("{release} (qemu)"), check));
                format!("{release}, booted and ran in {:.1} s", elapsed.as_secs_f64())
            }
            Err(e) => {
                // A guest that cannot be fetched or booted is a failure, never a skip.
                tally.check(false, &format!("{source}: guest not run: {e:#}"));
                format!("{source}, not run")
            }
        };
        lines.push(format!(
            "vmtest: guest {timing}: {} passed, {} failed",
            tally.passed - before.0,
            tally.failed - before.1
        ));
    }

    println!("vmtest: attach plan per kernel (observer check):");
    let refs: Vec<(&str, &Check)> = columns.iter().map(|(t, c)| (t.as_str(), c)).collect();
    print!("{}", report::side_by_side(&HOOKS, &refs));
    println!("vmtest: integration tests per kernel:");
    for l in &test_lines {
        println!("{l}");
    }
    for l in &lines {
        println!("{l}");
    }
    println!("vmtest: {} passed, {} failed", tally.passed, tally.failed);
    Ok(Summary { passed: tally.passed, failed: tally.failed })
}

/// Fetches, packs and boots one guest, tallying every check on and of it:
/// (release, its `observer check` output, time from boot to power-off).
fn run_guest(
    source: kernel::Source,
    cache: &Path,
    bins: &initramfs::Binaries,
    tally: &mut Tally,
    test_lines: &mut Vec<String>,
) -> Result<(String, Check, Duration)> {
    let kernel = kernel::ensure(source, cache).with_context(|| format!("fetching {source}"))?;
    let initrd = cache.join(format!("initramfs-{}.cpio", kernel.release));
    initramfs::write(&initrd, &kernel, bins)?;
    let serial_log = cache.join(format!("serial-{}.log", kernel.release));
    let boot = qemu::boot(&kernel.vmlinuz, &initrd, &serial_log, BOOT_LIMIT)?;
    println!(
        "vmtest: guest {} ran {:.1} s{}; console saved in {}",
        kernel.release,
        boot.elapsed.as_secs_f64(),
        if boot.timed_out { " and was killed at the time limit" } else { "" },
        serial_log.display()
    );
    let guest = Guest::parse(&boot.serial);
    check_guest(tally, &guest, &kernel);
    for (ok, text) in &guest.checks {
        tally.count(*ok, &format!("{}: {text}", kernel.release));
        if text.starts_with("test ") {
            test_lines.push(format!("vmtest: {} {}: {text}", if *ok { "ok  " } else { "FAIL" }, kernel.release));
        }
    }
    let ran = guest.checks.iter().filter(|(_, t)| t.starts_with("test ")).count();
    tally.check(ran > 0, &format!("{}: the guest ran the integration tests ({ran} reported)", kernel.release));
    Ok((kernel.release.clone(), guest.check, boot.elapsed))
}

/// Checks on what the guest printed, against what its kernel was built
/// with; its own `VMTEST-CHECK` lines are counted by the caller.
fn check_guest(t: &mut Tally, g: &Guest, kernel: &kernel::Kernel) {
    let release = kernel.release.as_str();
    t.check(g.kernel.as_deref() == Some(release), &format!("guest booted {release} (reported {:?})", g.kernel));
    t.check(g.result == Some(true), &format!("{release}: guest result marker says PASS (got {:?})", g.result));
    // What the observer detects must be what the kernel was built with.
    for (cap, option) in [("btf", "CONFIG_DEBUG_INFO_BTF"), ("kprobes", "CONFIG_KPROBES")] {
        let built = kernel.config_has(option);
        let seen = g.check.capability(cap);
        t.check(
            built.is_some() && seen == built,
            &format!("{release}: capability {cap} detected {seen:?}, {option}=y {built:?}"),
        );
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
    // Whatever the plan chose, this kernel's verifier must accept it; that
    // the chosen programs also fire is checked inside the guest.
    for hook in HOOKS {
        let got = g.check.method_of(hook);
        let accepted = got.is_some_and(|m| {
            m == "none" || g.check.verifier.iter().any(|r| r.hook == hook && r.method == m && r.verdict == "loads")
        });
        t.check(
            accepted,
            &format!("{release}: plan's {hook}={} is a method this kernel's verifier accepts", got.unwrap_or("-")),
        );
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
/// With them the integration tests of [`GUEST_TESTS`], which start those
/// two binaries by the absolute paths cargo compiles into them.
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
    let mut args: Vec<&str> = vec![
        "test",
        "--release",
        "--target",
        deps::MUSL_TARGET,
        "--package",
        "observer",
        "--no-run",
        "--message-format=json",
    ];
    for t in GUEST_TESTS {
        args.extend(["--test", t]);
    }
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(&args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("building the static test binaries failed: {}", out.status);
    }
    let tests = test_executables(&String::from_utf8_lossy(&out.stdout));
    for t in GUEST_TESTS {
        if !tests.iter().any(|(name, _)| name == t) {
            bail!("cargo built no test binary for {t}");
        }
    }
    let dir = target.join(deps::MUSL_TARGET).join("release");
    Ok(initramfs::Binaries { observer: dir.join("observer"), demo: dir.join("observer-demo"), tests })
}

/// (test target name, executable) of every test binary in cargo's JSON messages.
fn test_executables(json_lines: &str) -> Vec<(String, PathBuf)> {
    json_lines
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#) && l.contains(r#""kind":["test"]"#))
        .filter_map(|l| {
            let target = &l[l.find(r#""target":{"#)?..];
            Some((json_string(target, "name")?, PathBuf::from(json_string(l, "executable")?)))
        })
        .collect()
}

/// The first string value of `key` in a line of JSON (cargo's names and paths
/// need no unescaping beyond `\\` and `\"`).
fn json_string(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = json[at..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_executables_in_cargo_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/observer#0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"observer"},"executable":"/w/target/observer","fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/observer#0.1.0","target":{"kind":["test"],"crate_types":["bin"],"name":"classes","src_path":"/w/observer/tests/classes.rs"},"executable":"/w/target/deps/classes-0123","fresh":false}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(test_executables(msgs), [("classes".to_string(), PathBuf::from("/w/target/deps/classes-0123"))]);
        assert_eq!(json_string(r#"{"a":"x\"y\\z"}"#, "a").as_deref(), Some(r#"x"y\z"#));
    }
}
