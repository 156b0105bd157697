//! The one-line stdout messages children print and the lab parses.

use std::net::SocketAddr;

pub fn listening_line(addr: SocketAddr, pid: u32) -> String {
    format!("LISTENING {addr} pid={pid}")
}

/// `LISTENING <addr> pid=<pid>` -> (addr, pid).
pub fn parse_listening(line: &str) -> Option<(SocketAddr, u32)> {
    let mut words = line.trim_end().split(' ');
    if words.next()? != "LISTENING" {
        return None;
    }
    let addr = words.next()?.parse().ok()?;
    let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
    words.next().is_none().then_some((addr, pid))
}

pub fn local_line(addr: SocketAddr) -> String {
    format!("LOCAL {addr}")
}

/// `LOCAL <addr>` -> addr.
pub fn parse_local(line: &str) -> Option<SocketAddr> {
    line.trim_end().strip_prefix("LOCAL ")?.parse().ok()
}

pub fn connected_line(n: u32) -> String {
    format!("CONNECTED {n}")
}

/// `CONNECTED <n>` -> n.
pub fn parse_connected(line: &str) -> Option<u32> {
    line.trim_end().strip_prefix("CONNECTED ")?.parse().ok()
}

/// The line `lab` prints once everything is in place.
pub fn ready_line(server_pid: u32, server_netns: Option<&str>, port: u16, clients: u32) -> String {
    let ns = server_netns.unwrap_or("-");
    format!("READY server_pid={server_pid} server_netns={ns} port={port} clients={clients}")
}

/// The READY line plus where each role's clients connect from
/// (`peers=role@ip,...`, netns mode only), so a reader can tell every
/// server socket's role by its peer address.
pub fn ready_line_with_peers(
    server_pid: u32,
    server_netns: Option<&str>,
    port: u16,
    clients: u32,
    peers: &[(&str, std::net::IpAddr)],
) -> String {
    let mut line = ready_line(server_pid, server_netns, port, clients);
    if !peers.is_empty() {
        let list: Vec<String> = peers.iter().map(|(role, ip)| format!("{role}@{ip}")).collect();
        line.push_str(&format!(" peers={}", list.join(",")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_round_trips() {
        let addr: SocketAddr = "0.0.0.0:40123".parse().unwrap();
        let line = listening_line(addr, 4242);
        assert_eq!(line, "LISTENING 0.0.0.0:40123 pid=4242");
        assert_eq!(parse_listening(&line), Some((addr, 4242)));
        assert_eq!(parse_listening("LISTENING [::1]:80 pid=7\n").map(|(a, _)| a.port()), Some(80));
        assert_eq!(parse_listening("LISTENING 0.0.0.0:1 pid=x"), None);
        assert_eq!(parse_listening("CONNECTED 1"), None);
    }

    #[test]
    fn client_lines_round_trip() {
        let addr: SocketAddr = "198.18.2.2:51000".parse().unwrap();
        assert_eq!(parse_local(&local_line(addr)), Some(addr));
        assert_eq!(parse_connected(&connected_line(3)), Some(3));
        assert_eq!(parse_connected("CONNECTED"), None);
    }

    #[test]
    fn ready_format() {
        assert_eq!(
            ready_line(10, Some("obsdemo-9-srv"), 4000, 8),
            "READY server_pid=10 server_netns=obsdemo-9-srv port=4000 clients=8"
        );
        assert_eq!(ready_line(10, None, 4000, 1), "READY server_pid=10 server_netns=- port=4000 clients=1");
    }
}
