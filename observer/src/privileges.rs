//! Least privilege: what the observer needs, and giving up the rest once the
//! programs are loaded and attached.
//!
//! | capability      | needed for                                                        | when |
//! |-----------------|-------------------------------------------------------------------|------|
//! | CAP_BPF         | loading programs, creating maps; on kernels before 5.19 also every later `bpf()` call (see below) | start; every sweep before 5.19 |
//! | CAP_PERFMON     | attaching tracing programs (tp_btf, raw_tp, fentry, kprobes)      | start |
//! | CAP_SYS_PTRACE  | resolving `/proc/PID/fd/*` and `/proc/PID/ns/net` of a process owned by another user | every sweep |
//! | CAP_DAC_READ_SEARCH | listing that user's `/proc/PID/fd` directory (mode 0500)      | every sweep |
//! | CAP_SYS_ADMIN   | entering the target's network namespace (another container), mounting bpffs; stands in for CAP_BPF on kernels before 5.8 | every sweep, only for a target in another netns |
//! | CAP_SETPCAP     | trimming the bounding set during the drop itself                  | start |
//!
//! After start-up only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are planned to
//! stay, plus CAP_SYS_ADMIN when the target may live in another network
//! namespace. What sweeps do with the kernel afterwards — create an iterator
//! link from the program fd already held, read it, look up and update maps
//! through fds already held — needs no capability on 5.19 and later. Before
//! 5.19, `bpf()` refuses every command, these included, to a caller without
//! CAP_BPF (or CAP_SYS_ADMIN) when `kernel.unprivileged_bpf_disabled` is set
//! (Debian 11's 5.10 sets it by default). Rather than guess from the version,
//! [`choose`] tries those exact operations in a helper thread whose effective
//! set is lowered to each candidate set (capabilities are per thread), and
//! keeps the smallest one that works: CAP_BPF on 5.8–5.18, CAP_SYS_ADMIN on
//! older kernels.
//!
//! The drop then sets `PR_SET_NO_NEW_PRIVS`, removes everything else from the
//! bounding set (while CAP_SETPCAP is still held), and reduces the effective,
//! permitted and inheritable sets to the chosen ones and clears the ambient
//! set, so a compromised agent can neither load programs (where CAP_BPF
//! could go) nor regain what it gave up, even through an exec.

use std::fmt::Write as _;

use caps::{CapSet, Capability, CapsHashSet};

/// Capabilities planned to stay after start-up: reading the target's fds,
/// and entering its network namespace when `setns` is needed.
pub fn keep(setns: bool) -> CapsHashSet {
    let mut k = CapsHashSet::from([Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH]);
    if setns {
        k.insert(Capability::CAP_SYS_ADMIN);
    }
    k
}

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("reading the {set:?} capability set: {source}")]
    Read { set: CapSet, source: caps::errors::CapsError },
    #[error("setting the {set:?} capability set: {source}")]
    Set { set: CapSet, source: caps::errors::CapsError },
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("the capability probe thread: {0}")]
    Probe(String),
}

fn read(set: CapSet) -> Result<CapsHashSet, DropError> {
    caps::read(None, set).map_err(|source| DropError::Read { set, source })
}

/// The set to keep after start-up, and why.
#[derive(Debug)]
pub struct Plan {
    pub keep: CapsHashSet,
    /// Capabilities kept beyond [`keep`] because this kernel's `bpf()`
    /// refused the sweep's operations without them.
    pub extra: Vec<Capability>,
    /// What the probe found, for the log.
    pub why: String,
}

/// Runs `probe` in a scoped helper thread whose effective set is `effective`;
/// the calling thread's capabilities are untouched.
fn probe_with<E: std::fmt::Display>(
    effective: &CapsHashSet,
    probe: &mut (dyn FnMut() -> Result<(), E> + Send),
) -> Result<Result<(), String>, DropError> {
    std::thread::scope(|s| {
        let handle = s.spawn(|| -> Result<Result<(), String>, DropError> {
            caps::set(None, CapSet::Effective, effective)
                .map_err(|source| DropError::Set { set: CapSet::Effective, source })?;
            Ok(probe().map_err(|e| e.to_string()))
        });
        handle.join().map_err(|_| DropError::Probe("panicked".into()))?
    })
}

/// Chooses what to keep: the planned set if the sweep's kernel operations
/// (`probe`) work with it alone, else the planned set plus the first of
/// CAP_BPF, CAP_SYS_ADMIN (or both) with which they do. If they fail even
/// with every capability held now, the failure is not about privilege and
/// the plan stands.
pub fn choose<E: std::fmt::Display>(
    setns: bool,
    probe: &mut (dyn FnMut() -> Result<(), E> + Send),
) -> Result<Plan, DropError> {
    let permitted = read(CapSet::Permitted)?;
    let effective = read(CapSet::Effective)?;
    let planned: CapsHashSet = keep(setns).intersection(&effective).copied().collect();
    let first = probe_with(&planned, probe)?;
    let Err(without) = first else {
        return Ok(Plan {
            keep: planned,
            extra: Vec::new(),
            why: "the sweep's iterator and map operations work with these alone on this kernel".into(),
        });
    };
    let candidates = [
        vec![Capability::CAP_BPF],
        vec![Capability::CAP_SYS_ADMIN],
        vec![Capability::CAP_BPF, Capability::CAP_SYS_ADMIN],
    ];
    let mut tried = format!("with {} alone: {without}", names(&planned));
    for extra in candidates {
        if !extra.iter().all(|c| effective.contains(c) && permitted.contains(c))
            || extra.iter().all(|c| planned.contains(c))
        {
            continue;
        }
        let mut set = planned.clone();
        set.extend(extra.iter().copied());
        match probe_with(&set, probe)? {
            Ok(()) => {
                let why =
                    format!("this kernel's bpf() refuses the sweep's iterator and map operations without it ({tried})");
                let extra = extra.into_iter().filter(|c| !planned.contains(c)).collect();
                return Ok(Plan { keep: set, extra, why });
            }
            Err(e) => {
                let _ = write!(tried, "; with {}: {e}", names(&set));
            }
        }
    }
    let all = probe_with(&effective, probe)?;
    let why = match all {
        Ok(()) => {
            format!("no smaller set lets sweeps work ({tried}); they may fail after the drop")
        }
        Err(e) => {
            format!("sweeps fail even with every capability held ({e}): not a matter of privilege")
        }
    };
    Ok(Plan { keep: planned, extra: Vec::new(), why })
}

