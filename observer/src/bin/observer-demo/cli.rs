//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::role::Role;

/// Demo target for `observer`: a WebSocket-like TCP server with misbehaving
/// clients, so there are real zombie and stalled sockets to find.
#[derive(Parser, Debug)]
#[command(name = "observer-demo", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the WebSocket-like server (the process observer watches).
    ///
    /// Reads `ROLE <name>` from each client, queues a burst, then (with
    /// --interval-ms) a periodic stream, all through a per-connection user-space
    /// queue drained by a writer thread, so slow peers grow the server's RSS.
    /// Closes a peer's socket on EOF, except `halfclose` peers, whose fd is kept
    /// forever (CLOSE_WAIT). Closes `orphan` peers --orphan-close-after-ms after
    /// accept whatever is still queued (FIN_WAIT1 orphan if the peer vanished).
    /// Prints `LISTENING <addr> pid=<pid>` on stdout once ready.
    Server(ServerArgs),
    /// Run N clients of one role against a server.
    ///
    /// Sends `ROLE <role>` on every connection, then behaves as the role says.
    /// Prints `LOCAL <addr>` per connection, then `CONNECTED <n>` on stdout;
    /// exits after --hold-secs or on SIGTERM/SIGINT.
    Client(ClientArgs),
    /// Run the whole scenario (server + clients) in network namespaces. Needs root.
    ///
    /// Creates `<PREFIX>-<pid>-srv` (tcp_retries2=8) and one namespace per role
    /// with clients, each joined to the server by a veth pair on 198.18.<k>.0/30
    /// (tcp_rmem capped in the `slow` one), starts the server and the clients as
    /// separate processes, then drops all traffic of the `vanish` and `orphan`
    /// namespaces with nft. Prints one line on stdout:
    /// `READY server_pid=<pid> server_netns=<ns|-> port=<port> clients=<n>`,
    /// a summary on stderr, and waits for --duration-secs or SIGINT/SIGTERM.
    /// Then, and also when setup fails halfway, it stops the processes it started
    /// and deletes its namespaces. Exit status 0 unless setup failed or a child
    /// died early.
    Lab(LabArgs),
    /// Remove what killed `lab` runs left behind. Needs root.
    ///
    /// Deletes namespaces whose names start with PREFIX (after stopping any
    /// process still inside them: SIGTERM, then SIGKILL) and loopback-mode nft
    /// tables `observer_demo_<PREFIX>*`.
    Cleanup(CleanupArgs),
    /// A server that gives connections away: the first --pass it accepts are
    /// sent with SCM_RIGHTS to a keeper process and closed here, the next
    /// --share are inherited by that keeper (held by both, as after a fork), the
    /// last --keep stay here only. Prints `LISTENING <addr> pid=<pid>`, then
    /// `HANDED keeper=<pid> ...` once all are placed; runs until SIGTERM.
    Handoff(HandoffArgs),
    /// Hold --connections loopback connections whose client ends (in this
    /// process) never read, and queue bytes on a server end when told.
    ///
    /// Prints `LISTENING <addr> pid=<pid>` once connected, then takes one
    /// command per stdin line, `send <connection> <bytes>`: one write(2) of
    /// that many bytes in a thread of its own, which a non-blocking socket
    /// (--nonblocking) answers at once with what fitted and a blocking one
    /// only once all is queued. Prints `SENT <connection> <n>` when it returns.
    Hold(HoldArgs),
    /// The keeper `handoff` starts: holds what it is given. Not for direct use.
    #[command(hide = true)]
    Keep(KeepArgs),
    /// Run a command as another user with exactly the given capabilities
    /// (permitted, effective, inheritable and ambient), after raising
    /// RLIMIT_MEMLOCK. Needs root. For test guests without `setpriv`.
    AsUser(AsUserArgs),
}

#[derive(Args, Debug)]
pub struct HandoffArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub pass: u32,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub share: u32,
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep: u32,
}

#[derive(Args, Debug)]
pub struct HoldArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,
    /// Make the server ends non-blocking, as an event-loop server's are.
    #[arg(long)]
    pub nonblocking: bool,
}

#[derive(Args, Debug)]
pub struct KeepArgs {
    /// Unix socket to receive file descriptors on.
    #[arg(long)]
    pub fd: i32,
}

