//! `iter/tcp`: one `SockRecord` per full TCP socket of the reader's network
//! namespace, joined with what the probes recorded for it. This is the
//! periodic truth the agent reconciles against, and how sockets opened before
//! the agent started are found.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns, bpf_seq_write};
use observer_common::{SockRecord, drop_reason, tcp_state};

use crate::{
    kernel::{self, off, read},
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

const AF_INET6: u8 = 10;
const EOVERFLOW: i64 = -75;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn observer_sockets(ctx: *mut IterTcpCtx) -> i32 {
    // Direct loads: the verifier types these as kernel pointers, which
    // bpf_seq_write requires; everything else goes through probe reads.
    let meta = unsafe { (*ctx).meta };
    let sk = unsafe { (*ctx).sk_common } as u64;
    if sk == 0 {
        return 0;
    }
    let state = kernel::state(sk);
    // Request sockets are not full sockets and belong to no process yet.
    if state == tcp_state::NEW_SYN_RECV {
        return 0;
    }
    let mut rec = SockRecord {
        sk,
        netns: kernel::netns(sk),
        state,
        family: read::<u16>(sk, off!(skc_family)) as u8,
        sport: kernel::local_port(sk),
        dport: u16::from_be(read::<u16>(sk, off!(skc_dport))),
        ..SockRecord::default()
    };
    if rec.family == AF_INET6 {
        rec.saddr = read(sk, off!(skc_v6_rcv_saddr));
        rec.daddr = read(sk, off!(skc_v6_daddr));
    } else {
        let s: [u8; 4] = read(sk, off!(skc_rcv_saddr));
        let d: [u8; 4] = read(sk, off!(skc_daddr));
        rec.saddr[..4].copy_from_slice(&s);
        rec.daddr[..4].copy_from_slice(&d);
    }
    // A TIME_WAIT socket is only its `sock_common`: counted, never read
    // beyond it (the tcp_sock fields do not exist there).
    if state != tcp_state::TIME_WAIT {
        full(sk, &mut rec);
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

/// The fields of a full TCP socket, and what the probes recorded for it.
#[inline(always)]
fn full(sk: u64, rec: &mut SockRecord) {
    // Sockets the agent tracks were never met by a probe: learn here too.
    crate::write_timer::learn(sk);
    *rec = SockRecord {
        inode: kernel::inode(sk),
        pending: read(sk, off!(icsk_pending)),
        backoff: read(sk, off!(icsk_backoff)),
        retransmits: read(sk, off!(icsk_retransmits)),
        probes_out: read(sk, off!(icsk_probes_out)),
        write_seq: read(sk, off!(write_seq)),
        snd_nxt: kernel::snd_nxt(sk),
        snd_una: kernel::snd_una(sk),
        snd_wnd: kernel::snd_wnd(sk),
        wmem_queued: read(sk, off!(sk_wmem_queued)),
        jiffies: unsafe { bpf_jiffies64() } as u32,
        rcv_tstamp: read(sk, off!(rcv_tstamp)),
        // Offset 0 marks a kernel without the field.
        probes_tstamp: if off!(icsk_probes_tstamp) != 0 { read(sk, off!(icsk_probes_tstamp)) } else { 0 },
        rto: read(sk, off!(icsk_rto)),
        total_retrans: kernel::total_retrans(sk),
        ktime_us: unsafe { bpf_ktime_get_ns() } / 1000,
        mstamp_us: read(sk, off!(tcp_mstamp)),
        ..*rec
    };
    if let Some(ev) = SOCKS.get_ptr(sk) {
        rec.events = unsafe { *ev };
        rec.has_events = 1;
    }
}
