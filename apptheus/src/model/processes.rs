//! A container's statistics read from its own processes (/proc), for the
//! families its own cgroups cannot give: where its starter shares its
//! cgroup with other processes (a batch script's shell in a Slurm job's
//! task cgroup, a login session's scope) and apptheus may not (a Slurm
//! job) or cannot (cgroup v2's rule against internal processes) give the
//! container a cgroup of its own with that controller. Which families come
//! from the processes is decided once, when the container's cgroups are
//! set up, and holds for its life ([`FromProcesses`]); they are exported in
//! the same families as the cgroups' statistics ([`ProcSource::overlay`]),
//! so a container has one series per quantity whatever it ran beside.
//! Counters start at zero when the container starts: what the starter's
//! process used before it became the starter (a batch script that `exec`s
//! Apptainer) is subtracted.

use std::time::{Duration, Instant};

use crate::model::stats::{BlkioDevice, CgroupStats, CpuStats, MemoryStats, PidsStats};

/// Reading the proportional set size takes the kernel a walk over every
/// page a process maps (about 10 ms per 200 MiB measured on this project's
/// machines), so it is re-read only as often as this share of one CPU
/// allows: after a read that took `t`, not before `t / PSS_CPU_SHARE` has
/// passed (every sample for small containers; every 100 s for one whose
/// read takes 1 s).
pub const PSS_CPU_SHARE: f64 = 0.01;

/// One read of the container's live processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcReading {
    pub processes: u64,
    pub threads: u64,
    /// Sum of the processes' proportional set sizes (a page mapped by n
    /// processes counts 1/n in each): shared pages counted once overall.
    /// None when not read this time.
    pub pss_bytes: Option<u64>,
    /// How long reading the proportional set sizes took.
    pub pss_cost: Duration,
    /// Sum of the processes' anonymous resident memory (statm's resident
    /// minus shared pages: what a cgroup calls its rss; anonymous pages
    /// shared after a fork count in every process).
    pub rss_bytes: u64,
    /// The live threads' own CPU time, in nanoseconds (what their
    /// `schedstat` reports: the scheduler's runtime).
    pub runtime_ns: u64,
    /// The live threads' own storage I/O (`io`: `read_bytes`,
    /// `write_bytes`, what they made the block layer read and dirtied for
    /// writing).
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// What the container's exited tasks used, banked by the kernel programs
/// at each task's exit (the same per-thread quantities as
/// [`ProcReading`]'s counters), and what its starter's task had used
/// before its exec made it the starter. Exact whoever reaps the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitedTotals {
    pub runtime_ns: u64,
    /// None when the kernel has no task I/O accounting.
    pub io: Option<(u64, u64)>,
    /// Not the container's: counted in its starter's task, live or exited.
    pub before_start: Baseline,
}

/// What a task had used when it became a container's starter (CPU time in
/// nanoseconds, storage bytes read and written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Baseline {
    pub runtime_ns: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl ExitedTotals {
    pub fn plus(self, o: &ExitedTotals) -> ExitedTotals {
        ExitedTotals {
            runtime_ns: self.runtime_ns + o.runtime_ns,
            io: match (self.io, o.io) {
                (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
                (a, b) => a.or(b),
            },
            before_start: Baseline {
                runtime_ns: self.before_start.runtime_ns + o.before_start.runtime_ns,
                read_bytes: self.before_start.read_bytes + o.before_start.read_bytes,
                write_bytes: self.before_start.write_bytes + o.before_start.write_bytes,
            },
        }
    }
}

/// The statistics families a container's processes give instead of its
/// cgroups (those its own cgroups lack), decided once for its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FromProcesses {
    /// CPU time (`apptheus_container_cpu_usage_seconds_total`; no user,
    /// system or throttling split).
    pub cpu: bool,
    /// Memory in use: usage and working set are the proportional set size,
    /// rss the anonymous resident memory; the limit stays the cgroup's.
    pub memory: bool,
    /// Tasks (`apptheus_container_pids`, `..._threads`); the limit stays
    /// the cgroup's.
    pub pids: bool,
    /// Storage I/O bytes (`apptheus_container_blkio_*_bytes_total`, all
    /// devices together, without a `device` label and without operation
    /// counts).
    pub io: bool,
}

impl FromProcesses {
    #[cfg(feature = "testing")]
    pub const ALL: FromProcesses = FromProcesses {
        cpu: true,
        memory: true,
        pids: true,
        io: true,
    };

    pub fn any(&self) -> bool {
        self.cpu || self.memory || self.pids || self.io
    }

