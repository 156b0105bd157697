//! What each event does to the tracked-socket table. Every attach method of a
//! hook ends up here with the socket's address, so the policy is written once.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_jiffies64};
use observer_common::{
    FLAG_APP_CLOSED, FLAG_COUNTED_OPEN, PortKey, SockEvents, drop_reason, marks, tcp_state, timer, touched,
};

use crate::{
    kernel::{self, Sock},
    maps::{
        Counter, GONE, SOCKS, TARGET_PORTS, TOUCHED, bump, bump_by, count_drop, hint, is_target, may_be_target,
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

/// ACK progress as the write timer sees it: the agent's last ACK stamp
/// bounds it, the timer's own dating only narrows it.
#[inline(always)]
fn note_progress(ev: &mut SockEvents, sk: impl Sock, now: u64) {
    let una = kernel::snd_una(sk);
    if una != ev.snd_una || una == kernel::snd_nxt(sk) {
        // Moved, or nothing outstanding: an idle socket is not a stuck one.
        if una != ev.snd_una {
            // Data moved: the window was open since any episode began.
            ev.zero_window_since_ns = 0;
        }
        ev.snd_una = una;
        ev.last_progress_ns = now;
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
///
/// A send has one job: a socket it left bytes in must not stay settled
/// (`settings::SENDS_TOUCH`), so it moves the mark. Progress is the sweeps'
/// to date, by the socket's own stamp of its last ACK. A send after which
/// all is acknowledged leaves the socket as quiet as a sweep may have seen
/// it, and costs nothing more. The sends that follow a move on the same
/// CPU within `settings::TOUCH_EVERY_JIFFIES` find it in `TOUCHED` and stop
/// there: no mark, no map lookup, on the busiest path of all.
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
    // `write_seq` first: `snd_una` only grows, so equal means every byte
    // this send queued was acknowledged.
    if kernel::write_seq(sk) == kernel::snd_una(sk) {
        return;
    }
    let Some(sets) = TOUCHED.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's sets; see `TOUCHED`. The index is below `SETS`.
    let set = unsafe { (*sets).0.get_unchecked_mut(touched::set(sk.spread()) as usize) };
    let now = unsafe { bpf_jiffies64() };
    let every = touch_every_jiffies();
    // The socket's own slot, else the one touched longest ago (an empty
    // one first).
    let mut way = 0;
    for i in 0..touched::WAYS {
        // SAFETY: `i` is below `WAYS`.
        let slot = unsafe { set.0.get_unchecked(i) };
        if slot.sk == sk.addr() {
            if every != 0 && now.wrapping_sub(slot.jiffies) < every {
                return;
            }
            way = i;
            break;
        }
        if slot.jiffies < unsafe { set.0.get_unchecked(way) }.jiffies {
            way = i;
        }
    }

    if !sk.touch() {
        // No mark: a kernel without them, or a socket the sweeps have not
        // met. One the probes do not track yet is started here.
        // A write after a reset reaches a socket already in CLOSE, whose
        // destruction no state change will announce: never start one.
        let state = kernel::state(sk);
        if SOCKS.get_ptr(sk.addr()).is_none()
            && state != tcp_state::CLOSE
            && state != tcp_state::LISTEN
            && is_target(tgid)
        {
            start(sk, tgid, 0, unsafe { bpf_ktime_get_ns() }, false);
        }
    }
    // Also without a mark: a mark made later counts as a move then
    // (`Mark::NEW`), so skipping until then is as safe.
    // SAFETY: `way` is below `WAYS`.
    let slot = unsafe { set.0.get_unchecked_mut(way) };
    slot.sk = sk.addr();
    slot.jiffies = now;
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
    note_progress(ev, sk, now);
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
