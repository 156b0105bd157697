//! What only the VM test needs, installed when it runs (not by `setup`, so
//! the ordinary test setup stays fast): QEMU, a static busybox for the
//! guest's userland, and Rust's musl target for static binaries.

use anyhow::Result;

use crate::sh;

/// (package, a file it installs). `busybox-static` and `busybox` install the
/// same path, so the static one is recognised by its package status instead.
const PACKAGES: &[(&str, Option<&str>)] =
    &[("qemu-system-x86", Some("/usr/bin/qemu-system-x86_64")), ("busybox-static", None)];

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

pub fn ensure() -> Result<()> {
    apt_packages()?;
    musl_target()
}

fn installed(package: &str, file: Option<&str>) -> bool {
    match file {
        Some(f) => std::path::Path::new(f).exists(),
        None => {
            sh::output("dpkg-query", &["-W", "-f=${Status}", package]).is_ok_and(|s| s.contains("install ok installed"))
        }
    }
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(p, f)| !installed(p, *f)).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::setup::apt_install(&missing, "the VM test")?;
    Ok(())
}

fn musl_target() -> Result<()> {
    let installed = sh::output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(());
    }
    sh::run("rustup", &["target", "add", MUSL_TARGET])
}
