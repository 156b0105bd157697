//! The guest's only filesystem: static busybox, the static observer and demo
//! binaries, the dummy network driver (the SYN black hole), the socket
//! diagnostics modules and `/init`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{cpio::Entry, kernel::Kernel};

/// The guest's PID 1; see the script for what it checks.
const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";

pub struct Binaries {
    pub observer: PathBuf,
    pub demo: PathBuf,
}

/// Writes the archive to `out` (uncompressed: the kernel unpacks it as is,
/// faster than gunzip under software emulation).
pub fn write(out: &Path, kernel: &Kernel, bins: &Binaries) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let file = |path: &str, data: Vec<u8>| Entry::File { path: path.into(), mode: 0o755, data };
    let mut entries: Vec<Entry> =
        ["bin", "dev", "lib", "lib/modules", "proc", "root", "sys", "tmp"].map(|d| Entry::Dir { path: d.into() }).into();
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    entries.push(Entry::CharDev { path: "dev/console".into(), mode: 0o600, major: 5, minor: 1 });
    entries.push(file("init", INIT.as_bytes().to_vec()));
    entries.push(file("bin/busybox", read(Path::new(BUSYBOX))?));
    entries.push(file("bin/observer", read(&bins.observer)?));
    entries.push(file("bin/observer-demo", read(&bins.demo)?));
    // Loaded by /init in this order (no modprobe, no dependency files).
    for module in ["drivers/net/dummy.ko", "net/ipv4/inet_diag.ko", "net/ipv4/tcp_diag.ko"] {
        let name = module.rsplit('/').next().unwrap_or(module);
        entries.push(Entry::File {
            path: format!("lib/modules/{name}"),
            mode: 0o644,
            data: read(&kernel.modules.join("kernel").join(module))?,
        });
    }

    let tmp = out.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    super::cpio::write(&mut w, &entries).and_then(|()| std::io::Write::flush(&mut w)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {}", tmp.display()))
}
