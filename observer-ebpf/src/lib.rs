#![no_std]
// Empty library so the agent can list this crate as a build dependency
// (aya-build rebuilds the programs when it changes); the programs are the bin.
