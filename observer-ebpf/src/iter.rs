//! The sweeps' iterators.
//!
//! `iter/tcp` (the full walk): one `SockRecord` per full TCP socket of the
//! reader's network namespace, joined with what the probes recorded for it.
//! This is the periodic truth the agent reconciles against, how sockets
//! opened before the agent started are found, and where sockets get their
//! mark.
//!
//! `iter/bpf_sk_storage_map` (the marked-socket sweep): visits only the
//! sockets that carry a mark, without walking the kernel's TCP tables or
//! locking a socket, and sends a record only for sockets that are not quiet
//! or changed since they last crossed; the others cross as one alive word.
//!
//! Both hand over typed kernel pointers, so every field is a direct load
//! (`kernel::load`) rather than a `bpf_probe_read_kernel` call: at 100k
//! sockets the helper calls were a third of the sweep's CPU.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns, bpf_seq_write, bpf_skc_to_tcp_sock};
use observer_common::{HeldSocket, Mark, SockRecord, drop_reason, marks, tcp_state};

use crate::{
    kernel::{self, load, off, read},
    maps::{CROSSED, SOCKS, count_drop, hint, is_target, sends_touch},
};

#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__tcp`
#[repr(C)]
pub struct IterTcpCtx {
    meta: *mut IterMeta,
    sk_common: *mut c_void,
    uid: u32,
}

/// `struct bpf_iter__bpf_sk_storage_map`
#[repr(C)]
pub struct IterMarkCtx {
    meta: *mut IterMeta,
    map: *mut c_void,
    sk: *mut c_void,
    value: *mut Mark,
}

/// `struct bpf_iter__task_file`
#[repr(C)]
pub struct IterFileCtx {
    meta: *mut IterMeta,
    task: *mut c_void,
    fd: u32,
    _pad: u32,
    file: *mut c_void,
}

const AF_INET6: u16 = 10;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const EOVERFLOW: i64 = -75;
/// asm-generic's value, which x86-64 and arm64 use.
const O_NONBLOCK: u32 = 0o4000;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn observer_sockets(ctx: *mut IterTcpCtx) -> i32 {
    // Loads from the context keep the verifier's types: `sk_common` is a
    // `struct sock_common *`, which bpf_seq_write and the direct loads need.
    let meta = unsafe { (*ctx).meta };
    let skc = unsafe { (*ctx).sk_common };
    if skc.is_null() {
        return 0;
    }
    let mut rec = SockRecord::default();
    let Some(tp) = record(skc, &mut rec) else {
        return 0;
    };
    // The walk meets every TCP socket, also those no probe ever saw (the
    // listener, sockets older than the observer): the timer filter learns here.
    if !tp.is_null() {
        crate::write_timer::learn(tp as u64);
    }
    // Marked here, for the marked-socket sweeps that follow: the target's
    // sockets (the agent gives each an entry in the probes' map) and
    // listeners, not the rest of the namespace.
    let target = rec.has_events != 0 && is_target(rec.events.owner_tgid);
    let mark = if tp.is_null() || !kernel::marking() || !(target || rec.state == tcp_state::LISTEN) {
        core::ptr::null_mut()
    } else {
        kernel::storage(tp, aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64)
    };
    rec.marked = u8::from(!mark.is_null());
    let generation = if mark.is_null() { 0 } else { unsafe { core::ptr::read_volatile(&(*mark).generation) } };
    if write(meta, &rec) && !mark.is_null() {
        settle(mark, generation, &rec);
    }
    0
}

