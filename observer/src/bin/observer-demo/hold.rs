//! `hold`: loopback connections whose client ends, in this same process,
//! never read, and whose server ends queue bytes only when told on stdin.
//! Lets a test choose the moment a quiet socket starts queuing, and whether
//! its send returns (non-blocking) or waits in the kernel (blocking).

use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use anyhow::{Context, Result, bail};

use crate::cli::HoldArgs;
use crate::proto;

pub fn run(args: &HoldArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listening address")?;
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..args.connections {
        clients.push(TcpStream::connect(addr).context("connect")?);
        let (stream, _) = listener.accept().context("accept")?;
        stream.set_nonblocking(args.nonblocking).context("O_NONBLOCK")?;
        servers.push(stream);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proto::listening_line(addr, std::process::id()))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);

    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (i, bytes) = match words.as_slice() {
            ["send", i, bytes] => {
                (i.parse::<usize>().context("connection index")?, bytes.parse::<usize>().context("byte count")?)
            }
            _ => bail!("unknown command {line:?}: expected `send <connection> <bytes>`"),
        };
        let Some(stream) = servers.get(i) else {
            bail!("no connection {i}: there are {}", servers.len());
        };
        let mut stream = stream.try_clone().context("dup socket for the sender")?;
        // One write, in its own thread: a blocking one may never return.
        thread::spawn(move || {
            let sent = match stream.write(&vec![b'h'; bytes]) {
                Ok(n) => n.to_string(),
                Err(e) => format!("error {e}"),
            };
            println!("SENT {i} {sent}");
        });
    }
    // Stdin closed: hold every connection, both ends, until ended by a signal.
    loop {
        thread::park();
    }
}
