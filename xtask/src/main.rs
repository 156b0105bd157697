//! Project tasks: `cargo xtask setup | build | demo | test | check`.
//!
//! Every task installs what it is missing first (idempotently), so a fresh
//! machine needs nothing but cargo.

mod bench;
mod demo;
mod setup;
mod sh;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, demo and test tasks for observer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces the eBPF build and the tests need (idempotent).
    Setup,
    /// Build the agent (and with it the eBPF programs) in release mode.
    Build,
    /// Run the observer on the built-in demo target: a server with healthy,
    /// slow, vanishing, half-closed and orphaning clients in network namespaces.
    Demo(demo::DemoArgs),
    /// Run every test: unit tests, then the integration tests against this kernel.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Measure overhead, agent cost, scale, connection storms and detection
    /// latency against same-run baselines; results into BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Boot Debian's cloud kernels (12's 6.1, 11's 5.10) under QEMU, one
    /// after the other, and run the same guest checks in each: the attach
    /// methods this kernel refuses (fentry, fexit, kprobe), and privilege
    /// dropping on a kernel before 5.19.
    Vmtest,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Setup => setup::ensure(),
        Task::Build => setup::ensure().and_then(|()| build(true)),
        Task::Demo(args) => setup::ensure().and_then(|()| build(true)).and_then(|()| demo::run(&args)),
        Task::Test { args } => setup::ensure().and_then(|()| test(&test_arguments(&args))),
        Task::Bench(args) => bench::main(args),
        Task::Vmtest => setup::ensure().and_then(|()| vmtest()),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--package", "observer", "--bins"];
    if release {
        args.push("--release");
    }
    sh::run("cargo", &args)
}

fn vmtest() -> Result<()> {
    let s = vm::run()?;
    if s.failed > 0 || s.passed == 0 {
        anyhow::bail!("vmtest failed ({} failed, {} passed)", s.failed, s.passed);
    }
    Ok(())
}

/// The extra arguments as the user wrote them: clap consumes the first
/// `--` of `cargo xtask test -- --nocapture`, which would hand `--nocapture`
/// to cargo instead of to the test binaries. The raw command line after the
/// `test` word still has it; `parsed` is the fallback if it cannot be found.
fn test_arguments(parsed: &[String]) -> Vec<String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    raw_test_tail(&raw).unwrap_or_else(|| parsed.to_vec())
}

/// What follows the `test` subcommand in a raw command line.
fn raw_test_tail(raw: &[String]) -> Option<Vec<String>> {
    // The subcommand is the first word: the CLI has no global options.
    let (first, tail) = raw.split_first()?;
    (first == "test").then(|| tail.to_vec())
}

/// Whether the extra `cargo test` arguments select tests by name: a free
/// word before `--`, or after it (libtest's own filters), that is not an
/// option or an option's value. `--nocapture` and friends select nothing.
fn has_test_filter(extra: &[String]) -> bool {
    // cargo test options that take a value as the next word.
    const CARGO_VALUED: &[&str] = &[
        "-p",
        "--package",
        "--exclude",
        "--features",
        "-F",
        "--target",
        "--target-dir",
        "-j",
        "--jobs",
        "--profile",
        "--manifest-path",
        "--color",
        "--config",
        "-Z",
        "--test",
        "--bench",
        "--example",
        "--bin",
        "--message-format",
    ];
    // libtest options that take a value as the next word.
    const LIBTEST_VALUED: &[&str] =
        &["--test-threads", "--skip", "--logfile", "--format", "--color", "-Z", "--report-time", "--shuffle-seed"];
    let mut after_dashes = false;
    let mut skip_next = false;
    for a in extra {
        if skip_next {
            skip_next = false;
            continue;
        }
        if a == "--" {
            after_dashes = true;
            continue;
        }
        if a.starts_with('-') {
            let valued = if after_dashes { LIBTEST_VALUED } else { CARGO_VALUED };
            skip_next = !a.contains('=') && valued.contains(&a.as_str());
            continue;
        }
        return true;
    }
    false
}

/// The test that needs netem (observer/tests/long_rtt.rs).
const NETEM_TEST: &str = "netem_live_peers_at_300ms_rtt_with_loss_stay_healthy_beside_dead_ones";

