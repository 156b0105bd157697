//! The attach plan: for every hook, its methods in order of preference and
//! what each needs from the kernel. This table is the whole policy; the
//! loader walks it top to bottom and keeps the first method that loads and
//! attaches. It applies to the eBPF backend; where BPF is refused altogether
//! the agent polls sock_diag instead (`probes::backend`).
//!
//! | hook       | method  | target                      | needs                                               |
//! |------------|---------|-----------------------------|-----------------------------------------------------|
//! | send       | fexit   | `tcp_sendmsg`               | BTF, trampolines, function `tcp_sendmsg`            |
//! |            | kprobe  | `tcp_sendmsg`               | kprobes, function `tcp_sendmsg`                     |
//! |            | tp_btf  | `sock_send_length`          | BTF, tracepoint `sock_send_length` (6.3+)           |
//! |            | raw_tp  | `sock_send_length`          | tracepoint `sock_send_length`                       |
//! | close      | fentry  | `tcp_close`                 | BTF, trampolines, function `tcp_close`              |
//! |            | kprobe  | `tcp_close`                 | kprobes, function `tcp_close`                       |
//! |            | sweep   | (file gone at next sweep)   | nothing: the iterator sweep notices                 |
//! | state      | tp_btf  | `inet_sock_set_state`       | BTF, tracepoint `inet_sock_set_state`               |
//! |            | raw_tp  | `inet_sock_set_state`       | tracepoint `inet_sock_set_state`                    |
//! | timer      | fentry  | `tcp_write_timer_handler`   | BTF, trampolines, function `tcp_write_timer_handler`|
//! |            | kprobe  | `tcp_write_timer_handler`   | kprobes, function `tcp_write_timer_handler`         |
//! |            | tp_btf  | `timer_expire_entry`        | BTF, tracepoint `timer_expire_entry`                |
//! |            | raw_tp  | `timer_expire_entry`        | tracepoint `timer_expire_entry`                     |
//! | retransmit | fentry  | `tcp_retransmit_skb`        | BTF, trampolines, function `tcp_retransmit_skb`     |
//! |            | kprobe  | `tcp_retransmit_skb`        | kprobes, function `tcp_retransmit_skb`              |
//! |            | tp_btf  | `tcp_retransmit_skb`        | BTF, tracepoint `tcp_retransmit_skb`                |
//! |            | raw_tp  | `tcp_retransmit_skb`        | tracepoint `tcp_retransmit_skb`                     |
//! | sockets    | iter    | `tcp`                       | BTF, function `bpf_iter_tcp` (5.9+)                 |
//! | owners     | iter    | `task_file`                 | BTF, function `bpf_iter_task_file` (5.8+)           |
//! |            | procfs  | `/proc/PID/fd`              | nothing: a `readlink` per fd                        |
//!
//! fentry/fexit cost least (~35 ns, a direct trampoline call) but need BTF and
//! kernel trampolines, which some kernels or policies refuse; kprobes work on
//! nearly any kernel but cost more (~160 ns, an int3 or ftrace detour);
//! tracepoints are stable ABI and cheap but sit where the kernel put them.
//! Raw tracepoints get the same `TP_PROTO` arguments as tp_btf without BTF
//! typing (4.17+), so no tracefs record format is ever parsed. The timer
//! tracepoint fires for every kernel timer: the programs keep only TCP write
//! timers, by the function address they learn from a TCP socket.
//!
//! A function or tracepoint is looked up in the kernel's BTF (`btf_trace_<name>`
//! for a tracepoint); without BTF it is unknown, and the attach decides.

use std::{collections::BTreeSet, fmt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Send,
    Close,
    State,
    Timer,
    Retransmit,
    Sockets,
    /// Who holds which socket: the watched processes' file tables.
    Owners,
}

