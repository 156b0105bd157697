//! Picking the TCP write timer out of every timer in the system, without
//! `/proc/kallsyms`: every TCP socket's `icsk_retransmit_timer.function`
//! points to the kernel's `tcp_write_timer`, so the programs learn its
//! address from the first TCP socket they meet.

use aya_ebpf::{macros::map, maps::Array};

use crate::kernel::{self, Sock, Untyped, off};

/// One slot: the address of `tcp_write_timer`, 0 until a socket showed it.
/// An array lookup is inlined by the verifier, so the timer program's
/// filter costs a load and a compare before it reads the timer.
#[map]
static WRITE_TIMER_FN: Array<u64> = Array::with_max_entries(1, 0);

/// Learns the write timer's function from the socket at `sk`, unless already
/// known. Only a TCP socket's timer is read: another protocol's would make
/// the filter pick the wrong timers. Probe reads, since this runs once.
#[inline(always)]
pub fn learn(sk: u64) {
    let Some(slot) = WRITE_TIMER_FN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the slot of a live array map; a racing CPU writes the same value.
    if unsafe { *slot } != 0 || Untyped(sk).tcp().is_none() {
        return;
    }
    let function: u64 = kernel::read(sk, off!(icsk_retransmit_timer) + off!(timer_function));
    unsafe { *slot = function };
}

/// The socket whose write timer `timer` is, or None for any other timer
/// (or before any TCP socket was seen: nothing is tracked then anyway).
/// Every timer of the system passes here: a map load, one field, out.
#[inline(always)]
pub fn socket_of(timer: impl Sock) -> Option<Untyped> {
    // SAFETY: the slot of a live array map, read once.
    let want = unsafe { *WRITE_TIMER_FN.get_ptr(0)? };
    if want == 0 {
        return None;
    }
    let function: u64 = timer.field(off!(timer_function));
    (function == want).then(|| Untyped(timer.addr() - off!(icsk_retransmit_timer) as u64))
}
