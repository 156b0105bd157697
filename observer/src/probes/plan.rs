//! The attach plan: for every hook, its methods in order of preference and
//! what each needs from the kernel. This table is the whole policy; the
//! loader walks it top to bottom and keeps the first method that loads and
//! attaches.
//!
//! | hook       | 1st                                | 2nd                         | 3rd                                   | 4th                           |
//! |------------|------------------------------------|-----------------------------|---------------------------------------|-------------------------------|
//! | send       | fexit `tcp_sendmsg`                | kprobe `tcp_sendmsg`        | tp_btf `sock_send_length`             | tracepoint `sock/sock_send_length` |
//! | close      | fentry `tcp_close`                 | kprobe `tcp_close`          | iterator (file gone at next sweep)    |                               |
//! | state      | tp_btf `inet_sock_set_state`       | raw_tp `inet_sock_set_state`| tracepoint `sock/inet_sock_set_state` |                               |
//! | timer      | fentry `tcp_write_timer_handler`   | kprobe `tcp_write_timer_handler` | tp_btf `timer_expire_entry` filtered on `tcp_write_timer` |          |
//! | retransmit | fentry `tcp_retransmit_skb`        | kprobe `tcp_retransmit_skb` | tp_btf `tcp_retransmit_skb`           | tracepoint `tcp/tcp_retransmit_skb` |
//! | sockets    | iter `tcp`                         | sock_diag (netlink, no BPF) |                                       |                               |
//!
//! fentry/fexit cost least (~35 ns, a direct trampoline call) but need BTF and
//! kernel trampolines, which some kernels or policies refuse; kprobes work on
//! nearly any kernel but cost more (~160 ns, an int3 or ftrace detour);
//! tracepoints are stable ABI and cheap but sit where the kernel put them,
//! hence the tp_btf stand-ins.
//!
//! `sock_diag` is the fallback for kernels or sandboxes that forbid BPF: the
//! agent polls the kernel's socket diagnostics as `ss` does. It loads no
//! program, so when the sockets hook uses it no other hook is attached and
//! the event counters are absent.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Send,
    Close,
    State,
    Timer,
    Retransmit,
    Sockets,
}

impl Hook {
    pub const ALL: [Hook; 6] = [Hook::Send, Hook::Close, Hook::State, Hook::Timer, Hook::Retransmit, Hook::Sockets];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Send => "send",
            Hook::Close => "close",
            Hook::State => "state",
            Hook::Timer => "timer",
            Hook::Retransmit => "retransmit",
            Hook::Sockets => "sockets",
        }
    }

    /// Without a required hook the observer cannot say anything true; the
    /// others only sharpen timing or add event counters.
    pub fn required(self) -> bool {
        matches!(self, Hook::State | Hook::Sockets)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Fentry,
    Fexit,
    Kprobe,
    TpBtf,
    RawTracepoint,
    Tracepoint,
    /// Loaded and read by the agent at every sweep.
    Iter,
    /// Nothing is attached: the periodic iterator sweep notices the effect.
    Sweep,
    /// No BPF at all: the sweep polls netlink NETLINK_SOCK_DIAG.
    SockDiag,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Fexit => "fexit",
            Method::Kprobe => "kprobe",
            Method::TpBtf => "tp_btf",
            Method::RawTracepoint => "raw_tracepoint",
            Method::Tracepoint => "tracepoint",
            Method::Iter => "iter",
            Method::Sweep => "sweep",
            Method::SockDiag => "sock_diag",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        [
            Method::Fentry,
            Method::Fexit,
            Method::Kprobe,
            Method::TpBtf,
            Method::RawTracepoint,
            Method::Tracepoint,
            Method::Iter,
            Method::Sweep,
            Method::SockDiag,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }

    /// What the kernel must offer before the method is worth trying.
    pub fn needs(self) -> &'static [Need] {
        match self {
            Method::Fentry | Method::Fexit => &[Need::Btf, Need::Trampolines],
            Method::Kprobe => &[Need::Kprobes],
            Method::TpBtf => &[Need::Btf],
            Method::RawTracepoint => &[],
            Method::Tracepoint => &[Need::Tracefs],
            Method::Iter => &[Need::Btf, Need::Iterators],
            Method::Sweep => &[Need::Iterators],
            // Any kernel with CONFIG_INET_DIAG; whether it answers shows at the first dump.
            Method::SockDiag => &[],
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kernel facilities a method depends on; see `probes::kernel` for how each
/// is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `/sys/kernel/btf/vmlinux` (CONFIG_DEBUG_INFO_BTF).
    Btf,
    /// BPF trampolines: fentry/fexit (x86-64 with DYNAMIC_FTRACE_WITH_DIRECT_CALLS,
    /// and no policy refusing tracing programs).
    Trampolines,
    /// The kprobe PMU (CONFIG_KPROBES): `/sys/bus/event_source/devices/kprobe`.
    Kprobes,
    /// tracefs mounted, for classic tracepoints and their record formats.
    Tracefs,
    /// BPF iterators (`bpf_iter_tcp` in BTF, Linux 5.9+).
    Iterators,
}

impl Need {
    pub fn name(self) -> &'static str {
        match self {
            Need::Btf => "btf",
            Need::Trampolines => "trampolines",
            Need::Kprobes => "kprobes",
            Need::Tracefs => "tracefs",
            Need::Iterators => "iterators",
        }
    }
}