impl Hook {
    /// Every hook, in the order the loader attaches them: the iterator first,
    /// since the eBPF backend stands on it and the `sweep` method relies on it;
    /// the state hook next, which every class needs; then the event hooks.
    pub const ALL: [Hook; 7] =
        [Hook::Sockets, Hook::Owners, Hook::State, Hook::Send, Hook::Close, Hook::Timer, Hook::Retransmit];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Send => "send",
            Hook::Close => "close",
            Hook::State => "state",
            Hook::Timer => "timer",
            Hook::Retransmit => "retransmit",
            Hook::Sockets => "sockets",
            Hook::Owners => "owners",
        }
    }

    pub fn parse(s: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == s)
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
    /// Loaded and read by the agent at every sweep.
    Iter,
    /// Nothing is attached: the periodic iterator sweep notices the effect.
    Sweep,
    /// Nothing is loaded: the agent reads `/proc/PID/fd` itself.
    Procfs,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Fentry,
        Method::Fexit,
        Method::Kprobe,
        Method::TpBtf,
        Method::RawTracepoint,
        Method::Iter,
        Method::Sweep,
        Method::Procfs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Fexit => "fexit",
            Method::Kprobe => "kprobe",
            Method::TpBtf => "tp_btf",
            Method::RawTracepoint => "raw_tracepoint",
            Method::Iter => "iter",
            Method::Sweep => "sweep",
            Method::Procfs => "procfs",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether its programs get the socket as a pointer the verifier knows
    /// the BTF type of: only those may reach a socket's mark.
    pub fn is_typed(self) -> bool {
        matches!(self, Method::Fentry | Method::Fexit | Method::TpBtf)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plan row needs from the kernel before it is worth trying; see
/// `probes::caps` for how each is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// `/sys/kernel/btf/vmlinux` (CONFIG_DEBUG_INFO_BTF): what fentry/fexit,
    /// tp_btf and iterators are typed by.
    Btf,
    /// BPF trampolines: fentry/fexit (x86-64 with DYNAMIC_FTRACE_WITH_DIRECT_CALLS,
    /// and no policy refusing tracing programs).
    Trampolines,
    /// The kprobe PMU (CONFIG_KPROBES): `/sys/bus/event_source/devices/kprobe`.
    Kprobes,
    /// A kernel function, as BTF lists it: an fentry or kprobe target (not
    /// inlined), or an iterator's `bpf_iter_<target>`.
    Function(&'static str),
    /// A tracepoint, as BTF lists it (`btf_trace_<name>`).
    Tracepoint(&'static str),
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Btf => f.write_str("btf"),
            Need::Trampolines => f.write_str("trampolines"),
            Need::Kprobes => f.write_str("kprobes"),
            Need::Function(name) => write!(f, "function {name}"),
            Need::Tracepoint(name) => write!(f, "tracepoint {name}"),
        }
    }
}

/// One way to attach one hook, and what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attach {
    pub hook: Hook,
    pub method: Method,
    /// Program name in the eBPF object; empty for `Sweep`.
    pub program: &'static str,
    /// Kernel function, tracepoint name, or iterator type.
    pub target: &'static str,
    pub needs: &'static [Need],
}

use Hook::*;
use Method::*;
use Need::{Btf, Function as Func, Kprobes, Tracepoint as Tp, Trampolines};

