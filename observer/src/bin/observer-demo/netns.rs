//! Network namespace names and the `ip`/`sysctl`/`nft` calls made inside them.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Result, bail};

use crate::exec;
use crate::role::Role;

/// Longest accepted PREFIX (namespace names stay short and readable).
const MAX_PREFIX: usize = 32;

/// PREFIX must be a plain file-name-safe word: it becomes part of
/// `/run/netns/<name>` and of nft table names.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if prefix.is_empty() || prefix.len() > MAX_PREFIX || !prefix.chars().all(ok_char) {
        bail!("invalid --name {prefix:?}: use 1-{MAX_PREFIX} characters from [A-Za-z0-9_-]");
    }
    Ok(())
}

/// `<prefix>-<pid>`: unique per lab run.
pub fn run_base(prefix: &str, pid: u32) -> String {
    format!("{prefix}-{pid}")
}

pub fn server_ns(base: &str) -> String {
    format!("{base}-srv")
}

pub fn client_ns(base: &str, role: Role) -> String {
    format!("{base}-{}", role.name())
}

/// Veth end in the server namespace facing `role`'s namespace. Each end is created
/// directly inside its namespace, so names only need to be unique there.
pub fn server_ifname(role: Role) -> String {
    format!("s-{}", role.name())
}

/// Veth end in `role`'s namespace.
pub fn client_ifname(role: Role) -> String {
    format!("c-{}", role.name())
}

/// /30 per role: 198.18.<k>.1 on the server side, .2 on the client side
/// (RFC 2544 benchmarking range).
pub fn link_addrs(role: Role) -> (Ipv4Addr, Ipv4Addr) {
    let k = Role::ALL.iter().position(|r| *r == role).unwrap_or(0) as u8 + 1;
    (Ipv4Addr::new(198, 18, k, 1), Ipv4Addr::new(198, 18, k, 2))
}

/// `ip netns exec <ns> <program>`: the program (after exec) keeps ip's PID.
pub fn exec_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

fn ip(args: &[&str]) -> Result<String> {
    exec::run(Command::new("ip").args(args), None)
}

pub fn add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns]).map(drop)
}

pub fn delete(ns: &str) -> Result<()> {
    ip(&["netns", "delete", ns]).map(drop)
}

pub fn lo_up(ns: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", "lo", "up"]).map(drop)
}

/// Creates a veth pair with one end in each namespace, addresses it and brings it up.
pub fn link(srv_ns: &str, cli_ns: &str, role: Role) -> Result<()> {
    let (srv_ip, cli_ip) = link_addrs(role);
    link_named(srv_ns, cli_ns, (&server_ifname(role), &client_ifname(role)), (srv_ip, cli_ip))
}

/// The blackhole namespace's link: not a client role, so a subnet of its own.
pub const BLACKHOLE_ADDRS: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(198, 18, 99, 1), Ipv4Addr::new(198, 18, 99, 2));

/// A veth pair between two namespaces, addressed as a /30.
pub fn link_named(
    srv_ns: &str,
    cli_ns: &str,
    (srv_if, cli_if): (&str, &str),
    (srv_ip, cli_ip): (Ipv4Addr, Ipv4Addr),
) -> Result<()> {
    let (srv_cidr, cli_cidr) = (format!("{srv_ip}/30"), format!("{cli_ip}/30"));
    ip(&["-n", srv_ns, "link", "add", srv_if, "type", "veth", "peer", "name", cli_if, "netns", cli_ns])?;
    ip(&["-n", srv_ns, "addr", "add", &srv_cidr, "dev", srv_if])?;
    ip(&["-n", cli_ns, "addr", "add", &cli_cidr, "dev", cli_if])?;
    ip(&["-n", srv_ns, "link", "set", srv_if, "up"])?;
    ip(&["-n", cli_ns, "link", "set", cli_if, "up"])?;
    Ok(())
}

/// `sysctl -w key=value` inside `ns` only (net.* sysctls are per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let mut cmd = exec_in(ns, "sysctl");
    cmd.args(["-q", "-w", &format!("{key}={value}")]);
    exec::run(&mut cmd, None).map(drop)
}

/// `tc qdisc add dev <ifname> root netem <args>` inside `ns`: delay, loss
/// and the like on everything `ifname` sends.
pub fn netem(ns: &str, ifname: &str, args: &str) -> Result<()> {
    let mut cmd = Command::new("tc");
    cmd.args(["-n", ns, "qdisc", "add", "dev", ifname, "root", "netem"]).args(args.split_whitespace());
    exec::run(&mut cmd, None).map(drop)
}

/// nft table that drops every packet in and out of `ns`: its peers vanish
/// without FIN or RST.
pub fn drop_all(ns: &str) -> Result<()> {
    const RULES: &str = "table inet observer_demo {\n\
        \tchain input { type filter hook input priority 0; policy drop; }\n\
        \tchain output { type filter hook output priority 0; policy drop; }\n\
        }\n";
    let mut cmd = exec_in(ns, "nft");
    cmd.args(["-f", "-"]);
    exec::run(&mut cmd, Some(RULES)).map(drop)
}

/// Names from `ip netns list` (lines look like `name` or `name (id: 3)`).
pub fn list() -> Result<Vec<String>> {
    Ok(parse_list(&ip(&["netns", "list"])?))
}

pub fn parse_list(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// PIDs of processes inside `ns`.
pub fn pids(ns: &str) -> Result<Vec<i32>> {
    let out = ip(&["netns", "pids", ns])?;
    Ok(out.split_whitespace().filter_map(|w| w.parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interface names are limited to IFNAMSIZ - 1 bytes.
    const MAX_IFNAME: usize = 15;

    #[test]
    fn names_are_derived_from_prefix_and_pid() {
        let base = run_base("obsdemo", 123456);
        assert_eq!(server_ns(&base), "obsdemo-123456-srv");
        assert_eq!(client_ns(&base, Role::Halfclose), "obsdemo-123456-halfclose");
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        for role in Role::ALL {
            assert!(server_ifname(role).len() <= MAX_IFNAME);
            assert!(client_ifname(role).len() <= MAX_IFNAME);
        }
    }

    #[test]
    fn each_role_gets_its_own_benchmark_subnet() {
        let mut seen = std::collections::HashSet::new();
        for role in Role::ALL {
            let (s, c) = link_addrs(role);
            assert_eq!(s.octets()[..2], [198, 18]);
            assert_eq!((s.octets()[3], c.octets()[3]), (1, 2));
            assert!(seen.insert(s.octets()[2]));
        }
    }

    #[test]
    fn prefix_validation() {
        assert!(validate_prefix("obsdemo").is_ok());
        assert!(validate_prefix("ci_run-7").is_ok());
        for bad in ["", "a/b", "with space", "../x", &"x".repeat(33)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_netns_list() {
        let out = "obsdemo-1-srv (id: 0)\nother\n\n";
        assert_eq!(parse_list(out), vec!["obsdemo-1-srv", "other"]);
    }
}
