//! `observer top`: a live terminal view of the target's sockets, worst
//! first. Sweeps the kernel every interval like `observer run`, but draws
//! the table instead of serving metrics.

mod format;
mod keys;
mod model;
mod signals;
mod terminal;
mod view;

use std::{
    io::IsTerminal,
    sync::Arc,
    time::{Duration, Instant},
};

use self::{
    keys::{Input, Keys},
    model::Model,
    terminal::Screen,
};
use crate::{
    agent::{Agent, Shared},
    cli::TopArgs,
    clock::monotonic_ns,
    metrics::Metrics,
};
use anyhow::{Context, Result, bail};

/// Longest wait for a key before checking for stop signals and the clock.
const KEY_POLL: Duration = Duration::from_millis(200);

pub fn run(args: TopArgs) -> Result<()> {
    // Before loading anything into the kernel: without a terminal there is
    // nothing to draw on.
    if !std::io::stdout().is_terminal() {
        bail!("observer top draws on a terminal and stdout is not one (for metrics, use `observer run`)");
    }
    if std::env::var_os("RUST_LOG").is_none() {
        // Which method each hook uses is news for a daemon's log, noise
        // before a screen; `observer check` tells it.
        log::set_max_level(log::LevelFilter::Warn);
    }
    let mut agent = crate::startup::start_agent(
        &args.target,
        &args.sweep,
        &args.kernel,
        None,
        None,
        Metrics::default(),
        Arc::new(Shared::default()),
    )?;
    signals::install().context("installing signal handlers")?;
    let keys = Keys::open().context("opening the terminal for keys")?;
    let screen = Screen::enter().context("setting up the terminal")?;
    // Log lines on stderr would scribble over the screen; the screen says
    // itself when a sweep fails.
    let log_level = log::max_level();
    log::set_max_level(log::LevelFilter::Off);
    let result = watch(&mut agent, screen, &keys, args.sweep.interval);
    log::set_max_level(log_level);
    result
}

/// Draws, waits for keys until the next sweep is due, sweeps; until quit.
/// Takes the screen by value so it is restored before the caller returns.
fn watch(agent: &mut Agent, mut screen: Screen, keys: &Keys, interval: Duration) -> Result<()> {
    let mut error = None;
    let mut next_sweep = Instant::now() + interval;
    loop {
        let model = snapshot(agent, interval, error.clone());
        screen.term.draw(|f| view::render(f, &model)).context("drawing")?;
        loop {
            if signals::requested() {
                return Ok(());
            }
            let left = next_sweep.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let started = Instant::now();
                error = agent.sweep().err().map(|e| e.to_string());
                // A sweep slower than the interval must not leave keys unread.
                next_sweep = (started + interval).max(Instant::now() + Duration::from_millis(50));
                break;
            }
            match keys.wait(left.min(KEY_POLL)).context("reading the terminal")? {
                Input::Quit | Input::Gone => return Ok(()),
                Input::Redraw => break,
                Input::Nothing => {}
            }
        }
    }
}

fn snapshot(agent: &Agent, interval: Duration, error: Option<String>) -> Model {
    let pids = agent.shared.pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let table = agent.table();
    Model {
        target: agent.selector.to_string(),
        rss: crate::target::rss(&pids),
        pids,
        interval,
        summary: table.summary(),
        rows: model::rows(table.sockets(), monotonic_ns()),
        error,
    }
}
