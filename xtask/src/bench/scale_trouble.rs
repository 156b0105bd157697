//! The scale benchmark's troubled variant: a share of the target's sockets
//! (1%) is put in trouble the cheap way, with the idle connections the
//! holders already have. Half the share vanish: nft drops every packet of
//! their peers (in the benchmark's own namespace), then the server writes
//! 1 KiB to each, which is retransmitted unanswered (`dead_peer` once
//! `--dead-after` passes). The other half stop reading (the clients never
//! read): the server writes until their receive window closes and its data
//! queues (`zero_window` once `--stall-after` passes). The rest stay idle.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{
    child::{Child, word},
    netns,
    observer::{Metrics, Observer},
    pause,
};

pub const DEAD: &str = "observer_zombie_sockets{reason=\"dead_peer\"}";
pub const ZERO_WINDOW: &str = "observer_stalled_sockets{reason=\"zero_window\"}";
const TABLE: &str = "obsbtrouble";
/// What a vanished peer is sent: enough to be outstanding, no more.
const VANISHED_BYTES: usize = 1024;
/// Per slow peer, more than a receive window of a loopback socket that never
/// reads holds (128 KiB by default): the rest waits in the server's queue.
const SLOW_BYTES: usize = 512 * 1024;
/// nft elements per script, to keep each command line short.
const NFT_BATCH: usize = 500;
/// The observer's default `--dead-after` and `--stall-after` (10 s) and slack.
const COUNT_LIMIT: Duration = Duration::from_secs(45);

/// What was made, and what the observer counted.
#[derive(Debug, Default, Clone)]
pub struct Made {
    pub vanished: usize,
    pub slow: usize,
    pub bytes_written: u64,
    /// The observer's gauges once they reached the counts made, or at the limit.
    pub counted_dead: f64,
    pub counted_zero_window: f64,
    pub secs_to_count: f64,
    pub counted_in_time: bool,
}

/// Troubles `share` of the sockets the servers hold, then waits (bounded) for
/// the observer to count them. `servers` pairs each target process with the
/// number of connections it holds.
pub fn make(ns: &str, servers: &mut [(&mut Child, usize)], share: f64, obs: &Observer) -> Result<Made> {
    let mut made = Made::default();
    let mut gone = Vec::new();
    let mut groups = Vec::new();
    for (server, held) in servers.iter_mut() {
        let n = (*held as f64 * share).round() as usize;
        let vanish = n / 2;
        let (gv, peers) = pick(server, vanish)?;
        let (gs, slow_peers) = pick(server, n - vanish)?;
        made.vanished += peers.len();
        made.slow += slow_peers.len();
        gone.extend(peers);
        groups.push((gv, gs));
    }
    cut_off(ns, &gone)?;
    for ((server, _), (gv, gs)) in servers.iter_mut().zip(groups) {
        made.bytes_written += write(server, gv, VANISHED_BYTES)?;
        made.bytes_written += write(server, gs, SLOW_BYTES)?;
    }
    let t0 = Instant::now();
    let mut last = Metrics::default();
    while t0.elapsed() < COUNT_LIMIT {
        if let Ok(m) = obs.scrape() {
            last = m;
            if last.get(DEAD) >= made.vanished as f64 && last.get(ZERO_WINDOW) >= made.slow as f64 {
                made.counted_in_time = true;
                break;
            }
        }
        pause(Duration::from_millis(250))?;
    }
    made.secs_to_count = t0.elapsed().as_secs_f64();
    made.counted_dead = last.get(DEAD);
    made.counted_zero_window = last.get(ZERO_WINDOW);
    Ok(made)
}

/// `pick N` on a hold-server: (group, peer addresses).
fn pick(server: &mut Child, n: usize) -> Result<(usize, Vec<String>)> {
    let reply = server.request(&format!("pick {n}"), "", Duration::from_secs(30))?;
    if !reply.starts_with("PICKED ") {
        bail!("pick {n}: {reply}");
    }
    let group = word(&reply, 1).and_then(|g| g.parse().ok()).with_context(|| format!("bad reply {reply:?}"))?;
    let peers = word(&reply, 2).map_or(vec![], |p| p.split(',').map(str::to_string).collect());
    Ok((group, peers))
}

fn write(server: &mut Child, group: usize, bytes: usize) -> Result<u64> {
    let reply = server.request(&format!("write {group} {bytes}"), "", Duration::from_secs(120))?;
    reply.strip_prefix("WROTE ").and_then(|t| t.parse().ok()).with_context(|| format!("write: {reply}"))
}

/// Drops every packet from or to the given peers (`ip:port`), in `ns`, on
/// the input hook: on loopback both directions pass it. Not on output: a
/// packet dropped there fails the sender's transmit, so TCP keeps the data
/// as not sent (and probes) instead of retransmitting unacknowledged data.
fn cut_off(ns: &str, peers: &[String]) -> Result<()> {
    netns::nft(
        ns,
        &format!(
            "table inet {TABLE} {{\n set gone {{ type ipv4_addr . inet_service; }}\n \
             chain input {{ type filter hook input priority 0; policy accept;\n  \
             ip saddr . tcp sport @gone drop\n  ip daddr . tcp dport @gone drop\n }}\n}}\n"
        ),
    )?;
    for batch in peers.chunks(NFT_BATCH) {
        let elements: Vec<String> = batch
            .iter()
            .map(|p| {
                let (ip, port) = p.rsplit_once(':').with_context(|| format!("peer address {p}"))?;
                Ok(format!("{ip} . {port}"))
            })
            .collect::<Result<_>>()?;
        netns::nft(ns, &format!("add element inet {TABLE} gone {{ {} }}\n", elements.join(", ")))?;
    }
    Ok(())
}
