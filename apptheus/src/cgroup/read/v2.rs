//! What a container's cgroup2 directory gives. With controllers enabled
//! (pure v2 hosts) that is everything; on hybrid hosts the cgroup2 tree has
//! no controllers but still keeps cpu.stat (usage, user, system) and the
//! PSI files in every cgroup.
use std::{collections::BTreeMap, path::Path};

use super::{
    files::Reader,
    parse::{self, Device, IoCounters},
};
use crate::model::stats::{CpuStats, MemoryStats, PidsStats, Pressure};

fn usec(v: u64) -> f64 {
    v as f64 / 1e6
}

/// cpu.stat: usage_usec, user_usec and system_usec are always there;
/// throttled_usec only when the cpu controller is enabled for the cgroup.
pub fn cpu(dir: &Path, rd: &mut Reader) -> Option<CpuStats> {
    let path = dir.join("cpu.stat");
    let text = rd.text(&path)?;
    let kv = rd.ok(&path, parse::flat_keyed(&text))?;
    let usage = rd.ok(&path, kv.require("usage_usec"))?;
    Some(CpuStats {
        usage_seconds: usec(usage),
        user_seconds: rd.ok(&path, kv.require("user_usec")).map(usec),
        system_seconds: rd.ok(&path, kv.require("system_usec")).map(usec),
        throttled_seconds: rd.ok(&path, kv.get("throttled_usec")).flatten().map(usec),
    })
}

/// The memory controller's files. memory.current is the controller's mark:
/// without it there is no memory statistic at all (MemoryStats needs a
/// usage).
pub fn memory(dir: &Path, rd: &mut Reader) -> Option<MemoryStats> {
    let usage = rd.required(&dir.join("memory.current"), parse::single_u64)?;
    let mut m = MemoryStats {
        usage_bytes: usage,
        ..MemoryStats::default()
    };
    let stat_path = dir.join("memory.stat");
    if let Some(text) = rd.text(&stat_path)
        && let Some(kv) = rd.ok(&stat_path, parse::flat_keyed(&text))
    {
        m.rss_bytes = rd.ok(&stat_path, kv.require("anon"));
        m.cache_bytes = rd.ok(&stat_path, kv.require("file"));
        // cAdvisor's working set: what cannot be reclaimed without
        // hurting, i.e. usage less the inactive page cache.
        m.working_set_bytes = rd
            .ok(&stat_path, kv.require("inactive_file"))
            .map(|inactive| usage.saturating_sub(inactive));
        m.major_faults = rd.ok(&stat_path, kv.get("pgmajfault")).flatten();
    }
    // memory.peak: Linux 5.19 and later.
    m.max_usage_bytes = rd.optional(&dir.join("memory.peak"), parse::single_u64);
    // Only with swap accounting (and CONFIG_SWAP).
    m.swap_bytes = rd.optional(&dir.join("memory.swap.current"), parse::single_u64);
    m.limit_bytes = rd.min_limit_upwards(dir, "memory.max", parse::limit, |_| true);
    let events_path = dir.join("memory.events");
    if let Some(text) = rd.text(&events_path)
        && let Some(kv) = rd.ok(&events_path, parse::flat_keyed(&text))
    {
        m.oom_events = rd.ok(&events_path, kv.require("oom"));
        // oom_kill: Linux 4.13 and later.
        m.oom_kills = rd.ok(&events_path, kv.get("oom_kill")).flatten();
    }
    Some(m)
}

/// pids.current and the smallest pids.max on the way up. The v1 pids
/// controller has the same two files, so v1 uses this too.
pub fn pids(dir: &Path, rd: &mut Reader) -> Option<PidsStats> {
    let current = rd.required(&dir.join("pids.current"), parse::single_u64)?;
    let limit = rd.min_limit_upwards(dir, "pids.max", parse::limit, |_| true);
    Some(PidsStats { current, limit })
}

/// io.stat, per device.
pub fn io(dir: &Path, rd: &mut Reader) -> Option<BTreeMap<Device, IoCounters>> {
    rd.required(&dir.join("io.stat"), parse::io_stat)
}

/// The PSI files, present in every cgroup when the kernel has PSI enabled;
/// None when none of them is.
pub fn pressure(dir: &Path, rd: &mut Reader) -> Option<Pressure> {
    let cpu = rd.optional(&dir.join("cpu.pressure"), parse::psi);
    let memory = rd.optional(&dir.join("memory.pressure"), parse::psi);
    let io = rd.optional(&dir.join("io.pressure"), parse::psi);
    if cpu.is_none() && memory.is_none() && io.is_none() {
        return None;
    }
    Some(Pressure {
        cpu_some: cpu.map(|p| usec(p.some_us)),
        memory_some: memory.map(|p| usec(p.some_us)),
        memory_full: memory.and_then(|p| p.full_us).map(usec),
        io_some: io.map(|p| usec(p.some_us)),
        io_full: io.and_then(|p| p.full_us).map(usec),
    })
}

/// Threads in the cgroup and below it.
pub fn threads(dir: &Path, rd: &mut Reader) -> Option<u64> {
    rd.count_below(dir, "cgroup.threads")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn hybrid_style_cpu_stat_has_no_throttling() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnice_usec 0\n",
        )
        .unwrap();
        let mut rd = Reader::default();
        let c = cpu(t.path(), &mut rd).unwrap();
        assert_eq!(c.usage_seconds, 2.5);
        assert_eq!(c.user_seconds, Some(2.0));
        assert_eq!(c.system_seconds, Some(0.5));
        assert_eq!(c.throttled_seconds, None);
        assert!(rd.warnings.is_empty());
    }

    #[test]
    fn no_psi_no_pressure() {
        let t = tempfile::tempdir().unwrap();
        let mut rd = Reader::default();
        assert_eq!(pressure(t.path(), &mut rd), None);
        assert!(rd.warnings.is_empty());
    }
}