/// After a record crossed: the socket is settled when it was quiet and its
/// generation had not moved since the previous look. A state probe bumps
/// the generation just before the kernel stores the new state, so a look
/// between the two reads the old state under the new generation; requiring
/// a second look under the same generation keeps that one from settling.
#[inline(always)]
fn settle(mark: *mut Mark, generation: u64, rec: &SockRecord) {
    unsafe {
        (*mark).settled = u32::from(rec.quiet() && (*mark).seen == generation);
        (*mark).write_seq = rec.write_seq;
        (*mark).sends_touch = u32::from(rec.nonblocking != 0 && sends_touch());
        (*mark).seen = generation;
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
pub fn observer_marked(ctx: *mut IterMarkCtx) -> i32 {
    let meta = unsafe { (*ctx).meta };
    let sk = unsafe { (*ctx).sk };
    let mark = unsafe { (*ctx).value };
    if sk.is_null() || mark.is_null() {
        return 0;
    }
    let generation = unsafe { core::ptr::read_volatile(&(*mark).generation) };
    if unsafe { (*mark).settled != 0 && (*mark).seen == generation } {
        // Settled, and no state change since: nothing crosses unless bytes
        // were queued. The agent checks the count of these against its
        // table, and learns of closes from `GONE`. A non-blocking socket's
        // sends touch the mark as they return, so it is not read at all;
        // any other may have a blocking send still waiting, which only its
        // `write_seq` shows (that read's cache miss was most of this sweep's
        // cost). Marks live on full TCP sockets only, which makes the plain
        // read at the tcp_sock offset safe.
        if unsafe { (*mark).sends_touch != 0 } {
            hint(marks::SETTLED_UNREAD);
            return 0;
        }
        if read::<u32>(sk as u64, off!(write_seq)) == unsafe { (*mark).write_seq } {
            hint(marks::SETTLED_SEEN);
            return 0;
        }
    }
    // Only full sockets carry marks.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return 0;
    }
    let mut rec = SockRecord { marked: 1, ..SockRecord::default() };
    core(sk as *const u8, tp, &mut rec);
    // Reset and waiting for the application to close it: out of the TCP
    // tables, as a walk would not show it either.
    if rec.state == tcp_state::CLOSE {
        return 0;
    }
    rest(sk as *const u8, tp, &mut rec);
    // The mark changes only once the record is written: a record the read
    // buffer could not take is shown again, and must cross then. The agent
    // drains the ring once the read ends, so no reader needs waking.
    if CROSSED.output::<SockRecord>(&rec, BPF_RB_NO_WAKEUP).is_ok() || write(meta, &rec) {
        settle(mark, generation, &rec);
    }
    0
}

/// `bpf_ringbuf_output` flag: no wakeup of epoll waiters.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// `iter/task_file`: every socket file of a watched process, as (inode,
/// process, fd). The kernel walks the file tables in place of a
/// `readlink` per fd of `/proc/PID/fd`, and only watched processes' sockets
/// cross. Threads that share their leader's table are skipped by the kernel.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn observer_owners(ctx: *mut IterFileCtx) -> i32 {
    let meta = unsafe { (*ctx).meta };
    let task = unsafe { (*ctx).task } as *const u8;
    let file = unsafe { (*ctx).file } as *const u8;
    if task.is_null() || file.is_null() {
        return 0;
    }
    let tgid: u32 = load(task, off!(task_tgid));
    if !is_target(tgid) {
        return 0;
    }
    let inode: *const u8 = load(file, off!(file_inode));
    if inode.is_null() {
        return 0;
    }
    let mode: u16 = load(inode, off!(inode_mode));
    if mode & S_IFMT != S_IFSOCK {
        return 0;
    }
    let held = HeldSocket { inode: load(inode, off!(inode_ino)), tgid, fd: unsafe { (*ctx).fd } };
    let seq = unsafe { (*meta).seq };
    let len = core::mem::size_of::<HeldSocket>() as u32;
    // -EOVERFLOW: the buffer is full and the kernel shows this file again.
    let ret = unsafe { bpf_seq_write(seq.cast(), (&held as *const HeldSocket).cast(), len) };
    if ret != 0 && ret != EOVERFLOW {
        count_drop(drop_reason::ITER_WRITE_FAILED);
    }
    0
}

/// Writes `rec` to the reader; true once it is in the buffer.
#[inline(always)]
fn write(meta: *mut IterMeta, rec: &SockRecord) -> bool {
    let seq = unsafe { (*meta).seq };
    let len = core::mem::size_of::<SockRecord>() as u32;
    // -EOVERFLOW is flow control, not loss: the read buffer is full and the
    // kernel shows this socket again at the start of the next read().
    let ret = unsafe { bpf_seq_write(seq.cast(), (rec as *const SockRecord).cast(), len) };
    if ret != 0 && ret != EOVERFLOW {
        count_drop(drop_reason::ITER_WRITE_FAILED);
    }
    ret == 0
}

/// Fills `rec` (zeroed) with the socket at the typed pointer `skc`, and
/// returns the socket as a `struct tcp_sock *` (null for a TIME_WAIT socket,
/// which is only its `sock_common`); None for request sockets, which belong
/// to no process yet. Filled in place: two records on the stack would not
/// fit in its 512 bytes.
#[inline(always)]
fn record(skc: *mut c_void, rec: &mut SockRecord) -> Option<*const u8> {
    let base = skc as *const u8;
    let state: u8 = load(base, off!(skc_state));
    if state == tcp_state::NEW_SYN_RECV {
        return None;
    }
    // A TIME_WAIT socket is never read beyond its `sock_common` (the
    // tcp_sock fields do not exist there). The helper also answers NULL
    // for anything that is not a full TCP socket.
    let tp = if state == tcp_state::TIME_WAIT {
        core::ptr::null()
    } else {
        unsafe { bpf_skc_to_tcp_sock(skc) as *const u8 }
    };
    core(base, tp, rec);
    rest(base, tp, rec);
    Some(tp)
}

