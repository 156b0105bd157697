//! What each event does to the tracked-socket table. Every attach method of a
//! hook ends up here with the socket's address, so the policy is written once.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_jiffies64};
use observer_common::{FLAG_APP_CLOSED, FLAG_COUNTED_OPEN, PortKey, SockEvents, drop_reason, marks, tcp_state, timer};

use crate::{
    kernel::{self, Sock},
    maps::{
        Counter, GONE, SOCKS, TARGET_PORTS, bump, bump_by, count_drop, hint, is_target, may_be_target,
        touch_every_jiffies,
    },
};

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Starts tracking `sk` for `owner`. Returns false when the map refused it.
/// `birth` replaces whatever an earlier socket at the same address left
/// behind, and dates the state from now; otherwise the first writer wins.
#[inline(always)]
fn start(sk: impl Sock, owner: u32, flags: u32, now: u64, birth: bool) -> bool {
    crate::write_timer::learn(sk.addr());
    let una = kernel::snd_una(sk);
    // Seen mid-life with data outstanding, the last progress is unknown: 0
    // lets the agent date it from the socket's own stamps instead of now.
    let outstanding = !birth && una != kernel::snd_nxt(sk);
    let events = SockEvents {
        owner_tgid: owner,
        flags,
        snd_una: una,
        total_retrans: kernel::total_retrans(sk),
        last_progress_ns: if outstanding { 0 } else { now },
        state_since_ns: if birth { now } else { 0 },
        ..SockEvents::default()
    };
    // BPF_ANY (0) at birth; BPF_NOEXIST (1) otherwise, never to clobber
    // what another CPU recorded first.
    // A mark, so the marked-socket sweeps visit it; without one only a
    // full walk shows it, which the hint asks for.
    if !sk.mark() {
        hint(marks::HINT_UNMARKED);
    }
    match SOCKS.insert(sk.addr(), events, if birth { 0 } else { 1 }) {
        Ok(()) => true,
        Err(-17) => true, // EEXIST
        Err(_) => {
            count_drop(drop_reason::SOCKET_MAP_FULL);
            false
        }
    }
}

/// ACK progress bookkeeping shared by every event that looks at a socket.
#[inline(always)]
fn note_progress(ev: &mut SockEvents, sk: impl Sock, now: impl FnOnce() -> u64) {
    let una = kernel::snd_una(sk);
    if una != ev.snd_una || una == kernel::snd_nxt(sk) {
        // Moved, or nothing outstanding: an idle socket is not a stuck one.
        // The clock is read only here: reading the TSC is slow in VMs.
        if una != ev.snd_una {
            // Data moved: the window was open since any episode began.
            ev.zero_window_since_ns = 0;
        }
        ev.snd_una = una;
        ev.last_progress_ns = now();
    }
    // Only a socket in a zero-window episode needs its window read.
    if ev.zero_window_since_ns != 0 && kernel::snd_wnd(sk) != 0 {
        ev.zero_window_since_ns = 0;
    }
}

/// Counts the segments the kernel retransmitted since the last look, from
/// its own per-socket total: the same count whether this runs before the
/// retransmission (fentry, kprobe) or after it (tracepoints).
#[inline(always)]
fn account_retransmits(ev: &mut SockEvents, sk: impl Sock) {
    let total = kernel::total_retrans(sk);
    let new = total.wrapping_sub(ev.total_retrans);
    if new != 0 && new < 1 << 30 {
        ev.retransmits = ev.retransmits.wrapping_add(new);
        bump_by(ev.owner_tgid, Counter::Retransmits, u64::from(new));
    }
    ev.total_retrans = total;
}