/// Capability names, sorted, for logs.
pub fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<Capability> = set.iter().copied().collect();
    v.sort_by_key(|c| c.index());
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// What [`drop_to`] did.
#[derive(Debug, Default)]
pub struct Dropped {
    pub dropped: Vec<Capability>,
    /// Whether the bounding set was trimmed (it takes CAP_SETPCAP).
    pub bounding_trimmed: bool,
}

/// Reduces the calling thread — call it before starting the sweep thread,
/// which inherits it — to `keep` intersected with what it had: sets
/// PR_SET_NO_NEW_PRIVS, trims the bounding set while CAP_SETPCAP is still
/// effective, then the effective, permitted and inheritable sets, and
/// clears the ambient set.
pub fn drop_to(keep: &CapsHashSet) -> Result<Dropped, DropError> {
    let permitted = read(CapSet::Permitted)?;
    let keep: CapsHashSet = keep.iter().copied().filter(|c| permitted.contains(c)).collect();
    let mut dropped: Vec<Capability> = permitted.difference(&keep).copied().collect();
    dropped.sort_by_key(|c| c.index());

    // SAFETY: prctl with integer arguments; affects only this thread and later children.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(DropError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let mut bounding_trimmed = false;
    if read(CapSet::Effective)?.contains(&Capability::CAP_SETPCAP) {
        let bounding = read(CapSet::Bounding)?;
        for c in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *c)
                .map_err(|source| DropError::Set { set: CapSet::Bounding, source })?;
        }
        bounding_trimmed = true;
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let current = read(set)?;
        caps::set(None, set, &current.intersection(&keep).copied().collect())
            .map_err(|source| DropError::Set { set, source })?;
    }
    // Ambient capabilities would survive an exec; the agent execs nothing,
    // but clear them so it could not pass privilege on.
    let _ = caps::clear(None, CapSet::Ambient);
    Ok(Dropped { dropped, bounding_trimmed })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this test process may lower and probe (it holds what the
    /// cases below add).
    fn privileged() -> bool {
        let eff = caps::read(None, CapSet::Effective).unwrap_or_default();
        let ok = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE]
            .iter()
            .all(|c| eff.contains(c));
        assert!(ok, "the tests run as root: CAP_BPF, CAP_SYS_ADMIN and CAP_SYS_PTRACE are needed");
        ok
    }

    /// A probe that succeeds when its thread's effective set holds `need`.
    fn needs(need: Capability) -> impl FnMut() -> Result<(), String> + Send {
        move || {
            let eff = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
            if eff.contains(&need) { Ok(()) } else { Err(format!("EPERM without {need}")) }
        }
    }

    #[test]
    fn keeps_the_plan_when_sweeps_work_with_it() {
        if !privileged() {
            return;
        }
        let plan = choose(false, &mut needs(Capability::CAP_SYS_PTRACE)).expect("probe runs");
        assert!(plan.extra.is_empty(), "{plan:?}");
        assert!(!plan.keep.contains(&Capability::CAP_BPF));
    }

    #[test]
    fn adds_cap_bpf_when_the_kernel_asks_for_it_and_leaves_the_caller_alone() {
        if !privileged() {
            return;
        }
        let before = caps::read(None, CapSet::Effective).expect("effective set");
        let plan = choose(false, &mut needs(Capability::CAP_BPF)).expect("probe runs");
        assert_eq!(plan.extra, vec![Capability::CAP_BPF], "{plan:?}");
        assert!(plan.keep.contains(&Capability::CAP_SYS_PTRACE));
        // The probe lowered only its helper thread.
        assert_eq!(caps::read(None, CapSet::Effective).expect("effective set"), before);
    }

    #[test]
    fn a_setns_plan_already_holding_sys_admin_needs_nothing_more() {
        if !privileged() {
            return;
        }
        // Before 5.8 CAP_SYS_ADMIN is what bpf() asks for; kept for setns, it suffices.
        let plan = choose(true, &mut needs(Capability::CAP_SYS_ADMIN)).expect("probe runs");
        assert!(plan.extra.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_failure_with_every_capability_keeps_the_plan() {
        if !privileged() {
            return;
        }
        let plan = choose(false, &mut || Err::<(), _>("ENOENT")).expect("probe runs");
        assert!(plan.extra.is_empty());
        assert!(plan.why.contains("not a matter of privilege"), "{}", plan.why);
    }

    #[test]
    fn names_are_sorted_by_number() {
        let set = CapsHashSet::from([Capability::CAP_BPF, Capability::CAP_DAC_READ_SEARCH]);
        assert_eq!(names(&set), "CAP_DAC_READ_SEARCH,CAP_BPF");
        assert_eq!(names(&CapsHashSet::new()), "none");
    }
}
