//! Loads the eBPF object and attaches every hook with the best method the
//! running kernel accepts, walking `plan::PLAN` in order.

use std::path::PathBuf;

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader, Endianness,
    programs::{BtfTracePoint, FEntry, FExit, Iter, KProbe, Program, RawTracePoint, TracePoint},
};
use observer_common::Offsets;

use super::{
    caps,
    errors::{ProbeError, chain, has_errno, is_permission_denied},
    kallsyms, offsets,
    plan::{self, Attach, Capabilities, Hook, Method},
    tracefs,
};

/// The object built by `build.rs` from `observer-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    pub max_sockets: u32,
    /// Operator's choice per hook; only that method is tried.
    pub forced: Vec<(Hook, Method)>,
    /// Where to pin the maps that carry state across a restart.
    pub pins: Option<super::pins::PinDir>,
    /// Where the kernel or the sandbox refuses BPF, poll sock_diag rather
    /// than fail.
    pub fallback: bool,
}

/// The layout each pinned map has when this build creates it, with
/// `SOCKS` sized as `--max-sockets` asks: what a pin left by an earlier
/// observer must match to be reused.
pub fn pinned_layouts(max_sockets: u32) -> Result<Vec<(&'static str, super::pins::MapLayout)>, ProbeError> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| ProbeError::Object(chain(&e)))?;
    super::pins::PINNED_MAPS
        .iter()
        .map(|&name| {
            let map = obj.maps.get(name).ok_or(ProbeError::MissingMap(name))?;
            let max_entries = if name == "SOCKS" { max_sockets } else { map.max_entries() };
            let layout = super::pins::MapLayout {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
            };
            Ok((name, layout))
        })
        .collect()
}

/// Which method a hook ended up with, and why the better ones were passed over.
#[derive(Clone, Debug)]
pub struct Choice {
    pub hook: Hook,
    pub method: Option<Method>,
    pub target: &'static str,
    pub rejected: Vec<(Method, String)>,
}

pub struct Probes {
    /// None when polling sock_diag: nothing was loaded into the kernel.
    pub ebpf: Option<Ebpf>,
    pub caps: Capabilities,
    pub choices: Vec<Choice>,
    pub sweeps: Sweeps,
}

/// How the sweeps read the sockets, decided once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sweeps {
    /// Every sweep walks every TCP socket of the watched namespaces.
    FullWalks { why: String },
    /// Between full walks, sweeps visit only the marked sockets and read
    /// only what changed (`sockets::marked`).
    Marked,
}

/// Tracing programs may use socket-local storage since Linux 5.11
/// (`bpf_sk_storage_get` from tp_btf, fentry and iterators). A kernel that
/// backported it earlier just keeps full walks.
fn marking_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0))
}

impl Probes {
    /// The sockets hook polls sock_diag: no program, no map, no events.
    pub fn sock_diag(&self) -> bool {
        self.choices.iter().any(|c| c.hook == Hook::Sockets && c.method == Some(Method::SockDiag))
    }
}

/// Loads and attaches the programs; or loads nothing and polls sock_diag,
/// when the operator forces it or, with `fallback`, when BPF is refused.
pub fn load(opts: &LoadOptions) -> Result<Probes, ProbeError> {
    if opts.forced.contains(&(Hook::Sockets, Method::SockDiag)) {
        if let Some((h, m)) = opts.forced.iter().find(|(h, _)| *h != Hook::Sockets) {
            return Err(ProbeError::Conflict(format!(
                "--probe-method {h}={m} cannot go with sockets=sock_diag, which loads no eBPF program"
            )));
        }
        return sock_diag_only(opts, "not tried: sockets=sock_diag was forced".into())
            .map_err(|e| ProbeError::RequiredHook { hook: Hook::Sockets, tried: format!("sock_diag: {e}") });
    }
    match load_bpf(opts) {
        Err(e) if opts.fallback && (e.bpf_refused() || e.no_usable_btf()) => {
            match sock_diag_only(opts, e.to_string()) {
                Ok(probes) => {
                    log::warn!(
                        "{e}; polling the kernel's socket diagnostics (sock_diag) instead: gauges and zombie \
                     classes keep working, event counters are absent (--fallback none makes this an error)"
                    );
                    Ok(probes)
                }
                Err(d) => Err(match e {
                    ProbeError::Permission(s) => {
                        ProbeError::Permission(format!("{s}; the sock_diag fallback failed too: {d}"))
                    }
                    ProbeError::Unsupported(s) => {
                        ProbeError::Unsupported(format!("{s}; the sock_diag fallback failed too: {d}"))
                    }
                    other => other,
                }),
            }
        }
        other => other,
    }
}