/// Why this kernel cannot give an interface a netem qdisc, if it cannot:
/// tried on the loopback device of a throwaway network namespace.
fn netem_missing() -> Option<String> {
    let out = std::process::Command::new("unshare")
        .args(["--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`tc qdisc add ... netem` says: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("cannot run `unshare --net tc`: {e}")),
    }
}

/// The gates every change passes before its tests: formatting, and clippy
/// with warnings as errors on every crate (the eBPF one for its own target).
/// Returns (passed, failed), each failure printed.
fn lint() -> (u32, u32) {
    let checks: [(&str, &[&str]); 3] = [
        ("cargo fmt --check", &["fmt", "--all", "--check"]),
        ("clippy", &["clippy", "--workspace", "--exclude", "observer-ebpf", "--all-targets", "--", "-D", "warnings"]),
        (
            "clippy (eBPF)",
            &[
                "+nightly",
                "clippy",
                "--package",
                "observer-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (what, args) in checks {
        if sh::run("cargo", args).is_ok() {
            println!("lint: {what} ok");
            passed += 1;
        } else {
            println!("lint: {what} FAILED");
            failed += 1;
        }
    }
    (passed, failed)
}

fn test(extra: &[String]) -> Result<()> {
    let (lint_passed, lint_failed) = lint();
    // Integration tests share the kernel and namespaces: one at a time.
    let mut args: Vec<String> =
        ["test", "--workspace", "--exclude", "observer-ebpf", "--no-fail-fast", "--lib", "--bins", "--tests"]
            .map(String::from)
            .to_vec();
    args.extend(extra.iter().cloned());
    if !extra.iter().any(|a| a == "--") {
        args.push("--".into());
    }
    args.push("--test-threads=1".into());
    // A test this kernel cannot run is left out here, saying why, and
    // counted skipped (never passed); the QEMU guests run it.
    let mut host_skipped = 0;
    if let Some(why) = netem_missing() {
        args.extend(["--skip".into(), NETEM_TEST.into()]);
        if !has_test_filter(extra) || extra.iter().any(|a| NETEM_TEST.contains(a.as_str())) {
            println!("host: skipped {NETEM_TEST}: this kernel has no netem qdisc ({why}); it runs in the QEMU guests");
            host_skipped += 1;
        }
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let totals = sh::run_counting_tests("cargo", &refs)?;
    println!(
        "cargo tests: {} passed, {} failed, {} skipped",
        totals.passed,
        totals.failed,
        totals.ignored + host_skipped
    );
    // Then the methods this kernel refuses, in QEMU guests; skipped only when
    // a test-name filter asks for a subset (options such as --nocapture do not).
    let (mut passed, mut failed, mut skipped) =
        (totals.passed + u64::from(lint_passed), totals.failed + u64::from(lint_failed), totals.ignored + host_skipped);
    let mut vm_error = None;
    if has_test_filter(extra) {
        println!("vmtest: skipped ({} guests): a test-name filter was given ({})", vm::GUESTS, extra.join(" "));
        skipped += vm::GUESTS as u64;
    } else {
        match vm::run() {
            Ok(s) => {
                passed += u64::from(s.passed);
                failed += u64::from(s.failed);
            }
            Err(e) => {
                println!("vmtest: could not run: {e:#}");
                failed += 1;
                vm_error = Some(e);
            }
        }
    }
    // One closing line over every test binary and every guest check, so a
    // reader (or CI) need not add up the partial summaries.
    println!("tests: {passed} passed, {failed} failed, {skipped} skipped");
    if let Some(e) = vm_error {
        return Err(e.context("vmtest"));
    }
    if failed > 0 || totals.passed == 0 {
        anyhow::bail!("tests failed or none ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Task, has_test_filter};

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv) {
            Ok(Cli { task: Task::Test { args } }) => args,
            Ok(_) => panic!("not the test task"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_escape_is_kept_for_libtest() {
        // clap alone would pass `--nocapture` to cargo...
        assert_eq!(test_args(&["xtask", "test", "--", "--nocapture"]), ["--nocapture"]);
        // ...the raw tail keeps it for the test binaries.
        let raw: Vec<String> = ["test", "--", "--nocapture"].map(String::from).into();
        assert_eq!(super::raw_test_tail(&raw).as_deref(), Some(&raw[1..]));
        assert_eq!(super::raw_test_tail(&v(&["vmtest"])), None);
        assert_eq!(test_args(&["xtask", "test", "lifecycle"]), ["lifecycle"]);
    }

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_not_filters() {
        assert!(!has_test_filter(&[]));
        assert!(!has_test_filter(&v(&["--", "--nocapture"])));
        assert!(!has_test_filter(&v(&["--release", "--", "--nocapture", "--test-threads", "1"])));
        assert!(!has_test_filter(&v(&["-p", "observer", "--", "--show-output"])));
        assert!(!has_test_filter(&v(&["--", "--skip", "slow_test"])));
    }

    #[test]
    fn names_are_filters() {
        assert!(has_test_filter(&v(&["lifecycle"])));
        assert!(has_test_filter(&v(&["--", "--nocapture", "lifecycle"])));
        assert!(has_test_filter(&v(&["-p", "observer", "sweep"])));
        assert!(has_test_filter(&v(&["--", "--exact", "agent::tests::x"])));
    }
}
