//! Every metric apptheus exports, defined once: name, type, HELP and label
//! names. The per-container families, the kernel collectors' families and
//! the agent's own metrics all take their definitions from here, and the
//! docs, dashboards and tests are checked against [`ALL`].
//!
//! Conventions (README, "Metrics"): prefix `apptheus_`, base units,
//! `_total` on counters, ratios 0-1. Per-container series carry
//! `container_id`; metadata is in [`CONTAINER_INFO`] only.

/// A metric's type, as the exposition formats name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name in a `# TYPE` line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The label names of its series (a histogram's buckets add `le`).
    pub labels: &'static [&'static str],
}

impl Metric {
    /// The family name in OpenMetrics (a counter's without `_total`).
    pub fn family(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        }
    }
}

const ID: &[&str] = &["container_id"];
const ID_DEVICE: &[&str] = &["container_id", "device"];

macro_rules! metrics {
    ($($(#[$doc:meta])* $ident:ident = $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        $($(#[$doc])* pub const $ident: Metric = Metric {
            name: $name,
            kind: Kind::$kind,
            help: $help,
            labels: $labels,
        };)*
        /// Every metric, in the order of this file.
        #[cfg(feature = "testing")]
        pub const ALL: &[&Metric] = &[$(&$ident),*];
    };
}