/// The probes of sock_diag mode: nothing loaded, only the sockets hook, once
/// the kernel has answered a dump (so a failure shows at start, not later).
fn sock_diag_only(opts: &LoadOptions, why_not_iter: String) -> Result<Probes, crate::sockets::diag::DiagError> {
    crate::sockets::diag::read_sockets(None)?;
    let btf = offsets::load_btf(&opts.btf_path).ok();
    let choices = Hook::ALL
        .into_iter()
        .map(|hook| match hook {
            Hook::Sockets => Choice {
                hook,
                method: Some(Method::SockDiag),
                target: "NETLINK_SOCK_DIAG",
                rejected: vec![(Method::Iter, why_not_iter.clone())],
            },
            _ => Choice { hook, method: None, target: "", rejected: Vec::new() },
        })
        .collect();
    let sweeps = Sweeps::FullWalks { why: "sock_diag loads no program".into() };
    Ok(Probes { ebpf: None, caps: caps::detect(btf.as_ref()), choices, sweeps })
}

/// What loading needs to know of the running kernel: its capabilities, the
/// offsets for the programs, and its BTF in aya's form.
fn kernel_facts(opts: &LoadOptions) -> Result<(Capabilities, Offsets, AyaBtf), ProbeError> {
    let btf = offsets::load_btf(&opts.btf_path)?;
    let caps = caps::detect(Some(&btf));
    let offsets = kernel_offsets(&btf, &caps)?;
    let aya_btf = AyaBtf::parse_file(&opts.btf_path, Endianness::default())
        .map_err(|e| ProbeError::Object(format!("parsing {}: {e}", opts.btf_path.display())))?;
    Ok((caps, offsets, aya_btf))
}

/// Offsets from BTF, plus the tracefs record layouts and the timer function
/// address where this kernel offers them (methods needing them fail to
/// attach otherwise, which the plan handles like any other refusal).
fn kernel_offsets(btf: &btf_rs::Btf, caps: &Capabilities) -> Result<Offsets, ProbeError> {
    let mut o = offsets::resolve(btf)?;
    if o.icsk_probes_tstamp == 0 {
        log::warn!(
            "kernel BTF has no inet_connection_sock.icsk_probes_tstamp (added in 5.12): zero-window stalls \
             are dated from when the observer first sees them, not from the first probe"
        );
    }
    if caps.tracefs {
        let field = |cat: &str, ev: &str, name: &str| -> u32 {
            tracefs::read_format(cat, ev).ok().and_then(|fields| tracefs::field_offset(&fields, name).ok()).unwrap_or(0)
        };
        o.tp_state_skaddr = field("sock", "inet_sock_set_state", "skaddr");
        o.tp_state_oldstate = field("sock", "inet_sock_set_state", "oldstate");
        o.tp_state_newstate = field("sock", "inet_sock_set_state", "newstate");
        o.tp_send_sk = field("sock", "sock_send_length", "sk");
        o.tp_retransmit_skaddr = field("tcp", "tcp_retransmit_skb", "skaddr");
    }
    o.tcp_write_timer = match kallsyms::lookup("tcp_write_timer") {
        Ok(addr) => addr,
        Err(e) => {
            log::warn!("timer hook via timer_expire_entry unavailable: {e}");
            0
        }
    };
    Ok(o)
}

/// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK (64 KiB by
/// default before 5.16), even for root: raise it where allowed
/// (CAP_SYS_RESOURCE), as far as the hard limit otherwise. Later kernels
/// charge the memory cgroup instead and ignore the limit, so a refusal is
/// no error.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit/getrlimit with valid pointers; affects only this process.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 && cur.rlim_cur < cur.rlim_max {
            cur.rlim_cur = cur.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
        }
    }
}

