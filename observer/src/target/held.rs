//! The watched processes' sockets from the kernel's file-table iterator
//! (`iter/task_file`, Linux 5.8+): one pass over the file tables in the
//! kernel, where reading `/proc/PID/fd` costs a `readlink` per fd (220 ms
//! for 96k sockets here). Only the sockets of processes in `TARGET_TGIDS`
//! cross; the plan's `owners` hook says which of the two is used.

use aya::{Ebpf, programs::Iter};
use observer_common::{HeldSocket, names::OWNERS_PROGRAM};

use crate::sockets::iter::{IterError, read_records};

/// Every socket file of the registered processes.
pub fn read(ebpf: &mut Ebpf) -> Result<Vec<HeldSocket>, IterError> {
    let prog: &mut Iter = ebpf
        .program_mut(OWNERS_PROGRAM)
        .ok_or(IterError::NotLoaded)?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| IterError::Kernel(e.to_string()))?;
    let link_id = prog.attach().map_err(|e| IterError::Kernel(e.to_string()))?;
    let link = prog.take_link(link_id).map_err(|e| IterError::Kernel(e.to_string()))?;
    let mut file = link.into_file().map_err(|e| IterError::Kernel(e.to_string()))?;
    read_records(&mut file, &|_| true)
}