/// What `SockRecord::quiet` and `SockRecord::digest` read, and what the
/// probes recorded for the socket.
#[inline(always)]
fn core(base: *const u8, tp: *const u8, rec: &mut SockRecord) {
    rec.sk = base as u64;
    rec.state = load(base, off!(skc_state));
    let net: *const u8 = load(base, off!(skc_net));
    rec.netns = if net.is_null() { 0 } else { load(net, off!(net_inum)) };
    if tp.is_null() {
        return;
    }
    (rec.inode, rec.nonblocking) = file_of(tp);
    rec.pending = load(tp, off!(icsk_pending));
    rec.backoff = load(tp, off!(icsk_backoff));
    rec.probes_out = load(tp, off!(icsk_probes_out));
    rec.write_seq = load(tp, off!(write_seq));
    rec.snd_nxt = load(tp, off!(snd_nxt));
    rec.snd_una = load(tp, off!(snd_una));
    rec.snd_wnd = load(tp, off!(snd_wnd));
    rec.wmem_queued = load(tp, off!(sk_wmem_queued));
    rec.total_retrans = load(tp, off!(total_retrans));
    // Whether the probes still hold the socket is part of what must not
    // change for a quiet record to stay home: an entry the LRU evicted has
    // to be noticed (and counted) to be put back.
    if let Some(ev) = SOCKS.get_ptr(rec.sk) {
        rec.events = unsafe { *ev };
        rec.has_events = 1;
    }
}

/// The rest of the record.
#[inline(always)]
fn rest(base: *const u8, tp: *const u8, rec: &mut SockRecord) {
    let family: u16 = load(base, off!(skc_family));
    rec.family = family as u8;
    rec.sport = load(base, off!(skc_num));
    rec.dport = u16::from_be(load(base, off!(skc_dport)));
    if family == AF_INET6 {
        rec.saddr = load(base, off!(skc_v6_rcv_saddr));
        rec.daddr = load(base, off!(skc_v6_daddr));
    } else {
        let s: [u8; 4] = load(base, off!(skc_rcv_saddr));
        let d: [u8; 4] = load(base, off!(skc_daddr));
        rec.saddr[..4].copy_from_slice(&s);
        rec.daddr[..4].copy_from_slice(&d);
    }
    if tp.is_null() {
        return;
    }
    rec.retransmits = load(tp, off!(icsk_retransmits));
    rec.jiffies = unsafe { bpf_jiffies64() } as u32;
    rec.rcv_tstamp = load(tp, off!(rcv_tstamp));
    // Offset 0 marks a kernel without the field.
    rec.probes_tstamp = if off!(icsk_probes_tstamp) != 0 { load(tp, off!(icsk_probes_tstamp)) } else { 0 };
    rec.rto = load(tp, off!(icsk_rto));
    rec.ktime_us = unsafe { bpf_ktime_get_ns() } / 1000;
    rec.mstamp_us = load(tp, off!(tcp_mstamp));
}

/// Inode of the socket's file (0 once no file holds it), and 1 when that
/// file is non-blocking and no upper-layer protocol queues bytes of its own.
/// Through the file by typed loads; a socket without a file (a kernel
/// socket) keeps its inode in `socket_alloc`, beyond `struct socket`, where
/// only a probe read can go.
#[inline(always)]
fn file_of(tp: *const u8) -> (u64, u32) {
    let socket: *const u8 = load(tp, off!(sk_socket));
    if socket.is_null() {
        return (0, 0);
    }
    let file: *const u8 = load(socket, off!(socket_file));
    if file.is_null() {
        return (read(socket as u64, off!(socket_inode) + off!(inode_ino)), 0);
    }
    let flags: u32 = load(file, off!(file_f_flags));
    let ulp: u64 = load(tp, off!(icsk_ulp_ops));
    let nonblocking = u32::from(flags & O_NONBLOCK != 0 && ulp == 0);
    let inode: *const u8 = load(file, off!(file_inode));
    (if inode.is_null() { 0 } else { load(inode, off!(inode_ino)) }, nonblocking)
}
