//! cgroup statistics as metric families (names from the metric contract).
//! A statistic the host could not provide is left out, never exported as 0.
use super::Families;
use crate::model::stats::CgroupStats;

pub fn add(f: &mut Families, id: &[(&str, &str)], s: &CgroupStats) {
    add_beside_kernel(f, id, s, false);
}

/// [`add`], leaving out the cgroup's OOM kill count when the kernel
/// programs count OOM kills (`kernel_counts_oom_kills`): the family is
/// theirs then.
pub fn add_beside_kernel(
    f: &mut Families,
    id: &[(&str, &str)],
    s: &CgroupStats,
    kernel_counts_oom_kills: bool,
) {
    let skip_oom_kills = kernel_counts_oom_kills;
    if let Some(cpu) = &s.cpu {
        f.counter(
            "apptheus_container_cpu_usage_seconds_total",
            "CPU time consumed by the container's tasks.",
            id,
            cpu.usage_seconds,
        );
        if let Some(v) = cpu.user_seconds {
            f.counter(
                "apptheus_container_cpu_user_seconds_total",
                "CPU time in user mode.",
                id,
                v,
            );
        }
        if let Some(v) = cpu.system_seconds {
            f.counter(
                "apptheus_container_cpu_system_seconds_total",
                "CPU time in kernel mode.",
                id,
                v,
            );
        }
        if let Some(v) = cpu.throttled_seconds {
            f.counter(
                "apptheus_container_cpu_cfs_throttled_seconds_total",
                "Time the container was throttled by a CFS bandwidth limit.",
                id,
                v,
            );
        }
    }
    if let Some(m) = &s.memory {
        f.gauge(
            "apptheus_container_memory_usage_bytes",
            "Memory charged to the container, page cache included.",
            id,
            m.usage_bytes as f64,
        );
        let opt = [
            (
                m.working_set_bytes,
                "apptheus_container_memory_working_set_bytes",
                "Memory usage less inactive file pages (what the OOM killer weighs; cAdvisor's definition).",
            ),
            (
                m.rss_bytes,
                "apptheus_container_memory_rss_bytes",
                "Anonymous memory (RSS).",
            ),
            (
                m.cache_bytes,
                "apptheus_container_memory_cache_bytes",
                "Page cache charged to the container.",
            ),
            (
                m.swap_bytes,
                "apptheus_container_memory_swap_bytes",
                "Swap used by the container.",
            ),
            (
                m.max_usage_bytes,
                "apptheus_container_memory_max_usage_bytes",
                "Highest memory usage recorded.",
            ),
            (
                m.limit_bytes,
                "apptheus_container_memory_limit_bytes",
                "Memory limit in force for the container, from its own or an enclosing cgroup; absent when unlimited.",
            ),
        ];
        for (v, name, help) in opt {
            if let Some(v) = v {
                f.gauge(name, help, id, v as f64);
            }
        }
        if let Some(v) = m.oom_events {
            f.counter(
                "apptheus_container_memory_oom_events_total",
                "Times the container hit its memory limit and the OOM path ran.",
                id,
                v as f64,
            );
        }
        if let Some(v) = m.oom_kills.filter(|_| !skip_oom_kills) {
            f.counter(
                "apptheus_container_memory_oom_kills_total",
                "Processes of the container killed by the OOM killer.",
                id,
                v as f64,
            );
        }
        if let Some(v) = m.major_faults {
            f.counter(
                "apptheus_container_major_page_faults_total",
                "Page faults of the container that needed I/O (memory.stat pgmajfault).",
                id,
                v as f64,
            );
        }
        if let Some(v) = m.under_oom {
            f.gauge(
                "apptheus_container_memory_under_oom",
                "1 while the container's tasks are held in the OOM handler (cgroup v1, oom_kill_disable set).",
                id,
                if v { 1.0 } else { 0.0 },
            );
        }
    }
    if let Some(p) = &s.pids {
        f.gauge(
            "apptheus_container_pids",
            "Processes and threads in the container's cgroup (pids.current).",
            id,
            p.current as f64,
        );
        if let Some(l) = p.limit {
            f.gauge(
                "apptheus_container_pids_limit",
                "Limit on pids.current; absent when unlimited.",
                id,
                l as f64,
            );
        }
    }
    if let Some(t) = s.threads {
        f.gauge(
            "apptheus_container_threads",
            "Threads in the container's cgroup.",
            id,
            t as f64,
        );
    }
    if let Some(devs) = &s.blkio {
        for d in devs {
            let labels: Vec<(&str, &str)> = id
                .iter()
                .copied()
                .chain([("device", d.device.as_str())])
                .collect();
            f.counter(
                "apptheus_container_blkio_read_bytes_total",
                "Bytes read from block devices.",
                &labels,
                d.read_bytes as f64,
            );
            f.counter(
                "apptheus_container_blkio_write_bytes_total",
                "Bytes written to block devices.",
                &labels,
                d.write_bytes as f64,
            );
            f.counter(
                "apptheus_container_blkio_read_operations_total",
                "Read operations on block devices.",
                &labels,
                d.read_ops as f64,
            );
            f.counter(
                "apptheus_container_blkio_write_operations_total",
                "Write operations on block devices.",
                &labels,
                d.write_ops as f64,
            );
        }
    }
    if let Some(p) = &s.pressure {
        let all = [
            (
                p.cpu_some,
                "apptheus_container_pressure_cpu_waiting_seconds_total",
                "Time some tasks of the container waited for CPU (PSI some).",
            ),
            (
                p.memory_some,
                "apptheus_container_pressure_memory_waiting_seconds_total",
                "Time some tasks of the container waited for memory (PSI some).",
            ),
            (
                p.memory_full,
                "apptheus_container_pressure_memory_stalled_seconds_total",
                "Time all tasks of the container stalled on memory (PSI full).",
            ),
            (
                p.io_some,
                "apptheus_container_pressure_io_waiting_seconds_total",
                "Time some tasks of the container waited for I/O (PSI some).",
            ),
            (
                p.io_full,
                "apptheus_container_pressure_io_stalled_seconds_total",
                "Time all tasks of the container stalled on I/O (PSI full).",
            ),
        ];
        for (v, name, help) in all {
            if let Some(v) = v {
                f.counter(name, help, id, v);
            }
        }
    }
}
