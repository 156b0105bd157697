//! `iter/tcp`: one `SockRecord` per full TCP socket of the reader's network
//! namespace, joined with what the probes recorded for it. This is the
//! periodic truth the agent reconciles against, and how sockets opened before
//! the agent started are found.
//!
//! The iterator hands over typed kernel pointers, so every field is a direct
//! load (`kernel::load`) rather than a `bpf_probe_read_kernel` call: at
//! 100k sockets the helper calls were a third of the sweep's CPU.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns, bpf_seq_write, bpf_skc_to_tcp_sock};
use observer_common::{SockRecord, drop_reason, tcp_state};

use crate::{
    kernel::{load, off, read},
    maps::{SOCKS, count_drop},
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

const AF_INET6: u16 = 10;
const EOVERFLOW: i64 = -75;

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
    let base = skc as *const u8;
    let state: u8 = load(base, off!(skc_state));
    // Request sockets are not full sockets and belong to no process yet.
    if state == tcp_state::NEW_SYN_RECV {
        return 0;
    }
    let net: *const u8 = load(base, off!(skc_net));
    let family: u16 = load(base, off!(skc_family));
    let mut rec = SockRecord {
        sk: skc as u64,
        netns: if net.is_null() { 0 } else { load(net, off!(net_inum)) },
        state,
        family: family as u8,
        sport: load(base, off!(skc_num)),
        dport: u16::from_be(load(base, off!(skc_dport))),
        ..SockRecord::default()
    };
    if family == AF_INET6 {
        rec.saddr = load(base, off!(skc_v6_rcv_saddr));
        rec.daddr = load(base, off!(skc_v6_daddr));
    } else {
        let s: [u8; 4] = load(base, off!(skc_rcv_saddr));
        let d: [u8; 4] = load(base, off!(skc_daddr));
        rec.saddr[..4].copy_from_slice(&s);
        rec.daddr[..4].copy_from_slice(&d);
    }
    // A TIME_WAIT socket is only its `sock_common`: counted, never read
    // beyond it (the tcp_sock fields do not exist there). The helper also
    // answers NULL for anything that is not a full TCP socket.
    if state != tcp_state::TIME_WAIT {
        let tp = unsafe { bpf_skc_to_tcp_sock(skc) } as *const u8;
        if !tp.is_null() {
            full(tp, &mut rec);
        }
    }
    let seq = unsafe { (*meta).seq };
    let len = core::mem::size_of::<SockRecord>() as u32;
    // -EOVERFLOW is flow control, not loss: the read buffer is full and the
    // kernel shows this socket again at the start of the next read().
    let ret = unsafe { bpf_seq_write(seq.cast(), (&rec as *const SockRecord).cast(), len) };
    if ret != 0 && ret != EOVERFLOW {
        count_drop(drop_reason::ITER_WRITE_FAILED);
    }
    0
}

/// Inode of the socket's file, 0 once no file holds it. Through the file
/// by typed loads; a socket without a file (a kernel socket) keeps its
/// inode in `socket_alloc`, beyond `struct socket`, where only a probe
/// read can go.
#[inline(always)]
fn inode(tp: *const u8) -> u64 {
    let socket: *const u8 = load(tp, off!(sk_socket));
    if socket.is_null() {
        return 0;
    }
    let file: *const u8 = load(socket, off!(socket_file));
    if file.is_null() {
        return read(socket as u64, off!(socket_inode) + off!(inode_ino));
    }
    let inode: *const u8 = load(file, off!(file_inode));
    if inode.is_null() { 0 } else { load(inode, off!(inode_ino)) }
}

/// The fields of a full TCP socket (`tp` is its `struct tcp_sock *`; the
/// offsets are from the start of `struct sock`, which is the same address),
/// and what the probes recorded for it.
#[inline(always)]
fn full(tp: *const u8, rec: &mut SockRecord) {
    // Sockets the agent tracks were never met by a probe: learn here too.
    crate::write_timer::learn(tp as u64);
    *rec = SockRecord {
        inode: inode(tp),
        pending: load(tp, off!(icsk_pending)),
        backoff: load(tp, off!(icsk_backoff)),
        retransmits: load(tp, off!(icsk_retransmits)),
        probes_out: load(tp, off!(icsk_probes_out)),
        write_seq: load(tp, off!(write_seq)),
        snd_nxt: load(tp, off!(snd_nxt)),
        snd_una: load(tp, off!(snd_una)),
        snd_wnd: load(tp, off!(snd_wnd)),
        wmem_queued: load(tp, off!(sk_wmem_queued)),
        jiffies: unsafe { bpf_jiffies64() } as u32,
        rcv_tstamp: load(tp, off!(rcv_tstamp)),
        // Offset 0 marks a kernel without the field.
        probes_tstamp: if off!(icsk_probes_tstamp) != 0 { load(tp, off!(icsk_probes_tstamp)) } else { 0 },
        rto: load(tp, off!(icsk_rto)),
        total_retrans: load(tp, off!(total_retrans)),
        ktime_us: unsafe { bpf_ktime_get_ns() } / 1000,
        mstamp_us: load(tp, off!(tcp_mstamp)),
        ..*rec
    };
    if let Some(ev) = SOCKS.get_ptr(rec.sk) {
        rec.events = unsafe { *ev };
        rec.has_events = 1;
    }
}
