//! The bitmap the kernel programs test before `TARGET_TGIDS`
//! (`observer_common::tgid_filter`): every send on the machine asks whether
//! its process is watched, and most are not.

use aya::maps::{Array, MapData, MapError};
use observer_common::tgid_filter::{self, WORDS};

pub struct TgidFilter {
    map: Array<MapData, u64>,
    /// What the map holds, so only words that change are written.
    words: [u64; WORDS as usize],
}

impl TgidFilter {
    pub fn new(map: Array<MapData, u64>) -> Self {
        TgidFilter { map, words: [0; WORDS as usize] }
    }

    /// Sets exactly the bits of `tgids`. Each word is written whole, so a
    /// program never sees a bit of a process that is still registered clear.
    pub fn sync<'a>(&mut self, tgids: impl IntoIterator<Item = &'a u32>) -> Result<(), MapError> {
        let want = words(tgids);
        for (i, (&new, old)) in want.iter().zip(self.words.iter_mut()).enumerate() {
            if new != *old {
                self.map.set(i as u32, new, 0)?;
                *old = new;
            }
        }
        Ok(())
    }
}

fn words<'a>(tgids: impl IntoIterator<Item = &'a u32>) -> [u64; WORDS as usize] {
    let mut words = [0; WORDS as usize];
    for &tgid in tgids {
        let (word, bit) = tgid_filter::slot(tgid);
        words[word as usize] |= bit;
    }
    words
}

/// Whether `tgid` passes the filter the way the kernel program tests it.
#[cfg(test)]
fn passes(words: &[u64; WORDS as usize], tgid: u32) -> bool {
    let (word, bit) = tgid_filter::slot(tgid);
    words[word as usize] & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_watched_process_passes_and_most_others_do_not() {
        let watched: HashSet<u32> = [1, 63, 64, 4095, 4096, 123_456, 4_194_303].into_iter().collect();
        let w = words(&watched);
        assert!(watched.iter().all(|&t| passes(&w, t)));
        // Sharing a bit is allowed (the hash map decides); a clear bit is not.
        let others = (1..100_000u32).filter(|t| !watched.contains(t));
        let passing = others.filter(|&t| passes(&w, t)).count();
        assert!(passing <= 100_000 * watched.len() / tgid_filter::BITS as usize + 1, "{passing} pass");
        assert_eq!(words(&HashSet::new()), [0; WORDS as usize]);
    }
}
