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
        loader::{self, LoadOptions},
        pins::PinDir,
    },
    sockets, target,
};

pub fn load_options(k: &cli::KernelArgs, max_sockets: u32, pins: Option<PinDir>) -> LoadOptions {
    LoadOptions {
        btf_path: k.btf.clone(),
        max_sockets,
        forced: k.probe_method.clone(),
        pins,
        fallback: k.fallback == cli::Fallback::SockDiag,
    }
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
    let probes = loader::load(&load_options(kernel, sweep.max_sockets, pins))?;
    if reused {
        info!("continuing from the state a previous observer pinned");
    }
    for c in &probes.choices {
        let method = c.method.map_or("none", |m| m.name());
        metrics.probe_info.get_or_create(&ProbeLabel { hook: c.hook.name(), method }).set(1);
        info!("hook {:<10} method {:<14} {}", c.hook.name(), method, c.target);
        for (m, why) in &c.rejected {
            info!("    passed over {m}: {why}");
        }
    }
    match &probes.sweeps {
        loader::Sweeps::Marked => {
            info!("sweeps: the marked sockets that changed, between full walks of the namespaces' TCP sockets")
        }
        loader::Sweeps::FullWalks { why } => info!("sweeps: every sweep walks all TCP sockets ({why})"),
    }
    let mut agent = Agent::new(probes, selector, sweep.thresholds(), metrics, shared)?;
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
