//! The guest kernels: Debian's cloud flavour (which allows kprobes and
//! fentry), fetched with apt and unpacked under `target/vmtest/`. Nothing is
//! installed into the host and the system's apt sources are not touched; a
//! kernel unpacked once is reused.
//!
//! The matrix: Debian 12's current 6.1 (through the system's own apt lists)
//! and Debian 11's 5.10, pinned, through apt lists kept under
//! `target/vmtest/apt-bullseye` that point at the system's own mirrors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sh;

/// Where a guest kernel's image package comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The image a metapackage of the system's own suite depends on today.
    Current { metapackage: &'static str },
    /// One pinned image of another Debian suite (and its security suite).
    Pinned { package: &'static str, suite: &'static str },
}

/// Every guest `vmtest` boots, one after the other.
pub const MATRIX: [Source; 2] = [
    Source::Current { metapackage: "linux-image-cloud-amd64" },
    // Debian 11: no CAP_BPF relaxation after a privilege drop (5.19), no
    // icsk_probes_tstamp (5.12), no sock_send_length tracepoint (6.3).
    Source::Pinned { package: "linux-image-5.10.0-46-cloud-amd64", suite: "bullseye" },
];

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Current { metapackage } => write!(f, "{metapackage} (current)"),
            Source::Pinned { package, suite } => write!(f, "{package} ({suite})"),
        }
    }
}

pub struct Kernel {
    /// e.g. `6.1.0-56-cloud-amd64`
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
    /// `boot/config-<release>`: what the kernel was built with.
    pub config: PathBuf,
}

impl Kernel {
    /// Whether the kernel's build configuration has `option=y`.
    pub fn config_has(&self, option: &str) -> Option<bool> {
        let text = std::fs::read_to_string(&self.config).ok()?;
        Some(config_has(&text, option))
    }
}

fn config_has(config: &str, option: &str) -> bool {
    config.lines().any(|l| l.strip_prefix(option).and_then(|r| r.strip_prefix('=')) == Some("y"))
}

pub fn ensure(source: Source, cache: &Path) -> Result<Kernel> {
    let (package, apt) = match source {
        Source::Current { metapackage } => (image_package(metapackage)?, None),
        Source::Pinned { package, suite } => (package.to_string(), Some(AptDir::prepare(cache, suite)?)),
    };
    let release = package.strip_prefix("linux-image-").unwrap_or(&package).to_string();
    let root = cache.join(&package);
    let kernel = Kernel {
        vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
        modules: root.join(format!("lib/modules/{release}")),
        config: root.join(format!("boot/config-{release}")),
        release,
    };
    if kernel.vmlinuz.exists() {
        return Ok(kernel);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    download_and_unpack(&package, apt.as_ref(), cache, &root)?;
    if !kernel.vmlinuz.exists() {
        bail!("{package} holds no {}", kernel.vmlinuz.display());
    }
    Ok(kernel)
}

/// The image package the metapackage points at, updating apt's lists once
/// if they do not know it yet.
fn image_package(metapackage: &str) -> Result<String> {
    let depends = || sh::output("apt-cache", &["depends", metapackage]).ok().and_then(|out| depends_on_image(&out));
    if let Some(p) = depends() {
        return Ok(p);
    }
    sh::run("apt-get", &["update", "-qq"])?;
    depends().with_context(|| format!("apt knows no kernel image behind {metapackage}"))
}

/// `Depends: linux-image-6.1.0-56-cloud-amd64` in `apt-cache depends` output.
fn depends_on_image(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|l| {
        let p = l.trim().strip_prefix("Depends:")?.trim();
        (p.starts_with("linux-image-") && p.ends_with("-cloud-amd64")).then(|| p.to_string())
    })
}

/// Private apt state for another suite: its own sources list, lists and
/// cache, passed to apt with `-o` options. Paths must be absolute: apt
/// resolves relative ones against its own directories (`/etc/apt`, ...).
struct AptDir {
    options: Vec<String>,
}