#[derive(Args, Debug)]
pub struct AsUserArgs {
    /// User id to become (65534 = nobody).
    #[arg(long, default_value_t = 65534)]
    pub uid: u32,
    /// Group id to become (65534 = nogroup).
    #[arg(long, default_value_t = 65534)]
    pub gid: u32,
    /// Comma-separated capabilities to keep, e.g. `bpf,perfmon,sys_ptrace`.
    #[arg(long, default_value = "")]
    pub caps: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Server behaviour, shared by `server` and `lab`.
#[derive(Args, Debug, Clone)]
pub struct StreamArgs {
    /// Bytes queued to every client right after its role line.
    #[arg(long, default_value_t = 262_144, value_name = "BYTES")]
    pub burst: usize,
    /// Size of each periodic message (and of the chunks the burst is queued in).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub message_bytes: usize,
    /// Close `orphan` peers this long after accept, whatever is still queued.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub orphan_close_after_ms: u64,
    /// Serve each connection on a non-blocking socket that waits in poll(),
    /// as event-loop servers (Node, Go, nginx) do, instead of blocking
    /// writes with a send timeout.
    #[arg(long)]
    pub nonblocking: bool,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on, e.g. 0.0.0.0:9000 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Send one --message-bytes message to every client this often; 0 = only the burst.
    #[arg(long, default_value_t = 0, value_name = "M")]
    pub interval_ms: u64,
    /// Also connect out to this address (e.g. one that drops every packet).
    #[arg(long, value_name = "ADDR")]
    pub connect_out: Option<String>,
    /// How many connections to open to --connect-out.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub connect_out_count: u32,
    /// Pre-fork model: this many processes accept on the one listening
    /// socket (the first plus forked copies), as a cluster of workers does.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Memory to allocate and fill before forking the workers, which then
    /// share it copy-on-write (like an application preloaded before fork):
    /// counted in full in each worker's RSS, divided among them in PSS.
    #[arg(long, default_value_t = 0, value_name = "MIB", value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub preload_mib: u32,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Server address, e.g. 127.0.0.1:9000.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// How the clients behave.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Number of connections to open.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// Exit after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long, value_name = "S")]
    pub hold_secs: Option<u64>,
    /// End every connection with RST (SO_LINGER 0) instead of FIN on exit.
    #[arg(long)]
    pub reset: bool,
    /// `idleclose` clients send their FIN this long after connecting.
    #[arg(long, default_value_t = 8000, value_name = "MS")]
    pub fin_after_ms: u64,
}

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Healthy clients (if no role count is given at all, one client of each role).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub healthy: u32,
    /// Clients that never read (receive buffers capped in their namespace).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub slow: u32,
    /// Clients that vanish (all packets dropped) while the server keeps sending.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub vanish: u32,
    /// Clients that half-close; the server leaves its side in CLOSE_WAIT.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub halfclose: u32,
    /// Clients that vanish and that the server then closes: kernel orphans in FIN_WAIT1.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub orphan: u32,
    /// Clients reading 16 KiB/s that the server closes with data queued: orphans
    /// draining to a live reader.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub drain: u32,
    /// Clients that never read and vanish --stallgone-after-ms after READY.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub stallgone: u32,
    /// When `stallgone` clients vanish, counted from READY.
    #[arg(long, default_value_t = 8000, value_name = "MS")]
    pub stallgone_after_ms: u64,
    /// Idle clients that half-close --idle-fin-after-ms after connecting.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub idleclose: u32,
    /// When `idleclose` clients send their FIN, counted from their connect.
    #[arg(long, default_value_t = 8000, value_name = "MS")]
    pub idle_fin_after_ms: u64,
    /// Outbound connections the server opens to an address that drops every
    /// packet (a namespace of its own): connects stuck in SYN_SENT.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub blackhole: u32,
    /// Impair the `healthy` clients' link with netem on both of its veth
    /// ends (`tc qdisc add dev ... root netem ARGS` in each namespace), e.g.
    /// "delay 150ms loss 1%" for a 300 ms RTT with 1% loss each way. Needs
    /// `tc`, the kernel's sch_netem and namespaces.
    #[arg(long, value_name = "ARGS")]
    pub netem: Option<String>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "S")]
    pub duration_secs: Option<u64>,
    /// Prefix of namespace names; each run uses `<PREFIX>-<pid>-<srv|role>`.
    #[arg(long, default_value = "obsdemo", value_name = "PREFIX")]
    pub name: String,
    /// Run the server in its own namespace `<PREFIX>-<pid>-srv` (default).
    #[arg(long, conflicts_with = "server_loopback")]
    pub server_netns: bool,
    /// Run server and clients in the caller's namespace over 127.0.0.1 (no netns;
    /// vanishing done with per-port nft rules on lo; tcp_rmem/tcp_retries2 untouched).
    #[arg(long)]
    pub server_loopback: bool,
    /// Run the server from a copy of this executable named NAME, so its
    /// process name (`/proc/PID/comm`) is NAME and `--comm NAME` matches the
    /// server only, never the clients.
    #[arg(long, value_name = "NAME")]
    pub server_comm: Option<String>,
    /// Keep running (and keep the namespaces) when the server exits or is
    /// killed: its orphaned sockets live on in its namespace.
    #[arg(long)]
    pub allow_server_exit: bool,
    /// Also write the server PID to this file (removed again on cleanup).
    #[arg(long, value_name = "PATH")]
    pub server_pid_file: Option<PathBuf>,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Server's periodic message interval. Non-zero by default so vanished peers
    /// accumulate unacknowledged data; 0 = burst only.
    #[arg(long, default_value_t = 50, value_name = "M")]
    pub interval_ms: u64,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Remove namespaces whose names start with this prefix.
    #[arg(long, default_value = "obsdemo", value_name = "PREFIX")]
    pub name: String,
}
