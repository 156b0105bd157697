//! `observer-demo`: a WebSocket-like server with misbehaving clients, so that
//! `observer` has real zombie and stalled TCP sockets to find.
//! Self-contained: uses only std, clap, libc and anyhow (not the observer crate).

mod asuser;
mod child;
mod cleanup;
mod cli;
mod client;
mod connection;
mod exec;
mod handoff;
mod hold;
mod lab;
mod loopnft;
mod netns;
mod outbox;
mod proto;
mod resources;
mod role;
mod server;
mod signals;
mod sock;
mod topology;

use clap::Parser;

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Server(args) => server::run(args),
        Command::Client(args) => client::run(args),
        Command::Lab(args) => lab::run(args),
        Command::Cleanup(args) => cleanup::run(args),
        Command::Handoff(args) => handoff::run(args),
        Command::Keep(args) => handoff::keep(args),
        Command::Hold(args) => hold::run(args),
        Command::AsUser(args) => asuser::run(args),
    };
    if let Err(e) = result {
        eprintln!("observer-demo: error: {e:#}");
        std::process::exit(1);
    }
}
