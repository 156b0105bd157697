//! `handoff` and `keep`: a server that gives some of its connections away —
//! passed with SCM_RIGHTS to a keeper process and closed here, or shared with
//! that keeper by inheritance, as a forked child shares its parent's sockets —
//! so an observer of the server can be held to count only what it holds.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::{HandoffArgs, KeepArgs};
use crate::{proto, signals};

pub fn run(args: &HandoffArgs) -> Result<()> {
    signals::install().context("cannot install signal handlers")?;
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listening address")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proto::listening_line(addr, std::process::id()))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);

    let total = args.pass + args.share + args.keep;
    let mut conns = Vec::new();
    for _ in 0..total {
        let (stream, _) = listener.accept().context("accept")?;
        conns.push(stream);
    }
    let keep = conns.split_off((args.pass + args.share) as usize);
    let share = conns.split_off(args.pass as usize);
    let pass = conns;

    let (ours, theirs) = UnixStream::pair().context("socketpair")?;
    // The keeper inherits the shared sockets and its end of the pair.
    for fd in share.iter().map(AsRawFd::as_raw_fd).chain([theirs.as_raw_fd()]) {
        set_cloexec(fd, false).context("fcntl")?;
    }
    let exe = std::env::current_exe().context("own executable")?;
    let mut keeper = Command::new(exe)
        .args(["keep", "--fd", &theirs.as_raw_fd().to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("starting the keeper")?;
    drop(theirs);
    for stream in &pass {
        send_fd(&ours, stream.as_raw_fd()).context("sendmsg(SCM_RIGHTS)")?;
    }
    // Given away: only the keeper holds these now.
    drop(pass);
    drop(ours);

    let mut out = std::io::stdout().lock();
    writeln!(out, "HANDED keeper={} passed={} shared={} kept={}", keeper.id(), args.pass, args.share, args.keep)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);
    while !signals::requested() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling the child this process started, by its PID.
    unsafe { libc::kill(keeper.id() as libc::pid_t, libc::SIGTERM) };
    let _ = keeper.wait();
    drop((share, keep));
    Ok(())
}

/// Receives sockets on `--fd` until the sender closes it, and holds them.
pub fn keep(args: &KeepArgs) -> Result<()> {
    signals::install().context("cannot install signal handlers")?;
    // SAFETY: the fd was inherited for this purpose and is owned here alone.
    let chan = unsafe { UnixStream::from_raw_fd(args.fd) };
    let mut held: Vec<TcpStream> = Vec::new();
    while let Some(fd) = recv_fd(&chan).context("recvmsg(SCM_RIGHTS)")? {
        held.push(TcpStream::from(fd));
    }
    while !signals::requested() {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    Ok(())
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Room for one fd in a control message, 8-aligned as the kernel wants it.
#[repr(C, align(8))]
struct Cmsg([u8; 64]);

fn send_fd(chan: &UnixStream, fd: RawFd) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut buf = Cmsg([0; 64]);
    // SAFETY: msghdr and cmsg set up over buffers that outlive the call;
    // CMSG_* compute offsets inside `buf`, which is large enough for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(chan.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(chan: &UnixStream) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut buf = Cmsg([0; 64]);
    // SAFETY: as in send_fd; the received fd is new and owned by this process.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.0.as_mut_ptr().cast();
        msg.msg_controllen = buf.0.len() as _;
        let n = libc::recvmsg(chan.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if n == 0 {
            return Ok(None);
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            bail!("a message without a file descriptor");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}