impl AptDir {
    fn prepare(cache: &Path, suite: &str) -> Result<AptDir> {
        let cache = std::path::absolute(cache).with_context(|| format!("resolving {}", cache.display()))?;
        let dir = cache.join(format!("apt-{suite}"));
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let system = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
        let (main, security) = mirrors(&system);
        let list = dir.join("sources.list");
        let text = format!("deb {main} {suite} main\ndeb {security} {suite}-security main\n");
        if std::fs::read_to_string(&list).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&list, &text).with_context(|| format!("writing {}", list.display()))?;
        }
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let options = [
            format!("Dir::Etc::SourceList={}", d("sources.list")),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(AptDir { options })
    }

    fn args<'a>(&'a self, tail: &[&'a str]) -> Vec<&'a str> {
        self.options.iter().map(String::as_str).chain(tail.iter().copied()).collect()
    }

    /// Whether these lists know `package`, updating them once if not.
    fn knows(&self, package: &str) -> Result<()> {
        let known = || sh::ok("apt-cache", &self.args(&["show", package]));
        if known() {
            return Ok(());
        }
        sh::run("apt-get", &self.args(&["update", "-qq"]))?;
        if !known() {
            bail!("the archive no longer offers {package}");
        }
        Ok(())
    }
}

/// (main mirror, security mirror) from the system's deb822 sources: the
/// system's own choice of mirror, Debian's defaults where it names none.
fn mirrors(deb822: &str) -> (String, String) {
    let uris: Vec<&str> =
        deb822.lines().filter_map(|l| l.strip_prefix("URIs:")).flat_map(str::split_whitespace).collect();
    let main = uris.iter().find(|u| !u.contains("security")).map_or("http://deb.debian.org/debian", |u| *u);
    let security = uris.iter().find(|u| u.contains("security")).map_or("http://deb.debian.org/debian-security", |u| *u);
    (main.to_string(), security.to_string())
}

/// Downloads into `cache`, unpacks into a scratch directory, and renames it
/// to `root` only when complete, so an interrupted run leaves no half kernel.
fn download_and_unpack(package: &str, apt: Option<&AptDir>, cache: &Path, root: &Path) -> Result<()> {
    let scratch = cache.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&scratch);
    let find_deb = || {
        std::fs::read_dir(cache).ok()?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    };
    let deb = match find_deb() {
        // An earlier run downloaded it but did not get to unpack it.
        Some(deb) => deb,
        None => {
            let args = match apt {
                Some(a) => {
                    a.knows(package)?;
                    a.args(&["download", "-qq", package])
                }
                None => vec!["download", "-qq", package],
            };
            eprintln!("+ (cd {}; apt-get {})", cache.display(), args.join(" "));
            let status = std::process::Command::new("apt-get")
                .args(&args)
                .current_dir(cache)
                .stdin(std::process::Stdio::null())
                .status()
                .context("cannot start apt-get download")?;
            if !status.success() {
                bail!("apt-get download {package} failed: {status}");
            }
            find_deb().with_context(|| format!("apt-get download left no {package}_*.deb in {}", cache.display()))?
        }
    };
    let (deb_s, scratch_s) = (deb.to_string_lossy(), scratch.to_string_lossy());
    sh::run("dpkg-deb", &["-x", &deb_s, &scratch_s])?;
    std::fs::rename(&scratch, root).with_context(|| format!("renaming {} to {}", scratch.display(), root.display()))?;
    // The unpacked tree is the cache; the archive is not needed again.
    let _ = std::fs::remove_file(&deb);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_image_behind_the_metapackage() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(depends_on_image(out).as_deref(), Some("linux-image-6.1.0-56-cloud-amd64"));
        assert_eq!(depends_on_image("linux-image-cloud-amd64\n  Depends: initramfs-tools\n"), None);
        assert_eq!(depends_on_image(""), None);
    }

    #[test]
    fn mirrors_come_from_the_system_sources() {
        let sources = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n\
                       Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirrors(sources),
            ("http://mirror.example/debian".into(), "http://mirror.example/debian-security".into())
        );
        assert_eq!(mirrors("").0, "http://deb.debian.org/debian");
    }

    #[test]
    fn reads_build_options() {
        let config = "# CONFIG_KPROBES is not set\nCONFIG_KPROBES_ON_FTRACE=y\nCONFIG_DEBUG_INFO_BTF=y\n";
        assert!(config_has(config, "CONFIG_DEBUG_INFO_BTF"));
        assert!(!config_has(config, "CONFIG_KPROBES"));
    }
}
