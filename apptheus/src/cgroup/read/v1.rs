//! What the cgroup v1 controllers give: used on pure v1 hosts, and on
//! hybrid hosts for everything the controller-less cgroup2 tree lacks
//! (memory, pids, block I/O, CFS throttling).
use std::{collections::BTreeMap, path::Path, sync::OnceLock};

use super::{
    files::{Problem, Reader},
    parse::{self, Device, IoCounters},
};
use crate::model::stats::{CpuStats, MemoryStats};

fn nsec(v: u64) -> f64 {
    v as f64 / 1e9
}

/// The unit of cpuacct.stat (USER_HZ), from sysconf(_SC_CLK_TCK).
pub fn user_hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        // SAFETY: sysconf takes an integer and touches no memory of ours.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // USER_HZ is 100 on every Linux ABI; sysconf failing is theoretical.
        u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(100)
    })
}

/// cpuacct: cpuacct.usage (nanoseconds) and cpuacct.stat (user and system
/// in USER_HZ ticks).
pub fn cpu(cpuacct: &Path, user_hz: u64, rd: &mut Reader) -> Option<CpuStats> {
    let usage = rd.required(&cpuacct.join("cpuacct.usage"), parse::single_u64)?;
    let hz = user_hz.max(1) as f64;
    let path = cpuacct.join("cpuacct.stat");
    let (user, system) = match rd.text(&path) {
        Some(text) => match rd.ok(&path, parse::flat_keyed(&text)) {
            Some(kv) => (
                rd.ok(&path, kv.require("user")),
                rd.ok(&path, kv.require("system")),
            ),
            None => (None, None),
        },
        None => (None, None),
    };
    Some(CpuStats {
        usage_seconds: nsec(usage),
        user_seconds: user.map(|t| t as f64 / hz),
        system_seconds: system.map(|t| t as f64 / hz),
        throttled_seconds: None,
    })
}

/// CFS bandwidth throttling from the cpu controller's cpu.stat
/// (throttled_time, nanoseconds). The file exists only with
/// CONFIG_CFS_BANDWIDTH, so its absence is no warning.
pub fn throttled_seconds(cpu: &Path, rd: &mut Reader) -> Option<f64> {
    let path = cpu.join("cpu.stat");
    let kv_text = rd.text_if_present(&path)?;
    let kv = rd.ok(&path, parse::flat_keyed(&kv_text))?;
    rd.ok(&path, kv.require("throttled_time")).map(nsec)
}

/// The memory controller. memory.stat's total_* keys include the cgroups
/// below the container's (as cAdvisor reads them).
pub fn memory(dir: &Path, rd: &mut Reader) -> Option<MemoryStats> {
    let usage = rd.required(&dir.join("memory.usage_in_bytes"), parse::single_u64)?;
    let mut m = MemoryStats {
        usage_bytes: usage,
        ..MemoryStats::default()
    };
    let stat_path = dir.join("memory.stat");
    if let Some(text) = rd.text(&stat_path)
        && let Some(kv) = rd.ok(&stat_path, parse::flat_keyed(&text))
    {
        m.rss_bytes = rd.ok(&stat_path, kv.require("total_rss"));
        m.cache_bytes = rd.ok(&stat_path, kv.require("total_cache"));
        m.working_set_bytes = rd
            .ok(&stat_path, kv.require("total_inactive_file"))
            .map(|inactive| usage.saturating_sub(inactive));
        m.major_faults = rd.ok(&stat_path, kv.get("total_pgmajfault")).flatten();
    }
    m.max_usage_bytes = rd.required(&dir.join("memory.max_usage_in_bytes"), parse::single_u64);
    m.limit_bytes = rd.min_limit_upwards(dir, "memory.limit_in_bytes", parse::v1_limit, |p| {
        // A parent with use_hierarchy 0 does not charge its children, so its
        // limit (and any above it) does not hold for them. Kernels since
        // 5.11 always use the hierarchy.
        std::fs::read_to_string(p.join("memory.use_hierarchy")).map_or(true, |t| t.trim() != "0")
    });
    // memsw counts memory plus swap; present with swap accounting only.
    m.swap_bytes = rd
        .optional(&dir.join("memory.memsw.usage_in_bytes"), parse::single_u64)
        .map(|memsw| memsw.saturating_sub(usage));
    let oom_path = dir.join("memory.oom_control");
    if let Some(text) = rd.text(&oom_path)
        && let Some(kv) = rd.ok(&oom_path, parse::flat_keyed(&text))
    {
        // oom_kill: Linux 4.13 and later.
        m.oom_kills = rd.ok(&oom_path, kv.get("oom_kill")).flatten();
        m.under_oom = rd
            .ok(&oom_path, kv.get("under_oom"))
            .flatten()
            .map(|v| v != 0);
    }
    Some(m)
}

/// Bytes and operations per device from the throttle files, which the
/// block layer fills whatever the I/O scheduler. (blkio.io_service_bytes,
/// which the original Go apptheus read, is only filled by CFQ/BFQ and reads
/// 0 on modern kernels.) The _recursive files include the cgroups below;
/// older kernels only have the plain ones.
pub fn blkio(dir: &Path, rd: &mut Reader) -> Option<BTreeMap<Device, IoCounters>> {
    let bytes = first_present(
        rd,
        dir,
        &[
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        ],
    )?;
    let ops = first_present(
        rd,
        dir,
        &[
            "blkio.throttle.io_serviced_recursive",
            "blkio.throttle.io_serviced",
        ],
    )?;
    let mut out: BTreeMap<Device, IoCounters> = BTreeMap::new();
    for (dev, (r, w)) in bytes {
        let e = out.entry(dev).or_default();
        e.read_bytes = r;
        e.write_bytes = w;
    }
    for (dev, (r, w)) in ops {
        let e = out.entry(dev).or_default();
        e.read_ops = r;
        e.write_ops = w;
    }
    Some(out)
}

/// The first of `names` that exists in `dir`, parsed; a warning naming the
/// first when none does.
fn first_present(
    rd: &mut Reader,
    dir: &Path,
    names: &[&str],
) -> Option<BTreeMap<Device, (u64, u64)>> {
    for name in names {
        let path = dir.join(name);
        if path.exists() {
            return rd.required(&path, parse::blkio_v1);
        }
    }
    let first = names
        .first()
        .map_or_else(|| dir.to_path_buf(), |n| dir.join(n));
    rd.warn(&first, Problem::Missing);
    None
}

/// Threads in the cgroup and below it.
pub fn threads(dir: &Path, rd: &mut Reader) -> Option<u64> {
    rd.count_below(dir, "tasks")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn user_hz_is_sane() {
        assert!((1..=10_000).contains(&user_hz()));
    }

    #[test]
    fn blkio_falls_back_to_non_recursive_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(
            d.join("blkio.throttle.io_service_bytes"),
            "8:0 Read 10\n8:0 Write 20\nTotal 30\n",
        )
        .unwrap();
        fs::write(
            d.join("blkio.throttle.io_serviced"),
            "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        )
        .unwrap();
        let mut rd = Reader::default();
        let m = blkio(d, &mut rd).unwrap();
        assert_eq!(
            m[&Device { major: 8, minor: 0 }],
            IoCounters {
                read_bytes: 10,
                write_bytes: 20,
                read_ops: 1,
                write_ops: 2
            }
        );
        assert!(rd.warnings.is_empty());
        fs::remove_file(d.join("blkio.throttle.io_serviced")).unwrap();
        assert_eq!(blkio(d, &mut rd), None);
        assert!(
            rd.warnings[0]
                .to_string()
                .contains("io_serviced_recursive: missing")
        );
    }
}
