//! Helper processes the benchmarks start: a sink, a sender, holders of many
//! idle connections, and a connection-storm server and generator.
//!
//! Each is this same binary (`xtask bench worker ...`), so a benchmark needs
//! nothing installed. Every worker is driven over stdin/stdout with one-line
//! requests and replies, and exits as soon as its stdin closes: a driver that
//! dies cannot leave workers behind.

mod control;
mod epoll;
mod hold;
mod limits;
mod send;
mod sink;
mod storm;
mod trouble;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum Worker {
    /// Accepts connections and reads and discards everything.
    Sink {
        #[arg(long)]
        listen: String,
    },
    /// Writes to a sink over many connections; `mode small|large|bulk|idle`, `snap`.
    Send {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Threads writing the small messages (the connections are split between them).
        #[arg(long, default_value_t = 1)]
        writers: usize,
    },
    /// Accepts and holds connections (`count`); writes to picked groups of them (`pick N`, `write G BYTES`).
    HoldServer {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        comm: String,
    },
    /// Opens and holds connections to a hold-server (`open N`).
    HoldClients {
        #[arg(long)]
        connect: String,
        /// Source address; ports are then assigned in order from 1024.
        #[arg(long)]
        source: Option<std::net::Ipv4Addr>,
    },
    /// Greets each accepted connection and closes it when the peer does (`stats`).
    StormServer {
        /// Comma-separated listen addresses.
        #[arg(long, value_delimiter = ',')]
        listen: Vec<String>,
        #[arg(long)]
        comm: String,
    },
    /// Keeps N connections open and replaces the oldest at a fixed rate.
    StormClients {
        /// Comma-separated server addresses, used in turn.
        #[arg(long, value_delimiter = ',')]
        connect: Vec<String>,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        secs: f64,
    },
}

pub fn run(w: Worker) -> Result<()> {
    match w {
        Worker::Sink { listen } => sink::run(&listen),
        Worker::Send { connect, conns, writers } => send::run(&connect, conns, writers),
        Worker::HoldServer { listen, comm } => hold::server(&listen, &comm),
        Worker::HoldClients { connect, source } => hold::clients(&connect, source),
        Worker::StormServer { listen, comm } => storm::server(&listen, &comm),
        Worker::StormClients { connect, clients, rate, secs } => storm::clients(&connect, clients, rate, secs),
    }
}
