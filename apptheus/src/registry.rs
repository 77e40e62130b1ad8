//! The containers the agent knows, and their life: running -> exited ->
//! expired (its series removed after the grace period). Pure state; the
//! agent feeds it events and samples.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    cgroup::stats::{CgroupStats, ContainerCgroups},
    environ::Metadata,
};

/// How a container was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kernel saw a trusted starter exec.
    Kernel,
    /// Apptainer's starter connected to the monitoring socket.
    Socket,
    /// Found at start-up, left by an earlier run of the agent.
    Adopted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Exited { at: Instant },
}

/// The kernel programs' counters for a container. The collectors' values
/// are None when the collector is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub execs: u64,
    pub forks: u64,
    pub threads_created: u64,
    pub process_exits: u64,
    pub live_tasks: u64,
    pub oom_kills: Option<u64>,
    pub network: Option<NetCounters>,
    pub fs: Option<FsCounters>,
    pub runq: Option<apptheus_common::RunqHistogram>,
}

/// The network collector's counters (IP headers included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// The file I/O collector's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// The latest statistics of a container.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cgroup: CgroupStats,
    pub kernel: Option<KernelCounters>,
}

#[derive(Debug, Clone)]
pub struct Container {
    /// The kernel's key (CLOCK_BOOTTIME ns of the starter's exec).
    pub key: u64,
    /// The `container_id` label: "<starter pid>-<key>", unique until reboot.
    pub id: String,
    pub starter_pid: u32,
    pub starter_path: PathBuf,
    pub start_time: SystemTime,
    pub uid: u32,
    pub user: String,
    pub meta: Metadata,
    pub source: Source,
    pub phase: Phase,
    pub sample: Option<Sample>,
    /// The container's own cgroups, once created.
    pub cgroups: Option<ContainerCgroups>,
    /// True once every task was found inside its cgroups.
    pub placed: bool,
}

/// The `container_id` for a key and starter pid.
pub fn container_id(starter_pid: u32, key: u64) -> String {
    format!("{starter_pid}-{key}")
}

/// Parses a `container_id` back into (starter pid, key).
pub fn parse_container_id(id: &str) -> Option<(u32, u64)> {
    let (pid, key) = id.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    let key: u64 = key.parse().ok()?;
    (container_id(pid, key) == id).then_some((pid, key))
}

#[derive(Debug, Default)]
pub struct Registry {
    containers: BTreeMap<u64, Container>,
}

impl Registry {
    /// Adds a container; false if its key is known already.
    pub fn insert(&mut self, c: Container) -> bool {
        if self.containers.contains_key(&c.key) {
            return false;
        }
        self.containers.insert(c.key, c);
        true
    }

    pub fn get(&self, key: u64) -> Option<&Container> {
        self.containers.get(&key)
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut Container> {
        self.containers.get_mut(&key)
    }

    /// Finds a container by its starter's pid, among running ones.
    pub fn by_starter_pid(&self, pid: u32) -> Option<&Container> {
        self.containers
            .values()
            .find(|c| c.starter_pid == pid && c.phase == Phase::Running)
    }

    /// Marks a container exited; true the first time.
    pub fn mark_exited(&mut self, key: u64, at: Instant) -> bool {
        match self.containers.get_mut(&key) {
            Some(c) if c.phase == Phase::Running => {
                c.phase = Phase::Exited { at };
                true
            }
            _ => false,
        }
    }

    /// Removes the containers that ended more than `grace` ago.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> Vec<Container> {
        let gone: Vec<u64> = self
            .containers
            .values()
            .filter(|c| matches!(c.phase, Phase::Exited { at } if now.saturating_duration_since(at) >= grace))
            .map(|c| c.key)
            .collect();
        gone.iter()
            .filter_map(|k| self.containers.remove(k))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    pub fn running(&self) -> impl Iterator<Item = &Container> {
        self.containers
            .values()
            .filter(|c| c.phase == Phase::Running)
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}

/// Wall-clock time of a CLOCK_BOOTTIME instant.
pub fn boot_ns_to_system_time(boot_ns: u64) -> SystemTime {
    let now_wall = SystemTime::now();
    let now_boot = boot_time_now();
    let ago = now_boot.saturating_sub(Duration::from_nanos(boot_ns));
    now_wall.checked_sub(ago).unwrap_or(now_wall)
}

/// CLOCK_BOOTTIME now.
pub fn boot_time_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(key: u64, pid: u32) -> Container {
        Container {
            key,
            id: container_id(pid, key),
            starter_pid: pid,
            starter_path: PathBuf::from("/usr/libexec/apptainer/bin/starter"),
            start_time: SystemTime::UNIX_EPOCH,
            uid: 1000,
            user: "alice".into(),
            meta: Metadata::default(),
            source: Source::Kernel,
            phase: Phase::Running,
            sample: None,
            cgroups: None,
            placed: false,
        }
    }

    #[test]
    fn ids_round_trip_and_reject_junk() {
        assert_eq!(container_id(42, 123456789), "42-123456789");
        assert_eq!(parse_container_id("42-123456789"), Some((42, 123456789)));
        for bad in ["", "42", "-1", "a-b", "042-1", "1-2-3"] {
            assert_eq!(parse_container_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn lifecycle() {
        let mut r = Registry::default();
        assert!(r.insert(container(1, 10)));
        assert!(!r.insert(container(1, 10)), "a key is registered once");
        assert!(r.insert(container(2, 20)));
        assert_eq!(r.len(), 2);
        assert_eq!(r.by_starter_pid(20).map(|c| c.key), Some(2));

        let t0 = Instant::now();
        assert!(r.mark_exited(1, t0));
        assert!(!r.mark_exited(1, t0), "exit is reported once");
        assert_eq!(r.running().count(), 1);

        let grace = Duration::from_secs(30);
        assert!(r.expire(t0 + Duration::from_secs(29), grace).is_empty());
        let gone = r.expire(t0 + grace, grace);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, 1);
        assert_eq!(r.len(), 1);
        assert!(r.get(1).is_none());
    }

    #[test]
    fn boot_time_conversion_is_in_the_past() {
        let t = boot_ns_to_system_time(0);
        assert!(t < SystemTime::now());
    }
}
