//! Keeping per-socket state across an observer restart.
//!
//! The kernel maps that remember what only events can tell (who owned an
//! orphan, when a socket entered CLOSE_WAIT, when its ACKs stopped) are pinned
//! in bpffs while the observer runs. A crashed or SIGKILLed observer leaves
//! them behind, and its successor picks them up, so its first sweep says what
//! the last one said. A clean shutdown removes them: nothing stays pinned.

use observer_common::names;
use std::{
    ffi::CString,
    fmt,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use log::warn;

use crate::target::Selector;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Maps worth keeping: per-socket event state and per-process counters.
/// Only files of these names, in directories named by [`dir_name`], are
/// ever removed.
pub const PINNED_MAPS: [&str; 3] = [names::SOCKS, names::COUNTERS, names::CLOCKS];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0} is not on a bpf filesystem and mounting one there failed: {1}")]
    NoBpffs(String, std::io::Error),
    #[error(
        "pin directory {path}: {mount} is not a bpf filesystem and is not empty; refusing to mount bpffs over its \
         contents. Mount bpffs there yourself (mount -t bpf bpf {mount}), choose a --pin-dir on bpffs \
         (such as /sys/fs/bpf/observer), or run with --no-pin"
    )]
    NotEmpty { path: String, mount: String },
    #[error("pin directory {path}: {mount} is not a directory; choose another --pin-dir or run with --no-pin")]
    NotDirectory { path: String, mount: String },
    #[error("pin directory {path}: cannot read {mount}: {source}")]
    Inspect { path: String, mount: String, source: std::io::Error },
    #[error("creating pin directory {0}: {1}")]
    Create(String, std::io::Error),
    #[error("{path} is not a map this observer pinned ({why}); remove it yourself or choose another --pin-dir")]
    Foreign { path: String, why: String },
}

impl PinError {
    /// A --pin-dir the operator must fix: the observer stops rather than
    /// touch what is there. The rest (no privilege to mount bpffs) only
    /// costs continuity across restarts, and the observer runs without pins.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PinError::NotEmpty { .. }
                | PinError::NotDirectory { .. }
                | PinError::Foreign { .. }
                | PinError::Inspect { .. }
        )
    }
}

/// What a pinned map must be for this build to reuse it: the kernel does
/// not check, and aya reuses whatever is pinned under the name, so a map of
/// another build (another record layout) or another `--max-sockets` would
/// be read with the wrong layout or size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// `bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
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
        Selector::Comm(c) => {
            format!("comm-{}", c.replace(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-' && ch != '_', "_"))
        }
    }
}

/// The nearest existing ancestor of `path` (itself if it exists).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|a| a.as_os_str().is_empty() || a.symlink_metadata().is_ok()).unwrap_or(path)
}

