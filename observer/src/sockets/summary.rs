//! Aggregates over a set of sockets: what the gauges show.

use std::collections::BTreeMap;

use crate::{
    classify::{Class, StallReason, ZombieReason},
    sockets::table::Tracked,
};

/// Aggregates over the table for one set of owners. Kept as sockets come
/// and go (`sockets::entries`), so equal to a sum over the table at any
/// moment, with no key whose count is zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub by_state: BTreeMap<u8, u64>,
    pub zombies: BTreeMap<ZombieReason, u64>,
    pub zombie_bytes: BTreeMap<ZombieReason, u64>,
    pub stalled: BTreeMap<StallReason, u64>,
    pub stalled_bytes: BTreeMap<StallReason, u64>,
    pub unsent: u64,
    pub unacked: u64,
    pub tracked: u64,
}

impl Summary {
    pub fn add(&mut self, t: &Tracked) {
        self.tracked += 1;
        *self.by_state.entry(t.record.state).or_default() += 1;
        if t.is_listener() {
            return;
        }
        let (unsent, unacked) = (u64::from(t.unsent()), u64::from(t.unacked()));
        self.unsent += unsent;
        self.unacked += unacked;
        match t.class {
            Class::Zombie(r) => {
                *self.zombies.entry(r).or_default() += 1;
                *self.zombie_bytes.entry(r).or_default() += unsent + unacked;
            }
            Class::Stalled(r) => {
                *self.stalled.entry(r).or_default() += 1;
                *self.stalled_bytes.entry(r).or_default() += unsent + unacked;
            }
            Class::Healthy => {}
        }
    }

    /// Undoes `add(t)` for a `t` added before, unchanged since.
    pub fn remove(&mut self, t: &Tracked) {
        self.tracked -= 1;
        take_one(&mut self.by_state, t.record.state);
        if t.is_listener() {
            return;
        }
        let (unsent, unacked) = (u64::from(t.unsent()), u64::from(t.unacked()));
        self.unsent -= unsent;
        self.unacked -= unacked;
        match t.class {
            Class::Zombie(r) => take(&mut self.zombies, &mut self.zombie_bytes, r, unsent + unacked),
            Class::Stalled(r) => take(&mut self.stalled, &mut self.stalled_bytes, r, unsent + unacked),
            Class::Healthy => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tracked == 0
    }
}

/// One socket less under `key`; the key goes with its last socket.
fn take_one<K: Ord>(counts: &mut BTreeMap<K, u64>, key: K) -> u64 {
    let Some(n) = counts.get_mut(&key) else { return 0 };
    *n -= 1;
    let left = *n;
    if left == 0 {
        counts.remove(&key);
    }
    left
}

/// One socket and its bytes less under `key`: the bytes' key goes with the
/// last socket, not with the last byte (a zombie may hold none).
fn take<K: Ord + Copy>(counts: &mut BTreeMap<K, u64>, bytes: &mut BTreeMap<K, u64>, key: K, n: u64) {
    if take_one(counts, key) == 0 {
        bytes.remove(&key);
    } else if let Some(b) = bytes.get_mut(&key) {
        *b -= n;
    }
}
