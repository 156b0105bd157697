//! Records shared by the kernel programs and the agent.
//!
//! Everything here is `repr(C)` plain data: the kernel writes it, the agent
//! reads it byte for byte. Changing a layout means changing both sides, which
//! is why the types live in one crate.
#![no_std]

/// Byte offsets of kernel struct fields, read from the running kernel's BTF
/// by the agent at start-up and written into the programs as a global.
/// Rust eBPF gets no CO-RE relocations, so this is how the programs stay
/// independent of one kernel build.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    // struct sock_common
    pub skc_state: u32,
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_net: u32,
    /// `struct net` -> `ns.inum`
    pub net_inum: u32,
    // struct sock
    pub sk_socket: u32,
    pub sk_wmem_queued: u32,
    /// `sock.sk_protocol` (u16 since Linux 5.6).
    pub sk_protocol: u32,
    /// `struct socket_alloc` -> `vfs_inode`, then `struct inode` -> `i_ino`
    pub socket_inode: u32,
    pub inode_ino: u32,
    // struct inet_connection_sock
    pub icsk_retransmits: u32,
    pub icsk_pending: u32,
    pub icsk_backoff: u32,
    pub icsk_probes_out: u32,
    pub icsk_retransmit_timer: u32,
    // struct tcp_sock
    pub write_seq: u32,
    pub snd_nxt: u32,
    pub snd_una: u32,
    pub snd_wnd: u32,
    // struct timer_list
    pub timer_function: u32,
    /// `tcp_sock.rcv_tstamp`: jiffies of the last ACK received.
    pub rcv_tstamp: u32,
    /// `inet_connection_sock.icsk_rto`: the socket's retransmission timeout, jiffies.
    pub icsk_rto: u32,
    /// `inet_connection_sock.icsk_probes_tstamp`: jiffies of the first
    /// zero-window probe of the current episode (Linux 5.12+; 0 = absent).
    pub icsk_probes_tstamp: u32,
    /// `tcp_sock.total_retrans`: segments retransmitted over the socket's life.
    pub total_retrans: u32,
    /// `tcp_sock.tcp_mstamp`: µs (CLOCK_MONOTONIC) of the socket's latest
    /// send or receive processing.
    pub tcp_mstamp: u32,
    /// `socket.file` and `file.f_inode`: the inode through typed loads.
    pub socket_file: u32,
    pub file_inode: u32,
    /// `inode.i_mode` (whether a file is a socket) and `task_struct.tgid`:
    /// what the file-table iterator reads.
    pub inode_mode: u32,
    pub task_tgid: u32,
    /// `file.f_flags` (O_NONBLOCK) and `inet_connection_sock.icsk_ulp_ops`
    /// (kTLS, MPTCP and ESP-in-TCP queue bytes from kernel context): whether
    /// every byte a socket queues comes through a send the probe sees return.
    pub file_f_flags: u32,
    pub icsk_ulp_ops: u32,
}

/// One socket file of a watched process, as the file-table iterator
/// (`iter/task_file`) hands it over: who holds which socket inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldSocket {
    pub inode: u64,
    pub tgid: u32,
    pub fd: u32,
}

/// What the kernel programs learn about one tracked socket from events.
/// Kept in the `SOCKS` map, keyed by the socket's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEvents {
    /// Process that holds the socket: the first one seen with it, replaced
    /// by the one that closes it (the last holder). Events from timer and
    /// softirq context are attributed to it, never to `current`.
    pub owner_tgid: u32,
    pub flags: u32,
    /// `snd_una` when last looked at, to notice ACK progress.
    pub snd_una: u32,
    /// `tcp_sock.total_retrans` already counted, so every attach method
    /// counts retransmitted segments exactly as the kernel's MIB does.
    pub total_retrans: u32,
    /// CLOCK_MONOTONIC ns of the last `snd_una` movement, or of the last look
    /// with nothing outstanding; 0 when not known (first seen mid-stall).
    pub last_progress_ns: u64,
    pub close_wait_since_ns: u64,
    pub zero_window_since_ns: u64,
    /// When the persist timer last fired (a zero-window probe went out).
    pub last_probe_ns: u64,
    /// When a state change was last seen (connect, close-wait, …).
    pub state_since_ns: u64,
    pub retransmits: u32,
    pub rto_timeouts: u32,
    pub zero_window_probes: u32,
    pub loss_probes: u32,
}