/// The plan, most preferred first within each hook. Needs are spelled out
/// per row, so what a method asks of the kernel reads here, next to it.
#[rustfmt::skip]
pub const PLAN: &[Attach] = &[
    Attach { hook: Send, method: Fexit, program: "send_fexit", target: "tcp_sendmsg", needs: &[Btf, Trampolines, Func("tcp_sendmsg")] },
    Attach { hook: Send, method: Kprobe, program: "send_kprobe", target: "tcp_sendmsg", needs: &[Kprobes, Func("tcp_sendmsg")] },
    Attach { hook: Send, method: TpBtf, program: "send_tp_btf", target: "sock_send_length", needs: &[Btf, Tp("sock_send_length")] },
    Attach { hook: Send, method: RawTracepoint, program: "send_raw_tp", target: "sock_send_length", needs: &[Tp("sock_send_length")] },
    Attach { hook: Close, method: Fentry, program: "close_fentry", target: "tcp_close", needs: &[Btf, Trampolines, Func("tcp_close")] },
    Attach { hook: Close, method: Kprobe, program: "close_kprobe", target: "tcp_close", needs: &[Kprobes, Func("tcp_close")] },
    // The eBPF backend always has the iterator (it is the sockets hook's only method).
    Attach { hook: Close, method: Sweep, program: "", target: "tcp", needs: &[] },
    Attach { hook: State, method: TpBtf, program: "state_tp_btf", target: "inet_sock_set_state", needs: &[Btf, Tp("inet_sock_set_state")] },
    Attach { hook: State, method: RawTracepoint, program: "state_raw_tp", target: "inet_sock_set_state", needs: &[Tp("inet_sock_set_state")] },
    Attach { hook: Timer, method: Fentry, program: "timer_fentry", target: "tcp_write_timer_handler", needs: &[Btf, Trampolines, Func("tcp_write_timer_handler")] },
    Attach { hook: Timer, method: Kprobe, program: "timer_kprobe", target: "tcp_write_timer_handler", needs: &[Kprobes, Func("tcp_write_timer_handler")] },
    Attach { hook: Timer, method: TpBtf, program: "timer_tp_btf", target: "timer_expire_entry", needs: &[Btf, Tp("timer_expire_entry")] },
    Attach { hook: Timer, method: RawTracepoint, program: "timer_raw_tp", target: "timer_expire_entry", needs: &[Tp("timer_expire_entry")] },
    Attach { hook: Retransmit, method: Fentry, program: "retransmit_fentry", target: "tcp_retransmit_skb", needs: &[Btf, Trampolines, Func("tcp_retransmit_skb")] },
    Attach { hook: Retransmit, method: Kprobe, program: "retransmit_kprobe", target: "tcp_retransmit_skb", needs: &[Kprobes, Func("tcp_retransmit_skb")] },
    Attach { hook: Retransmit, method: TpBtf, program: "retransmit_tp_btf", target: "tcp_retransmit_skb", needs: &[Btf, Tp("tcp_retransmit_skb")] },
    Attach { hook: Retransmit, method: RawTracepoint, program: "retransmit_raw_tp", target: "tcp_retransmit_skb", needs: &[Tp("tcp_retransmit_skb")] },
    Attach { hook: Sockets, method: Iter, program: observer_common::names::ITER_PROGRAM, target: "tcp", needs: &[Btf, Func("bpf_iter_tcp")] },
    Attach { hook: Owners, method: Iter, program: observer_common::names::OWNERS_PROGRAM, target: "task_file", needs: &[Btf, Func("bpf_iter_task_file")] },
    Attach { hook: Owners, method: Procfs, program: "", target: "/proc/PID/fd", needs: &[] },
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
    /// Functions and tracepoints the plan names that this kernel's BTF
    /// lacks. Without BTF nothing is known absent: the attach decides.
    pub absent: BTreeSet<Need>,
    /// `tcp_sendpage` exists (before Linux 6.5, or unknown without BTF):
    /// sendfile and splice then queue bytes past both `tcp_sendmsg` and
    /// `sock_send_length`, so no send probe sees every send.
    pub sendpage: bool,
}

impl Capabilities {
    pub fn has(&self, need: Need) -> bool {
        match need {
            Need::Btf => self.btf,
            Need::Trampolines => self.trampolines,
            Need::Kprobes => self.kprobes,
            Need::Function(_) | Need::Tracepoint(_) => !self.absent.contains(&need),
        }
    }

    /// The first need of `attach` this kernel lacks, if any.
    pub fn missing(&self, attach: &Attach) -> Option<Need> {
        attach.needs.iter().copied().find(|n| !self.has(*n))
    }
}

