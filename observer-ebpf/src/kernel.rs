//! Reads of kernel struct fields at offsets the agent found in BTF.

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_probe_read_kernel, bpf_sk_storage_get, bpf_skc_to_tcp_sock},
};
use observer_common::{Mark, Offsets, drop_reason};

use crate::maps::count_drop;

/// Filled in by the agent before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// 1 when the agent has decided this kernel lets tracing programs use
/// socket-local storage (Linux 5.11+), so sockets get marks. Set before
/// load: the verifier sees the constant and drops the helper calls of the
/// other branch, so older kernels still load every program.
#[unsafe(no_mangle)]
pub(crate) static MARKING: u32 = 0;

#[inline(always)]
pub fn marking() -> bool {
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(MARKING)) != 0 }
}

/// One offset, read so the compiler cannot fold the zero initialiser in.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::kernel::OFFSETS.$field)) }
    };
}
pub(crate) use off;

/// `*(base + offset)` as a `T`, or zero if the kernel refuses the read.
///
/// The helper zeroes the destination itself on failure, so the value is
/// returned on both paths: with a separate `T::default()` on the error path
/// the 6.1 verifier gave up on the TCP iterator after 1M instructions
/// (E2BIG), while 6.18's accepted it.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, offset: u32) -> T {
    let mut v = T::default();
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&mut v as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
            (base + offset as u64) as *const core::ffi::c_void,
        )
    };
    if ret != 0 {
        count_drop(drop_reason::READ_FAILED);
    }
    v
}

/// `*(base + offset)` as a `T`, loaded directly through a pointer the
/// verifier knows the BTF type of (an iterator's socket, a tp_btf or fentry
/// argument). The offset comes from frozen `.rodata`, which the verifier
/// sees as a constant, so it checks the access against the struct and turns
/// it into one guarded load: no helper call, unlike [`read`]. A fault reads
/// as zero.
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) }
}

/// A socket as a program receives it. Where the verifier knows the pointer's
/// BTF type (tp_btf, fentry/fexit, iterators) fields are direct loads;
/// where it is a plain number (raw tracepoints, kprobes, an address computed
/// from a timer) every field costs a `bpf_probe_read_kernel` call.
pub trait Sock: Copy {
    /// The kernel address: the key of the socket maps.
    fn addr(self) -> u64;
    fn field<T: Copy + Default>(self, offset: u32) -> T;
    /// The pointer stored at `offset`, of the same kind.
    fn follow(self, offset: u32) -> Self;
    /// Gives the socket a mark (0: its record must cross at the next
    /// marked-socket sweep). False where marks are off or cannot be had.
    fn mark(self) -> bool;
    /// Tells the marked-socket sweep that the socket's state is changing;
    /// true when the socket carries a mark.
    fn touch(self) -> bool;
    /// A number that tells sockets apart well enough to spread them over
    /// `TOUCHED`'s slots. The verifier allows no arithmetic on a typed
    /// pointer, so a typed socket offers its ports.
    fn spread(self) -> u64;
    /// The same socket as a full TCP socket, or None for any other kind:
    /// a typed `struct sock *` only reaches `tcp_sock` fields once the
    /// verifier has seen it checked.
    fn tcp(self) -> Option<Self>;
}

/// A pointer the verifier knows the BTF type of.
#[derive(Clone, Copy)]
pub struct Typed(pub *const u8);

/// A bare kernel address.
#[derive(Clone, Copy)]
pub struct Untyped(pub u64);