metrics! {
    // --- Per container: identity -------------------------------------------
    CONTAINER_INFO = "apptheus_container_info", Gauge,
        &["container_id", "starter", "image", "instance", "user", "uid", "slurm_job_id", "from_processes"],
        "Metadata of a container; always 1. from_processes lists the statistics families (cpu, memory, pids, io) read from the container's processes rather than its cgroups, for its whole life.";
    CONTAINER_START_TIME = "apptheus_container_start_time_seconds", Gauge, ID,
        "Start time of the container (its starter's exec), in seconds since the Unix epoch.";

    // --- Per container: the kernel programs --------------------------------
    CONTAINER_EXECS = "apptheus_container_execs_total", Counter, ID,
        "Programs executed (execve) in the container, its starter included, counted by the kernel programs.";
    CONTAINER_FORKS = "apptheus_container_forks_total", Counter, ID,
        "Processes created (fork, vfork, clone without CLONE_THREAD) in the container.";
    CONTAINER_THREADS_CREATED = "apptheus_container_threads_created_total", Counter, ID,
        "Threads created (clone with CLONE_THREAD) in the container.";
    CONTAINER_PROCESS_EXITS = "apptheus_container_process_exits_total", Counter, ID,
        "Processes of the container that exited.";
    CONTAINER_TASKS = "apptheus_container_tasks", Gauge, ID,
        "Tasks (threads) of the container alive, as the kernel programs count them.";
    CONTAINER_NETWORK_RECEIVE_BYTES = "apptheus_container_network_receive_bytes_total", Counter, ID,
        "Bytes received by the container's sockets (IP packets, headers included).";
    CONTAINER_NETWORK_RECEIVE_PACKETS = "apptheus_container_network_receive_packets_total", Counter, ID,
        "Packets received by the container's sockets.";
    CONTAINER_NETWORK_TRANSMIT_BYTES = "apptheus_container_network_transmit_bytes_total", Counter, ID,
        "Bytes sent by the container's sockets (IP packets, headers included).";
    CONTAINER_NETWORK_TRANSMIT_PACKETS = "apptheus_container_network_transmit_packets_total", Counter, ID,
        "Packets sent by the container's sockets (segments of a TSO/GSO packet counted one by one).";
    CONTAINER_FS_READ_BYTES = "apptheus_container_fs_read_bytes_total", Counter, ID,
        "Bytes read from regular files by the container's read-like syscalls, page cache hits included.";
    CONTAINER_FS_WRITE_BYTES = "apptheus_container_fs_write_bytes_total", Counter, ID,
        "Bytes written to regular files by the container's write-like syscalls, page cache included.";
    CONTAINER_RUNQUEUE_LATENCY = "apptheus_container_runqueue_latency_seconds", Histogram, ID,
        "Time the container's tasks waited on a run queue between becoming runnable and running.";

    // --- Per container: cgroup statistics ----------------------------------
    CONTAINER_CPU_USAGE = "apptheus_container_cpu_usage_seconds_total", Counter, ID,
        "CPU time consumed by the container's tasks.";
    CONTAINER_CPU_USER = "apptheus_container_cpu_user_seconds_total", Counter, ID,
        "CPU time in user mode.";
    CONTAINER_CPU_SYSTEM = "apptheus_container_cpu_system_seconds_total", Counter, ID,
        "CPU time in kernel mode.";
    CONTAINER_CPU_CFS_THROTTLED = "apptheus_container_cpu_cfs_throttled_seconds_total", Counter, ID,
        "Time the container was throttled by a CFS bandwidth limit.";
    CONTAINER_MEMORY_USAGE = "apptheus_container_memory_usage_bytes", Gauge, ID,
        "Memory charged to the container, page cache included; where read from its processes (from_processes has memory), their proportional set size.";
    CONTAINER_MEMORY_WORKING_SET = "apptheus_container_memory_working_set_bytes", Gauge, ID,
        "Memory usage less inactive file pages (what the OOM killer weighs; cAdvisor's definition); from its processes, their proportional set size.";
    CONTAINER_MEMORY_RSS = "apptheus_container_memory_rss_bytes", Gauge, ID,
        "Anonymous memory (RSS).";
    CONTAINER_MEMORY_CACHE = "apptheus_container_memory_cache_bytes", Gauge, ID,
        "Page cache charged to the container.";
    CONTAINER_MEMORY_SWAP = "apptheus_container_memory_swap_bytes", Gauge, ID,
        "Swap used by the container.";
    CONTAINER_MEMORY_MAX_USAGE = "apptheus_container_memory_max_usage_bytes", Gauge, ID,
        "Highest memory usage recorded.";
    CONTAINER_MEMORY_LIMIT = "apptheus_container_memory_limit_bytes", Gauge, ID,
        "Memory limit in force for the container, from its own or an enclosing cgroup; absent when unlimited.";
    CONTAINER_MEMORY_OOM_EVENTS = "apptheus_container_memory_oom_events_total", Counter, ID,
        "Times the container hit its memory limit and the OOM path ran.";
    /// One family, two sources: the kernel program's count when the `oom`
    /// collector runs (it survives the cgroup), else the memory cgroup's.
    CONTAINER_MEMORY_OOM_KILLS = "apptheus_container_memory_oom_kills_total", Counter, ID,
        "Tasks of the container killed by the OOM killer: counted by the kernel as it chooses them (oom collector), else the memory cgroup's count.";
    CONTAINER_MAJOR_PAGE_FAULTS = "apptheus_container_major_page_faults_total", Counter, ID,
        "Page faults of the container that needed I/O (memory.stat pgmajfault).";
    CONTAINER_MEMORY_UNDER_OOM = "apptheus_container_memory_under_oom", Gauge, ID,
        "1 while the container's tasks are held in the OOM handler (cgroup v1, oom_kill_disable set).";
    CONTAINER_PIDS = "apptheus_container_pids", Gauge, ID,
        "Tasks (processes and threads) in the container's cgroup (pids.current), or of its processes.";
    CONTAINER_PIDS_LIMIT = "apptheus_container_pids_limit", Gauge, ID,
        "Limit on pids.current; absent when unlimited.";
    CONTAINER_THREADS = "apptheus_container_threads", Gauge, ID,
        "Threads in the container's cgroup, or of its processes.";
    CONTAINER_BLKIO_READ_BYTES = "apptheus_container_blkio_read_bytes_total", Counter, ID_DEVICE,
        "Bytes read from block devices (an empty device: the container's processes' storage reads, all devices together).";
    CONTAINER_BLKIO_WRITE_BYTES = "apptheus_container_blkio_write_bytes_total", Counter, ID_DEVICE,
        "Bytes written to block devices (an empty device: what the container's processes dirtied for storage, all devices together).";
    CONTAINER_BLKIO_READ_OPERATIONS = "apptheus_container_blkio_read_operations_total", Counter, ID_DEVICE,
        "Read operations on block devices.";
    CONTAINER_BLKIO_WRITE_OPERATIONS = "apptheus_container_blkio_write_operations_total", Counter, ID_DEVICE,
        "Write operations on block devices.";
    CONTAINER_PRESSURE_CPU_WAITING = "apptheus_container_pressure_cpu_waiting_seconds_total", Counter, ID,
        "Time some tasks of the container waited for CPU (PSI some).";
    CONTAINER_PRESSURE_MEMORY_WAITING = "apptheus_container_pressure_memory_waiting_seconds_total", Counter, ID,
        "Time some tasks of the container waited for memory (PSI some).";
    CONTAINER_PRESSURE_MEMORY_STALLED = "apptheus_container_pressure_memory_stalled_seconds_total", Counter, ID,
        "Time all tasks of the container stalled on memory (PSI full).";
    CONTAINER_PRESSURE_IO_WAITING = "apptheus_container_pressure_io_waiting_seconds_total", Counter, ID,
        "Time some tasks of the container waited for I/O (PSI some).";
    CONTAINER_PRESSURE_IO_STALLED = "apptheus_container_pressure_io_stalled_seconds_total", Counter, ID,
        "Time all tasks of the container stalled on I/O (PSI full).";

    // --- The agent ---------------------------------------------------------
    BUILD_INFO = "apptheus_build_info", Gauge,
        &["version", "revision", "branch", "rustversion", "target"],
        "A metric with a constant '1' value labeled by version, revision, branch, rustversion and target from which apptheus was built.";
    CONTAINERS = "apptheus_containers", Gauge, &[],
        "Containers currently exported (running, or ended and within the grace period).";
    CONTAINERS_STARTED = "apptheus_containers_started_total", Counter, &[],
        "Containers seen starting since the agent started (not those adopted from an earlier run, nor starter runs that never ran anything).";
    EBPF_EVENTS_LOST = "apptheus_ebpf_events_lost_total", Counter, &[],
        "Kernel events that did not fit in the ring buffer (recovered by reconciling with the kernel's maps).";
    EBPF_MAP_FULL = "apptheus_ebpf_map_full_total", Counter, &["map"],
        "Things lost because a kernel map was full, by map: tasks (a container's task not followed; raise --ebpf.max-tasks), containers (a starter run not attributed; raise --ebpf.max-containers), runq (a container's run-queue waits not observed; raise --collector.runqlat.max-containers).";
    EBPF_PROGRAM_ERRORS = "apptheus_ebpf_program_errors_total", Counter, &["program"],
        "Runs of a kernel program that stopped on a kernel read that failed, losing what they handled (an exec not identified, a task not followed, an exited task's usage not banked, a move or an OOM kill not seen, file bytes not counted).";
    SOCKET_CONNECTIONS = "apptheus_socket_connections_total", Counter, &["result"],
        "Connections to the monitoring socket, by result.";
    SAMPLE_DURATION = "apptheus_sample_duration_seconds", Gauge, &[],
        "How long the latest sample of every container's statistics took.";
    SAMPLES = "apptheus_samples_total", Counter, &["trigger"],
        "Samples of every container's statistics, by what asked for them: scrape (a scrape found none recent enough and waited), ahead (taken just before a read a schedule predicted), push, interval (--monitor.on-demand=false).";
    READS = "apptheus_reads_total", Counter, &["reader", "answer"],
        "Reads of the metrics, by reader: scheduled (a read a learned scrape schedule predicted), unscheduled (any other scrape), push; and by answer: at_once (a recent enough sample was there), waited (the read waited for a sample).";
    SCRAPE_SCHEDULES = "apptheus_scrape_schedules", Gauge, &[],
        "Scrapers' schedules followed: a sample is taken just ahead of each read they predict.";
    SOURCE_SUCCESS = "apptheus_source_success", Gauge, &["source"],
        "Whether a statistics source read everything it found in the latest sample (1) or met a broken or unreadable file (0); a source with nothing to read on this host counts as a success.";
    SOURCE_DURATION = "apptheus_source_duration_seconds", Gauge, &["source"],
        "Time a statistics source took in the latest sample, all containers together.";
    CGROUP_OPEN_FILES = "apptheus_cgroup_open_files", Gauge, &[],
        "cgroup files kept open between samples, each re-read in place (--cgroup.open-files caps them).";
    ATTRIBUTION_MODE = "apptheus_attribution_mode", Gauge, &["mode"],
        "How containers are found: 1 for the mode in use (ebpf: kernel programs; socket: Apptainer's monitoring socket alone).";
    CONTAINER_PLACEMENT = "apptheus_container_placement_seconds", Histogram, &[],
        "Time from a starter's exec to every task of its container being inside the container's cgroups.";
    STARTER_RUNS_UNSTARTED = "apptheus_starter_runs_unstarted_total", Counter, &[],
        "Runs of a trusted starter that ended before running anything of their own (a start that failed at once, or a forged one): not containers, not exported.";
    STARTER_RUNS_REFUSED = "apptheus_starter_runs_refused_total", Counter, &["reason"],
        "Runs of a trusted starter not followed because their user was over a cap, by reason: rate (--limit.user-starts-per-second, --limit.user-start-burst), live (--limit.user-containers).";
    HELPER_RUNS = "apptheus_helper_runs_total", Counter, &[],
        "Runs of a starter that Apptainer's command-line tool made for itself (unpacking an image into a temporary sandbox, a clean-up); not containers.";
    INSTANCE_JOINS = "apptheus_instance_joins_total", Counter, &[],
        "Runs that joined an instance (exec, run or shell instance://<name>), counted in the instance's container.";
    TRUSTED_FILES = "apptheus_trusted_files", Gauge, &["role"],
        "Files trusted by identity, by role: starter (its exec starts a container) and launcher (Apptainer's command-line tool). 0 starters: nothing is attributed.";
    CGROUP_PREWARM_WINDOWS = "apptheus_cgroup_prewarm_windows_total", Counter, &[],
        "Warm-up windows opened by the exec of an Apptainer launcher (--cgroup.prewarm).";
    CGROUP_PREWARM_WRITES = "apptheus_cgroup_prewarm_writes_total", Counter, &[],
        "Times the cgroup migration lock was taken inside warm-up windows (--cgroup.prewarm).";
    PUSHES = "apptheus_pushes_total", Counter, &["target"],
        "Successful pushes of the metrics, by target (pushgateway, remote_write).";
    PUSH_FAILURES = "apptheus_push_failures_total", Counter, &["target"],
        "Failed push attempts (each retry counts), by target (pushgateway, remote_write).";
    HTTP_CONNECTIONS_REJECTED = "apptheus_http_connections_rejected_total", Counter, &["reason"],
        "HTTP connections refused at once, by reason (per_address_limit: the client address holds its share; total_limit: every slot is taken by addresses holding no more).";
    HTTP_CONNECTIONS_CLOSED = "apptheus_http_connections_closed_total", Counter, &["reason"],
        "HTTP connections cut by the agent, by reason (evicted, idle_timeout, header_timeout, tls_handshake_timeout, tls_handshake_failed, write_timeout, lifetime_limit).";
    HTTP_REQUESTS_REJECTED = "apptheus_http_requests_rejected_total", Counter, &["reason"],
        "HTTP requests answered 429, by reason (per_address_responses: the client address already has answers under way).";
    HTTP_CONNECTIONS = "apptheus_http_connections", Gauge, &[],
        "HTTP connections open now, every listener together.";
    EBPF_PROGRAM_RUN_SECONDS = "apptheus_ebpf_program_run_seconds_total", Counter, &["program"],
        "Time the kernel spent running the program, from its BPF run-time statistics.";
    EBPF_PROGRAM_RUNS = "apptheus_ebpf_program_runs_total", Counter, &["program"],
        "Times the kernel ran the program.";

    // --- The agent's process (the prometheus crate's process collector;
    // its definitions, recorded here so that docs and dashboards can be
    // checked against one list) ---------------------------------------------
    #[cfg(feature = "testing")]
    PROCESS_CPU_SECONDS = "process_cpu_seconds_total", Counter, &[],
        "Total user and system CPU time spent in seconds.";
    #[cfg(feature = "testing")]
    PROCESS_OPEN_FDS = "process_open_fds", Gauge, &[],
        "Number of open file descriptors.";
    #[cfg(feature = "testing")]
    PROCESS_MAX_FDS = "process_max_fds", Gauge, &[],
        "Maximum number of open file descriptors.";
    #[cfg(feature = "testing")]
    PROCESS_VIRTUAL_MEMORY = "process_virtual_memory_bytes", Gauge, &[],
        "Virtual memory size in bytes.";
    #[cfg(feature = "testing")]
    PROCESS_RESIDENT_MEMORY = "process_resident_memory_bytes", Gauge, &[],
        "Resident memory size in bytes.";
    #[cfg(feature = "testing")]
    PROCESS_START_TIME = "process_start_time_seconds", Gauge, &[],
        "Start time of the process since unix epoch in seconds.";
    #[cfg(feature = "testing")]
    PROCESS_THREADS = "process_threads", Gauge, &[],
        "Number of OS threads in the process.";
}

#[cfg(feature = "testing")]
/// The metric named `name`, if apptheus exports one.
pub fn find(name: &str) -> Option<&'static Metric> {
    ALL.iter().copied().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_conventions() {
        let mut seen = BTreeSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} defined twice", m.name);
            assert!(
                m.name.starts_with("apptheus_") || m.name.starts_with("process_"),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help.is_empty() && m.help.ends_with('.'), "{}", m.name);
            assert!(
                !m.name.contains("percent"),
                "{}: ratios, not percentages",
                m.name
            );
            if m.name.starts_with("apptheus_container_")
                && m.name != "apptheus_container_placement_seconds"
            {
                assert_eq!(m.labels.first(), Some(&"container_id"), "{}", m.name);
            }
        }
        assert_eq!(find("apptheus_containers"), Some(&CONTAINERS));
        assert_eq!(find("apptheus_nothing"), None);
        assert_eq!(
            CONTAINER_CPU_USAGE.family(),
            "apptheus_container_cpu_usage_seconds"
        );
        assert_eq!(CONTAINERS.family(), "apptheus_containers");
    }
}