/// One way to attach one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attach {
    pub hook: Hook,
    pub method: Method,
    /// Program name in the eBPF object; empty for `Sweep` and `SockDiag`.
    pub program: &'static str,
    /// Kernel function, tracepoint name, `category/name`, or iterator type.
    pub target: &'static str,
}

const fn at(hook: Hook, method: Method, program: &'static str, target: &'static str) -> Attach {
    Attach { hook, method, program, target }
}

use Hook::*;
use Method::*;

/// The plan, most preferred first within each hook.
pub const PLAN: &[Attach] = &[
    at(Send, Fexit, "send_fexit", "tcp_sendmsg"),
    at(Send, Kprobe, "send_kprobe", "tcp_sendmsg"),
    at(Send, TpBtf, "send_tp_btf", "sock_send_length"),
    at(Send, Tracepoint, "send_tracepoint", "sock/sock_send_length"),
    at(Close, Fentry, "close_fentry", "tcp_close"),
    at(Close, Kprobe, "close_kprobe", "tcp_close"),
    at(Close, Sweep, "", "tcp"),
    at(State, TpBtf, "state_tp_btf", "inet_sock_set_state"),
    at(State, RawTracepoint, "state_raw_tp", "inet_sock_set_state"),
    at(State, Tracepoint, "state_tracepoint", "sock/inet_sock_set_state"),
    at(Timer, Fentry, "timer_fentry", "tcp_write_timer_handler"),
    at(Timer, Kprobe, "timer_kprobe", "tcp_write_timer_handler"),
    at(Timer, TpBtf, "timer_tp_btf", "timer_expire_entry"),
    at(Retransmit, Fentry, "retransmit_fentry", "tcp_retransmit_skb"),
    at(Retransmit, Kprobe, "retransmit_kprobe", "tcp_retransmit_skb"),
    at(Retransmit, TpBtf, "retransmit_tp_btf", "tcp_retransmit_skb"),
    at(Retransmit, Tracepoint, "retransmit_tracepoint", "tcp/tcp_retransmit_skb"),
    at(Sockets, Iter, "observer_sockets", "tcp"),
    at(Sockets, SockDiag, "", "NETLINK_SOCK_DIAG"),
];

/// The methods of `hook` in order of preference.
pub fn methods(hook: Hook) -> impl Iterator<Item = &'static Attach> {
    PLAN.iter().filter(move |a| a.hook == hook)
}

/// What the running kernel offers, as far as can be known without trying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub btf: bool,
    /// Unknown until a program is loaded: assume yes and let the load decide.
    pub trampolines: bool,
    pub kprobes: bool,
    pub tracefs: bool,
    pub iterators: bool,
}

