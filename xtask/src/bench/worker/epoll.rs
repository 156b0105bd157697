//! A minimal level-triggered epoll loop over raw fds, for workers that hold
//! many sockets on one thread.

use anyhow::{Result, bail};

pub struct Epoll(i32);

impl Epoll {
    pub fn new() -> Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    /// Watches `fd` for input and peer shutdown; `data` comes back with its events.
    pub fn add(&self, fd: i32, data: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: data };
        // SAFETY: valid epoll fd and event pointer.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` and closes it.
    pub fn close(&self, fd: i32) {
        // SAFETY: fd was added by us and is closed exactly once, here.
        unsafe {
            libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
            libc::close(fd);
        }
    }

    /// Waits for events; the data of each ready fd.
    pub fn wait<'a>(&self, events: &'a mut [libc::epoll_event]) -> impl Iterator<Item = u64> + 'a {
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, -1) };
        events[..n.max(0) as usize].iter().map(|e| e.u64)
    }
}

/// Reads everything available on a non-blocking fd. False when the peer
/// closed or the socket failed.
pub fn drain(fd: i32, buf: &mut [u8]) -> bool {
    loop {
        // SAFETY: fd is an open socket; buf is valid for its length.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            continue;
        }
        if r == 0 {
            return false;
        }
        let e = std::io::Error::last_os_error();
        return matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted);
    }
}
