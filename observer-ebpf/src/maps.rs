//! Maps shared with the agent. Capacities here are defaults; the agent
//! resizes `SOCKS` from `--max-sockets` before loading.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, Queue, RingBuf},
};
use observer_common::{
    AgentClocks, Mark, PortKey, ProcCounters, SockEvents, drop_reason, marks, settings, tgid_filter, touched::Sets,
};

/// Processes being watched (tgid -> 1). Written by the agent.
#[map]
pub static TARGET_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// One bit per `tgid % TGID_FILTER_BITS`, set for every watched process
/// (`tgid_filter`). Written by the agent with `TARGET_TGIDS`. An array
/// lookup is a few instructions the verifier inlines; the hash lookup it
/// spares every send of an unwatched process hashes the key.
#[map]
pub static TGID_FILTER: Array<u64> = Array::with_max_entries(tgid_filter::WORDS, 0);

#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    may_be_target(tgid) && TARGET_TGIDS.get_ptr(tgid).is_some()
}

/// False for every process that is not watched but a few (`tgid_filter`).
#[inline(always)]
pub fn may_be_target(tgid: u32) -> bool {
    let (word, bit) = tgid_filter::slot(tgid);
    TGID_FILTER.get(word).is_some_and(|w| w & bit != 0)
}

/// Listening ports of the watched processes -> owning tgid. Written by the
/// agent, so a connection the kernel accepts in softirq context (before the
/// application calls `accept()`) is already attributed to its owner.
#[map]
pub static TARGET_PORTS: HashMap<PortKey, u32> = HashMap::with_max_entries(4096, 0);

/// Tracked sockets by kernel address. LRU so that a missed destruction can
/// never fill it for good; the agent notices and counts evictions.
#[map]
pub static SOCKS: LruHashMap<u64, SockEvents> = LruHashMap::with_max_entries(131_072, 0);

/// The agent's own clocks of the sockets that have one: written by the agent
/// only, pinned so a restarted observer continues from them.
#[map]
pub static CLOCKS: HashMap<u64, AgentClocks> = HashMap::with_max_entries(65_536, 0);

/// The mark of every target socket, which the marked-socket sweep visits.
/// Socket-local storage, so it dies with the socket and needs no eviction.
#[btf_map]
pub static MARKS: SkStorage<Mark> = SkStorage::new();

/// Sockets whose mark a send moved lately, per CPU (`touched`). Only the
/// send program uses it, and a program does not run nested in itself on a
/// CPU, so a slot's two words are never seen half-written.
#[map]
pub static TOUCHED: PerCpuArray<Sets> = PerCpuArray::with_max_entries(1, 0);

/// Marked sockets that closed, for the agent to drop: a settled socket
/// crosses as nothing, so its absence says nothing.
#[map]
pub static GONE: Queue<u64> = Queue::with_max_entries(65_536, 0);

/// Records of the marked-socket sweep, beside the iterator's own output.
/// That output is read 32 KiB at a time, and each read restarts the walk
/// of the storage map's bucket from its head: with a bucket per CPU, on a
/// small machine a record in every few hundred sockets made the sweep walk
/// its buckets again and again. What the ring cannot take goes to the
/// output as before.
#[map]
pub static CROSSED: RingBuf = RingBuf::with_byte_size(marks::CROSSED_BYTES, 0);

/// Choices the agent makes once the hooks are attached, by `settings::*`.
#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(settings::COUNT, 0);

/// See `settings::SENDS_TOUCH`.
#[inline(always)]
pub fn sends_touch() -> bool {
    SETTINGS.get(settings::SENDS_TOUCH).is_some_and(|v| *v != 0)
}

/// See `settings::TOUCH_EVERY_JIFFIES`.
#[inline(always)]
pub fn touch_every_jiffies() -> u64 {
    SETTINGS.get(settings::TOUCH_EVERY_JIFFIES).map_or(0, |v| u64::from(*v))
}

/// What the probes saw that only a full walk shows, by `marks::HINT_*`.
#[map]
pub static HINTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(marks::HINT_COUNT, 0);

#[inline(always)]
pub fn hint(slot: u32) {
    if let Some(n) = HINTS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *n += 1 };
    }
}

/// Event counters per owning process.
#[map]
pub static COUNTERS: PerCpuHashMap<u32, ProcCounters> = PerCpuHashMap::with_max_entries(1024, 0);

/// What the programs had to give up, by `drop_reason`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// Bumps one counter of `tgid`, creating its entry on first use.
#[inline(always)]
pub fn bump(tgid: u32, counter: Counter) {
    bump_by(tgid, counter, 1);
}

/// Adds `n` to one counter of `tgid`.
#[inline(always)]
pub fn bump_by(tgid: u32, counter: Counter, n: u64) {
    // A socket handed to (and closed by) a process we do not watch names
    // that process; its events must not create entries nobody collects.
    if n == 0 || !is_target(tgid) {
        return;
    }
    let ptr = match COUNTERS.get_ptr_mut(tgid) {
        Some(ptr) => ptr,
        None => {
            // BPF_NOEXIST: another CPU may have created it meanwhile; per-CPU
            // maps give each CPU its own zeroed slot either way.
            let _ = COUNTERS.insert(tgid, ProcCounters::default(), 1);
            match COUNTERS.get_ptr_mut(tgid) {
                Some(ptr) => ptr,
                None => {
                    count_drop(drop_reason::COUNTER_MAP_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: the pointer is this CPU's slot of a live map entry.
    let c = unsafe { &mut *ptr };
    // A match, not a function pointer: BPF has no indirect calls.
    let slot = match counter {
        Counter::Retransmits => &mut c.retransmits,
        Counter::RtoTimeouts => &mut c.rto_timeouts,
        Counter::ZeroWindowProbes => &mut c.zero_window_probes,
        Counter::LossProbes => &mut c.loss_probes,
        Counter::Opened => &mut c.opened,
        Counter::Closed => &mut c.closed,
    };
    *slot += n;
}

#[derive(Clone, Copy)]
pub enum Counter {
    Retransmits,
    RtoTimeouts,
    ZeroWindowProbes,
    LossProbes,
    Opened,
    Closed,
}
