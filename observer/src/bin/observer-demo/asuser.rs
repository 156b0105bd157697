//! `as-user`: run a command as another user with a chosen set of
//! capabilities, as `setpriv --reuid --regid --clear-groups --inh-caps
//! --ambient-caps` would, for test environments (the VM guest's busybox)
//! that have no setpriv. Also raises RLIMIT_MEMLOCK first, as a systemd unit's
//! `LimitMEMLOCK=infinity` does.

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};

use crate::cli::AsUserArgs;

/// Capability names this helper knows (the ones the observer may need).
const NAMES: &[(&str, u32)] = &[
    ("dac_read_search", 2),
    ("setpcap", 8),
    ("net_admin", 12),
    ("sys_ptrace", 19),
    ("sys_admin", 21),
    ("sys_resource", 24),
    ("perfmon", 38),
    ("bpf", 39),
];

pub fn parse_caps(list: &str) -> Result<Vec<u32>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            let n = name.trim().to_ascii_lowercase();
            let n = n.strip_prefix("cap_").unwrap_or(&n);
            NAMES.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).with_context(|| format!("unknown capability {name:?}"))
        })
        .collect()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc != 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn run(args: &AsUserArgs) -> Result<()> {
    let caps = parse_caps(&args.caps)?;
    let Some((program, rest)) = args.command.split_first() else { bail!("no command given") };
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscalls with valid arguments; they affect only this process.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) != 0 {
            eprintln!("observer-demo: as-user: cannot raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
        }
        // Keep the permitted set across the change of uid.
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")?;
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(args.gid, args.gid, args.gid), "setresgid")?;
        check(libc::setresuid(args.uid, args.uid, args.uid), "setresuid")?;
    }
    let mut data = [CapData::default(); 2];
    for &c in &caps {
        let (word, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
        data[word].inheritable |= bit;
    }
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    // SAFETY: header and two data words, as capset(2) expects for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    for &c in &caps {
        // Ambient: what survives the exec of a program without file capabilities.
        // SAFETY: prctl with integer arguments.
        let rc = unsafe {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, c as libc::c_ulong, 0, 0)
        };
        check(rc, &format!("raising ambient capability {c}"))?;
    }
    let err = std::process::Command::new(program).args(rest).exec();
    Err(err).with_context(|| format!("cannot execute {program}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capability_names() {
        assert_eq!(parse_caps("bpf,CAP_PERFMON,sys_ptrace").ok(), Some(vec![39, 38, 19]));
        assert_eq!(parse_caps("").ok(), Some(vec![]));
        assert!(parse_caps("bpf,nonsense").is_err());
    }
}
