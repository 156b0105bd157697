//! The send program's floor: `bench_floor_send`, an empty program on the
//! same hook (tp_btf `sock_send_length`), which the observer never attaches.
//! The benchmark loads it from the very object the observer binary embeds and
//! attaches it itself, next to the observer's send program, so both are timed
//! by the kernel's run-time statistics on the same calls: what remains of the
//! observer's figure above the floor is its own work, not the hook's dispatch
//! or the statistics' clock reads.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, EbpfLoader, programs::BtfTracePoint};

use super::{Paths, bpf_stats};

const PROGRAM: &str = "bench_floor_send";
const HOOK: &str = "sock_send_length";
/// Kernel program names are cut to 15 bytes (`bench_floor_sen`).
const NAME_PREFIX: &str = "bench_floor";

/// The floor program, attached while this lives (aya detaches it on drop).
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach(paths: &Paths) -> Result<Floor> {
        let object = embedded_object(paths)?;
        let data = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
        // Creates the object's maps too (the floor uses none); they go with `Floor`.
        let mut ebpf = EbpfLoader::new().load(&data).context("loading the eBPF object for the floor program")?;
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("program {PROGRAM} missing from {}: rebuild", object.display()))?
            .try_into()
            .with_context(|| format!("{PROGRAM} is not a tp_btf program"))?;
        program.load(HOOK, &btf).with_context(|| format!("loading {PROGRAM}"))?;
        program.attach().with_context(|| format!("attaching {PROGRAM} to {HOOK}"))?;
        Ok(Floor { _ebpf: ebpf })
    }

    /// Cumulative kernel run-time statistics of the floor program.
    pub fn stats(&self, names: &bpf_stats::JitNames) -> bpf_stats::ProgTotals {
        bpf_stats::prog_stats(names, std::process::id(), NAME_PREFIX)
    }
}

/// The eBPF object `observer`'s build script left in its OUT_DIR, found among
/// the build directories as the newest one whose bytes the observer binary
/// embeds: the floor comes from the same build as the program it is set against.
fn embedded_object(paths: &Paths) -> Result<PathBuf> {
    let build = paths.root.join("target/release/build");
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build)
        .with_context(|| format!("listing {}", build.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("observer-"))
        .map(|e| e.path().join("out/observer"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let binary = std::fs::read(&paths.observer).with_context(|| format!("reading {}", paths.observer.display()))?;
    for (_, path) in &candidates {
        if embedded_in(&binary, path) {
            return Ok(path.clone());
        }
    }
    bail!(
        "none of the {} eBPF objects under {}/observer-*/out is the one {} embeds: rebuild (cargo build --release)",
        candidates.len(),
        build.display(),
        paths.observer.display()
    )
}

fn embedded_in(binary: &[u8], object: &Path) -> bool {
    let Ok(needle) = std::fs::read(object) else { return false };
    !needle.is_empty() && binary.windows(needle.len()).any(|w| w == needle.as_slice())
}
