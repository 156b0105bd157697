//! Where each lab process runs and how it reaches the server: one namespace
//! per role joined to a server namespace, or everything on loopback.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

use crate::netns;
use crate::role::Role;

pub struct Topology {
    /// `<prefix>-<pid>`.
    pub base: String,
    /// Server namespace; `None` in loopback mode.
    pub server_ns: Option<String>,
}

impl Topology {
    pub fn new(prefix: &str, pid: u32, loopback: bool) -> Topology {
        let base = netns::run_base(prefix, pid);
        let server_ns = (!loopback).then(|| netns::server_ns(&base));
        Topology { base, server_ns }
    }

    pub fn client_ns(&self, role: Role) -> Option<String> {
        self.server_ns.as_ref().map(|_| netns::client_ns(&self.base, role))
    }

    pub fn listen_addr(&self) -> &'static str {
        if self.server_ns.is_some() { "0.0.0.0:0" } else { "127.0.0.1:0" }
    }

    /// Address `role`'s clients connect to.
    pub fn server_addr(&self, role: Role, port: u16) -> SocketAddr {
        let ip = match self.server_ns {
            Some(_) => netns::link_addrs(role).0,
            None => Ipv4Addr::LOCALHOST,
        };
        SocketAddr::new(IpAddr::V4(ip), port)
    }

    /// `exe` run inside `ns`, or directly when there is no namespace.
    pub fn command(ns: Option<&str>, exe: impl AsRef<OsStr>) -> Command {
        match ns {
            Some(ns) => netns::exec_in(ns, exe),
            None => Command::new(exe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_mode_uses_per_role_links() {
        let t = Topology::new("obsdemo", 7, false);
        assert_eq!(t.server_ns.as_deref(), Some("obsdemo-7-srv"));
        assert_eq!(t.client_ns(Role::Slow).as_deref(), Some("obsdemo-7-slow"));
        assert_eq!(t.server_addr(Role::Slow, 9).to_string(), "198.18.2.1:9");
    }

    #[test]
    fn loopback_mode_has_no_namespaces() {
        let t = Topology::new("obsdemo", 7, true);
        assert_eq!(t.server_ns, None);
        assert_eq!(t.client_ns(Role::Vanish), None);
        assert_eq!(t.server_addr(Role::Vanish, 9).to_string(), "127.0.0.1:9");
    }
}
