//! `server`: accept loop; one controller thread per connection.

use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{ServerArgs, StreamArgs};
use crate::connection;
use crate::proto;

/// What every connection needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub stream: StreamArgs,
    pub interval: Option<Duration>,
}

pub fn run(args: &ServerArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let config = Arc::new(Config {
        stream: args.stream.clone(),
        interval: (args.interval_ms > 0).then(|| Duration::from_millis(args.interval_ms)),
    });

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proto::listening_line(addr, std::process::id()))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);

    for conn in listener.incoming() {
        match conn {
            Ok(stream) => spawn_connection(stream, &config),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("observer-demo server: accept failed: {e}");
                // EMFILE and friends: back off instead of spinning.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

fn spawn_connection(stream: TcpStream, config: &Arc<Config>) {
    let config = Arc::clone(config);
    let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
        if let Err(e) = connection::serve(stream, &config) {
            eprintln!("observer-demo server: connection: {e:#}");
        }
    });
    if let Err(e) = spawned {
        eprintln!("observer-demo server: cannot start a connection thread: {e}");
    }
}
