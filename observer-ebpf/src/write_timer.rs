//! Picking the TCP write timer out of every timer in the system, without
//! `/proc/kallsyms`: every TCP socket's `icsk_retransmit_timer.function`
//! points to the kernel's `tcp_write_timer`, so the programs learn its
//! address from the first TCP socket they meet.

use aya_ebpf::{macros::map, maps::Array};

use crate::kernel::{self, off};

const IPPROTO_TCP: u16 = 6;

/// One slot: the address of `tcp_write_timer`, 0 until a socket showed it.
/// An array lookup is inlined by the verifier, so the timer program's
/// filter costs a load and a compare before any probe read.
#[map]
static WRITE_TIMER_FN: Array<u64> = Array::with_max_entries(1, 0);

/// Learns the write timer's function from `sk`, a full TCP socket, unless
/// already known. Only a TCP socket's timer is read: another protocol's
/// would make the filter pick the wrong timers.
#[inline(always)]
pub fn learn(sk: u64) {
    let Some(slot) = WRITE_TIMER_FN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the slot of a live array map; a racing CPU writes the same value.
    if unsafe { *slot } != 0 || kernel::read::<u16>(sk, off!(sk_protocol)) != IPPROTO_TCP {
        return;
    }
    let function: u64 = kernel::read(sk, off!(icsk_retransmit_timer) + off!(timer_function));
    unsafe { *slot = function };
}

/// The socket whose write timer `timer` is, or None for any other timer
/// (or before any TCP socket was seen: nothing is tracked then anyway).
#[inline(always)]
pub fn socket_of(timer: u64) -> Option<u64> {
    // SAFETY: the slot of a live array map, read once.
    let want = unsafe { *WRITE_TIMER_FN.get_ptr(0)? };
    if want == 0 {
        return None;
    }
    let function: u64 = kernel::read(timer, off!(timer_function));
    (function == want).then(|| timer - off!(icsk_retransmit_timer) as u64)
}
