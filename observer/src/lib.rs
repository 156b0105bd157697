//! `observer`: which TCP sockets of a server are dead or stalled, and how many
//! bytes are stuck in them, next to the process's memory. The library holds
//! every concern in its module; the `observer` binary is its command line.

pub mod agent;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod http;
pub mod metrics;
pub mod netns;
#[cfg(test)]
mod parsers_fuzz;
pub mod privileges;
pub mod probes;
pub mod proc;
pub mod sockets;
pub mod startup;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod top;