/// The selection rule before any load is tried: the methods of `hook` whose
/// needs the kernel meets, in order of preference, narrowed to `forced` when
/// the operator insists on one method.
pub fn candidates(hook: Hook, caps: &Capabilities, forced: Option<Method>) -> Vec<&'static Attach> {
    methods(hook).filter(|a| forced.is_none_or(|m| m == a.method)).filter(|a| caps.missing(a).is_none()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel with BTF listing every function and tracepoint of the plan,
    /// except those in `absent`.
    fn caps(btf: bool, trampolines: bool, kprobes: bool, absent: &[Need]) -> Capabilities {
        Capabilities { btf, trampolines, kprobes, absent: absent.iter().copied().collect(), sendpage: false }
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
    fn every_row_names_what_its_method_stands_on() {
        // A row that forgot a need would be tried, and fail, where the
        // kernel plainly lacks it.
        for a in PLAN {
            let has = |n: Need| a.needs.contains(&n);
            let named = a.needs.iter().any(|n| matches!(n, Need::Function(_) | Need::Tracepoint(_)));
            match a.method {
                Method::Fentry | Method::Fexit => assert!(has(Need::Btf) && has(Need::Trampolines) && named, "{a:?}"),
                Method::Kprobe => assert!(has(Need::Kprobes) && named, "{a:?}"),
                Method::TpBtf => assert!(has(Need::Btf) && has(Need::Tracepoint(a.target)), "{a:?}"),
                Method::RawTracepoint => assert_eq!(a.needs, &[Need::Tracepoint(a.target)], "no BTF needed: {a:?}"),
                Method::Iter => assert!(has(Need::Btf) && named, "{a:?}"),
                Method::Sweep | Method::Procfs => assert!(a.needs.is_empty() && a.program.is_empty(), "{a:?}"),
            }
        }
    }

    #[test]
    fn full_kernel_prefers_trampolines() {
        let c = caps(true, true, true, &[]);
        assert_eq!(first(Hook::Send, &c), Some(Method::Fexit));
        assert_eq!(first(Hook::Close, &c), Some(Method::Fentry));
        assert_eq!(first(Hook::Timer, &c), Some(Method::Fentry));
        assert_eq!(first(Hook::Retransmit, &c), Some(Method::Fentry));
        assert_eq!(first(Hook::State, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Sockets, &c), Some(Method::Iter));
        assert_eq!(first(Hook::Owners, &c), Some(Method::Iter));
    }

    #[test]
    fn no_trampolines_falls_back_to_kprobes() {
        let c = caps(true, false, true, &[]);
        assert_eq!(first(Hook::Send, &c), Some(Method::Kprobe));
        assert_eq!(first(Hook::Timer, &c), Some(Method::Kprobe));
    }

    #[test]
    fn kernel_like_this_one_uses_btf_tracepoints() {
        // BTF, no kprobes, trampolines refused by policy.
        let c = caps(true, false, false, &[]);
        assert_eq!(first(Hook::Send, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Close, &c), Some(Method::Sweep));
        assert_eq!(first(Hook::Timer, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Retransmit, &c), Some(Method::TpBtf));
    }

    #[test]
    fn a_function_missing_from_btf_is_not_tried() {
        // tcp_write_timer_handler inlined away: the timer tracepoint instead.
        let c = caps(true, true, true, &[Need::Function("tcp_write_timer_handler")]);
        assert_eq!(first(Hook::Timer, &c), Some(Method::TpBtf));
        assert_eq!(first(Hook::Send, &c), Some(Method::Fexit));
    }

    #[test]
    fn a_kernel_without_the_send_tracepoint_sends_through_probes_only() {
        // 5.10: no sock_send_length; without trampolines and kprobes the send
        // hook is left out rather than tried.
        let c = caps(true, false, false, &[Need::Tracepoint("sock_send_length")]);
        assert_eq!(first(Hook::Send, &c), None);
        assert_eq!(first(Hook::State, &c), Some(Method::TpBtf));
    }

    #[test]
    fn without_btf_only_raw_tracepoints_remain() {
        let c = caps(false, false, false, &[]);
        assert_eq!(first(Hook::Send, &c), Some(Method::RawTracepoint));
        assert_eq!(first(Hook::State, &c), Some(Method::RawTracepoint));
        assert_eq!(first(Hook::Timer, &c), Some(Method::RawTracepoint));
        assert_eq!(first(Hook::Retransmit, &c), Some(Method::RawTracepoint));
        assert_eq!(first(Hook::Sockets, &c), None, "no iterator: the sock_diag backend");
        assert_eq!(first(Hook::Owners, &c), Some(Method::Procfs));
    }

    #[test]
    fn forcing_a_method_narrows_the_choice() {
        let c = caps(true, false, false, &[]);
        let forced = candidates(Hook::Send, &c, Some(Method::RawTracepoint));
        assert_eq!(forced.len(), 1);
        assert_eq!(forced[0].method, Method::RawTracepoint);
        assert!(candidates(Hook::Send, &c, Some(Method::Kprobe)).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for a in PLAN {
            assert_eq!(Method::parse(a.method.name()), Some(a.method));
            assert_eq!(Hook::parse(a.hook.name()), Some(a.hook));
        }
        assert_eq!(Method::parse("uprobe"), None);
        assert_eq!(Method::parse("tracepoint"), None, "classic tracepoints are gone");
    }
}
