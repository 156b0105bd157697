//! What the running kernel offers, detected without loading anything.

use std::path::Path;

use btf_rs::Btf;

use super::{
    offsets,
    plan::{Capabilities, Need, PLAN},
};

/// `btf` is the parsed kernel BTF, if it could be read.
pub fn detect(btf: Option<&Btf>) -> Capabilities {
    let has_btf = btf.is_some();
    // Every function and tracepoint a plan row names, looked up once.
    let absent = match btf {
        Some(btf) => PLAN
            .iter()
            .flat_map(|a| a.needs.iter().copied())
            .filter(|need| match need {
                Need::Function(name) => !offsets::has_func(btf, name),
                Need::Tracepoint(name) => !offsets::has_tracepoint(btf, name),
                _ => false,
            })
            .collect(),
        None => Default::default(),
    };
    Capabilities {
        btf: has_btf,
        // Whether trampolines are allowed (JIT support, lockdown, LSM policy)
        // only shows when loading: assume yes where BTF exists, let the
        // verifier's answer decide, and fall back.
        trampolines: has_btf && cfg!(any(target_arch = "x86_64", target_arch = "aarch64")),
        kprobes: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
        absent,
        sendpage: btf.is_none_or(|btf| offsets::has_func(btf, "tcp_sendpage")),
    }
}