impl Sock for Typed {
    #[inline(always)]
    fn addr(self) -> u64 {
        self.0 as u64
    }
    #[inline(always)]
    fn field<T: Copy + Default>(self, offset: u32) -> T {
        load(self.0, offset)
    }
    #[inline(always)]
    fn follow(self, offset: u32) -> Self {
        Typed(load(self.0, offset))
    }
    #[inline(always)]
    fn mark(self) -> bool {
        marking() && !storage(self.0, BPF_SK_STORAGE_GET_F_CREATE as u64).is_null()
    }
    #[inline(always)]
    fn touch(self) -> bool {
        if !marking() {
            return false;
        }
        let mark = storage(self.0, 0);
        if mark.is_null() {
            return false;
        }
        // Racing bumps may lose one another; any of them moves it.
        unsafe { (*mark).generation += 1 };
        true
    }
    #[inline(always)]
    fn spread(self) -> u64 {
        let local: u16 = load(self.0, off!(skc_num));
        let peer: u16 = load(self.0, off!(skc_dport));
        u64::from(local) << 16 | u64::from(peer)
    }
    #[inline(always)]
    fn tcp(self) -> Option<Self> {
        let tp = unsafe { bpf_skc_to_tcp_sock(self.0 as *mut core::ffi::c_void) } as *const u8;
        (!tp.is_null()).then_some(Typed(tp))
    }
}

impl Sock for Untyped {
    #[inline(always)]
    fn addr(self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn field<T: Copy + Default>(self, offset: u32) -> T {
        read(self.0, offset)
    }
    #[inline(always)]
    fn follow(self, offset: u32) -> Self {
        Untyped(read(self.0, offset))
    }
    #[inline(always)]
    fn mark(self) -> bool {
        false
    }
    #[inline(always)]
    fn touch(self) -> bool {
        false
    }
    #[inline(always)]
    fn spread(self) -> u64 {
        // Slab objects: the low bits repeat.
        self.0 >> 6
    }
    #[inline(always)]
    fn tcp(self) -> Option<Self> {
        (protocol(self) == IPPROTO_TCP).then_some(self)
    }
}

const IPPROTO_TCP: u16 = 6;

/// The mark of the typed socket `sk`, created as `Mark::NEW` with
/// `BPF_SK_STORAGE_GET_F_CREATE`; null where there is none.
#[inline(always)]
pub fn storage(sk: *const u8, flags: u64) -> *mut Mark {
    let map = core::ptr::addr_of!(crate::maps::MARKS) as *mut core::ffi::c_void;
    let mut new = Mark::NEW;
    // Only a lookup that may create reads it: none other pays for its stores.
    let init = if flags & BPF_SK_STORAGE_GET_F_CREATE as u64 != 0 {
        (&mut new as *mut Mark).cast()
    } else {
        core::ptr::null_mut()
    };
    unsafe { bpf_sk_storage_get(map, sk as *mut core::ffi::c_void, init, flags) }.cast()
}

#[inline(always)]
pub fn state(sk: impl Sock) -> u8 {
    sk.field::<u8>(off!(skc_state))
}

#[inline(always)]
pub fn snd_una(sk: impl Sock) -> u32 {
    sk.field::<u32>(off!(snd_una))
}

#[inline(always)]
pub fn write_seq(sk: impl Sock) -> u32 {
    sk.field::<u32>(off!(write_seq))
}

#[inline(always)]
pub fn snd_nxt(sk: impl Sock) -> u32 {
    sk.field::<u32>(off!(snd_nxt))
}

#[inline(always)]
pub fn snd_wnd(sk: impl Sock) -> u32 {
    sk.field::<u32>(off!(snd_wnd))
}

#[inline(always)]
pub fn netns(sk: impl Sock) -> u32 {
    let net = sk.follow(off!(skc_net));
    if net.addr() == 0 {
        return 0;
    }
    net.field::<u32>(off!(net_inum))
}

/// Local port in host byte order.
#[inline(always)]
pub fn local_port(sk: impl Sock) -> u16 {
    sk.field::<u16>(off!(skc_num))
}

#[inline(always)]
pub fn protocol(sk: impl Sock) -> u16 {
    sk.field::<u16>(off!(sk_protocol))
}

#[inline(always)]
pub fn pending(sk: impl Sock) -> u8 {
    sk.field::<u8>(off!(icsk_pending))
}

#[inline(always)]
pub fn total_retrans(sk: impl Sock) -> u32 {
    sk.field::<u32>(off!(total_retrans))
}