/// The socket was seen becoming ESTABLISHED while tracked, so its close is
/// counted as a closed connection.
pub const FLAG_COUNTED_OPEN: u32 = 1;
/// The owning process closed the socket (`tcp_close`, or a state change that
/// only a close causes); the kernel may still hold it as an orphan.
pub const FLAG_APP_CLOSED: u32 = 2;

/// Per-process event counters, summed over CPUs by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    pub retransmits: u64,
    pub rto_timeouts: u64,
    pub zero_window_probes: u64,
    pub loss_probes: u64,
    pub opened: u64,
    pub closed: u64,
}

/// One socket as the TCP iterator sees it: the kernel's current truth,
/// plus the event state the probes collected for it, if any.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    pub sk: u64,
    /// Inode of the socket's file; 0 once no process holds it (orphan).
    pub inode: u64,
    pub netns: u32,
    pub state: u8,
    pub family: u8,
    /// `icsk_pending`: which of the write timers is armed.
    pub pending: u8,
    pub backoff: u8,
    pub retransmits: u8,
    pub probes_out: u8,
    pub sport: u16,
    pub dport: u16,
    pub has_events: u8,
    /// 1 when the socket carries a mark in `MARKS`, so the marked-socket
    /// sweep will visit it.
    pub marked: u8,
    pub write_seq: u32,
    pub snd_nxt: u32,
    pub snd_una: u32,
    pub snd_wnd: u32,
    pub wmem_queued: i32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Low 32 bits of jiffies when the record was taken, and the socket's own
    /// jiffies stamps: how long ago it last heard an ACK / any segment. These
    /// date what happened before the agent was watching.
    pub jiffies: u32,
    pub rcv_tstamp: u32,
    /// First zero-window probe of the current episode, 0 when none.
    pub probes_tstamp: u32,
    /// The socket's retransmission timeout, in the same ticks as `jiffies`.
    pub rto: u32,
    /// Segments retransmitted over the socket's life.
    pub total_retrans: u32,
    /// 1 when the socket's file is non-blocking and no upper-layer protocol
    /// sits on it: none of its sends can wait in the kernel, so each byte it
    /// queues is followed by the send probe as the send returns.
    pub nonblocking: u32,
    /// CLOCK_MONOTONIC µs when the record was taken, and of the socket's
    /// latest send or receive processing (0 = unknown): with a probe
    /// outstanding and no ACK since, nothing was received after it.
    pub ktime_us: u64,
    pub mstamp_us: u64,
    pub events: SockEvents,
}

/// The clocks only the agent keeps for a socket (since when CLOSE_WAIT, no
/// progress, …), with what identifies the socket. The agent alone writes
/// them, into a map pinned beside `SOCKS`, so a restarted observer continues
/// from them; the kernel programs never touch it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentClocks {
    pub inode: u64,
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    pub owner: u32,
    pub snd_una: u32,
    pub rcv_tstamp: u32,
    pub probes_out: u32,
    /// CLOCK_MONOTONIC ns; 0 = none.
    pub progress_at: u64,
    pub close_wait_at: u64,
    pub zero_window_at: u64,
    pub open_at: u64,
    pub connect_at: u64,
    pub probe_seen_at: u64,
}

/// Reasons the kernel programs count when they have to give something up.
pub mod drop_reason {
    pub const SOCKET_MAP_FULL: u32 = 0;
    pub const COUNTER_MAP_FULL: u32 = 1;
    pub const READ_FAILED: u32 = 2;
    pub const ITER_WRITE_FAILED: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Marked-socket sweeps: between full walks of the TCP tables the agent
/// iterates only the sockets that carry a mark (`MARKS`, socket-local
/// storage), and the kernel sends it only those that are not quiet or have
/// changed since they last crossed.
pub mod marks {
    /// Size of `CROSSED`, the marked-socket sweep's ring of records: room
    /// for about 2,400 sockets that changed in one sweep (a power of two,
    /// as the kernel requires).
    pub const CROSSED_BYTES: u32 = 512 * 1024;
    /// `HINTS` slots: what the probes saw that a marked-socket sweep cannot.
    /// A target's socket closed from FIN_WAIT1/FIN_WAIT2/CLOSING: a TIME_WAIT
    /// socket may have replaced it, which only a full walk shows.
    pub const HINT_TIME_WAIT: u32 = 0;
    /// A socket started being tracked without a mark (marking unavailable
    /// or refused): only a full walk shows it.
    pub const HINT_UNMARKED: u32 = 1;
    /// A marked socket closed and the `GONE` queue was full: the agent
    /// cannot tell which, only a walk can.
    pub const HINT_GONE_LOST: u32 = 2;
    /// Not hints: settled sockets the marked-socket sweeps visited, which
    /// cross as nothing at all; the agent checks its table against their
    /// sum. Those whose `write_seq` was read, and those not read at all
    /// (`Mark::sends_touch`).
    pub const SETTLED_SEEN: u32 = 3;
    pub const SETTLED_UNREAD: u32 = 4;
    pub const HINT_COUNT: u32 = 5;

