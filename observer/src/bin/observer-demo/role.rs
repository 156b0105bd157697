//! Client roles and the `ROLE <name>\n` line a client sends first.

use clap::ValueEnum;

/// How a demo client misbehaves (or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Reads and discards everything the server sends.
    Healthy,
    /// Never reads, with a tiny receive buffer: the window closes, Send-Q grows.
    Slow,
    /// Reads until its namespace drops all packets (done from outside with nft).
    Vanish,
    /// Sends FIN right after the role line; the server never closes (CLOSE_WAIT).
    Halfclose,
    /// Like vanish; the server closes after a delay and the kernel keeps an orphan.
    Orphan,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Healthy,
        Role::Slow,
        Role::Vanish,
        Role::Halfclose,
        Role::Orphan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Healthy => "healthy",
            Role::Slow => "slow",
            Role::Vanish => "vanish",
            Role::Halfclose => "halfclose",
            Role::Orphan => "orphan",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The first line a client sends.
    pub fn role_line(self) -> String {
        format!("ROLE {}\n", self.name())
    }

    /// Parses a first line sent by a client; anything unknown counts as healthy.
    pub fn parse_role_line(line: &str) -> Role {
        let line = line.trim_end_matches(['\n', '\r']);
        match line.split_once(' ') {
            Some(("ROLE", name)) => Role::from_name(name.trim()).unwrap_or(Role::Healthy),
            _ => Role::Healthy,
        }
    }

    /// Roles whose client disappears from the network (nft drop in its namespace).
    pub fn vanishes(self) -> bool {
        matches!(self, Role::Vanish | Role::Orphan)
    }

    /// Roles whose client reads what the server sends.
    pub fn reads(self) -> bool {
        !matches!(self, Role::Slow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_line_round_trips() {
        for role in Role::ALL {
            assert_eq!(Role::parse_role_line(&role.role_line()), role);
        }
    }

    #[test]
    fn unknown_or_malformed_is_healthy() {
        assert_eq!(Role::parse_role_line("ROLE teapot\n"), Role::Healthy);
        assert_eq!(Role::parse_role_line("HELLO slow\n"), Role::Healthy);
        assert_eq!(Role::parse_role_line(""), Role::Healthy);
        assert_eq!(Role::parse_role_line("ROLE\n"), Role::Healthy);
    }

    #[test]
    fn tolerates_crlf_and_spaces() {
        assert_eq!(Role::parse_role_line("ROLE slow\r\n"), Role::Slow);
        assert_eq!(Role::parse_role_line("ROLE  orphan \n"), Role::Orphan);
    }
}
