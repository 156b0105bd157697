//! `observer top`: a live terminal view of the target's sockets.

use anyhow::{Result, bail};

use crate::cli::TopArgs;

pub fn run(_args: TopArgs) -> Result<()> {
    bail!("observer top is not built yet")
}