    /// Whether a `HINTS` slot is a hint rather than a count of settled sockets.
    pub const fn is_hint(slot: u32) -> bool {
        slot != SETTLED_SEEN && slot != SETTLED_UNREAD
    }
}

impl SockRecord {
    /// Established with nothing queued, sent or outstanding and no timer
    /// armed: a socket no class can claim however long it stays so, whose
    /// record therefore need not cross again until it changes. (A closed
    /// window with nothing to send is no stall.) Only queued data (which
    /// moves `write_seq`) or a state change (whose probe bumps the socket's
    /// mark) can end it.
    #[inline(always)]
    pub fn quiet(&self) -> bool {
        self.state == tcp_state::ESTABLISHED
            && self.inode != 0
            && self.snd_una == self.snd_nxt
            && self.write_seq == self.snd_nxt
            && self.wmem_queued == 0
            && self.pending == 0
            && self.backoff == 0
            && self.probes_out == 0
    }
}

/// A socket's mark (`MARKS`, socket-local storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// Bumped by the send and state probes whenever the socket may change.
    /// A mark is created at [`Mark::NEW`]'s generation, one the sweeps have
    /// not seen: creation counts as a move, so a new mark, like a moved one,
    /// takes two reads to settle.
    pub generation: u64,
    /// `generation` as the marked-socket sweep last read it.
    pub seen: u64,
    /// 1 when that sweep found the socket quiet and `generation` had not
    /// moved since the sweep before: until it moves again, or data is
    /// queued (`write_seq` moves), only that one field is read.
    pub settled: u32,
    /// `tcp_sock.write_seq` when it settled. Every byte queued moves it,
    /// however it was sent and whether or not the send has returned.
    pub write_seq: u32,
    /// 1 when the socket was non-blocking at its last crossing and the send
    /// probe sees every send (`settings::SENDS_TOUCH`): each send that
    /// leaves bytes outstanding moves `generation` as it returns, and none
    /// can still be waiting, so the settled check reads nothing of the
    /// socket at all.
    pub sends_touch: u32,
    pub _pad: u32,
}

impl Mark {
    pub const NEW: Mark = Mark { generation: 1, seen: 0, settled: 0, write_seq: 0, sends_touch: 0, _pad: 0 };
}

/// `TOUCHED`: per CPU, the sockets whose mark a send on that CPU moved
/// lately, so that the sends that follow within `settings::TOUCH_EVERY_JIFFIES`
/// need neither the mark nor the socket table. A socket has one set of
/// `WAYS` slots, one cache line, by a hash of what tells it from others; a
/// socket that finds no slot in its set is only looked up again.
pub mod touched {
    pub const WAYS: usize = 4;
    /// A power of two.
    pub const SETS: u32 = 256;

    /// All the sets of one CPU, as the one value of the map: a lookup then
    /// reads the set alone, not first a per-element pointer table (a
    /// second cache miss on a busy sender).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Sets(pub [Set; SETS as usize]);

    #[repr(C, align(64))]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Set(pub [Touched; WAYS]);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Touched {
        /// The socket's kernel address; 0 for an empty slot.
        pub sk: u64,
        /// `jiffies` when its mark moved, or it was found with nothing to move.
        pub jiffies: u64,
    }

    /// The set for a socket by a number that tells it from most others
    /// (its ports, or its address without the low bits a slab repeats),
    /// spread by a multiplicative hash.
    #[inline(always)]
    pub fn set(spread: u64) -> u32 {
        (spread.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SETS.trailing_zeros())) as u32
    }
}

