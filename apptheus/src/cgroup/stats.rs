//! Per-container cgroup statistics: the values, and reading them from the
//! container's cgroup directories. A family the host cannot provide is None.
use std::{collections::BTreeMap, path::PathBuf};

/// The cgroup directories of one container: the cgroup2 one (if cgroup2 is
/// mounted) and one per v1 controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCgroups {
    pub v2: Option<PathBuf>,
    pub v1: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStats {
    pub usage_seconds: f64,
    pub user_seconds: Option<f64>,
    pub system_seconds: Option<f64>,
    pub throttled_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub max_usage_bytes: Option<u64>,
    /// None when there is no limit ("max").
    pub limit_bytes: Option<u64>,
    pub oom_events: Option<u64>,
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PidsStats {
    pub current: u64,
    /// None when there is no limit ("max").
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlkioDevice {
    /// "major:minor"
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// PSI totals, in seconds ("some" and "full" lines' total=).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    pub cpu_some: Option<f64>,
    pub memory_some: Option<f64>,
    pub memory_full: Option<f64>,
    pub io_some: Option<f64>,
    pub io_full: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    pub threads: Option<u64>,
    pub blkio: Option<Vec<BlkioDevice>>,
    pub pressure: Option<Pressure>,
}
