//! The watched processes' sockets from the kernel's file-table iterator
//! (`iter/task_file`, Linux 5.8+): one pass over the file tables in the
//! kernel, where reading `/proc/PID/fd` costs a `readlink` per fd (220 ms
//! for 96k sockets here). Only the sockets of processes in `TARGET_TGIDS`
//! cross; the plan's `owners` hook says which of the two is used.

use aya::Ebpf;
use observer_common::{HeldSocket, names::OWNERS_PROGRAM};

use crate::sockets::iter::{IterError, read_iterator};

/// Every socket file of the registered processes.
pub fn read(ebpf: &mut Ebpf) -> Result<Vec<HeldSocket>, IterError> {
    read_iterator(ebpf, OWNERS_PROGRAM, None, &|_| true)
}
