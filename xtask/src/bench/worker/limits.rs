//! Process limits and names for workers.

use anyhow::{Context, Result, bail};

/// Raises the open-file limit as far as allowed: to `want` when the process
/// may raise the hard limit (CAP_SYS_RESOURCE), else to the hard limit.
/// Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to an rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let wanted = libc::rlimit { rlim_cur: want, rlim_max: want.max(lim.rlim_max) };
    // SAFETY: valid pointer; failure leaves the limit unchanged.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return want;
    }
    let hard = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: as above; raising the soft limit up to the hard one is always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &hard) };
    lim.rlim_max
}

/// Sets this process's `comm` (what `observer --comm` matches).
pub fn set_comm(name: &str) -> Result<()> {
    if name.len() > 15 {
        bail!("process name {name:?} is longer than 15 bytes");
    }
    let c = std::ffi::CString::new(name).context("process name with a NUL byte")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) } != 0 {
        bail!("prctl(PR_SET_NAME): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises a listener's accept backlog to the kernel's maximum (std binds
/// with 128: connection bursts then overflow the queue, and each dropped
/// handshake costs the client a retransmission timeout).
pub fn deep_backlog(l: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() on a listening socket only updates its backlog;
    // the kernel caps it at net.core.somaxconn.
    unsafe { libc::listen(l.as_raw_fd(), 65535) };
}
