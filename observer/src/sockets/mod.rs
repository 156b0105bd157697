//! The target's sockets: reading the kernel's view and keeping the table.

pub mod diag;
mod entries;
pub mod iter;
pub mod listing;
pub mod marked;
pub mod state_file;
pub mod summary;
pub mod table;
