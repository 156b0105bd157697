//! Loads the eBPF object and attaches every hook with the best method the
//! running kernel accepts, walking `plan::PLAN` in order.

use observer_common::names;
use std::path::PathBuf;

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader, Endianness,
    maps::{Array, MapError},
    programs::{BtfTracePoint, FEntry, FExit, Iter, KProbe, Program, ProgramError, RawTracePoint},
};
use observer_common::Offsets;

use super::{
    backend::Wanted,
    caps,
    errors::{AyaError, ProbeError, Rejection, Rejections, is_permission_denied},
    offsets,
    plan::{self, Attach, Capabilities, Hook, Method},
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
    /// eBPF, sock_diag, or eBPF falling back to sock_diag.
    pub backend: Wanted,
}

/// The layout each pinned map has when this build creates it, with
/// `SOCKS` sized as `--max-sockets` asks: what a pin left by an earlier
/// observer must match to be reused.
pub fn pinned_layouts(max_sockets: u32) -> Result<Vec<(&'static str, super::pins::MapLayout)>, ProbeError> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| ProbeError::Object(e.into()))?;
    super::pins::PINNED_MAPS
        .iter()
        .map(|&name| {
            let map = obj.maps.get(name).ok_or(ProbeError::MissingMap(name))?;
            let max_entries = if name == names::SOCKS { max_sockets } else { map.max_entries() };
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
#[derive(Debug)]
pub struct Choice {
    pub hook: Hook,
    pub method: Option<Method>,
    pub target: &'static str,
    pub rejected: Rejections,
}

/// The eBPF backend: the loaded object and what each hook uses.
pub struct Probes {
    pub ebpf: Ebpf,
    pub caps: Capabilities,
    /// One per hook, in `Hook::ALL` order.
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
    Marked { settled: SettledRead },
}

impl Sweeps {
    /// How sweeps read the kernel here, for the start-up log and `check`.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Sweeps::FullWalks { why } => vec![format!("every sweep walks all TCP sockets ({why})")],
            Sweeps::Marked { settled } => vec![
                "the marked sockets that changed, between full walks of the namespaces' TCP sockets".into(),
                match settled {
                    SettledRead::SendsTouch => {
                        "settled non-blocking sockets: not read (their sends touch the mark); blocking ones: write_seq"
                            .into()
                    }
                    SettledRead::WriteSeq { why } => format!("settled sockets: write_seq read at every sweep ({why})"),
                },
            ],
        }
    }
}

/// What a marked sweep reads of a socket that settled: how it learns that
/// bytes were queued since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettledRead {
    /// Nothing, for a non-blocking socket: every send that leaves bytes
    /// outstanding touches its mark as it returns, and none can still be
    /// waiting in the kernel. Blocking sockets get the `write_seq` read.
    SendsTouch,
    /// Its `write_seq`, for every settled socket.
    WriteSeq { why: &'static str },
}

impl SettledRead {
    /// Marks are touched by a typed send probe only, and only a kernel
    /// without `tcp_sendpage` queues every byte through the hooked send.
    fn choose(send: Option<Method>, caps: &Capabilities) -> SettledRead {
        if !send.is_some_and(Method::is_typed) {
            SettledRead::WriteSeq { why: "the send hook does not see typed sockets" }
        } else if caps.sendpage {
            SettledRead::WriteSeq { why: "tcp_sendpage (before Linux 6.5) queues bytes past the send hook" }
        } else {
            SettledRead::SendsTouch
        }
    }
}

/// Tracing programs may use socket-local storage since Linux 5.11
/// (`bpf_sk_storage_get` from tp_btf, fentry and iterators). A kernel that
/// backported it earlier just keeps full walks.
fn marking_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0))
}

