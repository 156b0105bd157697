//! The sweep loop: at every interval, find the target's processes, read the
//! kernel's sockets, reconcile the table, feed what the probes need back into
//! the kernel maps, and publish the metrics.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use log::{debug, warn};
use observer_common::{
    AgentClocks, PortKey, ProcCounters, SockEvents, SockRecord, drop_reason, marks, names, settings,
};

use crate::{
    classify::Thresholds,
    clock::{jiffy_ns, monotonic_ns},
    metrics::{self, Metrics, ReadLabel},
    netns,
    probes::{
        backend::Backend,
        errors::ProbeError,
        loader::{Probes, Sweeps},
        plan::{Hook, Method},
        tgid_filter::TgidFilter,
    },
    proc,
    sockets::{
        diag, iter, listing,
        marked::{Marked, MarkedSweeps},
        table::{SocketTable, SweepActions},
    },
    target::{self, Selector},
};

/// Handles on the maps the agent reads and writes.
pub struct KernelMaps {
    tgids: BpfHashMap<MapData, u32, u32>,
    tgid_filter: TgidFilter,
    ports: BpfHashMap<MapData, PortKey, u32>,
    socks: BpfHashMap<MapData, u64, SockEvents>,
    clocks: BpfHashMap<MapData, u64, AgentClocks>,
    counters: PerCpuHashMap<MapData, u32, ProcCounters>,
    drops: PerCpuArray<MapData, u64>,
    hints: PerCpuArray<MapData, u64>,
    gone: aya::maps::Queue<MapData, u64>,
    settings: aya::maps::Array<MapData, u32>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    probes: &mut Probes,
    name: &'static str,
) -> Result<T, ProbeError> {
    let map = probes.ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

impl KernelMaps {
    pub fn take(probes: &mut Probes) -> Result<Self, ProbeError> {
        Ok(KernelMaps {
            tgids: take(probes, names::TARGET_TGIDS)?,
            tgid_filter: TgidFilter::new(take(probes, names::TGID_FILTER)?),
            ports: take(probes, names::TARGET_PORTS)?,
            socks: take(probes, names::SOCKS)?,
            clocks: take(probes, names::CLOCKS)?,
            counters: take(probes, names::COUNTERS)?,
            drops: take(probes, names::DROPS)?,
            hints: take(probes, names::HINTS)?,
            gone: take(probes, names::GONE)?,
            settings: take(probes, names::SETTINGS)?,
        })
    }
}

/// State shared with the HTTP side.
#[derive(Default)]
pub struct Shared {
    pub pids: Mutex<Vec<u32>>,
    pub last_sweep: Mutex<Option<Instant>>,
    /// `/sockets`: the zombie and stalled sockets of the last sweep.
    pub listing: Mutex<Arc<String>>,
}

pub struct Agent {
    pub backend: Backend,
    /// None when polling sock_diag: no program, no map, no events.
    pub maps: Option<KernelMaps>,
    pub selector: Selector,
    pub thresholds: Thresholds,
    pub metrics: Metrics,
    pub shared: Arc<Shared>,
    /// The kernel map came from a previous observer: entries of sockets that
    /// died while nobody watched are dropped after the first sweep.
    pub purge_stale_on_first_sweep: bool,
    /// Cap on per-process series (`--max-pids`), against label explosions.
    pub max_pids: usize,
    /// `--max-sockets`: entries of the probes' map.
    pub max_sockets: u32,
    /// `--state-file`: where the table's clocks are kept across restarts.
    pub state_file: Option<std::path::PathBuf>,
    state_file_failing: bool,
    /// Handles on the network namespaces read, by inode: kept while they are
    /// needed, so a namespace whose processes all exited can still be read.
    netns_files: HashMap<u64, std::fs::File>,
    /// Sockets whose clocks are in the kernel's CLOCKS map.
    clocks_written: HashSet<u64>,
    /// Namespaces this sweep could not read: their sockets are unknown, not gone.
    unread_netns: HashSet<u32>,
    /// The last full read of the targets' file tables, and sweeps since.
    scan: Option<target::Scan>,
    since_full_scan: u32,
    table: SocketTable,
    own_netns: Option<u64>,
    tgids: HashSet<u32>,
    ports: HashMap<(u32, u16), u32>,
    last_counters: HashMap<u32, ProcCounters>,
    last_drops: [u64; drop_reason::COUNT as usize],
    /// The marked-socket sweep, where the kernel allows it; sweeps since
    /// the last full walk, and the probes' hints as last read.
    marked: Option<MarkedSweeps>,
    /// The plan's `owners` hook took the file-table iterator.
    owners_in_kernel: bool,
    since_walk: u32,
    last_hints: [u64; marks::HINT_COUNT as usize],
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Iter(#[from] iter::IterError),
    #[error(transparent)]
    Diag(#[from] diag::DiagError),
    #[error("opening network namespace of pid {pid}: {source}")]
    Netns { pid: u32, source: std::io::Error },
    #[error("map {op}: {reason}")]
    Map { op: &'static str, reason: String },
}

/// The least time from the end of one sweep to the start of the next, as a
/// share of the interval: it bounds how often a send must move a mark.
const MIN_GAP_SHARE: u32 = 8;

/// Jiffies a send may let pass between moves of a socket's mark when sweeps
/// end at least `gap` before the next begins (0: every send moves it). A
/// move the counter dates `n` jiffies back happened less than `n + 1`
/// jiffies ago, so skipping a move below this leaves less than `gap` since
/// the last: too little for the two reads that settling takes.
fn touch_every_jiffies(gap: Duration, jiffy_ns: u64) -> u32 {
    if jiffy_ns == 0 {
        return 0;
    }
    let whole = gap.as_nanos() as u64 / jiffy_ns;
    u32::try_from(whole.saturating_sub(1)).unwrap_or(u32::MAX)
}

/// Sweeps between full reads of the targets' `/proc/PID/fd`.
const FULL_SCAN_EVERY: u32 = 10;

/// Sweeps between full walks of the namespaces' TCP sockets when marked
/// sweeps stand in: the walk also takes the TIME_WAIT sockets into account
/// and catches whatever no mark or hint announced.
const WALK_EVERY: u32 = 60;

impl Agent {
    pub fn new(
        mut backend: Backend,
        selector: Selector,
        thresholds: Thresholds,
        metrics: Metrics,
        shared: Arc<Shared>,
    ) -> Result<Self, ProbeError> {
        let (maps, tick) = match &mut backend {
            Backend::SockDiag(_) => (None, diag::TICK_NS),
            Backend::Ebpf(probes) => (Some(KernelMaps::take(probes)?), jiffy_ns()),
        };
        // Linked now, while the start-up privileges are still held.
        let marked = match &mut backend {
            Backend::Ebpf(probes) if matches!(probes.sweeps, Sweeps::Marked { .. }) => {
                match MarkedSweeps::attach(&mut probes.ebpf) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        warn!("marked-socket sweeps unavailable, every sweep walks all sockets: {e}");
                        probes.sweeps = Sweeps::FullWalks { why: e.to_string() };
                        None
                    }
                }
            }
            _ => None,
        };
        let owners_in_kernel = match &backend {
            Backend::Ebpf(probes) => {
                probes.choices.iter().any(|c| c.hook == Hook::Owners && c.method == Some(Method::Iter))
            }
            Backend::SockDiag(_) => false,
        };
        Ok(Agent {
            backend,
            maps,
            selector,
            thresholds,
            metrics,
            shared,
            purge_stale_on_first_sweep: false,
            max_pids: 64,
            max_sockets: u32::MAX,
            state_file: None,
            state_file_failing: false,
            netns_files: HashMap::new(),
            clocks_written: HashSet::new(),
            unread_netns: HashSet::new(),
            scan: None,
            since_full_scan: 0,
            table: SocketTable::with_tick(tick),
            own_netns: netns::own_inode().ok(),
            tgids: HashSet::new(),
            ports: HashMap::new(),
            last_counters: HashMap::new(),
            last_drops: [0; drop_reason::COUNT as usize],
            owners_in_kernel,
            marked,
            since_walk: 0,
            last_hints: [0; marks::HINT_COUNT as usize],
        })
    }

    /// Sweeps until `stop` is set (and the thread unparked): every
    /// `interval`, and in between when the last sweep found a socket whose
    /// class is due to change before the next one (a peer reaching
    /// `--dead-after`), so that it is reported then rather than up to an
    /// interval later. Those come no closer than a quarter interval apart,
    /// which bounds what trouble can cost.
    pub fn run(mut self, interval: Duration, stop: Arc<AtomicBool>) {
        let gap = interval / MIN_GAP_SHARE;
        self.tell_touch_every(gap);
        let mut next_tick = Instant::now();
        // Start-up's sweep has just ended.
        let mut wake = Instant::now() + gap;
        loop {
            // Parked, not polled: whoever sets `stop` unparks this thread,
            // so an idle observer wakes once a sweep.
            while !stop.load(Ordering::Relaxed) && Instant::now() < wake {
                std::thread::park_timeout(wake.saturating_duration_since(Instant::now()));
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let started = Instant::now();
            if started < next_tick {
                self.metrics.due_sweeps.inc();
            } else {
                next_tick = started + interval;
            }
            match self.sweep() {
                Ok(()) => {}
                Err(e) => {
                    self.metrics.sweep_errors.inc();
                    warn!("sweep failed: {e}");
                }
            }
            self.metrics.sweeps.inc();
            self.metrics.sweep_duration.set(started.elapsed().as_secs_f64());
            let due = self.due_at(started + interval / 4).filter(|&due| due < next_tick);
            wake = due.unwrap_or(next_tick).max(Instant::now() + gap);
        }
    }

    /// Lets sends move a mark only now and then, now that sweeps keep
    /// `gap` between them (`settings::TOUCH_EVERY_JIFFIES`). Unwritten,
    /// every send that leaves bytes outstanding moves it.
    fn tell_touch_every(&mut self, gap: Duration) {
        let Some(maps) = self.maps.as_mut() else { return };
        let every = touch_every_jiffies(gap, jiffy_ns());
        if let Err(e) = maps.settings.set(settings::TOUCH_EVERY_JIFFIES, every, 0) {
            warn!("sends move a socket's mark at every send: cannot write SETTINGS: {e}");
        }
    }

    /// When the earliest class change the last sweep foresaw is due, no
    /// sooner than `earliest`.
    fn due_at(&self, earliest: Instant) -> Option<Instant> {
        let at = self.table.next_change()?;
        let due = Instant::now() + Duration::from_nanos(at.saturating_sub(monotonic_ns()));
        Some(due.max(earliest))
    }

    /// The kernel operations every sweep performs, once, with no effect on
    /// the agent's state: create the socket iterator's link and read it (or
    /// dump sock_diag), and look up, update and delete a map entry under a
    /// key no process can have. Lets the privilege drop find out what this
    /// kernel's `bpf()` asks of a caller that only holds fds.
    pub fn probe_kernel_access(&mut self) -> Result<(), SweepError> {
        match &mut self.backend {
            Backend::SockDiag(_) => {
                diag::read_sockets(None)?;
                return Ok(());
            }
            Backend::Ebpf(probes) => iter::read_sockets(&mut probes.ebpf, None, &|_| true)?,
        };
        if let Some(marked) = self.marked.as_mut() {
            marked.read()?;
        }
        let Some(maps) = self.maps.as_mut() else {
            return Ok(());
        };
        // PIDs stop at 2^22: this key is never a target.
        const NO_PID: u32 = u32::MAX;
        let map_err = |op: &'static str| move |e: aya::maps::MapError| SweepError::Map { op, reason: e.to_string() };
        maps.tgids.insert(NO_PID, 0, 0).map_err(map_err("update"))?;
        let looked_up = maps.tgids.get(&NO_PID, 0).map_err(map_err("lookup"));
        let removed = maps.tgids.remove(&NO_PID).map_err(map_err("delete"));
        looked_up.and(removed)
    }

    /// Whether any target lives in another network namespace than ours.
    pub fn needs_setns(&self) -> bool {
        let pids = self.shared.pids.lock().map(|p| p.clone()).unwrap_or_default();
        pids.iter().any(|&p| netns::inode_of(p).ok() != self.own_netns)
    }

    /// Whether kernel events are observed (the probes are attached), so
    /// their counters mean something.
    pub fn events_available(&self) -> bool {
        self.maps.is_some()
    }

    /// The target's sockets as of the last sweep.
    pub fn table(&self) -> &SocketTable {
        &self.table
    }

    pub fn sweep(&mut self) -> Result<(), SweepError> {
        let t0 = Instant::now();
        let pids = target::resolve(&self.selector);
        // Register new PIDs before reading sockets, so sends from here on
        // are attributed while the sweep runs.
        let mut watched: Vec<u32> = self.table.known_owners().iter().copied().collect();
        watched.extend(&pids);
        self.sync_tgids(&watched);
        // Reading every fd of the target costs a syscall per fd. Between
        // full scans the probes attribute new connections themselves (by
        // sender, by listening port), so the file table is re-read only
        // every FULL_SCAN_EVERY sweeps, or when the set of processes changes.
        let rescan = self.maps.is_none()
            || self.since_full_scan >= FULL_SCAN_EVERY
            || self.scan.as_ref().is_none_or(|s| s.pids != pids);
        if rescan {
            self.scan = Some(self.scan_owners(&pids));
            self.since_full_scan = 0;
        } else {
            self.since_full_scan += 1;
        }
        let mut scan = self.scan.take().unwrap_or_default();
        let mut targets: HashSet<u32> = scan.pids.iter().copied().collect();

        let t_scan = t0.elapsed();
        let mut full_scan = rescan;
        let marked = self.read_marked();
        let t_read = t0.elapsed();
        let actions = match marked {
            Some((m, settled, gone, closing)) => {
                if !full_scan && self.table.needs_owner_scan(&m.records, &scan.inode_owner, &targets) {
                    scan = self.scan_owners(&pids);
                    targets = scan.pids.iter().copied().collect();
                    self.since_full_scan = 0;
                    full_scan = true;
                }
                // A file-table read between walks is applied to the table; a
                // socket it shows that the table lacks needs a walk to be seen.
                if full_scan && self.table.reown(&scan.inode_owner) {
                    debug!("the file tables show sockets the table lacks; walking");
                    self.walk(&scan, &targets, full_scan)?
                } else {
                    let now = monotonic_ns();
                    self.metrics.sweep_records_read.inc_by(m.records.len() as u64);
                    self.metrics.sweep_bytes_read.inc_by(m.bytes as u64);
                    let (th, owners) = (&self.thresholds, &scan.inode_owner);
                    match self.table.merge(now, &m.records, settled, &gone, &closing, owners, &targets, th) {
                        Some(actions) => {
                            self.since_walk += 1;
                            self.metrics.marked_sweeps.inc();
                            actions
                        }
                        None => {
                            debug!("marked sweep: {settled} settled sockets do not match the table; walking");
                            self.walk(&scan, &targets, full_scan)?
                        }
                    }
                }
            }
            None => {
                let (actions, rescanned) = self.walk_with_owners(&mut scan, &pids, full_scan)?;
                if rescanned {
                    targets = scan.pids.iter().copied().collect();
                    full_scan = true;
                }
                actions
            }
        };
        debug!(
            "sweep: /proc scan {:?} ({} target sockets{}), marked read {:?}, total {:?}",
            t_scan,
            scan.inode_owner.len(),
            if full_scan { ", full" } else { "" },
            t_read - t_scan,
            t0.elapsed(),
        );
        self.save_state();
        self.save_clocks();
        if let Some(maps) = self.maps.as_mut() {
            for (sk, ev) in actions.track {
                // BPF_NOEXIST: a probe that got there first knows better.
                match maps.socks.insert(sk, ev, 1) {
                    Ok(()) => self.table.mark_kernel_tracked(sk),
                    Err(e) => debug!("tracking socket {sk:#x}: {e}"),
                }
            }
        }
        // Former targets that still own orphans keep their events counted.
        let mut owners: Vec<u32> = self.table.known_owners().iter().copied().collect();
        owners.extend(&targets);
        self.sync_tgids(&owners);
        self.metrics.add_dropped(metrics::DROP_EVICTED, actions.evicted);
        self.sync_ports(actions.listen_ports);
        let owners: HashSet<u32> = owners.into_iter().collect();
        self.collect_counters(&owners);
        self.collect_drops();

        self.metrics.publish(&self.table.summary());
        // The number observer_sweeps_total reaches once this sweep is counted.
        let listing = Arc::new(listing::render(&self.table, self.metrics.sweeps.get() + 1));
        *self.shared.listing.lock().unwrap_or_else(|p| p.into_inner()) = listing;
        if self.metrics.per_pid.is_some() {
            // One pass over the table for every process, not one per process.
            let mut by_owner = self.table.summary_by_owner();
            let per: Vec<(u32, _)> = scan
                .pids
                .iter()
                .take(self.max_pids)
                .map(|&pid| (pid, by_owner.remove(&pid).unwrap_or_default()))
                .collect();
            self.metrics.publish_per_pid(&per);
        }
        self.metrics.target_up.set(i64::from(!scan.pids.is_empty()));
        self.metrics.target_processes.set(scan.pids.len() as i64);
        if rescan {
            self.metrics.kernel_map.set(proc::own_map_memory() as i64);
        }
        *self.shared.pids.lock().unwrap_or_else(|p| p.into_inner()) = scan.pids.clone();
        self.scan = Some(scan);
        *self.shared.last_sweep.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }

    /// The marked-socket sweep's read, when this sweep may be one: marks
    /// are available, every socket of the table carries one, and the probes
    /// saw nothing only a walk shows. None: walk.
    fn read_marked(&mut self) -> Option<(Marked, u64, Vec<u64>, Vec<u64>)> {
        self.marked.as_ref()?;
        let hinted = self.read_hints();
        let due = self.metrics.sweeps.get() == 0 || self.since_walk >= WALK_EVERY;
        // More target sockets than the probes' map holds: its LRU evicts
        // entries of settled sockets, which only a walk notices.
        let crowded = self.table.len() >= self.max_sockets as usize;
        let gone = self.drain_gone();
        if hinted || due || crowded || !self.unread_netns.is_empty() || !self.table.all_marked() {
            return None;
        }
        let read = self.marked.as_mut()?.read();
        // Closes queued while the sweep ran: each may or may not have been
        // counted as settled.
        let closing = self.drain_gone();
        let settled = self.read_settled();
        match read {
            Ok(m) => Some((m, settled, gone, closing)),
            Err(e) => {
                self.metrics.sweep_errors.inc();
                warn!("marked-socket sweep failed, walking instead: {e}");
                None
            }
        }
    }

    /// Who holds which socket among `pids`: from the kernel's file-table
    /// iterator where the plan chose it, else from `/proc/PID/fd`.
    fn scan_owners(&mut self, pids: &[u32]) -> target::Scan {
        // The iterator visits every file of every task on the machine and
        // keeps the registered processes' only: with none, it finds nothing.
        let registered = pids.iter().any(|p| self.tgids.contains(p));
        if let (true, true, Backend::Ebpf(probes)) = (registered, self.owners_in_kernel, &mut self.backend) {
            match target::held::read(&mut probes.ebpf) {
                Ok(held) => return target::scan_held(pids, &held, &self.tgids),
                Err(e) => {
                    self.metrics.sweep_errors.inc();
                    warn!("file-table iterator failed, reading /proc instead: {e}");
                }
            }
        }
        target::scan(pids)
    }

    /// Marked sockets that closed since the last drain.
    fn drain_gone(&mut self) -> Vec<u64> {
        let Some(maps) = self.maps.as_mut() else { return Vec::new() };
        // Bounded by the queue's size: the probes may push meanwhile.
        (0..maps.gone.capacity()).map_while(|_| maps.gone.pop(0).ok()).collect()
    }

    /// Settled sockets the last marked sweep passed over.
    fn read_settled(&mut self) -> u64 {
        let Some(maps) = self.maps.as_ref() else { return 0 };
        let mut total = 0;
        for (slot, read) in [(marks::SETTLED_SEEN, "write_seq"), (marks::SETTLED_UNREAD, "none")] {
            let n = per_cpu_delta(&maps.hints, slot, &mut self.last_hints[slot as usize]).unwrap_or(0);
            self.metrics.settled_visits.get_or_create(&ReadLabel { read }).inc_by(n);
            total += n;
        }
        total
    }

    /// Whether the probes left a hint since the last read (`marks::HINT_*`).
    fn read_hints(&mut self) -> bool {
        let Some(maps) = self.maps.as_ref() else { return false };
        let mut hinted = false;
        for slot in (0..marks::HINT_COUNT).filter(|&s| marks::is_hint(s)) {
            hinted |= per_cpu_delta(&maps.hints, slot, &mut self.last_hints[slot as usize]).is_some_and(|n| n != 0);
        }
        hinted
    }

    /// A full walk of the watched namespaces, re-reading the file tables
    /// first when the probes attribute a socket they have not seen. True
    /// in the second place when it re-read them.
    fn walk_with_owners(
        &mut self,
        scan: &mut target::Scan,
        pids: &[u32],
        full_scan: bool,
    ) -> Result<(SweepActions, bool), SweepError> {
        let targets: HashSet<u32> = scan.pids.iter().copied().collect();
        let records = self.read_records(scan)?;
        // The probes attribute a new connection to a target (by sender, by
        // listening port) before its file shows up in a file table; before
        // trusting them, read who holds it now.
        if !full_scan && self.table.needs_owner_scan(&records, &scan.inode_owner, &targets) {
            *scan = self.scan_owners(pids);
            self.since_full_scan = 0;
            // Sockets accepted since the records were read belong to the next sweep.
            let targets: HashSet<u32> = scan.pids.iter().copied().collect();
            return Ok((self.walk(scan, &targets, true)?, true));
        }
        Ok((self.apply_records(&records, scan, &targets, full_scan), false))
    }

    /// A full walk of the watched namespaces, into the table.
    fn walk(
        &mut self,
        scan: &target::Scan,
        targets: &HashSet<u32>,
        full_scan: bool,
    ) -> Result<SweepActions, SweepError> {
        let records = self.read_records(scan)?;
        Ok(self.apply_records(&records, scan, targets, full_scan))
    }

    fn apply_records(
        &mut self,
        records: &[SockRecord],
        scan: &target::Scan,
        targets: &HashSet<u32>,
        full_scan: bool,
    ) -> SweepActions {
        if std::mem::take(&mut self.purge_stale_on_first_sweep) {
            self.purge_stale(records);
        }
        self.since_walk = 0;
        self.table.keep_unread(&self.unread_netns);
        let th = &self.thresholds;
        self.table.sweep(monotonic_ns(), records, &scan.inode_owner, targets, full_scan, th)
    }

    /// Continues from the clocks an earlier observer kept (`--state-file`).
    pub fn seed(&mut self, seeds: std::collections::HashMap<u64, crate::sockets::state_file::Seed>) {
        self.table.seed(seeds);
    }

    /// Continues from the clocks a previous observer left in the pinned
    /// CLOCKS map.
    pub fn seed_from_pins(&mut self) -> usize {
        let Some(maps) = self.maps.as_ref() else { return 0 };
        let seeds: std::collections::HashMap<u64, crate::sockets::state_file::Seed> =
            maps.clocks.iter().filter_map(Result::ok).collect();
        let n = seeds.len();
        self.clocks_written.extend(seeds.keys().copied());
        self.table.seed(seeds);
        n
    }

    /// The agent's clocks into the CLOCKS map (pinned with the rest), so a
    /// restarted observer continues from them: written for the sockets that
    /// have one, removed for those that no longer do.
    fn save_clocks(&mut self) {
        let Some(maps) = self.maps.as_mut() else { return };
        let mut now = HashSet::new();
        for (sk, seed) in crate::sockets::state_file::seeds(&self.table) {
            match maps.clocks.insert(sk, seed, 0) {
                Ok(()) => {
                    now.insert(sk);
                }
                Err(e) => debug!("keeping the clocks of socket {sk:#x}: {e}"),
            }
        }
        for gone in self.clocks_written.difference(&now) {
            let _ = maps.clocks.remove(gone);
        }
        self.clocks_written = now;
    }

    fn save_state(&mut self) {
        let Some(path) = &self.state_file else { return };
        match crate::sockets::state_file::save(path, &self.table) {
            Ok(_) => self.state_file_failing = false,
            // Once per failing stretch, not once per sweep.
            Err(e) if !std::mem::replace(&mut self.state_file_failing, true) => warn!("state file: {e}"),
            Err(_) => {}
        }
    }

    /// Every TCP socket of the namespaces the targets live in. A namespace
    /// that cannot be entered (its last process just exited) is skipped
    /// with a warning, not the whole sweep.
    fn read_records(&mut self, scan: &target::Scan) -> Result<Vec<SockRecord>, SweepError> {
        // Namespaces of the targets, and those where a former target still
        // owns sockets (a crashed worker's orphans live on after it), entered
        // through a handle kept from when a process of it was alive.
        let mut namespaces: Vec<(u64, Option<u32>)> =
            scan.netns.iter().map(|(ns, pids)| (*ns, pids.first().copied())).collect();
        let targets: HashSet<u32> = scan.pids.iter().copied().collect();
        let mut orphaned: Vec<u64> = self
            .table
            .sockets()
            .filter(|t| !targets.contains(&t.owner))
            .map(|t| u64::from(t.record.netns))
            .filter(|ns| !scan.netns.contains_key(ns))
            .collect();
        orphaned.sort_unstable();
        orphaned.dedup();
        namespaces.extend(orphaned.into_iter().map(|ns| (ns, None)));
        self.netns_files.retain(|ns, _| namespaces.iter().any(|(n, _)| n == ns));

        self.unread_netns.clear();
        // Room for every socket file the targets hold, before the records
        // are read: a table that grew during the walk held its old and new
        // arrays beside the records, the agent's peak at 100k sockets.
        self.table.reserve(scan.inode_owner.len());
        let mut records = Vec::new();
        // What crossed from the kernel, kept or not.
        let crossed = std::cell::Cell::new(0usize);
        for (ns, pid) in namespaces {
            if Some(ns) != self.own_netns
                && let Some(pid) = pid
            {
                match netns::open(pid) {
                    Ok(f) => {
                        self.netns_files.insert(ns, f);
                    }
                    // Exiting as we look: the handle kept from before still
                    // reads the namespace it leaves behind.
                    Err(_) if self.netns_files.contains_key(&ns) => {}
                    Err(source) => {
                        self.metrics.sweep_errors.inc();
                        warn!("{}", SweepError::Netns { pid, source });
                        self.unread_netns.insert(ns as u32);
                        continue;
                    }
                }
            }
            let file = if Some(ns) == self.own_netns {
                None
            } else {
                match self.netns_files.get(&ns) {
                    Some(f) => Some(f),
                    None => continue,
                }
            };
            // Sockets of other processes are dropped as they are decoded: in a
            // busy namespace they are most of it, and the walk's peak memory.
            let (table, owners) = (&self.table, &scan.inode_owner);
            let keep = |r: &SockRecord| {
                crossed.set(crossed.get() + 1);
                table.may_concern(r, owners)
            };
            match &mut self.backend {
                Backend::SockDiag(_) => records.extend(diag::read_sockets(file)?.into_iter().filter(|r| keep(r))),
                Backend::Ebpf(probes) => records.extend(iter::read_sockets(&mut probes.ebpf, file, &keep)?),
            }
        }
        self.metrics.sweep_records_read.inc_by(crossed.get() as u64);
        self.metrics.sweep_bytes_read.inc_by((crossed.get() * std::mem::size_of::<SockRecord>()) as u64);
        Ok(records)
    }

    fn purge_stale(&mut self, records: &[SockRecord]) {
        let Some(maps) = self.maps.as_mut() else {
            return;
        };
        let alive: HashSet<u64> = records.iter().map(|r| r.sk).collect();
        let stale: Vec<u64> = maps.socks.keys().filter_map(Result::ok).filter(|sk| !alive.contains(sk)).collect();
        for sk in &stale {
            let _ = maps.socks.remove(sk);
        }
        log::info!("dropped {} entries of sockets that closed while no observer ran", stale.len());
    }

    fn sync_tgids(&mut self, pids: &[u32]) {
        let Some(maps) = self.maps.as_mut() else {
            return;
        };
        let want: HashSet<u32> = pids.iter().copied().collect();
        for gone in self.tgids.difference(&want).copied().collect::<Vec<_>>() {
            let _ = maps.tgids.remove(&gone);
            self.tgids.remove(&gone);
        }
        for pid in want {
            if !self.tgids.contains(&pid) {
                match maps.tgids.insert(pid, 1, 0) {
                    Ok(()) => _ = self.tgids.insert(pid),
                    Err(e) => {
                        debug!("registering pid {pid} with the probes: {e}");
                        self.metrics.add_dropped(metrics::DROP_PID_MAP, 1);
                    }
                }
            }
        }
        if let Err(e) = maps.tgid_filter.sync(&self.tgids) {
            // A word not written is written at the next sweep.
            debug!("writing the watched processes' filter: {e}");
            self.metrics.add_dropped(metrics::DROP_PID_MAP, 1);
        }
    }

    fn sync_ports(&mut self, want: HashMap<(u32, u16), u32>) {
        let Some(maps) = self.maps.as_mut() else {
            return;
        };
        let key = |(netns, port): (u32, u16)| PortKey { netns, port, _pad: 0 };
        for (k, _) in self.ports.iter().filter(|(k, _)| !want.contains_key(k)) {
            let _ = maps.ports.remove(&key(*k));
        }
        for (k, owner) in &want {
            if self.ports.get(k) != Some(owner)
                && let Err(e) = maps.ports.insert(key(*k), *owner, 0)
            {
                debug!("registering listening port {} with the probes: {e}", k.1);
                self.metrics.add_dropped(metrics::DROP_PORT_MAP, 1);
            }
        }
        self.ports = want;
    }

    /// Adds what the kernel counted since the last sweep; forgets processes
    /// that are no longer targets after taking their final counts.
    fn collect_counters(&mut self, targets: &HashSet<u32>) {
        let Some(maps) = self.maps.as_mut() else {
            return;
        };
        let known: HashSet<u32> = self.last_counters.keys().copied().chain(targets.iter().copied()).collect();
        for pid in known {
            let now = match maps.counters.get(&pid, 0) {
                Ok(per_cpu) => per_cpu.iter().fold(ProcCounters::default(), |mut a, c| {
                    a.retransmits += c.retransmits;
                    a.rto_timeouts += c.rto_timeouts;
                    a.zero_window_probes += c.zero_window_probes;
                    a.loss_probes += c.loss_probes;
                    a.opened += c.opened;
                    a.closed += c.closed;
                    a
                }),
                Err(_) => ProcCounters::default(),
            };
            let before = self.last_counters.get(&pid).copied().unwrap_or_default();
            let d = |n: u64, b: u64| n.saturating_sub(b);
            let e = &self.metrics.events;
            e.retransmits.inc_by(d(now.retransmits, before.retransmits));
            e.rto_timeouts.inc_by(d(now.rto_timeouts, before.rto_timeouts));
            e.zero_window_probes.inc_by(d(now.zero_window_probes, before.zero_window_probes));
            e.loss_probes.inc_by(d(now.loss_probes, before.loss_probes));
            e.opened.inc_by(d(now.opened, before.opened));
            e.closed.inc_by(d(now.closed, before.closed));
            if targets.contains(&pid) {
                self.last_counters.insert(pid, now);
            } else {
                let _ = maps.counters.remove(&pid);
                self.last_counters.remove(&pid);
            }
        }
    }

    fn collect_drops(&mut self) {
        let Some(maps) = self.maps.as_ref() else {
            return;
        };
        for reason in 0..drop_reason::COUNT {
            if let Some(n) = per_cpu_delta(&maps.drops, reason, &mut self.last_drops[reason as usize]) {
                self.metrics.add_dropped(reason as usize, n);
            }
        }
    }
}

/// How much the per-CPU counter `slot` of `map`, summed over CPUs, grew
/// since `last`, which becomes its current total; None when unreadable.
fn per_cpu_delta(map: &PerCpuArray<MapData, u64>, slot: u32, last: &mut u64) -> Option<u64> {
    let total: u64 = map.get(&slot, 0).ok()?.iter().sum();
    Some(total.saturating_sub(std::mem::replace(last, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_skips_a_move_only_while_less_than_the_gap_has_passed() {
        const JIFFY: u64 = 4_000_000;
        for gap_ms in [6, 12, 125, 250, 1000] {
            let gap = Duration::from_millis(gap_ms);
            let every = u64::from(touch_every_jiffies(gap, JIFFY));
            // Skipped while the counter says fewer than `every` jiffies
            // passed: at most `every` real jiffies, under the gap.
            assert!(every == 0 || every * JIFFY < gap.as_nanos() as u64, "{gap_ms} ms: {every} jiffies");
        }
        assert_eq!(touch_every_jiffies(Duration::from_millis(125), JIFFY), 30);
        assert_eq!(touch_every_jiffies(Duration::from_millis(6), JIFFY), 0, "under two jiffies: every send");
        assert_eq!(touch_every_jiffies(Duration::from_secs(1), 0), 0, "jiffy unknown");
    }
}
