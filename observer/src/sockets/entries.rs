//! The table's sockets, with what a sweep publishes kept up to date as
//! entries come and go. A marked sweep hands over the few sockets that
//! changed; at 100k sockets, passes over the whole table for its sums, its
//! owners and its listing were most of the agent's own CPU.

use foldhash::{HashMap, HashSet};

use crate::{
    classify::Class,
    sockets::{state_file, summary::Summary, table::Tracked},
};

/// Sockets by kernel address. Every change goes through here, so the sums
/// never disagree with the entries.
///
/// The entries sit in one dense vector, found through a small index: a
/// hash table of 300-byte entries spreads them over every page it has and
/// holds the old and the new table at once while it grows (at 100k sockets
/// 20 and 40 MB). The vector's unused tail is never touched, and glibc
/// grows an allocation that large in place (`mremap`).
#[derive(Default)]
pub struct Entries {
    index: HashMap<u64, u32>,
    slots: Vec<(u64, Tracked)>,
    sums: Sums,
    /// Moves whenever an entry comes, goes, or changes its inode or owner:
    /// while it stands still, who holds what in the table has not changed.
    holders_version: u64,
}

#[derive(Default)]
struct Sums {
    total: Summary,
    by_owner: HashMap<u32, Summary>,
    unmarked: usize,
    listeners: HashSet<u64>,
    /// In trouble, or with a clock worth keeping: what `/sockets` lists and
    /// what is written to the pinned clocks.
    notable: HashSet<u64>,
}

impl Sums {
    fn add(&mut self, sk: u64, t: &Tracked) {
        self.total.add(t);
        self.by_owner.entry(t.owner).or_default().add(t);
        self.unmarked += usize::from(t.record.marked == 0);
        if t.is_listener() {
            self.listeners.insert(sk);
        }
        if notable(t) {
            self.notable.insert(sk);
        }
    }

    fn remove(&mut self, sk: u64, t: &Tracked) {
        self.total.remove(t);
        if let Some(s) = self.by_owner.get_mut(&t.owner) {
            s.remove(t);
            if s.is_empty() {
                self.by_owner.remove(&t.owner);
            }
        }
        self.unmarked -= usize::from(t.record.marked == 0);
        self.listeners.remove(&sk);
        self.notable.remove(&sk);
    }
}

fn notable(t: &Tracked) -> bool {
    t.class != Class::Healthy || state_file::worth_keeping(t)
}

impl Entries {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, sk: &u64) -> Option<&Tracked> {
        self.index.get(sk).map(|&i| &self.slots[i as usize].1)
    }

    pub fn contains_key(&self, sk: &u64) -> bool {
        self.index.contains_key(sk)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Tracked)> {
        self.slots.iter().map(|(sk, t)| (sk, t))
    }

    pub fn values(&self) -> impl Iterator<Item = &Tracked> {
        self.slots.iter().map(|(_, t)| t)
    }

    /// Room for `n` more entries at once.
    pub fn reserve(&mut self, n: usize) {
        self.index.reserve(n);
        self.slots.reserve(n);
    }

    pub fn insert(&mut self, sk: u64, t: Tracked) {
        let Some(&i) = self.index.get(&sk) else {
            self.holders_version += 1;
            self.sums.add(sk, &t);
            self.index.insert(sk, self.slots.len() as u32);
            self.slots.push((sk, t));
            return;
        };
        // The old entry's share goes first: both are under the same key.
        let old = &mut self.slots[i as usize].1;
        if (old.record.inode, old.owner) != (t.record.inode, t.owner) {
            self.holders_version += 1;
        }
        self.sums.remove(sk, old);
        self.sums.add(sk, &t);
        *old = t;
    }

    pub fn remove(&mut self, sk: &u64) -> Option<Tracked> {
        let i = self.index.remove(sk)?;
        let t = self.take_slot(i as usize);
        self.sums.remove(*sk, &t);
        self.holders_version += 1;
        Some(t)
    }

    /// Takes slot `i` out, moving the last entry into it.
    fn take_slot(&mut self, i: usize) -> Tracked {
        let (_, t) = self.slots.swap_remove(i);
        if let Some((moved, _)) = self.slots.get(i) {
            self.index.insert(*moved, i as u32);
        }
        t
    }

    /// Changes one entry in place; false when there is none.
    pub fn modify(&mut self, sk: &u64, f: impl FnOnce(&mut Tracked)) -> bool {
        let Some(&i) = self.index.get(sk) else { return false };
        let t = &mut self.slots[i as usize].1;
        self.sums.remove(*sk, t);
        let held = (t.record.inode, t.owner);
        f(t);
        if (t.record.inode, t.owner) != held {
            self.holders_version += 1;
        }
        self.sums.add(*sk, t);
        true
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &Tracked) -> bool) {
        let mut i = 0;
        while let Some((sk, t)) = self.slots.get(i) {
            if keep(sk, t) {
                i += 1;
                continue;
            }
            let sk = *sk;
            self.index.remove(&sk);
            let t = self.take_slot(i);
            self.sums.remove(sk, &t);
            self.holders_version += 1;
        }
    }

    /// See `holders_version`.
    pub fn holders_version(&self) -> u64 {
        self.holders_version
    }

    /// Over every socket.
    pub fn total(&self) -> &Summary {
        &self.sums.total
    }

    /// One summary per owning process; a process owns at least one socket.
    pub fn by_owner(&self) -> &HashMap<u32, Summary> {
        &self.sums.by_owner
    }

    /// Whether every socket carries a mark.
    pub fn all_marked(&self) -> bool {
        self.sums.unmarked == 0
    }

    pub fn listeners(&self) -> impl Iterator<Item = &Tracked> {
        self.sums.listeners.iter().filter_map(|sk| self.get(sk))
    }

    /// The sockets in trouble, and those with a clock worth keeping.
    pub fn notable(&self) -> impl Iterator<Item = (&u64, &Tracked)> {
        self.sums.notable.iter().filter_map(|sk| self.index.get(sk)).map(|&i| {
            let (sk, t) = &self.slots[i as usize];
            (sk, t)
        })
    }
}

