//! The kernel's own run-time statistics of apptheus' programs
//! (BPF_ENABLE_STATS, Linux 5.8+), for `--ebpf.stats`.
use std::{os::fd::OwnedFd, time::Duration};

use super::Kernel;

/// Cumulative cost of one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: String,
    pub run_time: Duration,
    pub runs: u64,
}

/// Turns on run-time accounting for every BPF program while the returned
/// descriptor is open. It costs two clock reads per program run.
pub fn enable() -> Result<OwnedFd, aya::sys::SyscallError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
}

impl Kernel {
    /// Run time and run count of each of our programs.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self._ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStats {
                    program: name.to_string(),
                    run_time: info.run_time(),
                    runs: info.run_count(),
                })
            })
            .collect()
    }
}
