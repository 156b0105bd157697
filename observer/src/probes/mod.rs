//! Getting the kernel programs in: offsets, capabilities, the attach plan,
//! the loader that walks it, and the choice between eBPF and sock_diag.

pub mod backend;
pub mod caps;
pub mod errors;
pub mod loader;
pub mod offsets;
pub mod pins;
pub mod plan;
pub mod tgid_filter;
