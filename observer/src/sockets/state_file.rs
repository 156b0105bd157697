//! `--state-file`: the clocks only the agent keeps (when CLOSE_WAIT began,
//! when ACK progress stopped, who closed an orphan, …), written after every
//! sweep for the sockets that have one, and read at start. Pinned maps keep
//! the kernel side across a restart; this keeps the agent side, with or
//! without pins. Only sockets in trouble or in a timed state are written:
//! the file grows with trouble, not with connections.
//!
//! Text, one socket a line, behind a header naming the boot: CLOCK_MONOTONIC
//! values mean nothing after a reboot, so a file from another boot is ignored.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
};

use observer_common::{AgentClocks, SockRecord, tcp_state};

use crate::{
    proc::boot_id,
    sockets::table::{SocketTable, Tracked},
};

const MAGIC: &str = "observer-state 2";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: line {line}: {what}")]
    Malformed { path: PathBuf, line: usize, what: &'static str },
    #[error("{path} was written during another boot; its clocks do not apply")]
    OtherBoot { path: PathBuf },
}

/// What the agent knew of one socket, and how to recognise it: the record
/// the pinned `CLOCKS` map holds too (0 where a clock is not running).
pub type Seed = AgentClocks;

fn opt(v: Option<u64>) -> u64 {
    v.unwrap_or(0)
}

fn some(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn seed_of(t: &Tracked) -> Seed {
    let r = &t.record;
    Seed {
        inode: r.inode,
        netns: r.netns,
        sport: r.sport,
        dport: r.dport,
        owner: t.owner,
        snd_una: r.snd_una,
        rcv_tstamp: r.rcv_tstamp,
        probes_out: u32::from(r.probes_out),
        progress_at: t.progress_at,
        close_wait_at: opt(t.close_wait_at),
        zero_window_at: opt(t.zero_window_at),
        open_at: t.open_at,
        connect_at: opt(t.connect_at),
        probe_seen_at: opt(t.probe_seen_at),
    }
}

/// Whether `seed` is of the socket in `r`, not of another one that since
/// took the same kernel address.
pub fn matches(seed: &Seed, r: &SockRecord) -> bool {
    seed.inode == r.inode && seed.netns == r.netns && seed.sport == r.sport && seed.dport == r.dport
}

/// The socket as the agent last saw it, for the sweep to continue from.
pub fn as_tracked(seed: &Seed, rec: &SockRecord) -> Tracked {
    Tracked {
        owner: seed.owner,
        record: SockRecord {
            snd_una: seed.snd_una,
            rcv_tstamp: seed.rcv_tstamp,
            probes_out: u8::try_from(seed.probes_out).unwrap_or(u8::MAX),
            ..*rec
        },
        class: crate::classify::Class::Healthy,
        progress_at: seed.progress_at,
        close_wait_at: some(seed.close_wait_at),
        zero_window_at: some(seed.zero_window_at),
        open_at: seed.open_at,
        connect_at: some(seed.connect_at),
        probe_seen_at: some(seed.probe_seen_at),
        kernel_tracked: false,
        seen: 0,
    }
}

/// The sockets whose clocks are worth keeping, with those clocks.
pub fn seeds(table: &SocketTable) -> impl Iterator<Item = (u64, Seed)> + '_ {
    table.notable().filter(|(_, t)| worth_keeping(t)).map(|(sk, t)| (*sk, seed_of(t)))
}

/// Whether a socket has a clock worth keeping.
pub(crate) fn worth_keeping(t: &Tracked) -> bool {
    t.record.state != tcp_state::LISTEN
        && (t.close_wait_at.is_some()
            || t.zero_window_at.is_some()
            || t.connect_at.is_some()
            || t.orphan()
            || t.unacked() != 0)
}