    /// The families, comma-separated (the info metric's `from_processes`).
    pub fn names(&self) -> String {
        [
            (self.cpu, "cpu"),
            (self.memory, "memory"),
            (self.pids, "pids"),
            (self.io, "io"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// The container's statistics from its processes, as exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcStats {
    pub processes: u64,
    pub threads: u64,
    /// As last read (see [`PSS_CPU_SHARE`]); None until first read.
    pub pss_bytes: Option<u64>,
    pub rss_bytes: u64,
    /// Counters: what the live threads used plus what the exited ones did;
    /// None without the kernel programs, which alone know the latter.
    pub cpu_seconds: Option<f64>,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
}

/// Without the kernel programs, the container's processes seen so far, by
/// process id with their start time (a process id the kernel gave again to
/// another process is not the container's): a process re-parented away
/// from its starter's tree (a background job whose shell exited) stays the
/// container's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownProcesses(pub std::collections::BTreeMap<u32, u64>);

/// A container some of whose statistics are read from its processes:
/// which, why, and the latest statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcSource {
    pub families: FromProcesses,
    /// Why its cgroups cannot give them (logged once, at info level).
    pub why: String,
    pub stats: Option<ProcStats>,
    /// When the proportional set sizes are to be read again.
    pss_due: Option<Instant>,
}

impl ProcSource {
    pub fn new(families: FromProcesses, why: impl Into<String>) -> Self {
        ProcSource {
            families,
            why: why.into(),
            stats: None,
            pss_due: None,
        }
    }

    /// Whether the proportional set sizes are to be read at `now`.
    pub fn pss_due(&self, now: Instant) -> bool {
        self.pss_due.is_none_or(|due| now >= due)
    }

    /// Takes a new reading of the live processes (all gone: the default
    /// reading) with the kernel's totals of the exited tasks, read before
    /// it. A counter never goes back: a thread that exits between the read
    /// of the kernel's totals and that of /proc is counted in neither for
    /// one sample, and the previous value then stands. (Read the other way
    /// round, it would be counted in both, and the floor would keep that.)
    pub fn update(&mut self, live: &ProcReading, exited: Option<&ExitedTotals>, now: Instant) {
        let prev = self.stats.take().unwrap_or_default();
        if live.pss_bytes.is_some() {
            self.pss_due = Some(now + live.pss_cost.div_f64(PSS_CPU_SHARE));
        }
        // Read now; else as last read, while any process is left.
        let pss_bytes = match live.pss_bytes {
            Some(v) => Some(v),
            None if live.processes == 0 => prev.pss_bytes.map(|_| 0),
            None => prev.pss_bytes,
        };
        let keep = |old: Option<u64>, new: Option<u64>| match (old, new) {
            (Some(o), Some(n)) => Some(o.max(n)),
            (o, n) => n.or(o),
        };
        let cpu = exited.map(|e| {
            (e.runtime_ns + live.runtime_ns).saturating_sub(e.before_start.runtime_ns) as f64 / 1e9
        });
        let io = exited.and_then(|e| {
            let (r, w) = e.io?;
            let b = e.before_start;
            Some((
                (r + live.read_bytes).saturating_sub(b.read_bytes),
                (w + live.write_bytes).saturating_sub(b.write_bytes),
            ))
        });
        self.stats = Some(ProcStats {
            processes: live.processes,
            threads: live.threads,
            pss_bytes,
            rss_bytes: live.rss_bytes,
            cpu_seconds: match (prev.cpu_seconds, cpu) {
                (Some(o), Some(n)) => Some(o.max(n)),
                (o, n) => n.or(o),
            },
            read_bytes: keep(prev.read_bytes, io.map(|(r, _)| r)),
            write_bytes: keep(prev.write_bytes, io.map(|(_, w)| w)),
        });
    }

    /// Puts the families read from the processes in place of the cgroups'
    /// in `stats` (the limits stay the cgroups': they bind the container
    /// whoever else runs there). A family not read yet, or that cannot be
    /// read (counters without the kernel programs), is left out.
    pub fn overlay(&self, stats: &mut CgroupStats) {
        let f = self.families;
        let p = self.stats.as_ref();
        if f.cpu {
            stats.cpu = p.and_then(|p| p.cpu_seconds).map(|s| CpuStats {
                usage_seconds: s,
                ..CpuStats::default()
            });
        }
        if f.memory {
            let limit = stats.memory.as_ref().and_then(|m| m.limit_bytes);
            stats.memory = p.and_then(|p| {
                let pss = p.pss_bytes?;
                Some(MemoryStats {
                    usage_bytes: pss,
                    working_set_bytes: Some(pss),
                    rss_bytes: Some(p.rss_bytes),
                    limit_bytes: limit,
                    ..MemoryStats::default()
                })
            });
        }
        if f.pids {
            let limit = stats.pids.as_ref().and_then(|x| x.limit);
            stats.pids = p.map(|p| PidsStats {
                current: p.threads,
                limit,
            });
            stats.threads = p.map(|p| p.threads);
        }
        if f.io {
            stats.blkio =
                p.and_then(|p| p.read_bytes.zip(p.write_bytes))
                    .map(|(read_bytes, write_bytes)| {
                        vec![BlkioDevice {
                            device: String::new(),
                            read_bytes,
                            write_bytes,
                            read_ops: 0,
                            write_ops: 0,
                        }]
                    });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(runtime_ns: u64, read: u64, pss: u64) -> ProcReading {
        ProcReading {
            processes: 2,
            threads: 3,
            pss_bytes: Some(pss),
            pss_cost: Duration::ZERO,
            rss_bytes: pss + 10,
            runtime_ns,
            read_bytes: read,
            write_bytes: 7,
        }
    }

    /// Counters add the exited tasks' totals to the live ones'; gauges
    /// are the live processes' alone.
    #[test]
    fn counters_are_the_live_plus_the_exited() {
        let mut s = ProcSource::new(FromProcesses::ALL, "shared");
        let exited = ExitedTotals {
            runtime_ns: 1_500_000_000,
            io: Some((100, 200)),
            ..ExitedTotals::default()
        };
        s.update(
            &live(500_000_000, 50, 1 << 20),
            Some(&exited),
            Instant::now(),
        );
        let st = s.stats.clone().unwrap();
        assert!((st.cpu_seconds.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(st.read_bytes, Some(150));
        assert_eq!(st.write_bytes, Some(207));
        assert_eq!(
            (st.processes, st.threads, st.pss_bytes),
            (2, 3, Some(1 << 20))
        );

        // Everything exited: gauges drop to 0, counters are the kernel's.
        let all = ExitedTotals {
            runtime_ns: 2_500_000_000,
            io: Some((160, 210)),
            ..ExitedTotals::default()
        };
        s.update(&ProcReading::default(), Some(&all), Instant::now());
        let st = s.stats.clone().unwrap();
        assert_eq!((st.processes, st.pss_bytes, st.rss_bytes), (0, Some(0), 0));
        assert!((st.cpu_seconds.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(st.read_bytes, Some(160));
    }

    /// A thread exiting between the two reads is missed once: the counter
    /// holds its value instead of going back.
    #[test]
    fn counters_never_go_back() {
        let mut s = ProcSource::new(FromProcesses::ALL, "shared");
        let exited = ExitedTotals {
            runtime_ns: 1_000_000_000,
            io: Some((100, 0)),
            ..ExitedTotals::default()
        };
        s.update(&live(1_000_000_000, 100, 0), Some(&exited), Instant::now());
        // The live thread's 1 s and 100 bytes were in neither read.
        s.update(&live(0, 0, 0), Some(&exited), Instant::now());
        let st = s.stats.clone().unwrap();
        assert!((st.cpu_seconds.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(st.read_bytes, Some(200));
    }

    /// Without the kernel programs nothing knows what exited tasks used:
    /// no counter at all, never one that drops when a process exits.
    #[test]
    fn no_counters_without_the_kernels_totals() {
        let mut s = ProcSource::new(FromProcesses::ALL, "shared");
        s.update(&live(1_000_000_000, 100, 4096), None, Instant::now());
        let st = s.stats.clone().unwrap();
        assert_eq!(
            (st.cpu_seconds, st.read_bytes, st.write_bytes),
            (None, None, None)
        );
        assert_eq!(st.pss_bytes, Some(4096));
        // No I/O accounting in the kernel: CPU alone.
        let cpu_only = ExitedTotals {
            runtime_ns: 5,
            io: None,
            ..ExitedTotals::default()
        };
        s.update(&live(5, 100, 4096), Some(&cpu_only), Instant::now());
        let st = s.stats.clone().unwrap();
        assert!(st.cpu_seconds.is_some());
        assert_eq!(st.read_bytes, None);
    }

    /// A read of the proportional set sizes that took 10 ms is not
    /// repeated for 1 s; meanwhile the last value stands, until no
    /// process is left.
    #[test]
    fn pss_is_read_within_its_cpu_budget() {
        let t0 = Instant::now();
        let mut s = ProcSource::new(FromProcesses::ALL, "shared");
        assert!(s.pss_due(t0));
        let mut r = live(0, 0, 200 << 20);
        r.pss_cost = Duration::from_millis(10);
        s.update(&r, None, t0);
        assert!(!s.pss_due(t0 + Duration::from_millis(999)));
        assert!(s.pss_due(t0 + Duration::from_secs(1)));
        let mut later = live(0, 0, 0);
        later.pss_bytes = None;
        later.rss_bytes = 300 << 20;
        s.update(&later, None, t0 + Duration::from_millis(500));
        let st = s.stats.clone().unwrap();
        assert_eq!(st.pss_bytes, Some(200 << 20));
        assert_eq!(st.rss_bytes, 300 << 20);
        s.update(
            &ProcReading::default(),
            None,
            t0 + Duration::from_millis(600),
        );
        assert_eq!(s.stats.clone().unwrap().pss_bytes, Some(0));
    }

    #[test]
    fn exited_totals_add_up_over_members() {
        let a = ExitedTotals {
            runtime_ns: 1,
            io: Some((2, 3)),
            before_start: Baseline {
                runtime_ns: 1,
                read_bytes: 0,
                write_bytes: 2,
            },
        };
        let b = ExitedTotals {
            runtime_ns: 10,
            io: None,
            before_start: Baseline {
                runtime_ns: 4,
                ..Baseline::default()
            },
        };
        assert_eq!(
            a.plus(&b),
            ExitedTotals {
                runtime_ns: 11,
                io: Some((2, 3)),
                before_start: Baseline {
                    runtime_ns: 5,
                    read_bytes: 0,
                    write_bytes: 2,
                },
            }
        );
    }

    /// A batch script ran 2 s of CPU and wrote 1 MiB, then `exec`ed
    /// Apptainer: its process became the starter, with those totals. The
    /// container's counters start at zero.
    #[test]
    fn what_the_starters_process_used_before_the_start_is_not_the_containers() {
        let mut s = ProcSource::new(FromProcesses::ALL, "shared");
        let before = Baseline {
            runtime_ns: 2_000_000_000,
            read_bytes: 0,
            write_bytes: 1 << 20,
        };
        // The starter still runs: its live totals include the script's.
        let mut starter = live(2_100_000_000, 0, 8 << 20);
        starter.write_bytes = (1 << 20) + 4096;
        let exited = ExitedTotals {
            runtime_ns: 300_000_000,
            io: Some((0, 0)),
            before_start: before,
        };
        s.update(&starter, Some(&exited), Instant::now());
        let st = s.stats.clone().unwrap();
        assert!((st.cpu_seconds.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(st.write_bytes, Some(4096));
        // Everything exited: the starter's task banked its whole runtime.
        let all = ExitedTotals {
            runtime_ns: 2_500_000_000,
            io: Some((0, (1 << 20) + 8192)),
            before_start: before,
        };
        s.update(&ProcReading::default(), Some(&all), Instant::now());
        let st = s.stats.clone().unwrap();
        assert!((st.cpu_seconds.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(st.write_bytes, Some(8192));
    }

    /// The families read from the processes replace the cgroups' and keep
    /// their limits; the others stay the cgroups'.
    #[test]
    fn the_processes_families_replace_the_cgroups_and_keep_the_limits() {
        let mut s = ProcSource::new(
            FromProcesses {
                memory: true,
                pids: true,
                ..FromProcesses::default()
            },
            "shared",
        );
        s.update(&live(1, 0, 100 << 20), None, Instant::now());
        let mut stats = CgroupStats {
            cpu: Some(CpuStats {
                usage_seconds: 3.0,
                ..CpuStats::default()
            }),
            memory: Some(MemoryStats {
                usage_bytes: 500 << 20,
                limit_bytes: Some(1 << 30),
                oom_events: Some(2),
                ..MemoryStats::default()
            }),
            pids: Some(PidsStats {
                current: 40,
                limit: Some(100),
            }),
            ..CgroupStats::default()
        };
        s.overlay(&mut stats);
        let m = stats.memory.unwrap();
        assert_eq!(m.usage_bytes, 100 << 20);
        assert_eq!(m.working_set_bytes, Some(100 << 20));
        assert_eq!(m.rss_bytes, Some((100 << 20) + 10));
        assert_eq!(m.limit_bytes, Some(1 << 30));
        assert_eq!(
            m.oom_events, None,
            "the shared cgroup's events are not the container's"
        );
        assert_eq!(
            stats.pids,
            Some(PidsStats {
                current: 3,
                limit: Some(100)
            })
        );
        assert_eq!(stats.threads, Some(3));
        assert!((stats.cpu.unwrap().usage_seconds - 3.0).abs() < 1e-9);
        assert_eq!(FromProcesses::ALL.names(), "cpu,memory,pids,io");
        assert_eq!(FromProcesses::default().names(), "");
    }
}
