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
    /// Reads 16 KiB/s; the server closes it with data queued, and the kernel
    /// drains the orphan to a live reader (FIN_WAIT1, never a zombie).
    Drain,
    /// Never reads (zero window), then vanishes while the window is zero.
    Stallgone,
    /// Idles without data either way, then half-closes; the server never
    /// closes (CLOSE_WAIT dated from the FIN, not the last data).
    Idleclose,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Healthy,
        Role::Slow,
        Role::Vanish,
        Role::Halfclose,
        Role::Orphan,
        Role::Drain,
        Role::Stallgone,
        Role::Idleclose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Healthy => "healthy",
            Role::Slow => "slow",
            Role::Vanish => "vanish",
            Role::Halfclose => "halfclose",
            Role::Orphan => "orphan",
            Role::Drain => "drain",
            Role::Stallgone => "stallgone",
            Role::Idleclose => "idleclose",
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

    /// Roles whose client disappears later, once its window is zero.
    pub fn vanishes_later(self) -> bool {
        self == Role::Stallgone
    }

    /// Roles whose client never reads, with a receive buffer capped so the
    /// window closes fast.
    pub fn never_reads(self) -> bool {
        matches!(self, Role::Slow | Role::Stallgone)
    }

    /// Roles whose client reads what the server sends as fast as it comes.
    pub fn reads(self) -> bool {
        !matches!(self, Role::Slow | Role::Stallgone | Role::Drain | Role::Idleclose)
    }

    /// Roles whose socket the server closes on its own, data queued or not.
    pub fn server_closes(self) -> bool {
        matches!(self, Role::Orphan | Role::Drain)
    }

    /// Roles whose fd the server keeps whatever the peer does (the app bug).
    pub fn server_keeps(self) -> bool {
        matches!(self, Role::Halfclose | Role::Idleclose)
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
