//! The guest's only filesystem: static busybox, the static observer and demo
//! binaries, the integration tests that run in the guest, the host's network
//! tools with their shared libraries, the kernel modules the guest loads
//! (with their dependencies, in load order) and `/init`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::{cpio::Entry, kernel::Kernel};
use crate::sh;

/// The guest's PID 1; see the script for what it checks.
const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";

/// Programs the integration tests (and the lab they start) call, taken from
/// the host with the shared libraries and dynamic loader `ldd` names:
/// busybox's `ip` has no veth or `netns`, and it has no `ss`, `nstat`, `nft`,
/// `bpftool` or `tc` at all.
const HOST_TOOLS: &[&str] = &["ip", "ss", "nstat", "nft", "bpftool", "tc"];

/// Modules `/init` loads, each after the modules it depends on: the SYN
/// black hole (dummy), socket diagnostics (what `ss` and the sock_diag
/// fallback read), the lab's links (veth), its packet drops (nf_tables) and
/// its slow links (sch_netem).
const MODULES: &[&str] = &["dummy", "inet_diag", "tcp_diag", "veth", "nf_tables", "sch_netem"];

pub struct Binaries {
    pub observer: PathBuf,
    pub demo: PathBuf,
    /// Integration test binaries run in the guest: (test target name, path).
    pub tests: Vec<(String, PathBuf)>,
}

/// Writes the archive to `out` (uncompressed: the kernel unpacks it as is,
/// faster than gunzip under software emulation).
pub fn write(out: &Path, kernel: &Kernel, bins: &Binaries) -> Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut files: Vec<(String, u32, Vec<u8>)> = vec![
        ("init".into(), 0o755, INIT.as_bytes().to_vec()),
        ("bin/busybox".into(), 0o755, read(Path::new(BUSYBOX))?),
        ("bin/observer".into(), 0o755, read(&bins.observer)?),
        ("bin/observer-demo".into(), 0o755, read(&bins.demo)?),
    ];
    // The tests start these by the absolute paths cargo compiled into them
    // (`CARGO_BIN_EXE_*`): the same files, at the same paths.
    for exe in [&bins.observer, &bins.demo] {
        files.push((guest_path(exe)?, 0o755, read(exe)?));
    }
    for (name, path) in &bins.tests {
        files.push((format!("tests/{name}"), 0o755, read(path)?));
    }
    let mut libs = BTreeSet::new();
    for tool in HOST_TOOLS {
        let path = which(tool)?;
        files.push((format!("bin/{tool}"), 0o755, read(&path)?));
        libs.extend(shared_libraries(&path)?);
    }
    for lib in &libs {
        files.push((guest_path(lib)?, 0o755, read(lib)?));
    }
    // Loaded by /init in the order of lib/modules/order (no modprobe, no modules.dep).
    let modules = load_order(&kernel.modules, MODULES)?;
    let mut order = String::new();
    for (name, path) in &modules {
        files.push((format!("lib/modules/{name}.ko"), 0o644, read(path)?));
        order.push_str(name);
        order.push('\n');
    }
    files.push(("lib/modules/order".into(), 0o644, order.into_bytes()));

    let mut dirs: BTreeSet<String> =
        ["bin", "dev", "etc", "lib", "lib/modules", "proc", "root", "run", "sys", "tests", "tmp", "var"]
            .map(String::from)
            .into();
    for (path, _, _) in &files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    // Sorted, a directory comes before everything under it.
    let mut entries: Vec<Entry> = dirs.into_iter().map(|path| Entry::Dir { path }).collect();
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    entries.push(Entry::CharDev { path: "dev/console".into(), mode: 0o600, major: 5, minor: 1 });
    entries.extend(files.into_iter().map(|(path, mode, data)| Entry::File { path, mode, data }));

    let tmp = out.with_extension("partial");
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    super::cpio::write(&mut w, &entries)
        .and_then(|()| std::io::Write::flush(&mut w))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {}", tmp.display()))
}

/// An absolute host path as a path inside the archive.
fn guest_path(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    Ok(abs.to_string_lossy().trim_start_matches('/').to_string())
}

/// The program `name` as the host's PATH (plus the sbin directories) finds it.
fn which(name: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("the guest needs `{name}` from the host, which has none (install iproute2, nftables, bpftool)")
        })
}

/// The shared libraries and the loader `ldd` lists for `exe`.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = sh::output("ldd", &[&exe.to_string_lossy()])?;
    Ok(parse_ldd(&out))
}

fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
            let path = l.split_once("=>").map_or(l, |(_, p)| p).split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `wanted` and every module they depend on (the `depends=` field of each
/// module's `.modinfo`), dependencies first: (name, file).
fn load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut index = std::collections::BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                index.insert(name.replace('-', "_"), p.clone());
            }
        }
    }
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let is_builtin = |name: &str| {
        builtin.lines().any(|l| {
            l.rsplit('/').next().and_then(|f| f.strip_suffix(".ko")).map(|f| f.replace('-', "_")).as_deref()
                == Some(name)
        })
    };
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        index: &std::collections::BTreeMap<String, PathBuf>,
        is_builtin: &dyn Fn(&str) -> bool,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if order.iter().any(|(n, _)| *n == name) {
            return Ok(());
        }
        let Some(path) = index.get(&name) else {
            if is_builtin(&name) {
                return Ok(());
            }
            bail!("module {name} is neither in the kernel package nor built in");
        };
        if depth > 32 {
            bail!("module dependencies of {name} loop");
        }
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for dep in depends(&data) {
            visit(&dep, index, is_builtin, order, depth + 1)?;
        }
        order.push((name, path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &is_builtin, &mut order, 0)?;
    }
    Ok(order)
}

/// The modules named by `depends=` in a module's `.modinfo` strings.
fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"depends="))
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007feb68788000)\n\
                   \tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007feb68602000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007feb6878a000)\n";
        assert_eq!(
            parse_ldd(out),
            [PathBuf::from("/lib/x86_64-linux-gnu/libmnl.so.0"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
    }

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF...\0license=GPL\0depends=nfnetlink,libcrc32c\0retpoline=Y\0";
        assert_eq!(depends(ko), ["nfnetlink", "libcrc32c"]);
        assert!(depends(b"\0depends=\0").is_empty());
    }
}