/// What loading needs to know of the running kernel: its capabilities, the
/// offsets for the programs, and its BTF in aya's form.
fn kernel_facts(opts: &LoadOptions) -> Result<(Capabilities, Offsets, AyaBtf), ProbeError> {
    // One parse of the kernel's BTF at a time: each is tens of MB, and the
    // two together were the agent's start-up peak.
    let (caps, offsets) = {
        let btf = offsets::load_btf(&opts.btf_path)?;
        (caps::detect(Some(&btf)), offsets::resolve(&btf)?)
    };
    if offsets.icsk_probes_tstamp == 0 {
        log::warn!(
            "kernel BTF has no inet_connection_sock.icsk_probes_tstamp (added in 5.12): zero-window stalls \
             are dated from when the observer first sees them, not from the first probe"
        );
    }
    let aya_btf = AyaBtf::parse_file(&opts.btf_path, Endianness::default())
        .map_err(|source| ProbeError::AyaBtf { path: opts.btf_path.display().to_string(), source })?;
    Ok((caps, offsets, aya_btf))
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

/// Loads the object and attaches every hook, walking the plan in
/// `Hook::ALL` order.
pub fn load(opts: &LoadOptions) -> Result<Probes, ProbeError> {
    let (caps, offsets, aya_btf) = kernel_facts(opts)?;
    raise_memlock();

    let marking = u32::from(marking_supported());
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&aya_btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global("MARKING", &marking, true)
        .map_max_entries(names::SOCKS, opts.max_sockets);
    let pin_paths: Vec<(&str, PathBuf)> =
        opts.pins.iter().flat_map(|p| super::pins::PINNED_MAPS.map(|m| (m, p.path.join(m)))).collect();
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(|e| ProbeError::from_load(e.into()))?;

    let mut choices = Vec::new();
    for hook in Hook::ALL {
        let forced = opts.forced.iter().find(|(h, _)| *h == hook).map(|(_, m)| *m);
        let mut choice = Choice { hook, method: None, target: "", rejected: Rejections::default() };
        for attach in plan::methods(hook).filter(|a| forced.is_none_or(|m| m == a.method)) {
            // Methods the kernel plainly lacks are reported, not tried.
            if let Some(need) = caps.missing(attach) {
                choice.rejected.0.push((attach.method, Rejection::Lacks(need)));
                continue;
            }
            match try_attach(&mut ebpf, attach, &aya_btf) {
                Ok(()) => {
                    choice.method = Some(attach.method);
                    choice.target = attach.target;
                    break;
                }
                // Without the iterator the eBPF backend has nothing to
                // stand on; a refusal of BPF as such is said as one.
                Err(Rejection::Refused(e)) if hook == Hook::Sockets && is_permission_denied(&e) => {
                    return Err(ProbeError::Permission(AyaError::Program(e)));
                }
                Err(why) => choice.rejected.0.push((attach.method, why)),
            }
        }
        if choice.method.is_none() && (hook.required() || forced.is_some()) {
            // An operator who forced a method must hear that it failed even
            // for an optional hook.
            if let (Some(method), true) = (forced, choice.rejected.0.is_empty()) {
                return Err(ProbeError::NoSuchMethod { hook, method });
            }
            return Err(ProbeError::RequiredHook { hook, tried: choice.rejected });
        }
        choices.push(choice);
    }
    // A settled socket is read again only once a byte is queued or the
    // state probe touches its mark, which takes a typed socket.
    let method_of = |hook: Hook| choices.iter().find(|c| c.hook == hook).and_then(|c| c.method);
    let typed = |hook: Hook| method_of(hook).is_some_and(Method::is_typed);
    let sweeps = if marking == 0 {
        Sweeps::FullWalks { why: "socket-local storage needs Linux 5.11 in tracing programs".into() }
    } else if !typed(Hook::State) {
        Sweeps::FullWalks { why: "the state hook does not see typed sockets".into() }
    } else {
        load_marked(&mut ebpf, &aya_btf, SettledRead::choose(method_of(Hook::Send), &caps))
    };
    Ok(Probes { ebpf, caps, choices, sweeps })
}

fn load_marked(ebpf: &mut Ebpf, btf: &AyaBtf, settled: SettledRead) -> Sweeps {
    let loaded = program(ebpf, observer_common::names::MARKED_PROGRAM).and_then(|prog| {
        let p: &mut Iter = prog.try_into().map_err(Rejection::Refused)?;
        p.load("bpf_sk_storage_map", btf).map_err(Rejection::Refused)
    });
    match loaded {
        Ok(()) => Sweeps::Marked { settled: tell_settled_read(ebpf, settled) },
        Err(why) => {
            let why = why.to_string();
            log::warn!("marked-socket sweeps unavailable, every sweep walks all sockets: {why}");
            Sweeps::FullWalks { why }
        }
    }
}

/// Tells the kernel programs how settled sockets are checked; a setting
/// that cannot be written leaves them reading `write_seq`, as before.
fn tell_settled_read(ebpf: &mut Ebpf, settled: SettledRead) -> SettledRead {
    if settled != SettledRead::SendsTouch {
        return settled;
    }
    let written = ebpf
        .map_mut(names::SETTINGS)
        .ok_or(MapError::InvalidName { name: names::SETTINGS.into() })
        .and_then(Array::<_, u32>::try_from)
        .and_then(|mut a| a.set(observer_common::settings::SENDS_TOUCH, 1, 0));
    match written {
        Ok(()) => settled,
        Err(e) => {
            log::warn!("settled sockets are read at every marked sweep: cannot write SETTINGS: {e}");
            SettledRead::WriteSeq { why: "the settings map could not be written" }
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Program, Rejection> {
    ebpf.program_mut(name).ok_or(Rejection::MissingProgram(name))
}

/// Loads and attaches one method. On failure the program is unloaded again
/// so a refused method leaves nothing behind.
fn try_attach(ebpf: &mut Ebpf, a: &Attach, btf: &AyaBtf) -> Result<(), Rejection> {
    if a.program.is_empty() {
        // The sweep: nothing to load, the iterator notices.
        return Ok(());
    }
    load_and_attach(program(ebpf, a.program)?, a, btf, true).map_err(Rejection::Refused)
}

/// Attaches a loaded program, unloading it again if the attach fails.
macro_rules! attach_or_unload {
    ($p:expr, $attach:expr) => {
        if let Err(e) = $attach {
            let _ = $p.unload();
            return Err(e);
        }
    };
}

/// Loads one method's program and, when `attach` is set, attaches it
/// (unloading it again if the attach fails). Without `attach` it is the
/// verifier's answer alone.
fn load_and_attach(prog: &mut Program, a: &Attach, btf: &AyaBtf, attach: bool) -> Result<(), ProgramError> {
    match a.method {
        Method::Fentry => {
            let p: &mut FEntry = prog.try_into()?;
            p.load(a.target, btf)?;
            if attach {
                attach_or_unload!(p, p.attach());
            }
        }
        Method::Fexit => {
            let p: &mut FExit = prog.try_into()?;
            p.load(a.target, btf)?;
            if attach {
                attach_or_unload!(p, p.attach());
            }
        }
        Method::Kprobe => {
            let p: &mut KProbe = prog.try_into()?;
            p.load()?;
            if attach {
                attach_or_unload!(p, p.attach(a.target, 0));
            }
        }
        Method::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(a.target, btf)?;
            if attach {
                attach_or_unload!(p, p.attach());
            }
        }
        Method::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into()?;
            p.load()?;
            if attach {
                attach_or_unload!(p, p.attach(a.target));
            }
        }
        Method::Iter => {
            // Attached afresh at every sweep, in the target's network namespace.
            let p: &mut Iter = prog.try_into()?;
            p.load(a.target, btf)?;
        }
        Method::Sweep | Method::Procfs => {}
    }
    Ok(())
}

/// Each plan row with the verifier's answer for its program.
pub type Verdicts = Vec<(&'static Attach, Result<(), Rejection>)>;

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
        .map_err(|e| ProbeError::Object(e.into()))?;
    Ok(plan::PLAN.iter().map(|a| (a, verify_one(&mut ebpf, a, &aya_btf))).collect())
}

fn verify_one(ebpf: &mut Ebpf, a: &Attach, btf: &AyaBtf) -> Result<(), Rejection> {
    // Methods without a program (the sweep) have nothing to verify.
    if a.program.is_empty() {
        return Ok(());
    }
    load_and_attach(program(ebpf, a.program)?, a, btf, false).map_err(Rejection::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(sendpage: bool) -> Capabilities {
        Capabilities { sendpage, ..Capabilities::default() }
    }

    #[test]
    fn settled_sockets_go_unread_only_behind_a_typed_send_probe_that_sees_every_send() {
        for send in [Method::TpBtf, Method::Fexit] {
            assert_eq!(SettledRead::choose(Some(send), &kernel(false)), SettledRead::SendsTouch);
            assert!(matches!(SettledRead::choose(Some(send), &kernel(true)), SettledRead::WriteSeq { .. }));
        }
        for send in [None, Some(Method::RawTracepoint), Some(Method::Kprobe)] {
            assert!(matches!(SettledRead::choose(send, &kernel(false)), SettledRead::WriteSeq { .. }));
        }
    }
}
