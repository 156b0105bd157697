//! Least privilege: what the observer needs, and giving up the rest once the
//! programs are loaded and attached.
//!
//! | capability      | needed for                                                        | when |
//! |-----------------|-------------------------------------------------------------------|------|
//! | CAP_BPF         | loading programs, creating maps (later sweeps use the fds they hold) | start |
//! | CAP_PERFMON     | attaching tracing programs (tp_btf, fentry, kprobes)              | start |
//! | CAP_SYS_PTRACE  | resolving `/proc/PID/fd/*` and `/proc/PID/ns/net` of a process owned by another user | every sweep |
//! | CAP_DAC_READ_SEARCH | listing that user's `/proc/PID/fd` directory (mode 0500)      | every sweep |
//! | CAP_SYS_ADMIN   | entering the target's network namespace (another container), mounting bpffs | every sweep, only for a target in another netns |
//! | CAP_SYSLOG      | reading `/proc/kallsyms` addresses (timer hook on tp_btf)          | start |
//!
//! After start-up only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH stay, plus CAP_SYS_ADMIN when the
//! target may live in another network namespace. Everything else (CAP_BPF
//! included: creating iterator links and touching maps through fds already
//! held needs no capability) leaves the effective, permitted and inheritable
//! sets, so a compromised agent can neither load programs nor regain them.

use caps::{CapSet, Capability, CapsHashSet};

/// Capabilities still needed after start-up: reading the target's fds, and
/// entering its network namespace when `setns` is needed.
pub fn keep(setns: bool) -> CapsHashSet {
    let mut k = CapsHashSet::from([Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH]);
    if setns {
        k.insert(Capability::CAP_SYS_ADMIN);
    }
    k
}

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities: {0}")]
pub struct DropError(String);

/// Reduces the calling thread — call it before starting the sweep thread,
/// which inherits it — to [`keep`] intersected with what it had. Returns
/// what was dropped.
pub fn drop_unneeded(setns: bool) -> Result<Vec<Capability>, DropError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| DropError(e.to_string()))?;
    let keep: CapsHashSet = keep(setns).into_iter().filter(|c| permitted.contains(c)).collect();
    let mut dropped: Vec<Capability> = permitted.difference(&keep).copied().collect();
    dropped.sort_by_key(|c| c.index());
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let current = caps::read(None, set).map_err(|e| DropError(e.to_string()))?;
        caps::set(None, set, &current.intersection(&keep).copied().collect())
            .map_err(|e| DropError(format!("{set:?}: {e}")))?;
    }
    // Ambient capabilities would survive an exec; the agent execs nothing,
    // but clear them so it could not pass privilege on.
    let _ = caps::clear(None, CapSet::Ambient);
    Ok(dropped)
}
