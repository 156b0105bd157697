//! Starting up: from the command line's choices to an agent that has
//! loaded its programs and swept the kernel once. Shared by `run` and `top`.

use std::sync::Arc;

use anyhow::{Context, Result};
use log::{info, warn};

use crate::{
    agent::{Agent, Shared},
    cli,
    metrics::{Metrics, ProbeLabel},
    probes::{
        backend::{self, Backend, Wanted},
        loader::LoadOptions,
        pins::PinDir,
    },
    sockets, target,
};

pub fn load_options(k: &cli::KernelArgs, max_sockets: u32, pins: Option<PinDir>) -> LoadOptions {
    let backend = if k.probe_method.contains(&cli::Forced::SockDiag) {
        Wanted::SockDiag
    } else if k.fallback == cli::Fallback::SockDiag {
        Wanted::EbpfOrSockDiag
    } else {
        Wanted::Ebpf
    };
    let forced = k
        .probe_method
        .iter()
        .filter_map(|f| match *f {
            cli::Forced::Method(hook, method) => Some((hook, method)),
            cli::Forced::SockDiag => None,
        })
        .collect();
    LoadOptions { btf_path: k.btf.clone(), max_sockets, forced, pins, backend }
}

/// Validates the target, loads and attaches the programs, and returns an
/// agent that has swept once. Shared by `run` and `top`.
pub fn start_agent(
    target: &cli::TargetArgs,
    sweep: &cli::SweepArgs,
    kernel: &cli::KernelArgs,
    pins: Option<PinDir>,
    state_file: Option<std::path::PathBuf>,
    metrics: Metrics,
    shared: Arc<Shared>,
) -> Result<Agent> {
    let selector = target.selector();
    target::validate(&selector).context("target")?;
    let reused = pins.as_ref().is_some_and(|p| p.reused);
    let backend = backend::choose(&load_options(kernel, sweep.max_sockets, pins))?;
    if reused {
        info!("continuing from the state a previous observer pinned");
    }
    for r in backend.report() {
        metrics.probe_info.get_or_create(&ProbeLabel { hook: r.hook.name(), method: r.method_label() }).set(1);
        info!("hook {:<10} method {:<14} {}", r.hook.name(), r.method_label(), r.target);
        for (m, why) in &r.passed_over {
            info!("    passed over {m}: {why}");
        }
    }
    if let Backend::Ebpf(probes) = &backend {
        let mut lines = probes.sweeps.describe().into_iter();
        if let Some(first) = lines.next() {
            info!("sweeps: {first}");
        }
        for line in lines {
            info!("    {line}");
        }
    }
    let mut agent = Agent::new(backend, selector, sweep.thresholds(), metrics, shared)?;
    agent.purge_stale_on_first_sweep = reused;
    agent.max_sockets = sweep.max_sockets;
    if reused {
        let n = agent.seed_from_pins();
        info!("continuing from {n} sockets' clocks pinned by a previous observer");
    }
    if let Some(path) = &state_file {
        match sockets::state_file::load(path) {
            Ok(seeds) => {
                info!("continuing from {} sockets' clocks in {}", seeds.len(), path.display());
                agent.seed(seeds);
            }
            Err(e) => warn!("starting every clock afresh: {e}"),
        }
    }
    agent.state_file = state_file;
    // The first sweep runs before serving, so the first scrape has numbers.
    agent.sweep().context("first sweep of the kernel's sockets")?;
    Ok(agent)
}