/// Writes the table's clocks to `path` (through a temporary file and a
/// rename, so a crash mid-write leaves the previous file whole).
pub fn save(path: &Path, table: &SocketTable) -> Result<usize, StateError> {
    let io = |source| StateError::Io { path: path.to_path_buf(), source };
    let mut text = format!("{MAGIC} boot {}\n", boot_id());
    let mut n = 0;
    for (sk, s) in seeds(table) {
        let _ = writeln!(
            text,
            "{sk} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            s.inode,
            s.netns,
            s.sport,
            s.dport,
            s.owner,
            s.snd_una,
            s.rcv_tstamp,
            s.probes_out,
            s.progress_at,
            s.close_wait_at,
            s.zero_window_at,
            s.open_at,
            s.connect_at,
            s.probe_seen_at
        );
        n += 1;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(n)
}

/// Reads what [`save`] wrote: sk -> seed. A missing file is an empty one.
pub fn load(path: &Path) -> Result<HashMap<u64, Seed>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => return Err(StateError::Io { path: path.to_path_buf(), source }),
    };
    parse(&text, &boot_id()).map_err(|e| match e {
        ParseError::OtherBoot => StateError::OtherBoot { path: path.to_path_buf() },
        ParseError::Malformed { line, what } => StateError::Malformed { path: path.to_path_buf(), line, what },
    })
}

enum ParseError {
    OtherBoot,
    Malformed { line: usize, what: &'static str },
}

fn parse(text: &str, boot: &str) -> Result<HashMap<u64, Seed>, ParseError> {
    let mut lines = text.lines();
    let header = lines.next().ok_or(ParseError::Malformed { line: 1, what: "empty file" })?;
    let Some(written_boot) = header.strip_prefix(MAGIC).and_then(|r| r.trim().strip_prefix("boot ")) else {
        return Err(ParseError::Malformed { line: 1, what: "not an observer state file" });
    };
    if written_boot.trim() != boot {
        return Err(ParseError::OtherBoot);
    }
    let mut out = HashMap::new();
    for (i, line) in lines.enumerate() {
        let bad = ParseError::Malformed { line: i + 2, what: "expected 15 numbers" };
        let v: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().map_err(|_| bad)?;
        let [
            sk,
            inode,
            netns,
            sport,
            dport,
            owner,
            snd_una,
            rcv_tstamp,
            probes_out,
            progress_at,
            cw,
            zw,
            open_at,
            conn,
            probe,
        ] = v[..]
        else {
            return Err(ParseError::Malformed { line: i + 2, what: "expected 15 numbers" });
        };
        let narrow =
            |x: u64| ParseError::Malformed { line: i + 2, what: if x > 0 { "a number out of range" } else { "" } };
        out.insert(
            sk,
            Seed {
                inode,
                netns: u32::try_from(netns).map_err(|_| narrow(netns))?,
                sport: u16::try_from(sport).map_err(|_| narrow(sport))?,
                dport: u16::try_from(dport).map_err(|_| narrow(dport))?,
                owner: u32::try_from(owner).map_err(|_| narrow(owner))?,
                snd_una: u32::try_from(snd_una).map_err(|_| narrow(snd_una))?,
                rcv_tstamp: u32::try_from(rcv_tstamp).map_err(|_| narrow(rcv_tstamp))?,
                probes_out: u32::from(u8::try_from(probes_out).map_err(|_| narrow(probes_out))?),
                progress_at,
                close_wait_at: cw,
                zero_window_at: zw,
                open_at,
                connect_at: conn,
                probe_seen_at: probe,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_boots_and_garbage() {
        let text = format!("{MAGIC} boot abc\n7 11 4026531840 80 40000 42 100 2000 1 5 6 0 3 0 9\n");
        let seeds = parse(&text, "abc").ok().expect("parses");
        let s = seeds.get(&7).expect("socket 7");
        assert_eq!((s.inode, s.sport, s.dport, s.owner, s.probes_out), (11, 80, 40000, 42, 1));
        assert_eq!((s.progress_at, s.close_wait_at, s.zero_window_at, s.probe_seen_at), (5, 6, 0, 9));
        assert!(matches!(parse(&text, "other"), Err(ParseError::OtherBoot)));
        assert!(matches!(parse("hello\n", "abc"), Err(ParseError::Malformed { line: 1, .. })));
        let short = format!("{MAGIC} boot abc\n1 2 3\n");
        assert!(matches!(parse(&short, "abc"), Err(ParseError::Malformed { line: 2, .. })));
        let wide = format!("{MAGIC} boot abc\n7 11 4026531840 99999 40000 42 100 2000 1 5 6 0 3 0 9\n");
        assert!(matches!(parse(&wide, "abc"), Err(ParseError::Malformed { line: 2, .. })));
    }
}
