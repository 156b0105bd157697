//! The guest kernel: Debian's cloud flavour (which allows kprobes and
//! fentry), fetched with apt and unpacked under `target/vmtest/`. Nothing is
//! installed into the host; a kernel unpacked once is reused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sh;

/// Debian 12's metapackage; it depends on the current 6.1 ABI's image.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

pub struct Kernel {
    /// e.g. `6.1.0-56-cloud-amd64`
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules: PathBuf,
}

pub fn ensure(cache: &Path) -> Result<Kernel> {
    let package = image_package()?;
    let release = package.strip_prefix("linux-image-").unwrap_or(&package).to_string();
    let root = cache.join(&package);
    let kernel = Kernel {
        vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
        modules: root.join(format!("lib/modules/{release}")),
        release,
    };
    if kernel.vmlinuz.exists() {
        return Ok(kernel);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    download_and_unpack(&package, cache, &root)?;
    if !kernel.vmlinuz.exists() {
        bail!("{package} holds no {}", kernel.vmlinuz.display());
    }
    Ok(kernel)
}

/// The image package the metapackage points at, updating apt's lists once
/// if they do not know it yet.
fn image_package() -> Result<String> {
    let depends = || sh::output("apt-cache", &["depends", METAPACKAGE]).ok().and_then(|out| depends_on_image(&out));
    if let Some(p) = depends() {
        return Ok(p);
    }
    sh::run("apt-get", &["update", "-qq"])?;
    depends().with_context(|| format!("apt knows no kernel image behind {METAPACKAGE}"))
}

/// `Depends: linux-image-6.1.0-56-cloud-amd64` in `apt-cache depends` output.
fn depends_on_image(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|l| {
        let p = l.trim().strip_prefix("Depends:")?.trim();
        (p.starts_with("linux-image-") && p.ends_with("-cloud-amd64")).then(|| p.to_string())
    })
}

/// Downloads into `cache`, unpacks into a scratch directory, and renames it
/// to `root` only when complete, so an interrupted run leaves no half kernel.
fn download_and_unpack(package: &str, cache: &Path, root: &Path) -> Result<()> {
    let scratch = cache.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&scratch);
    let status = std::process::Command::new("apt-get")
        .args(["download", "-qq", package])
        .current_dir(cache)
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot start apt-get download")?;
    if !status.success() {
        bail!("apt-get download {package} failed: {status}");
    }
    let deb = std::fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb")))
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", cache.display()))?;
    let (deb_s, scratch_s) = (deb.to_string_lossy(), scratch.to_string_lossy());
    sh::run("dpkg-deb", &["-x", &deb_s, &scratch_s])?;
    std::fs::rename(&scratch, root).with_context(|| format!("renaming {} to {}", scratch.display(), root.display()))?;
    // The unpacked tree is the cache; the 27 MB archive is not needed again.
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
}
