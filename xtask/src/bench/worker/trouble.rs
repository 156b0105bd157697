//! Troubled connections among the ones a hold-server holds: the driver picks
//! groups of them (learning their peers' addresses, to cut some off with nft
//! first) and then has the server write to a group, so the data queues behind
//! a peer that is gone or does not read.

use std::{io::Write, net::TcpStream};

/// The groups picked so far, in the order of the held connections.
#[derive(Default)]
pub struct Groups {
    picked: usize,
    groups: Vec<Vec<usize>>,
}

/// Largest single write: the kernel takes what fits in the send buffer anyway.
const CHUNK: usize = 64 * 1024;

impl Groups {
    /// `pick N`: the next N held connections not picked yet; the reply is
    /// `PICKED <group> <peer>,<peer>,...`.
    pub fn pick(&mut self, held: &[TcpStream], n: usize) -> String {
        let end = (self.picked + n).min(held.len());
        let group: Vec<usize> = (self.picked..end).collect();
        self.picked = end;
        let peers: Vec<String> =
            group.iter().filter_map(|&i| held[i].peer_addr().ok()).map(|a| a.to_string()).collect();
        self.groups.push(group);
        format!("PICKED {} {}", self.groups.len() - 1, peers.join(","))
    }

    /// `write <group> <bytes>`: up to that many bytes on each connection of
    /// the group, without blocking (a full send buffer ends the connection's
    /// share); the reply is `WROTE <total bytes>`.
    pub fn write(&self, held: &mut [TcpStream], group: usize, bytes: usize) -> String {
        let Some(members) = self.groups.get(group) else { return format!("ERR no group {group}") };
        let chunk = vec![b't'; CHUNK.min(bytes.max(1))];
        let mut total = 0usize;
        for &i in members {
            let Some(s) = held.get_mut(i) else { continue };
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let mut left = bytes;
            // Bounded: every pass writes at least one byte or stops.
            while left > 0 {
                match s.write(&chunk[..chunk.len().min(left)]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        left -= n;
                        total += n;
                    }
                }
            }
        }
        format!("WROTE {total}")
    }
}
