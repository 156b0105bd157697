//! Kernel programs of `observer`.
//!
//! Each hook has one program per attach method; the agent loads the first
//! that the running kernel accepts (see `observer/src/probes/plan.rs`). Every
//! program only extracts the socket pointer from its context and hands it to
//! `track`, so all methods of a hook behave the same. Raw tracepoints get
//! the tracepoint's `TP_PROTO` arguments as they are, without BTF (4.17+).
#![no_std]
#![no_main]

mod iter;
mod kernel;
mod maps;
mod track;
mod write_timer;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, fexit, kprobe, raw_tracepoint},
    programs::{BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext},
};
use kernel::{Typed, Untyped};

// ---- send path: tcp_sendmsg -------------------------------------------------

#[fexit(function = "tcp_sendmsg")]
pub fn send_fexit(ctx: FExitContext) -> u32 {
    track::on_send(Typed(ctx.arg::<*const u8>(0)));
    0
}

#[kprobe]
pub fn send_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        track::on_send(Untyped(sk));
    }
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn send_tp_btf(ctx: BtfTracePointContext) -> i32 {
    track::on_send(Typed(ctx.arg::<*const u8>(0)));
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn send_raw_tp(ctx: RawTracePointContext) -> i32 {
    track::on_send(Untyped(ctx.arg::<u64>(0)));
    0
}

/// The benchmark's floor, never attached by the observer: an empty program on
/// the send hook, so `cargo xtask bench` can measure what any program on
/// `sock_send_length` costs per call on this machine (dispatch and the
/// run-time statistics' own clock reads) next to `send_tp_btf`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn bench_floor_send(_ctx: BtfTracePointContext) -> i32 {
    0
}

// ---- the application's close: tcp_close -------------------------------------

#[fentry(function = "tcp_close")]
pub fn close_fentry(ctx: FEntryContext) -> u32 {
    track::on_close(Typed(ctx.arg::<*const u8>(0)));
    0
}

#[kprobe]
pub fn close_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        track::on_close(Untyped(sk));
    }
    0
}

// ---- state changes: inet_sock_set_state -------------------------------------

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_tp_btf(ctx: BtfTracePointContext) -> i32 {
    track::on_state(Typed(ctx.arg::<*const u8>(0)), ctx.arg::<i32>(1), ctx.arg::<i32>(2));
    0
}

/// `inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn state_raw_tp(ctx: RawTracePointContext) -> i32 {
    track::on_state(Untyped(ctx.arg::<u64>(0)), ctx.arg::<i32>(1), ctx.arg::<i32>(2));
    0
}

// ---- retransmit / zero-window-probe / loss-probe timer ----------------------

#[fentry(function = "tcp_write_timer_handler")]
pub fn timer_fentry(ctx: FEntryContext) -> u32 {
    track::on_write_timer(Typed(ctx.arg::<*const u8>(0)));
    0
}

#[kprobe]
pub fn timer_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        track::on_write_timer(Untyped(sk));
    }
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_tp_btf(ctx: BtfTracePointContext) -> i32 {
    track::on_timer_expire(Typed(ctx.arg::<*const u8>(0)));
    0
}

/// `timer_expire_entry(struct timer_list *timer, unsigned long baseclk)`
#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn timer_raw_tp(ctx: RawTracePointContext) -> i32 {
    track::on_timer_expire(Untyped(ctx.arg::<u64>(0)));
    0
}

// ---- retransmitted segments: tcp_retransmit_skb -----------------------------

#[fentry(function = "tcp_retransmit_skb")]
pub fn retransmit_fentry(ctx: FEntryContext) -> u32 {
    track::on_retransmit(Typed(ctx.arg::<*const u8>(0)));
    0
}

#[kprobe]
pub fn retransmit_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        track::on_retransmit(Untyped(sk));
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn retransmit_tp_btf(ctx: BtfTracePointContext) -> i32 {
    track::on_retransmit(Typed(ctx.arg::<*const u8>(0)));
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb)`
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn retransmit_raw_tp(ctx: RawTracePointContext) -> i32 {
    track::on_retransmit(Untyped(ctx.arg::<u64>(0)));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
