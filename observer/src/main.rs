//! `observer`: which TCP sockets of a server are dead or stalled, and how many
//! bytes are stuck in them, next to the process's memory.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use log::{info, warn};

use observer::{
    agent::{Agent, Shared},
    cli::{CheckArgs, Cli, Command, RunArgs},
    http,
    metrics::Metrics,
    privileges,
    probes::{
        self,
        backend::{self, Backend},
        loader, pins,
    },
    startup::{load_options, start_agent},
    target, top,
};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Top(args) => top::run(args),
        Command::Check(args) => check(args),
    };
    if let Err(e) = result {
        // One line: what failed and why, for a terminal or a journal.
        eprintln!("observer: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: RunArgs) -> Result<()> {
    return_big_frees();
    // Validate the target before binding, and bind before loading anything,
    // so typos and busy ports fail fast and cleanly.
    target::validate(&args.target.selector()).context("target")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // /proc reads of scrapes; they run one at a time anyway.
        .max_blocking_threads(2)
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;

    let metrics = Metrics { per_pid: args.per_pid.then(Default::default), ..Metrics::default() };
    let shared = Arc::new(Shared::default());
    let pins = if args.no_pin {
        None
    } else {
        let layouts = loader::pinned_layouts(args.sweep.max_sockets).context("map layouts of the eBPF object")?;
        match pins::prepare(&args.pin_dir, &args.target.selector(), &layouts) {
            Ok(p) => Some(p),
            // A --pin-dir with someone else's files in it: the operator decides.
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                warn!("not pinning state across restarts: {e}");
                None
            }
        }
    };
    let mut agent = start_agent(
        &args.target,
        &args.sweep,
        &args.kernel,
        pins.clone(),
        args.state_file.clone(),
        metrics.clone(),
        shared.clone(),
    )?;
    agent.max_pids = args.max_pids as usize;
    // Registered once the mode is known: without probes the event counters
    // are left out rather than shown as zeros.
    let pss = observer::proc::smaps_rollup_supported();
    if !pss {
        warn!("this kernel has no /proc/PID/smaps_rollup (Linux 4.14+): observer_target_pss_bytes is not exported");
    }
    let registry = metrics.register(agent.events_available(), pss);
    let selector = agent.selector.clone();
    // Parsing BTF twice at start-up peaks far above what sweeps need; give
    // the freed heap back rather than carry it for the process's life.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no pointer is invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
    // Loaded and attached: what is left to do needs far less.
    // A target picked by name may (re)start in another network namespace;
    // one picked by PID stays where it is.
    let setns = matches!(selector, target::Selector::Comm(_)) || agent.needs_setns();
    drop_privileges(&mut agent, setns);
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (stop, interval) = (stop.clone(), args.sweep.interval);
        std::thread::Builder::new()
            .name("sweep".into())
            .spawn(move || agent.run(interval, stop))
            .context("starting the sweep thread")?
    };

    info!("watching {selector}; serving http://{}/metrics", args.listen);
    let state = Arc::new(http::State::new(
        registry,
        metrics,
        shared,
        args.sweep.interval * 3 + Duration::from_secs(5),
        args.max_pids as usize,
        pss,
    ));
    runtime.block_on(async {
        tokio::select! {
            _ = http::serve(listener, state) => {}
            _ = shutdown_signal() => info!("shutting down"),
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sweeper.thread().unpark();
    // Dropping the agent closes every program, link and map: nothing stays attached.
    let _ = sweeper.join();
    if let Some(p) = pins {
        p.remove();
    }
    Ok(())
}

/// Gives up the capabilities sweeps do not need, after finding out which
/// ones this kernel's `bpf()` still asks for (see `privileges`). A failure
/// is logged, not fatal: the agent then runs with what it has.
fn drop_privileges(agent: &mut Agent, setns: bool) {
    let plan = match privileges::choose(setns, &mut || agent.probe_kernel_access()) {
        Ok(plan) => plan,
        Err(e) => {
            // Without the probe's answer, drop as planned: sweeps may then
            // fail on an old kernel, which they report, but nothing more is kept.
            warn!("probing what sweeps need failed ({e}); dropping as planned");
            privileges::Plan { keep: privileges::keep(setns), extra: Vec::new(), why: "the plan (not probed)".into() }
        }
    };
    if plan.extra.is_empty() {
        info!("keeping capabilities {}: {}", privileges::names(&plan.keep), plan.why);
    } else {
        let extra: caps::CapsHashSet = plan.extra.iter().copied().collect();
        info!(
            "keeping capabilities {} ({} beyond the plan: {})",
            privileges::names(&plan.keep),
            privileges::names(&extra),
            plan.why
        );
    }
    match privileges::drop_to(&plan.keep) {
        Ok(d) => info!(
            "dropped {} capabilities not needed after start-up; no_new_privs set; bounding set {}",
            d.dropped.len(),
            if d.bounding_trimmed { "trimmed to the kept ones" } else { "left as is (no CAP_SETPCAP)" }
        ),
        Err(e) => warn!("dropping capabilities: {e}"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn check(args: CheckArgs) -> Result<()> {
    let opts = load_options(&args.kernel, 1024, None);
    let btf = probes::offsets::load_btf(&opts.btf_path).ok();
    let caps = probes::caps::detect(btf.as_ref());
    println!("kernel capabilities:");
    for (name, ok) in [("btf", caps.btf), ("trampolines (fentry/fexit)", caps.trampolines), ("kprobes", caps.kprobes)] {
        println!("  {name:<28} {}", if ok { "yes" } else { "no" });
    }
    for need in &caps.absent {
        println!("  {:<28} no", need.to_string());
    }
    if args.verify {
        println!("verifier, per method (load only, no attach):");
        for (a, verdict) in loader::verify_all(&opts)? {
            let verdict = match verdict {
                Ok(()) => "loads".to_string(),
                Err(e) => format!("refused: {e}"),
            };
            println!("  {:<10} {:<14} {:<28} {verdict}", a.hook.name(), a.method.name(), a.target);
        }
    }
    let backend = backend::choose(&opts)?;
    println!("attach plan on this kernel:");
    let mut missing_required = Vec::new();
    for r in backend.report() {
        match (&backend, r.method) {
            (Backend::SockDiag(_), None) => {
                println!("  {:<10} {:<14} (no eBPF: sockets polled through sock_diag)", r.hook.name(), "none")
            }
            (_, None) => {
                let why: Vec<String> = r.passed_over.iter().map(|(m, why)| format!("{m}: {why}")).collect();
                println!("  {:<10} {:<14} ({})", r.hook.name(), "none", why.join("; "));
                if r.hook.required() {
                    missing_required.push(r.hook.name());
                }
            }
            (_, Some(method)) => println!("  {:<10} {:<14} {}", r.hook.name(), method, r.target),
        }
        for (m, why) in &r.passed_over {
            println!("  {:<10}   passed over {m}: {why}", "");
        }
    }
    if let Backend::Ebpf(probes) = &backend {
        println!("sweeps:");
        for line in probes.sweeps.describe() {
            println!("  {line}");
        }
    }
    if !missing_required.is_empty() {
        bail!("required hooks without a working method: {}", missing_required.join(", "));
    }
    Ok(())
}

/// Allocations of 1 MiB and more get mappings of their own, returned to the
/// system when freed. glibc's default threshold rises with every such free
/// (up to 32 MiB), after which a walk's records and a marked sweep's buffer
/// (tens of MB at 100k sockets) land in the heap and stay resident, freed:
/// at 80k sockets 38 MB of the agent's 81 MB were that.
fn return_big_frees() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc tunable, set before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