fn load_bpf(opts: &LoadOptions) -> Result<Probes, ProbeError> {
    let (caps, offsets, aya_btf) = kernel_facts(opts)?;
    raise_memlock();

    let marking = u32::from(marking_supported());
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&aya_btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global("MARKING", &marking, true)
        .map_max_entries("SOCKS", opts.max_sockets);
    let pin_paths: Vec<(&str, PathBuf)> =
        opts.pins.iter().flat_map(|p| super::pins::PINNED_MAPS.map(|m| (m, p.path.join(m)))).collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| {
        if is_permission_denied(&e) {
            ProbeError::Permission(chain(&e))
        } else if has_errno(&e, &[libc::ENOSYS, libc::EINVAL]) {
            ProbeError::Unsupported(chain(&e))
        } else {
            ProbeError::Object(chain(&e))
        }
    })?;

    // The iterator first: the `sweep` fallback of other hooks relies on it.
    let order = [Hook::Sockets, Hook::State, Hook::Send, Hook::Close, Hook::Timer, Hook::Retransmit];
    let mut choices = Vec::new();
    let mut iter_ok = false;
    for hook in order {
        let forced = opts.forced.iter().find(|(h, _)| *h == hook).map(|(_, m)| *m);
        let mut choice = Choice { hook, method: None, target: "", rejected: Vec::new() };
        // Methods the kernel plainly lacks are reported, not tried.
        for attach in plan::methods(hook).filter(|a| forced.is_none_or(|m| m == a.method)) {
            if let Some(need) = caps.missing(attach.method) {
                choice.rejected.push((attach.method, format!("kernel lacks {}", need.name())));
            }
        }
        for attach in plan::candidates(hook, &caps, forced) {
            let result = match attach.method {
                Method::Sweep if iter_ok => Ok(()),
                Method::Sweep => Err("the socket iterator is not loaded".to_string()),
                // Reached when the iterator failed: no program is worth
                // keeping then, the object is dropped with everything in it.
                Method::SockDiag if opts.fallback => {
                    let why = describe_rejections(&choice.rejected);
                    log::warn!(
                        "socket iterator unavailable ({why}); polling sock_diag instead, without event counters"
                    );
                    return sock_diag_only(opts, why.clone())
                        .map_err(|e| ProbeError::RequiredHook { hook, tried: format!("{why}; sock_diag: {e}") });
                }
                Method::SockDiag => Err("not tried: --fallback none".to_string()),
                _ => try_attach(&mut ebpf, attach, &aya_btf, &offsets),
            };
            match result {
                Ok(()) => {
                    iter_ok |= attach.method == Method::Iter;
                    choice.method = Some(attach.method);
                    choice.target = attach.target;
                    break;
                }
                Err(why) => {
                    if why.contains("Operation not permitted") && attach.method == Method::Iter {
                        return Err(ProbeError::Permission(why));
                    }
                    choice.rejected.push((attach.method, why));
                }
            }
        }
        if choice.method.is_none() && hook.required() {
            let tried = if choice.rejected.is_empty() {
                format!("the forced method {} does not exist for this hook", forced.map(Method::name).unwrap_or("-"))
            } else {
                describe_rejections(&choice.rejected)
            };
            return Err(ProbeError::RequiredHook { hook, tried });
        }
        if let (Some(m), None) = (forced, choice.method) {
            // An operator who forced a method must hear that it failed even
            // for an optional hook.
            let tried = describe_rejections(&choice.rejected);
            return Err(ProbeError::RequiredHook {
                hook,
                tried: if tried.is_empty() { format!("{m} is not a method of this hook") } else { tried },
            });
        }
        choices.push(choice);
    }
    choices.sort_by_key(|c| c.hook);
    // A settled socket is read again only once a byte is queued or the
    // state probe touches its mark, which takes a typed socket.
    let typed = |hook: Hook| {
        choices
            .iter()
            .any(|c| c.hook == hook && matches!(c.method, Some(Method::Fentry | Method::Fexit | Method::TpBtf)))
    };
    let sweeps = if marking == 0 {
        Sweeps::FullWalks { why: "socket-local storage needs Linux 5.11 in tracing programs".into() }
    } else if !typed(Hook::State) {
        Sweeps::FullWalks { why: "the state hook does not see typed sockets".into() }
    } else {
        load_marked(&mut ebpf, &aya_btf)
    };
    Ok(Probes { ebpf: Some(ebpf), caps, choices, sweeps })
}

fn load_marked(ebpf: &mut Ebpf, btf: &AyaBtf) -> Sweeps {
    let loaded = program(ebpf, observer_common::names::MARKED_PROGRAM).and_then(|prog| {
        let p: &mut Iter = prog.try_into().map_err(err)?;
        p.load("bpf_sk_storage_map", btf).map_err(err)
    });
    match loaded {
        Ok(()) => Sweeps::Marked,
        Err(why) => {
            log::warn!("marked-socket sweeps unavailable, every sweep walks all sockets: {why}");
            Sweeps::FullWalks { why }
        }
    }
}

