//! Reads of kernel struct fields at offsets the agent found in BTF.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use observer_common::{Offsets, drop_reason};

use crate::maps::count_drop;

/// Filled in by the agent before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

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

#[inline(always)]
pub fn state(sk: u64) -> u8 {
    read::<u8>(sk, off!(skc_state))
}

#[inline(always)]
pub fn snd_una(sk: u64) -> u32 {
    read::<u32>(sk, off!(snd_una))
}

#[inline(always)]
pub fn snd_nxt(sk: u64) -> u32 {
    read::<u32>(sk, off!(snd_nxt))
}

#[inline(always)]
pub fn snd_wnd(sk: u64) -> u32 {
    read::<u32>(sk, off!(snd_wnd))
}

#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    let net: u64 = read(sk, off!(skc_net));
    if net == 0 {
        return 0;
    }
    read::<u32>(net, off!(net_inum))
}

/// Local port in host byte order.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    read::<u16>(sk, off!(skc_num))
}

/// Inode of the socket's file, 0 when no file holds it any more.
#[inline(always)]
pub fn inode(sk: u64) -> u64 {
    let socket: u64 = read(sk, off!(sk_socket));
    if socket == 0 {
        return 0;
    }
    read::<u64>(socket, off!(socket_inode) + off!(inode_ino))
}

#[inline(always)]
pub fn total_retrans(sk: u64) -> u32 {
    read::<u32>(sk, off!(total_retrans))
}
