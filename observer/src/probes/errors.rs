//! Errors of loading and attaching, with the causes an operator can act on.
//! aya's errors stay typed as sources; what the kernel said is read from
//! their errno, never from their text.

use std::fmt;

use super::plan::{Hook, Method, Need};
use crate::sockets::diag::DiagError;

/// An aya failure, as aya reported it.
#[derive(Debug, thiserror::Error)]
pub enum AyaError {
    #[error(transparent)]
    Ebpf(#[from] aya::EbpfError),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Btf(#[from] aya::BtfError),
    #[error(transparent)]
    Object(#[from] aya_obj::ParseError),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "missing privileges: loading eBPF programs needs root or CAP_BPF + CAP_PERFMON \
         (+ CAP_SYS_ADMIN on kernels before 5.8)"
    )]
    Permission(#[source] AyaError),
    #[error(transparent)]
    Offsets(#[from] super::offsets::OffsetError),
    #[error("loading the eBPF object failed")]
    Object(#[source] AyaError),
    #[error("parsing kernel BTF {path} for the loader")]
    AyaBtf { path: String, source: aya::BtfError },
    #[error("no attach method works for required hook `{hook}`: {tried}")]
    RequiredHook { hook: Hook, tried: Rejections },
    #[error("--probe-method {hook}={method}: {method} is not a method of this hook")]
    NoSuchMethod { hook: Hook, method: Method },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name}")]
    Map { name: &'static str, source: aya::maps::MapError },
    /// The bpf() syscall is missing (ENOSYS) or rejects our maps (EINVAL):
    /// BPF compiled out, filtered by seccomp, or a kernel too old.
    #[error("this kernel does not support the eBPF the observer needs")]
    Unsupported(#[source] AyaError),
    #[error("--probe-method {hook}={method} cannot go with sockets=sock_diag, which loads no eBPF program")]
    Conflict { hook: Hook, method: Method },
    #[error("polling sock_diag (sockets=sock_diag was forced)")]
    SockDiag(#[source] DiagError),
    /// eBPF was refused and the sock_diag fallback failed too: both causes.
    #[error("{}; the sock_diag fallback failed too: {}", chain(.bpf.as_ref()), chain(.diag))]
    FallbackFailed { bpf: Box<ProbeError>, diag: DiagError },
}

impl ProbeError {
    /// Where polling sock_diag can stand in: the kernel or sandbox refuses
    /// BPF as such, the BTF is unusable, or the socket iterator the eBPF
    /// backend stands on is missing (before 5.9) or refused.
    pub fn sock_diag_can_stand_in(&self) -> bool {
        self.bpf_refused()
            || self.no_usable_btf()
            || matches!(self, ProbeError::RequiredHook { hook: Hook::Sockets, .. })
    }

    /// The kernel or sandbox refuses BPF as such, rather than one method.
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

    /// Sorts a failed load of the object (or of the iterator, without which
    /// the eBPF backend has nothing) by what the kernel answered.
    pub fn from_load(e: AyaError) -> ProbeError {
        if is_permission_denied(&e) {
            ProbeError::Permission(e)
        } else if has_errno(&e, &[libc::ENOSYS, libc::EINVAL]) {
            ProbeError::Unsupported(e)
        } else {
            ProbeError::Object(e)
        }
    }
}

/// Why one method of a hook was passed over.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The kernel plainly lacks what the plan row needs: not tried.
    #[error("kernel lacks {0}")]
    Lacks(Need),
    #[error("program {0} missing from the object")]
    MissingProgram(&'static str),
    /// The kernel refused to load or attach it.
    #[error("{}", chain(.0))]
    Refused(#[source] aya::programs::ProgramError),
}

/// The methods a hook passed over, in the order tried.
#[derive(Debug, Default)]
pub struct Rejections(pub Vec<(Method, Rejection)>);

impl fmt::Display for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (m, why)) in self.0.iter().enumerate() {
            write!(f, "{}{m}: {why}", if i == 0 { "" } else { "; " })?;
        }
        Ok(())
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
