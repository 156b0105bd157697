//! Getting the kernel programs in: offsets, capabilities, the attach plan,
//! and the loader that walks it.

pub mod caps;
pub mod errors;
pub mod kallsyms;
pub mod loader;
pub mod offsets;
pub mod pins;
pub mod plan;
pub mod tracefs;