/// Where bpffs must be mounted for `base` to be on it, if it is not yet:
/// the nearest existing ancestor of `base`, which must then be an empty
/// directory. (With the default `/sys/fs/bpf/observer` on a host that has
/// not mounted bpffs, that is the empty `/sys/fs/bpf`.)
fn mount_point(base: &Path) -> Result<Option<PathBuf>, PinError> {
    let at = existing_ancestor(base);
    let at = if at.as_os_str().is_empty() { Path::new(".") } else { at };
    if is_bpffs(at) {
        return Ok(None);
    }
    let (path, mount) = (base.display().to_string(), at.display().to_string());
    if !at.is_dir() {
        return Err(PinError::NotDirectory { path, mount });
    }
    let mut entries = std::fs::read_dir(at).map_err(|source| PinError::Inspect {
        path: path.clone(),
        mount: mount.clone(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(PinError::NotEmpty { path, mount });
    }
    Ok(Some(at.to_path_buf()))
}

/// Makes `base/<target>` on bpffs, mounting bpffs first where `base` would
/// be when that is an empty directory (as bpf-based daemons commonly do with
/// `/sys/fs/bpf`); never over a directory that has contents. Pins whose
/// layout differs from `expected` are removed so the loader creates them
/// afresh.
pub fn prepare(base: &Path, selector: &Selector, expected: &[(&str, MapLayout)]) -> Result<PinDir, PinError> {
    if let Some(at) = mount_point(base)? {
        let c = CString::new(at.as_os_str().as_encoded_bytes())
            .map_err(|_| PinError::NoBpffs(at.display().to_string(), std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: valid C strings; a plain bpffs mount with no data.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(PinError::NoBpffs(at.display().to_string(), std::io::Error::last_os_error()));
        }
    }
    prune_dead(base);
    let path = base.join(dir_name(selector));
    std::fs::create_dir_all(&path).map_err(|e| PinError::Create(path.display().to_string(), e))?;
    let dir = PinDir { path, reused: false };
    dir.check_layouts(expected)?;
    let reused = PINNED_MAPS.iter().any(|m| dir.path.join(m).exists());
    Ok(PinDir { reused, ..dir })
}

/// Whether `path` is a map pin of ours: a BPF map named `name` (kernels
/// before 4.15 keep no names; there any map counts).
fn own_map(path: &Path, name: &str) -> Result<MapInfo, String> {
    let info = MapInfo::from_pin(path).map_err(|e| format!("not a BPF map: {e}"))?;
    match info.name() {
        [] => Ok(info),
        n if n == name.as_bytes() => Ok(info),
        n => Err(format!("a map named {:?}", String::from_utf8_lossy(n))),
    }
}

/// Removes what SIGKILLed observers left for `--pid` targets that no longer
/// exist: nobody can continue from it, and each holds a socket map. Only
/// our own map pins go, and the directory only when nothing else is in it.
fn prune_dead(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("pid-")).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        for m in PINNED_MAPS {
            let pin = dir.join(m);
            if pin.symlink_metadata().is_ok() && own_map(&pin, m).is_ok() {
                let _ = std::fs::remove_file(&pin);
            }
        }
        // Fails, as it should, when something else is in there.
        let _ = std::fs::remove_dir(&dir);
    }
}

impl PinDir {
    /// Keeps a pinned map only if this build can use it as it is: one of
    /// ours with another layout is removed, with a warning, and created
    /// afresh by the loader (its state is lost, never misread); anything
    /// else under our map's name is refused.
    pub fn check_layouts(&self, expected: &[(&str, MapLayout)]) -> Result<(), PinError> {
        for (name, want) in expected {
            let pin = self.path.join(name);
            if pin.symlink_metadata().is_err() {
                continue;
            }
            let info = own_map(&pin, name).map_err(|why| PinError::Foreign { path: pin.display().to_string(), why })?;
            let got = MapLayout {
                // An unknown type number never equals ours.
                map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            };
            if got != *want {
                warn!(
                    "{} was pinned with another layout ({got}) than this observer needs ({want}): \
                     another build or another --max-sockets; its state is dropped and the map created afresh",
                    pin.display()
                );
                std::fs::remove_file(&pin).map_err(|e| PinError::Create(pin.display().to_string(), e))?;
            }
        }
        Ok(())
    }

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

    #[test]
    fn mount_point_is_never_a_directory_with_contents() -> Result<(), Box<dyn std::error::Error>> {
        let tree = crate::test_support::TempTree::new("pins")?;
        // Empty: bpffs may go there, on the directory itself.
        let empty = tree.path().join("empty");
        std::fs::create_dir(&empty)?;
        assert_eq!(mount_point(&empty)?, Some(empty.clone()));
        // Not yet there: the nearest existing ancestor, if empty.
        assert_eq!(mount_point(&empty.join("a/b"))?, Some(empty.clone()));
        // Anything in it: refused, naming the directory.
        tree.write("full/keep.txt", b"not ours")?;
        let full = tree.path().join("full");
        for base in [full.clone(), full.join("observer")] {
            match mount_point(&base) {
                Err(e @ PinError::NotEmpty { .. }) => {
                    assert!(e.is_fatal());
                    assert!(e.to_string().contains(&full.display().to_string()), "{e}");
                }
                other => panic!("{}: {other:?}", base.display()),
            }
        }
        assert!(full.join("keep.txt").exists());
        // A file where the directory should be.
        assert!(matches!(mount_point(&full.join("keep.txt")), Err(PinError::NotDirectory { .. })));
        Ok(())
    }

    #[test]
    fn pruning_leaves_what_is_not_ours() -> Result<(), Box<dyn std::error::Error>> {
        let tree = crate::test_support::TempTree::new("pins-prune")?;
        // A dead target's directory holding files that are not map pins,
        // one of them under our map's name.
        tree.write("pid-4194305/SOCKS", b"a plain file")?;
        tree.write("pid-4194305/notes", b"someone else's")?;
        prune_dead(tree.path());
        assert!(tree.path().join("pid-4194305/SOCKS").exists());
        assert!(tree.path().join("pid-4194305/notes").exists());
        Ok(())
    }
}
