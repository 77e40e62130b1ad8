//! The kernel's own run-time statistics of apptheus' programs
//! (BPF_ENABLE_STATS, Linux 5.8+), for `--ebpf.stats`.
use std::os::fd::OwnedFd;

use super::Kernel;
pub(crate) use crate::model::programs::ProgramStats;

/// Turns on run-time accounting for every BPF program while the returned
/// descriptor is open. It costs two clock reads per program run.
pub(crate) fn enable() -> Result<OwnedFd, aya::sys::SyscallError> {
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
