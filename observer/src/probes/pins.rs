//! Keeping per-socket state across an observer restart.
//!
//! The kernel maps that remember what only events can tell (who owned an
//! orphan, when a socket entered CLOSE_WAIT, when its ACKs stopped) are pinned
//! in bpffs while the observer runs. A crashed or SIGKILLed observer leaves
//! them behind, and its successor picks them up, so its first sweep says what
//! the last one said. A clean shutdown removes them: nothing stays pinned.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use crate::target::Selector;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Maps worth keeping: per-socket event state and per-process counters.
pub const PINNED_MAPS: [&str; 2] = ["SOCKS", "COUNTERS"];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0} is not on a bpf filesystem and mounting one there failed: {1}")]
    NoBpffs(String, std::io::Error),
    #[error("creating pin directory {0}: {1}")]
    Create(String, std::io::Error),
}

#[derive(Clone, Debug)]
pub struct PinDir {
    pub path: PathBuf,
    /// A previous observer of the same target left its maps here.
    pub reused: bool,
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs into a zeroed struct with a valid C path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// One directory per target, so observers of different targets never share state.
pub fn dir_name(selector: &Selector) -> String {
    match selector {
        Selector::Pid(pid) => format!("pid-{pid}"),
        Selector::Comm(c) => format!("comm-{}", c.replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-' && ch != '_', "_")),
    }
}

/// Makes `base/<target>` on bpffs, mounting bpffs on `base`'s parent when it
/// is the conventional empty `/sys/fs/bpf` (as bpf-based daemons commonly do).
pub fn prepare(base: &Path, selector: &Selector) -> Result<PinDir, PinError> {
    let root = base.parent().unwrap_or(base);
    if !is_bpffs(root) {
        let c = CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| PinError::NoBpffs(root.display().to_string(), std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: valid C strings; a plain bpffs mount with no data.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(PinError::NoBpffs(root.display().to_string(), std::io::Error::last_os_error()));
        }
    }
    prune_dead(base);
    let path = base.join(dir_name(selector));
    std::fs::create_dir_all(&path).map_err(|e| PinError::Create(path.display().to_string(), e))?;
    let reused = PINNED_MAPS.iter().any(|m| path.join(m).exists());
    Ok(PinDir { path, reused })
}

/// Removes what SIGKILLed observers left for `--pid` targets that no longer
/// exist: nobody can continue from it, and each holds a socket map.
fn prune_dead(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("pid-")).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            PinDir { path: entry.path(), reused: false }.remove();
        }
    }
}

impl PinDir {
    /// Unpins everything; the maps die with their last file descriptor.
    pub fn remove(&self) {
        for m in PINNED_MAPS {
            let _ = std::fs::remove_file(self.path.join(m));
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_safe_and_distinct() {
        assert_eq!(dir_name(&Selector::Pid(42)), "pid-42");
        assert_eq!(dir_name(&Selector::Comm("node".into())), "comm-node");
        assert_eq!(dir_name(&Selector::Comm("a b/../c".into())), "comm-a_b____c");
    }
}