/// After a send by the current task. Sends run in the sender's context, so
/// a process we do not watch costs a bit test and no more (`may_be_target`).
/// A socket the probes track needs no further test: the hash lookup of
/// `is_target` is paid only by one they do not track yet.
#[inline(always)]
pub fn on_send(sk: impl Sock) {
    let tgid = current_tgid();
    if !may_be_target(tgid) {
        return;
    }
    // The send tracepoints fire for every socket type; only TCP is ours
    // (a UDP or unix socket would be read at TCP offsets and never freed).
    let Some(sk) = sk.tcp() else {
        return;
    };
    // A settled non-blocking socket is not read again until its mark moves
    // (`settings::SENDS_TOUCH`): move it while this send left bytes
    // outstanding. Once all is acknowledged the socket is as quiet as the
    // sweep last saw it, and the mark (a cache miss away on a busy sender)
    // is left alone. `write_seq` first: `snd_una` only grows, so equal
    // means all of this send's bytes were acknowledged.
    let outstanding = kernel::write_seq(sk) != kernel::snd_una(sk);
    match SOCKS.get_ptr_mut(sk.addr()) {
        Some(ev) => {
            let ev = unsafe { &mut *ev };
            if outstanding {
                touch_now_and_then(ev, sk);
            }
            note_progress(ev, sk, || sk.processed_ns());
        }
        None => {
            if outstanding {
                sk.touch();
            }
            // A write after a reset reaches a socket already in CLOSE, whose
            // destruction no state change will announce: never start one.
            let state = kernel::state(sk);
            if state != tcp_state::CLOSE && state != tcp_state::LISTEN && is_target(tgid) {
                start(sk, tgid, 0, unsafe { bpf_ktime_get_ns() }, false);
            }
        }
    }
}

/// Moves the mark of a socket a send left bytes in, unless a send moved it
/// less than `settings::TOUCH_EVERY_JIFFIES` ago: then it cannot have
/// settled since, and the sweep that could settle it reads these bytes.
/// On a busy sender the mark's lookup was half of this program's cost.
#[inline(always)]
fn touch_now_and_then(ev: &mut SockEvents, sk: impl Sock) {
    let every = touch_every_jiffies();
    let now = unsafe { bpf_jiffies64() };
    if every != 0 && ev.touched_jiffies != 0 && now.wrapping_sub(ev.touched_jiffies) < every {
        return;
    }
    if sk.touch() {
        ev.touched_jiffies = now;
    }
}

/// The application closed the socket (tcp_close), in the closer's context.
#[inline(always)]
pub fn on_close(sk: impl Sock) {
    let Some(sk) = sk.tcp() else {
        return;
    };
    if let Some(ev) = SOCKS.get_ptr_mut(sk.addr()) {
        let ev = unsafe { &mut *ev };
        ev.flags |= FLAG_APP_CLOSED;
        ev.owner_tgid = current_tgid();
    }
}

