//! The NETLINK_SOCK_DIAG socket: open, send a dump request, read the
//! datagrams of its reply.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// Longest wait for the kernel's next datagram before a sweep gives up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Larger than any datagram the kernel sends a dump in (it fills at most
/// 32 KiB, or the reader's buffer if that is larger).
const RECV_BUFFER: usize = 64 * 1024;

pub struct NetlinkSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens a socket answering for the network namespace of the calling
    /// thread; it keeps answering for that namespace wherever it is used.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // `as _`: time_t is deprecated as a name on musl, the field type is not.
        let tv = libc::timeval { tv_sec: REPLY_TIMEOUT.as_secs() as _, tv_usec: 0 };
        // SAFETY: valid fd and a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetlinkSocket { fd, buf: vec![0; RECV_BUFFER] })
    }

    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        // SAFETY: valid fd and buffer; the kernel is the default destination
        // of an unconnected netlink socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != request.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "request sent in part"));
        }
        Ok(())
    }

    /// The next datagram. A datagram larger than the buffer is an error
    /// rather than a silently shortened dump.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        loop {
            // SAFETY: valid fd; buf is writable for its length. MSG_TRUNC
            // makes the call return the datagram's full length.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_TRUNC)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {n}-byte datagram did not fit the {}-byte buffer", self.buf.len()),
                ));
            }
            return Ok(&self.buf[..n]);
        }
    }
}
