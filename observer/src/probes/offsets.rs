//! Field offsets of the kernel structs the programs read, from the running
//! kernel's BTF. Rust eBPF has no CO-RE relocations, so the agent does the
//! relocation itself once at start-up and hands the result to the programs.

use std::path::Path;

use btf_rs::{Btf, Type};
use observer_common::Offsets;

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF from {path}: {reason} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Unreadable { path: String, reason: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: {strukt}.{field} is a bit-field; the programs read whole bytes")]
    BitField { strukt: String, field: String },
    #[error("kernel BTF: {0}")]
    Btf(String),
}

pub const DEFAULT_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

pub fn load_btf(path: &Path) -> Result<Btf, OffsetError> {
    Btf::from_file(path)
        .map_err(|e| OffsetError::Unreadable { path: path.display().to_string(), reason: e.to_string() })
}

/// Resolves every offset in [`Offsets`].
pub fn resolve(btf: &Btf) -> Result<Offsets, OffsetError> {
    let f = |s: &str, path: &str| field_offset(btf, s, path);
    Ok(Offsets {
        skc_state: f("sock_common", "skc_state")?,
        skc_family: f("sock_common", "skc_family")?,
        skc_num: f("sock_common", "skc_num")?,
        skc_dport: f("sock_common", "skc_dport")?,
        skc_rcv_saddr: f("sock_common", "skc_rcv_saddr")?,
        skc_daddr: f("sock_common", "skc_daddr")?,
        skc_v6_rcv_saddr: f("sock_common", "skc_v6_rcv_saddr")?,
        skc_v6_daddr: f("sock_common", "skc_v6_daddr")?,
        skc_net: f("sock_common", "skc_net")?,
        net_inum: f("net", "ns.inum")?,
        sk_socket: f("sock", "sk_socket")?,
        sk_wmem_queued: f("sock", "sk_wmem_queued")?,
        sk_protocol: f("sock", "sk_protocol")?,
        socket_inode: f("socket_alloc", "vfs_inode")?,
        inode_ino: f("inode", "i_ino")?,
        socket_file: f("socket", "file")?,
        file_inode: f("file", "f_inode")?,
        inode_mode: f("inode", "i_mode")?,
        task_tgid: f("task_struct", "tgid")?,
        file_f_flags: f("file", "f_flags")?,
        icsk_ulp_ops: f("inet_connection_sock", "icsk_ulp_ops")?,
        icsk_retransmits: f("inet_connection_sock", "icsk_retransmits")?,
        icsk_pending: f("inet_connection_sock", "icsk_pending")?,
        icsk_backoff: f("inet_connection_sock", "icsk_backoff")?,
        icsk_probes_out: f("inet_connection_sock", "icsk_probes_out")?,
        icsk_retransmit_timer: f("inet_connection_sock", "icsk_retransmit_timer")?,
        write_seq: f("tcp_sock", "write_seq")?,
        snd_nxt: f("tcp_sock", "snd_nxt")?,
        snd_una: f("tcp_sock", "snd_una")?,
        snd_wnd: f("tcp_sock", "snd_wnd")?,
        rcv_tstamp: f("tcp_sock", "rcv_tstamp")?,
        icsk_rto: f("inet_connection_sock", "icsk_rto")?,
        total_retrans: f("tcp_sock", "total_retrans")?,
        tcp_mstamp: f("tcp_sock", "tcp_mstamp")?,
        // Optional: older kernels lack it, and the stall is then dated from first sight.
        icsk_probes_tstamp: f("inet_connection_sock", "icsk_probes_tstamp").unwrap_or(0),
        timer_function: f("timer_list", "function")?,
    })
}

/// Byte offset of `path` (dot-separated, e.g. `ns.inum`) inside `struct strukt`,
/// looking through anonymous structs and unions as C does.
pub fn field_offset(btf: &Btf, strukt: &str, path: &str) -> Result<u32, OffsetError> {
    let mut ty = find_struct(btf, strukt)?;
    let mut total_bits = 0u32;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (bits, member_ty) = find_member(btf, &ty, part)?
            .ok_or_else(|| OffsetError::NoField { strukt: strukt.to_string(), field: path.to_string() })?;
        total_bits += bits;
        if parts.peek().is_some() {
            ty = member_ty;
        }
    }
    if !total_bits.is_multiple_of(8) {
        return Err(OffsetError::BitField { strukt: strukt.into(), field: path.into() });
    }
    Ok(total_bits / 8)
}

