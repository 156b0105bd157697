//! Times the fd-table scan that maps socket inodes to their processes, over
//! 100,000 sockets: five children of this program hold 20,000 each (one
//! process may not hold more under the usual RLIMIT_NOFILE hard limit).
//! `fd_scan --pid PID...` scans running processes instead. Run in release
//! mode, as root for another user's processes; prints the best and the
//! median of 20 scans.

use std::{
    io::{BufRead, BufReader, Read},
    os::fd::{FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use observer::{proc, target};

const ROUNDS: usize = 20;
const CHILDREN: usize = 5;
const PER_CHILD: usize = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, n] = args.as_slice()
        && flag == "--hold"
    {
        return hold(n.parse()?);
    }
    let mut children = Vec::new();
    let pids: Vec<u32> = match args.split_first() {
        Some((flag, pids)) if flag == "--pid" => pids.iter().map(|p| p.parse()).collect::<Result<_, _>>()?,
        None => {
            for _ in 0..CHILDREN {
                children.push(Holder::start(PER_CHILD)?);
            }
            children.iter().map(|c| c.0.id()).collect()
        }
        Some(_) => return Err("usage: fd_scan [--pid PID...]".into()),
    };
    let found: usize = pids.iter().map(|&p| proc::read_socket_inodes(p).map_or(0, |s| s.len())).sum();
    let inodes = time(|| {
        for &p in &pids {
            let _ = proc::read_socket_inodes(p);
        }
    });
    let scan = time(|| {
        let _ = target::scan(&pids);
    });
    // What the `procfs` crate's own fd iterator costs for the same scan.
    let crate_fd = time(|| {
        for &p in &pids {
            let Ok(process) = procfs::process::Process::new(p as i32) else { continue };
            let Ok(fds) = process.fd() else { continue };
            let sockets = fds.flatten().filter(|fd| matches!(fd.target, procfs::process::FDTarget::Socket(_)));
            std::hint::black_box(sockets.count());
        }
    });
    println!("{} processes, {found} sockets", pids.len());
    println!("read_socket_inodes: best {:?}, median {:?}", inodes.0, inodes.1);
    println!("target::scan:       best {:?}, median {:?}", scan.0, scan.1);
    println!("procfs Process::fd: best {:?}, median {:?}", crate_fd.0, crate_fd.1);
    Ok(())
}

/// Best and median of `ROUNDS` runs of `f`.
fn time(mut f: impl FnMut()) -> (Duration, Duration) {
    let mut took: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    took.sort_unstable();
    (took[0], took[ROUNDS / 2])
}

/// A child holding sockets until its stdin closes.
struct Holder(Child);

impl Holder {
    fn start(n: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let child = Command::new(std::env::current_exe()?)
            .args(["--hold", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut holder = Holder(child);
        let mut ready = String::new();
        let out = holder.0.stdout.take().ok_or("no stdout")?;
        BufReader::new(out).read_line(&mut ready)?;
        if ready.trim() != "ready" {
            return Err(format!("child failed: {ready:?}").into());
        }
        Ok(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Opens `n` unconnected TCP sockets (each a `socket:[INODE]` fd like a
/// connection's, without a peer), says so, and holds them until stdin closes.
fn hold(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid rlimit pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let n = n.min((lim.rlim_cur as usize).saturating_sub(32));
    let held: Vec<OwnedFd> = (0..n)
        .map(|_| {
            // SAFETY: plain socket(2); the fd is owned by the OwnedFd at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
        })
        .collect::<Result<_, _>>()?;
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
    Ok(())
}