/// A TCP state change; may run in softirq context.
#[inline(always)]
pub fn on_state(sk: impl Sock, old: i32, new: i32) {
    let Some(sk) = sk.tcp() else {
        return;
    };
    let (old, new) = (old as u8, new as u8);
    // Before the kernel stores the new state: see `iter::settle`.
    if sk.touch() && new == tcp_state::CLOSE && GONE.push(sk.addr(), 0).is_err() {
        hint(marks::HINT_GONE_LOST);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if new == tcp_state::SYN_SENT {
        // connect() runs in the caller's context: attribute by current.
        let tgid = current_tgid();
        if is_target(tgid) {
            start(sk, tgid, 0, now, true);
        }
        return;
    }
    if old == tcp_state::SYN_RECV && new == tcp_state::ESTABLISHED {
        // Passive open, in softirq: attribute by the listening port.
        let key = PortKey { netns: kernel::netns(sk), port: kernel::local_port(sk), _pad: 0 };
        if let Some(owner) = TARGET_PORTS.get_ptr(key) {
            let owner = unsafe { *owner };
            if start(sk, owner, FLAG_COUNTED_OPEN, now, true) {
                bump(owner, Counter::Opened);
            }
        }
        return;
    }
    if new == tcp_state::LISTEN {
        // listen() runs in the caller's context: a target's new listener
        // must reach the marked-socket sweeps (its port attributes accepts).
        if is_target(current_tgid()) && !sk.mark() {
            hint(marks::HINT_UNMARKED);
        }
        return;
    }
    if new == tcp_state::CLOSE
        && matches!(old, tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING)
        && SOCKS.get_ptr(sk.addr()).is_some_and(|ev| is_target(unsafe { (*ev).owner_tgid }))
    {
        // A TIME_WAIT socket may take its place, which no mark can follow.
        // Only a watched process's: the agent gives each target socket an
        // entry, and other sockets of the namespace close all the time.
        hint(marks::HINT_TIME_WAIT);
    }
    // FIN_WAIT1 and LAST_ACK follow only close() or shutdown(), which run in
    // the context of the process that holds the socket: that process is the
    // owner from here on, also for an orphan whose owner later exits.
    let closing = new == tcp_state::FIN_WAIT1 || new == tcp_state::LAST_ACK;
    let ev = match SOCKS.get_ptr_mut(sk.addr()) {
        Some(ev) => ev,
        None => {
            let tgid = current_tgid();
            if !closing || !is_target(tgid) || !start(sk, tgid, FLAG_APP_CLOSED, now, false) {
                return;
            }
            match SOCKS.get_ptr_mut(sk.addr()) {
                Some(ev) => ev,
                None => return,
            }
        }
    };
    let ev = unsafe { &mut *ev };
    ev.state_since_ns = now;
    match new {
        tcp_state::ESTABLISHED if ev.flags & FLAG_COUNTED_OPEN == 0 => {
            ev.flags |= FLAG_COUNTED_OPEN;
            bump(ev.owner_tgid, Counter::Opened);
        }
        tcp_state::CLOSE_WAIT => ev.close_wait_since_ns = now,
        tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK => {
            ev.flags |= FLAG_APP_CLOSED;
            ev.owner_tgid = current_tgid();
        }
        tcp_state::CLOSE => {
            account_retransmits(ev, sk);
            if ev.flags & FLAG_COUNTED_OPEN != 0 {
                bump(ev.owner_tgid, Counter::Closed);
            }
            let _ = SOCKS.remove(sk.addr());
        }
        _ => {}
    }
}

/// A segment was retransmitted; softirq or timer context.
#[inline(always)]
pub fn on_retransmit(sk: impl Sock) {
    let Some(sk) = sk.tcp() else {
        return;
    };
    if let Some(ev) = SOCKS.get_ptr_mut(sk.addr()) {
        account_retransmits(unsafe { &mut *ev }, sk);
    }
}

/// The TCP write timer of `sk` expired; `icsk_pending` says which one.
#[inline(always)]
pub fn on_write_timer(sk: impl Sock) {
    let Some(sk) = sk.tcp() else {
        return;
    };
    let Some(ev) = SOCKS.get_ptr_mut(sk.addr()) else {
        return;
    };
    let ev = unsafe { &mut *ev };
    let now = unsafe { bpf_ktime_get_ns() };
    note_progress(ev, sk, || now);
    account_retransmits(ev, sk);
    match kernel::pending(sk) {
        timer::RETRANS => {
            ev.rto_timeouts += 1;
            bump(ev.owner_tgid, Counter::RtoTimeouts);
        }
        timer::PROBE0 => {
            ev.zero_window_probes += 1;
            ev.last_probe_ns = now;
            if ev.zero_window_since_ns == 0 {
                ev.zero_window_since_ns = now;
            }
            bump(ev.owner_tgid, Counter::ZeroWindowProbes);
        }
        timer::LOSS_PROBE => {
            ev.loss_probes += 1;
            bump(ev.owner_tgid, Counter::LossProbes);
        }
        _ => {}
    }
}

/// The generic timer hook: only TCP write timers are ours.
#[inline(always)]
pub fn on_timer_expire(timer: impl Sock) {
    if let Some(sk) = crate::write_timer::socket_of(timer) {
        on_write_timer(sk);
    }
}
