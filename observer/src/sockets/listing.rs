//! `/sockets`: the sockets behind the zombie and stalled counts, one line
//! each, so an operator (or a test) can name them and find them in `ss`.
//! Healthy sockets are not listed: the cost follows trouble, not traffic.

use std::{
    fmt::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use observer_common::tcp_state;

use crate::{classify::Class, sockets::table::SocketTable};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `address:port`; IPv4-mapped IPv6 addresses print as IPv4.
pub fn endpoint(family: u8, addr: &[u8; 16], port: u16) -> String {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => Ipv6Addr::from(*addr).to_canonical(),
        other => return format!("family {other}"),
    };
    SocketAddr::new(ip, port).to_string()
}

/// The listing after sweep number `sweep` (the value `observer_sweeps_total`
/// has once that sweep is counted).
pub fn render(table: &SocketTable, sweep: u64) -> String {
    let mut rows: Vec<_> = table.notable().map(|(_, t)| t).filter(|t| t.class != Class::Healthy).collect();
    rows.sort_by_key(|t| (t.class.label(), t.record.dport, t.record.sk));
    let mut out = format!(
        "# sweep {sweep}: {} sockets zombie or stalled (healthy ones are not listed)\n\
         # class state pid local peer unsent_bytes unacked_bytes inode\n",
        rows.len()
    );
    for t in rows {
        let r = &t.record;
        let _ = writeln!(
            out,
            "{} {} {} {} {} {} {} {}",
            t.class.label(),
            tcp_state::name(r.state),
            t.owner,
            endpoint(r.family, &r.saddr, r.sport),
            endpoint(r.family, &r.daddr, r.dport),
            t.unsent(),
            t.unacked(),
            r.inode
        );
    }
    out
}
