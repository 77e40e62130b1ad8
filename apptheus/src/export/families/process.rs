//! Families of the statistics read from a container's own processes (see
//! `model::processes`), for a container whose cgroups cannot give its
//! memory: names of their own (`apptheus_container_proc_*`), never mixed
//! into a cgroup family. A container read from its cgroups has none.
use super::Families;
use crate::model::processes::ProcStats;

pub fn add(f: &mut Families, id: &[(&str, &str)], s: &ProcStats) {
    f.gauge(
        "apptheus_container_proc_processes",
        "Processes of the container, read from /proc where its cgroups cannot give its statistics.",
        id,
        s.processes as f64,
    );
    f.gauge(
        "apptheus_container_proc_threads",
        "Threads of the container's processes, read from /proc.",
        id,
        s.threads as f64,
    );
    if let Some(v) = s.pss_bytes {
        f.gauge(
            "apptheus_container_proc_memory_pss_bytes",
            "Proportional set size summed over the container's processes (smaps_rollup Pss: a page mapped by n processes counts 1/n in each), as last read.",
            id,
            v as f64,
        );
    }
    f.gauge(
        "apptheus_container_proc_memory_rss_bytes",
        "Resident set size summed over the container's processes (statm; a shared page counts in each process that maps it).",
        id,
        s.rss_bytes as f64,
    );
    if let Some(v) = s.cpu_seconds {
        f.counter(
            "apptheus_container_proc_cpu_seconds_total",
            "CPU time of the container's threads, live and exited (scheduler runtime).",
            id,
            v,
        );
    }
    if let Some(v) = s.read_bytes {
        f.counter(
            "apptheus_container_proc_io_read_bytes_total",
            "Bytes the container's threads, live and exited, made the storage layer read (/proc io read_bytes).",
            id,
            v as f64,
        );
    }
    if let Some(v) = s.write_bytes {
        f.counter(
            "apptheus_container_proc_io_write_bytes_total",
            "Bytes the container's threads, live and exited, dirtied for writing to storage (/proc io write_bytes).",
            id,
            v as f64,
        );
    }
}