fn find_struct(btf: &Btf, name: &str) -> Result<Type, OffsetError> {
    let types = btf.resolve_types_by_name(name).map_err(|_| OffsetError::NoStruct(name.into()))?;
    types.into_iter().find(|t| matches!(t, Type::Struct(_))).ok_or_else(|| OffsetError::NoStruct(name.into()))
}

/// Strips typedefs and qualifiers down to the underlying type.
fn underlying(btf: &Btf, mut ty: Type) -> Result<Type, OffsetError> {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return Ok(ty),
        };
        ty = next.map_err(|e| OffsetError::Btf(e.to_string()))?;
    }
    Err(OffsetError::Btf("type chain too long".into()))
}

/// (bit offset, member type) of `name` in a struct or union type.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, OffsetError> {
    let members = match underlying(btf, ty.clone())? {
        Type::Struct(s) | Type::Union(s) => s.members,
        _ => return Ok(None),
    };
    for m in &members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let member_ty = underlying(btf, btf.resolve_chained_type(m).map_err(|e| OffsetError::Btf(e.to_string()))?)?;
        if member_name == name {
            if m.bitfield_size().is_some_and(|size| size != 0) {
                return Err(OffsetError::BitField { strukt: String::new(), field: name.into() });
            }
            return Ok(Some((m.bit_offset(), member_ty)));
        }
        if member_name.is_empty()
            && matches!(member_ty, Type::Struct(_) | Type::Union(_))
            && let Some((inner, t)) = find_member(btf, &member_ty, name)?
        {
            return Ok(Some((m.bit_offset() + inner, t)));
        }
    }
    Ok(None)
}

/// Whether BTF describes a kernel function `name`.
pub fn has_func(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(name).map(|ts| ts.iter().any(|t| matches!(t, Type::Func(_)))).unwrap_or(false)
}

/// Whether BTF describes tracepoint `name`: every tracepoint has a
/// `btf_trace_<name>` typedef, which is what tp_btf attaches by.
pub fn has_tracepoint(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(&format!("btf_trace_{name}"))
        .map(|ts| ts.iter().any(|t| matches!(t, Type::Typedef(_))))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF: every machine the observer supports (and CI)
    /// has it, so its absence fails the test rather than skipping it.
    fn kernel_btf() -> Option<Btf> {
        let path = Path::new(DEFAULT_BTF_PATH);
        assert!(path.exists(), "no {DEFAULT_BTF_PATH}: the observer and these tests need a kernel with BTF");
        Some(load_btf(path).expect("BTF parses"))
    }

    #[test]
    fn resolves_all_offsets_on_this_kernel() {
        let Some(btf) = kernel_btf() else { return };
        let o = resolve(&btf).expect("all fields exist");
        // sock_common sits at the start of sock; these are small offsets.
        assert!(o.skc_state < 64 && o.skc_family < 64);
        // tcp_sock embeds inet_connection_sock embeds sock: tcp fields lie beyond icsk.
        assert!(o.write_seq > o.icsk_pending && o.snd_una > o.icsk_pending);
        assert_ne!(o.snd_nxt, o.snd_una);
        eprintln!("{o:#?}");
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let Some(btf) = kernel_btf() else { return };
        let err = field_offset(&btf, "sock", "no_such_field").unwrap_err();
        assert_eq!(err.to_string(), "kernel BTF: struct sock has no field no_such_field");
        let err = field_offset(&btf, "no_such_struct_xyz", "a").unwrap_err();
        assert!(matches!(err, OffsetError::NoStruct(_)));
    }

    #[test]
    fn finds_functions_and_tracepoints() {
        let Some(btf) = kernel_btf() else { return };
        assert!(has_func(&btf, "tcp_sendmsg"));
        assert!(!has_func(&btf, "definitely_not_a_kernel_function"));
        assert!(has_tracepoint(&btf, "inet_sock_set_state"));
        assert!(!has_tracepoint(&btf, "tcp_sendmsg"), "a function is no tracepoint");
    }
}
