//! What the kernel says its programs cost (`--ebpf.stats`).
use std::time::Duration;

/// Cumulative cost of one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: String,
    pub run_time: Duration,
    pub runs: u64,
}
