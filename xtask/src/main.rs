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
    /// Boot Debian's 6.1 cloud kernel under QEMU and exercise the attach
    /// methods this kernel refuses (fentry, fexit, kprobe) inside it.
    Vmtest,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Setup => setup::ensure(),
        Task::Build => setup::ensure().and_then(|()| build(true)),
        Task::Demo(args) => setup::ensure().and_then(|()| build(true)).and_then(|()| demo::run(&args)),
        Task::Test { args } => setup::ensure().and_then(|()| test(&args)),
        Task::Bench(args) => bench::main(args),
        Task::Vmtest => setup::ensure().and_then(|()| vm::run()),
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

fn test(extra: &[String]) -> Result<()> {
    // Integration tests share the kernel and namespaces: one at a time.
    let mut args: Vec<String> =
        ["test", "--workspace", "--exclude", "observer-ebpf", "--lib", "--bins", "--tests"].map(String::from).to_vec();
    args.extend(extra.iter().cloned());
    if !extra.iter().any(|a| a == "--") {
        args.push("--".into());
    }
    args.push("--test-threads=1".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let totals = sh::run_counting_tests("cargo", &refs)?;
    // One closing line over every test binary, so a reader (or CI) need not
    // add up the per-binary summaries.
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    // Then the methods this kernel refuses, in a QEMU guest (its own summary
    // line); skipped when a filter asks for a subset.
    let vm = if extra.is_empty() { vm::run() } else { Ok(()) };
    if totals.failed > 0 || totals.passed == 0 {
        anyhow::bail!("tests failed or none ran");
    }
    vm
}
