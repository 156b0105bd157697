//! What the running kernel offers, detected without loading anything.

use std::path::Path;

use btf_rs::Btf;

use super::{offsets, plan::Capabilities, tracefs};

/// `btf` is the parsed kernel BTF, if it could be read.
pub fn detect(btf: Option<&Btf>) -> Capabilities {
    let has_btf = btf.is_some();
    Capabilities {
        btf: has_btf,
        // Whether trampolines are allowed (JIT support, lockdown, LSM policy)
        // only shows when loading: assume yes where BTF exists, let the
        // verifier's answer decide, and fall back.
        trampolines: has_btf && cfg!(any(target_arch = "x86_64", target_arch = "aarch64")),
        kprobes: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
        tracefs: tracefs::tracefs_root().is_some(),
        iterators: btf.is_some_and(|b| offsets::has_func(b, "bpf_iter_tcp")),
    }
}
