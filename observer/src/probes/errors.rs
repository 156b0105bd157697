//! Errors of loading and attaching, with the causes an operator can act on.

use super::plan::Hook;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "missing privileges: loading eBPF programs needs root or CAP_BPF + CAP_PERFMON \
         (+ CAP_SYS_ADMIN on kernels before 5.8): {0}"
    )]
    Permission(String),
    #[error(transparent)]
    Offsets(#[from] super::offsets::OffsetError),
    #[error("loading the eBPF object failed: {0}")]
    Object(String),
    #[error("no attach method works for required hook `{hook}`: {tried}")]
    RequiredHook { hook: Hook, tried: String },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    /// The bpf() syscall is missing (ENOSYS) or rejects our maps (EINVAL):
    /// BPF compiled out, filtered by seccomp, or a kernel too old.
    #[error("this kernel does not support the eBPF the observer needs: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Conflict(String),
}

impl ProbeError {
    /// The kernel or sandbox refuses BPF as such, rather than one method:
    /// where polling sock_diag can stand in.
    pub fn bpf_refused(&self) -> bool {
        matches!(self, ProbeError::Permission(_) | ProbeError::Unsupported(_))
    }

    /// The kernel's BTF is missing, unreadable, or lacks a struct or field
    /// the programs need: they cannot be relocated, but sock_diag needs no BTF.
    pub fn no_usable_btf(&self) -> bool {
        use super::offsets::OffsetError;
        matches!(
            self,
            ProbeError::Offsets(
                OffsetError::Unreadable { .. } | OffsetError::NoStruct(_) | OffsetError::NoField { .. }
            )
        )
    }
}

/// Whether an aya error was, at its root, the kernel refusing permission.
pub fn is_permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    has_errno(err, &[libc::EPERM, libc::EACCES])
}

/// Whether any OS error among an error's causes has one of these errnos.
pub fn has_errno(err: &(dyn std::error::Error + 'static), errnos: &[i32]) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|n| errnos.contains(&n))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The error and its causes on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
