//! How the observer reads the kernel, decided once at start-up: eBPF
//! programs (the attach plan), or polling sock_diag where the kernel or the
//! sandbox refuses BPF. Everything after start-up matches on the choice.

use log::warn;

use super::{
    errors::{ProbeError, chain},
    loader::{self, LoadOptions, Probes},
    plan::Hook,
};
use crate::sockets::diag;

pub enum Backend {
    /// Programs loaded and attached: sockets read by the TCP iterator, events counted.
    Ebpf(Probes),
    /// Nothing loaded: sockets polled through netlink sock_diag as `ss` does;
    /// no event counters.
    SockDiag(SockDiag),
}

pub struct SockDiag {
    /// Why not eBPF, as the operator is told.
    pub why: String,
}

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// eBPF; where BPF is refused, sock_diag with a warning (the default).
    EbpfOrSockDiag,
    /// eBPF or an error (`--fallback none`).
    Ebpf,
    /// sock_diag, nothing loaded (`--probe-method sockets=sock_diag`).
    SockDiag,
}

/// One hook as the operator sees it: the method in use, if any, and what
/// was passed over on the way.
pub struct HookReport {
    pub hook: Hook,
    pub method: Option<&'static str>,
    pub target: &'static str,
    pub passed_over: Vec<(&'static str, String)>,
}

/// The one place that decides the backend.
pub fn choose(opts: &LoadOptions) -> Result<Backend, ProbeError> {
    match opts.backend {
        Wanted::SockDiag => {
            if let Some(&(hook, method)) = opts.forced.first() {
                return Err(ProbeError::Conflict { hook, method });
            }
            sock_diag("not tried: sockets=sock_diag was forced".into()).map_err(ProbeError::SockDiag)
        }
        Wanted::Ebpf => loader::load(opts).map(Backend::Ebpf),
        Wanted::EbpfOrSockDiag => match loader::load(opts) {
            Ok(probes) => Ok(Backend::Ebpf(probes)),
            Err(e) if e.sock_diag_can_stand_in() => {
                let why = chain(&e);
                match sock_diag(why.clone()) {
                    Ok(backend) => {
                        warn!(
                            "{why}; polling the kernel's socket diagnostics (sock_diag) instead: gauges and zombie \
                             classes keep working, event counters are absent (--fallback none makes this an error)"
                        );
                        Ok(backend)
                    }
                    Err(diag) => Err(ProbeError::FallbackFailed { bpf: Box::new(e), diag }),
                }
            }
            Err(e) => Err(e),
        },
    }
}

/// The sock_diag backend, once the kernel has answered a dump (so a
/// failure shows at start, not at the first sweep).
fn sock_diag(why: String) -> Result<Backend, diag::DiagError> {
    diag::read_sockets(None)?;
    Ok(Backend::SockDiag(SockDiag { why }))
}

impl HookReport {
    /// The method as `observer_probe_info` labels it.
    pub fn method_label(&self) -> &'static str {
        self.method.unwrap_or("none")
    }
}

impl Backend {
    /// Every hook, in `Hook::ALL` order, with what it uses.
    pub fn report(&self) -> Vec<HookReport> {
        match self {
            Backend::Ebpf(p) => p
                .choices
                .iter()
                .map(|c| HookReport {
                    hook: c.hook,
                    method: c.method.map(|m| m.name()),
                    target: c.target,
                    passed_over: c.rejected.0.iter().map(|(m, why)| (m.name(), why.to_string())).collect(),
                })
                .collect(),
            Backend::SockDiag(d) => Hook::ALL
                .into_iter()
                .map(|hook| match hook {
                    Hook::Sockets => HookReport {
                        hook,
                        method: Some("sock_diag"),
                        target: "NETLINK_SOCK_DIAG",
                        passed_over: vec![("iter", d.why.clone())],
                    },
                    _ => HookReport { hook, method: None, target: "", passed_over: Vec::new() },
                })
                .collect(),
        }
    }
}