impl Capabilities {
    pub fn has(&self, need: Need) -> bool {
        match need {
            Need::Btf => self.btf,
            Need::Trampolines => self.trampolines,
            Need::Kprobes => self.kprobes,
            Need::Tracefs => self.tracefs,
            Need::Iterators => self.iterators,
        }
    }

    /// The first need of `method` this kernel lacks, if any.
    pub fn missing(&self, method: Method) -> Option<Need> {
        method.needs().iter().copied().find(|n| !self.has(*n))
    }
}

/// The selection rule before any load is tried: the methods of `hook` whose
/// needs the kernel meets, in order of preference, narrowed to `forced` when
/// the operator insists on one method.
pub fn candidates(hook: Hook, caps: &Capabilities, forced: Option<Method>) -> Vec<&'static Attach> {
    methods(hook)
        .filter(|a| forced.is_none_or(|m| m == a.method))
        .filter(|a| caps.missing(a.method).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(btf: bool, trampolines: bool, kprobes: bool, tracefs: bool) -> Capabilities {
        Capabilities { btf, trampolines, kprobes, tracefs, iterators: btf }
    }

    fn first(hook: Hook, c: &Capabilities) -> Option<Method> {
        candidates(hook, c, None).first().map(|a| a.method)
    }

    #[test]
    fn every_hook_has_a_plan_and_programs_are_unique() {
        for hook in Hook::ALL {
            assert!(methods(hook).count() > 0, "{hook} has no method");
        }
        let mut names: Vec<_> = PLAN.iter().map(|a| a.program).filter(|p| !p.is_empty()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(n, names.len(), "a program serves two plan rows");
    }

    #[test]
    fn full_kernel_prefers_trampolines() {
        let c = caps(true, true, true, true);
        assert_eq!(first(Hook::Send, &c), Some(Method::Fexit));
        assert_eq!(first(Hook::Close, &c), Some(Method::Fentry));
        assert_eq!(first(Hook::Timer, &c), Some(Method::Fentry));
        assert_eq!(first(Hook::Retransmit, &c), Some(Method::Fentry));
        assert_eq!(first(Hook::State, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Sockets, &c), Some(Method::Iter));
    }

    #[test]
    fn no_trampolines_falls_back_to_kprobes() {
        let c = caps(true, false, true, true);
        assert_eq!(first(Hook::Send, &c), Some(Method::Kprobe));
        assert_eq!(first(Hook::Timer, &c), Some(Method::Kprobe));
    }

    #[test]
    fn kernel_like_this_one_uses_btf_tracepoints() {
        // BTF, no kprobes, trampolines refused by policy.
        let c = caps(true, false, false, true);
        assert_eq!(first(Hook::Send, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Close, &c), Some(Method::Sweep));
        assert_eq!(first(Hook::Timer, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Retransmit, &c), Some(Method::TpBtf));
    }

    #[test]
    fn without_btf_only_plain_tracepoints_remain() {
        let c = caps(false, false, false, true);
        assert_eq!(first(Hook::Send, &c), Some(Method::Tracepoint));
        assert_eq!(first(Hook::State, &c), Some(Method::RawTracepoint));
        assert_eq!(first(Hook::Timer, &c), None);
        assert_eq!(first(Hook::Sockets, &c), Some(Method::SockDiag), "no iterator: poll sock_diag");
    }

    #[test]
    fn forcing_a_method_narrows_the_choice() {
        let c = caps(true, false, false, true);
        let forced = candidates(Hook::Send, &c, Some(Method::Tracepoint));
        assert_eq!(forced.len(), 1);
        assert_eq!(forced[0].method, Method::Tracepoint);
        assert!(candidates(Hook::Send, &c, Some(Method::Kprobe)).is_empty());
    }

    #[test]
    fn method_names_round_trip() {
        for a in PLAN {
            assert_eq!(Method::parse(a.method.name()), Some(a.method));
        }
        assert_eq!(Method::parse("uprobe"), None);
    }
}