/// Slots of `SETTINGS`, written by the agent once it knows which attach
/// method each hook got (too late for read-only globals).
pub mod settings {
    /// 1 when the send probe is typed (it can touch marks) and sees every
    /// send: no `tcp_sendpage` bypasses `tcp_sendmsg` and `sock_send_length`
    /// (removed in Linux 6.5).
    pub const SENDS_TOUCH: u32 = 0;
    /// A send moves a socket's mark at most once in this many jiffies per
    /// CPU (`TOUCHED`; 0: at every send that leaves bytes outstanding).
    /// Settling takes two reads of the mark after it moved (or was made),
    /// and the agent starts no sweep sooner than this many jiffies and one
    /// more after the last ended: so a send that skips the move finds the
    /// socket not settled since the last one, and the second of those reads
    /// sees its bytes.
    pub const TOUCH_EVERY_JIFFIES: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// `TGID_FILTER`: a bitmap over `tgid % BITS` in front of `TARGET_TGIDS`.
/// A clear bit means the process is not watched; a set one is confirmed in
/// the hash map (two watched processes may share a bit, and one that is not
/// watched may share a watched one's).
pub mod tgid_filter {
    pub const WORDS: u32 = 64;
    pub const BITS: u32 = WORDS * 64;

    /// The word of the map and the bit in it that stand for `tgid`.
    #[inline(always)]
    pub fn slot(tgid: u32) -> (u32, u64) {
        let bit = tgid % BITS;
        (bit / 64, 1u64 << (bit % 64))
    }
}

/// `icsk_pending` values (include/net/inet_connection_sock.h).
pub mod timer {
    pub const RETRANS: u8 = 1;
    pub const PROBE0: u8 = 3;
    pub const LOSS_PROBE: u8 = 5;
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    /// The names the agent shows (metrics labels, `/sockets`, `top`), by
    /// state number; NEW_SYN_RECV is a request, never a socket it shows.
    pub const NAMES: [(u8, &str); 11] = [
        (ESTABLISHED, "established"),
        (SYN_SENT, "syn_sent"),
        (SYN_RECV, "syn_recv"),
        (FIN_WAIT1, "fin_wait1"),
        (FIN_WAIT2, "fin_wait2"),
        (TIME_WAIT, "time_wait"),
        (CLOSE, "close"),
        (CLOSE_WAIT, "close_wait"),
        (LAST_ACK, "last_ack"),
        (LISTEN, "listen"),
        (CLOSING, "closing"),
    ];

    pub fn name(state: u8) -> &'static str {
        NAMES.iter().find(|(n, _)| *n == state).map_or("unknown", |(_, s)| s)
    }
}

/// Names the agent finds the kernel objects by. They are the symbols of
/// `observer-ebpf` (a program is its function, a map its static), which
/// attribute macros cannot take from a constant: renaming one there means
/// renaming it here.
pub mod names {
    /// The `iter/tcp` program that reads every socket of a namespace.
    pub const ITER_PROGRAM: &str = "observer_sockets";
    pub const TARGET_TGIDS: &str = "TARGET_TGIDS";
    pub const TARGET_PORTS: &str = "TARGET_PORTS";
    pub const SOCKS: &str = "SOCKS";
    pub const CLOCKS: &str = "CLOCKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const DROPS: &str = "DROPS";
    pub const HINTS: &str = "HINTS";
    pub const GONE: &str = "GONE";
    pub const SETTINGS: &str = "SETTINGS";
    pub const TGID_FILTER: &str = "TGID_FILTER";
    /// The iterator over `MARKS`, the sockets' marks (socket-local storage).
    pub const MARKED_PROGRAM: &str = "observer_marked";
    pub const MARKS: &str = "MARKS";
    pub const CROSSED: &str = "CROSSED";
    /// The `iter/task_file` program that lists the watched processes' sockets.
    pub const OWNERS_PROGRAM: &str = "observer_owners";
}

/// Key of the map of listening ports the target owns, so that a connection
/// accepted in softirq context can be attributed to it before `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are repr(C), Copy, and have no padding the kernel
    // could leave uninitialised that we would then interpret (explicit pads).
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::SockEvents {}
    unsafe impl aya::Pod for super::ProcCounters {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::AgentClocks {}
    unsafe impl aya::Pod for super::HeldSocket {}
}

// The agent parses iterator output as a stream of these; a layout with
// implicit padding would differ between the two compilers' views.
const _: () = assert!(core::mem::size_of::<SockRecord>() == 200);
const _: () = assert!(core::mem::size_of::<SockEvents>() == 72);
const _: () = assert!(core::mem::size_of::<AgentClocks>() == 80);
const _: () = assert!(core::mem::size_of::<Offsets>() == 144);
const _: () = assert!(core::mem::size_of::<HeldSocket>() == 16);
const _: () = assert!(core::mem::size_of::<Mark>() == 32);
const _: () = assert!(core::mem::size_of::<touched::Set>() == 64);