#[cfg(test)]
mod tests {
    use observer_common::{SockRecord, tcp_state};
    use proptest::prelude::*;

    use super::*;
    use crate::classify::{StallReason, ZombieReason};

    fn tracked(owner: u32, state: u8, class: u8, queued: u32, marked: bool) -> Tracked {
        let class = match class % 4 {
            0 => Class::Healthy,
            1 => Class::Zombie(ZombieReason::ALL[usize::from(class) % ZombieReason::ALL.len()]),
            2 => Class::Stalled(StallReason::ALL[usize::from(class) % StallReason::ALL.len()]),
            // A zombie that holds no byte keeps its bytes' key until it goes.
            _ => Class::Zombie(ZombieReason::ALL[0]),
        };
        let queued = if class == Class::Zombie(ZombieReason::ALL[0]) { 0 } else { queued };
        let record = SockRecord {
            state,
            marked: u8::from(marked),
            write_seq: 1000 + queued,
            snd_nxt: 1000 + queued / 2,
            snd_una: 1000,
            ..SockRecord::default()
        };
        Tracked {
            owner,
            record,
            class,
            progress_at: 0,
            close_wait_at: None,
            zero_window_at: None,
            open_at: 0,
            connect_at: None,
            probe_seen_at: None,
            kernel_tracked: false,
            seen: 0,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { sk: u64, owner: u32, state: u8, class: u8, queued: u32, marked: bool },
        Remove(u64),
        Reown(u64, u32),
        Retain(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let states = prop::sample::select(vec![tcp_state::ESTABLISHED, tcp_state::LISTEN, tcp_state::CLOSE_WAIT]);
        prop_oneof![
            (0u64..12, 1u32..4, states, any::<u8>(), 0u32..5000, any::<bool>()).prop_map(
                |(sk, owner, state, class, queued, marked)| Op::Insert { sk, owner, state, class, queued, marked }
            ),
            (0u64..12).prop_map(Op::Remove),
            (0u64..12, 1u32..4).prop_map(|(sk, o)| Op::Reown(sk, o)),
            (1u64..4).prop_map(Op::Retain),
        ]
    }

    proptest! {
        #[test]
        fn the_sums_equal_a_pass_over_the_entries(ops in prop::collection::vec(op(), 0..60)) {
            let mut e = Entries::default();
            for op in ops {
                match op {
                    Op::Insert { sk, owner, state, class, queued, marked } => {
                        e.insert(sk, tracked(owner, state, class, queued, marked))
                    }
                    Op::Remove(sk) => {
                        e.remove(&sk);
                    }
                    Op::Reown(sk, owner) => {
                        e.modify(&sk, |t| t.owner = owner);
                    }
                    Op::Retain(m) => e.retain(|sk, _| sk % m != 0),
                }
                let mut total = Summary::default();
                let mut by_owner: std::collections::HashMap<u32, Summary> = Default::default();
                for t in e.values() {
                    total.add(t);
                    by_owner.entry(t.owner).or_default().add(t);
                }
                prop_assert_eq!(e.total(), &total);
                // The index finds every entry where it is.
                prop_assert_eq!(e.index.len(), e.len());
                for (sk, t) in e.iter() {
                    prop_assert!(std::ptr::eq(e.get(sk).expect("indexed"), t));
                }
                prop_assert_eq!(e.by_owner().len(), by_owner.len());
                for (pid, s) in &by_owner {
                    prop_assert_eq!(e.by_owner().get(pid), Some(s));
                }
                prop_assert_eq!(e.all_marked(), e.values().all(|t| t.record.marked != 0));
                let mut listeners: Vec<u64> = e.listeners().map(|t| t.record.state.into()).collect();
                listeners.sort();
                prop_assert_eq!(listeners.len(), e.values().filter(|t| t.is_listener()).count());
                let mut notable: Vec<u64> = e.notable().map(|(sk, _)| *sk).collect();
                notable.sort();
                let mut want: Vec<u64> = e.iter().filter(|(_, t)| notable_here(t)).map(|(sk, _)| *sk).collect();
                want.sort();
                prop_assert_eq!(notable, want);
            }
        }
    }

    fn notable_here(t: &Tracked) -> bool {
        t.class != Class::Healthy || state_file::worth_keeping(t)
    }
}