pub fn describe_rejections(rejected: &[(Method, String)]) -> String {
    rejected.iter().map(|(m, why)| format!("{m}: {why}")).collect::<Vec<_>>().join("; ")
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program, String> {
    ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))
}

fn err<E: std::error::Error + 'static>(e: E) -> String {
    chain(&e)
}

/// Loads and attaches one method. On failure the program is unloaded again
/// so a refused method leaves nothing behind.
fn try_attach(ebpf: &mut Ebpf, a: &Attach, btf: &AyaBtf, offsets: &Offsets) -> Result<(), String> {
    if a.hook == Hook::Timer && a.method == Method::TpBtf && offsets.tcp_write_timer == 0 {
        return Err("address of tcp_write_timer not readable in /proc/kallsyms".into());
    }
    if a.method == Method::Tracepoint {
        let needed = match a.hook {
            Hook::Send => offsets.tp_send_sk,
            Hook::State => offsets.tp_state_newstate,
            Hook::Retransmit => offsets.tp_retransmit_skaddr,
            _ => 1,
        };
        if needed == 0 {
            return Err(format!("tracepoint {} has no readable format", a.target));
        }
    }
    load_and_attach(program(ebpf, a.program)?, a, btf, true)
}

/// Attaches a loaded program, unloading it again if the attach fails.
macro_rules! attach_or_unload {
    ($p:expr, $attach:expr) => {
        if let Err(e) = $attach {
            let _ = $p.unload();
            return Err(err(e));
        }
    };
}

/// Loads one method's program and, when `attach` is set, attaches it
/// (unloading it again if the attach fails). Without `attach` it is the
/// verifier's answer alone.
fn load_and_attach(prog: &mut Program, a: &Attach, btf: &AyaBtf, attach: bool) -> Result<(), String> {
    match a.method {
        Method::Fentry => {
            let p: &mut FEntry = prog.try_into().map_err(err)?;
            p.load(a.target, btf).map_err(err)?;
            if attach {
                attach_or_unload!(p, p.attach());
            }
        }
        Method::Fexit => {
            let p: &mut FExit = prog.try_into().map_err(err)?;
            p.load(a.target, btf).map_err(err)?;
            if attach {
                attach_or_unload!(p, p.attach());
            }
        }
        Method::Kprobe => {
            let p: &mut KProbe = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            if attach {
                attach_or_unload!(p, p.attach(a.target, 0));
            }
        }
        Method::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(err)?;
            p.load(a.target, btf).map_err(err)?;
            if attach {
                attach_or_unload!(p, p.attach());
            }
        }
        Method::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            if attach {
                attach_or_unload!(p, p.attach(a.target));
            }
        }
        Method::Tracepoint => {
            let (category, name) = a.target.split_once('/').ok_or("bad tracepoint name")?;
            let p: &mut TracePoint = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            if attach {
                attach_or_unload!(p, p.attach(category, name));
            }
        }
        Method::Iter => {
            // Attached afresh at every sweep, in the target's network namespace.
            let p: &mut Iter = prog.try_into().map_err(err)?;
            p.load(a.target, btf).map_err(err)?;
        }
        Method::Sweep | Method::SockDiag => {}
    }
    Ok(())
}

/// Each plan row with the verifier's answer for its program.
pub type Verdicts = Vec<(&'static Attach, Result<(), String>)>;

/// Whether the verifier accepts each method's program, without attaching
/// any: how `observer check --verify` shows that methods this kernel will not
/// attach (kprobes here) are at least valid programs. One object, BTF parsed
/// once; each program appears in one plan row only, so each loads once.
pub fn verify_all(opts: &LoadOptions) -> Result<Verdicts, ProbeError> {
    let (_, offsets, aya_btf) = kernel_facts(opts)?;
    raise_memlock();
    let marking = u32::from(marking_supported());
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global("MARKING", &marking, true)
        .load(OBJECT)
        .map_err(|e| ProbeError::Object(chain(&e)))?;
    Ok(plan::PLAN.iter().map(|a| (a, verify_one(&mut ebpf, a, &aya_btf))).collect())
}

fn verify_one(ebpf: &mut Ebpf, a: &Attach, btf: &AyaBtf) -> Result<(), String> {
    // Methods without a program (the sweep, polling) have nothing to verify.
    if a.program.is_empty() {
        return Ok(());
    }
    load_and_attach(program(ebpf, a.program)?, a, btf, false)
}
