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
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("cannot read the listening address")?;
    let config = Arc::new(Config {
        stream: args.stream.clone(),
        interval: (args.interval_ms > 0).then(|| Duration::from_millis(args.interval_ms)),
    });

    // Held for the life of every worker, shared copy-on-write after fork.
    let preload = preload(args.preload_mib);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proto::listening_line(addr, std::process::id()))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);
    // Still single-threaded here, so forking is safe.
    let mut worker = false;
    for _ in 1..args.workers {
        if fork_worker()? {
            worker = true;
            break;
        }
    }
    // Threads only after the forks; outbound connects from the first process.
    if let (false, Some(target)) = (worker, &args.connect_out) {
        connect_out(target, args.connect_out_count)?;
    }

    let _keep = std::hint::black_box(&preload);
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

/// Outbound connections held open, each in a thread blocked in connect():
/// to an address that drops everything, they stay in SYN_SENT until the
/// kernel gives up (`tcp_syn_retries`).
fn connect_out(target: &str, count: u32) -> Result<()> {
    let addr: std::net::SocketAddr = target.parse().with_context(|| format!("--connect-out {target}"))?;
    for _ in 0..count {
        thread::Builder::new()
            .name("connect-out".into())
            .spawn(move || match TcpStream::connect(addr) {
                // Answered after all: keep it open like any client.
                Ok(stream) => loop {
                    thread::sleep(Duration::from_secs(3600));
                    let _ = &stream;
                },
                Err(e) => eprintln!("observer-demo server: connect to {addr}: {e}"),
            })
            .context("cannot start a connect thread")?;
    }
    Ok(())
}

/// `mib` MiB of heap with every page written, so it is resident.
fn preload(mib: u32) -> Vec<u8> {
    let mut v = vec![0u8; mib as usize * 1024 * 1024];
    for (i, page) in v.chunks_mut(4096).enumerate() {
        page.fill(i as u8 | 1);
    }
    v
}

/// Forks one worker. Returns true in the worker (which then accepts, like
/// the first process) and false in the first process.
fn fork_worker() -> Result<bool> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: no other thread exists yet; both sides continue in Rust code
    // that holds no lock across the fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork a worker"),
        0 => {
            // A worker ends with the first process, however that ends.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            // SAFETY: getppid cannot fail.
            if unsafe { libc::getppid() } != parent {
                std::process::exit(0);
            }
            Ok(true)
        }
        _ => Ok(false),
    }
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
