//! Per-container cgroup statistics: the values, and reading them from the
//! container's cgroup directories. A family the host cannot provide is None.
//!
//! Which source wins, per family: the cgroup2 file when the container's
//! cgroup2 directory has it (pure v2 hosts with the controllers enabled),
//! else the v1 controller's. On hybrid hosts that means CPU usage and PSI
//! from cgroup2 (its cpu.stat and pressure files exist without any
//! controller) and memory, pids, block I/O and CFS throttling from v1.
//! A family never mixes sources for one container: when the chosen file is
//! broken the family is left out (with a warning) rather than filled from
//! the other hierarchy, whose counters would not continue the same series.
use std::{collections::BTreeMap, path::Path};

mod files;
pub mod parse;
mod v1;
mod v2;

use files::Reader;
pub use files::{Problem, StatWarning};
use parse::{Device, IoCounters};
pub use v1::user_hz;

use crate::model::{
    cgroups::ContainerCgroups,
    stats::{BlkioDevice, CgroupStats, CpuStats},
};

/// Devices reported per container at most: a container touching more
/// block devices than this is unusual, and every device is four series.
pub const MAX_DEVICES: usize = 256;

/// Reads a container's statistics. Never fails: what cannot be read is
/// left out and explained in the warnings, each naming its file.
pub fn read(cg: &ContainerCgroups) -> (CgroupStats, Vec<StatWarning>) {
    read_with(cg, user_hz())
}

/// [`read`] with the unit of cpuacct.stat given (for tests).
pub fn read_with(cg: &ContainerCgroups, user_hz: u64) -> (CgroupStats, Vec<StatWarning>) {
    let mut rd = Reader::default();
    let src = Sources::new(cg, &mut rd);
    let stats = CgroupStats {
        cpu: src.cpu(user_hz, &mut rd),
        memory: match src.v2_with("memory.current") {
            Some(d) => v2::memory(d, &mut rd),
            None => src.v1("memory").and_then(|d| v1::memory(d, &mut rd)),
        },
        // The v1 pids controller has the v2 files.
        pids: match src.v2_with("pids.current") {
            Some(d) => v2::pids(d, &mut rd),
            None => src.v1("pids").and_then(|d| v2::pids(d, &mut rd)),
        },
        threads: src.threads(&mut rd),
        blkio: src.blkio(&mut rd),
        pressure: src.v2.and_then(|d| v2::pressure(d, &mut rd)),
    };
    (stats, rd.warnings)
}

/// The container's directories that exist.
struct Sources<'a> {
    v2: Option<&'a Path>,
    v1: BTreeMap<&'a str, &'a Path>,
}

impl<'a> Sources<'a> {
    fn new(cg: &'a ContainerCgroups, rd: &mut Reader) -> Self {
        let v2 = cg.v2.as_deref().filter(|d| rd.dir(d));
        // Hierarchies that share a directory (cpu,cpuacct) are checked once.
        let mut present: BTreeMap<&Path, bool> = BTreeMap::new();
        for d in cg.v1.values() {
            present.entry(d.as_path()).or_insert_with(|| rd.dir(d));
        }
        let v1 = cg
            .v1
            .iter()
            .filter(|(_, d)| present.get(d.as_path()) == Some(&true))
            .map(|(c, d)| (c.as_str(), d.as_path()))
            .collect();
        Self { v2, v1 }
    }

    /// The cgroup2 directory, if it has `file` (the controller's mark).
    fn v2_with(&self, file: &str) -> Option<&'a Path> {
        self.v2.filter(|d| d.join(file).exists())
    }

    fn v1(&self, controller: &str) -> Option<&'a Path> {
        self.v1.get(controller).copied()
    }

    fn cpu(&self, user_hz: u64, rd: &mut Reader) -> Option<CpuStats> {
        let mut cpu = match self.v2_with("cpu.stat") {
            Some(d) => v2::cpu(d, rd),
            None => self.v1("cpuacct").and_then(|d| v1::cpu(d, user_hz, rd)),
        }?;
        // Throttling is its own counter, so taking it from v1 while usage
        // came from cgroup2 (hybrid) does not mix two series.
        if cpu.throttled_seconds.is_none()
            && let Some(d) = self.v1("cpu")
        {
            cpu.throttled_seconds = v1::throttled_seconds(d, rd);
        }
        Some(cpu)
    }

    fn blkio(&self, rd: &mut Reader) -> Option<Vec<BlkioDevice>> {
        let (counters, path) = match self.v2_with("io.stat") {
            Some(d) => (v2::io(d, rd), d.join("io.stat")),
            None => {
                let d = self.v1("blkio")?;
                (v1::blkio(d, rd), d.to_path_buf())
            }
        };
        Some(devices(counters?, &path, rd))
    }

    /// Any v1 hierarchy lists the same tasks; take one we read anyway.
    fn threads(&self, rd: &mut Reader) -> Option<u64> {
        match self.v2 {
            Some(d) => v2::threads(d, rd),
            None => ["memory", "pids", "cpu", "cpuacct", "blkio"]
                .iter()
                .find_map(|c| self.v1(c))
                .and_then(|d| v1::threads(d, rd)),
        }
    }
}

/// Devices with any I/O, at most [`MAX_DEVICES`] of them.
fn devices(m: BTreeMap<Device, IoCounters>, path: &Path, rd: &mut Reader) -> Vec<BlkioDevice> {
    let mut busy = m.into_iter().filter(|(_, c)| !c.is_zero()).peekable();
    let out: Vec<BlkioDevice> = busy
        .by_ref()
        .take(MAX_DEVICES)
        .map(|(d, c)| BlkioDevice {
            device: d.to_string(),
            read_bytes: c.read_bytes,
            write_bytes: c.write_bytes,
            read_ops: c.read_ops,
            write_ops: c.write_ops,
        })
        .collect();
    if busy.peek().is_some() {
        rd.warn(path, Problem::TooManyDevices(MAX_DEVICES));
    }
    out
}
