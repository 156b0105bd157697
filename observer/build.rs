//! Builds the kernel programs (the `observer-ebpf` crate) for the BPF target
//! and leaves the object in OUT_DIR, where `probes::loader` embeds it.

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "observer-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
