//! Everything a lab run created, torn down on drop: on success, on error
//! halfway through setup, and after a stop signal.

use std::path::PathBuf;
use std::time::Duration;

use crate::child::Managed;
use crate::{loopnft, netns};

const GRACE: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Resources {
    pub clients: Vec<Managed>,
    pub server: Option<Managed>,
    /// Created namespaces, in creation order.
    pub namespaces: Vec<String>,
    /// Loopback-mode nft table.
    pub loop_table: Option<String>,
    pub pid_file: Option<PathBuf>,
    /// Directory holding a renamed copy of the server executable.
    pub exe_dir: Option<PathBuf>,
}

impl Resources {
    fn cleanup(&mut self) {
        let mut procs: Vec<Managed> = self.clients.drain(..).collect();
        procs.extend(self.server.take());
        for mut p in procs {
            if let Err(e) = p.terminate(GRACE) {
                eprintln!("lab: cleanup: stopping {} (pid {}): {e:#}", p.label, p.pid());
            }
        }
        if let Some(Err(e)) = self.loop_table.take().map(|t| loopnft::delete(&t)) {
            eprintln!("lab: cleanup: {e:#}");
        }
        // Deleting a namespace also removes the veth ends inside it.
        while let Some(ns) = self.namespaces.pop() {
            if let Err(e) = netns::delete(&ns) {
                eprintln!("lab: cleanup: {e:#}");
            }
        }
        if let Some(dir) = self.exe_dir.take() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| eprintln!("lab: cleanup: removing {}: {e}", dir.display()));
        }
        if let Some(path) = self.pid_file.take() {
            std::fs::remove_file(&path).unwrap_or_else(|e| eprintln!("lab: cleanup: removing {}: {e}", path.display()));
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        self.cleanup();
    }
}
