//! A container's statistics read from its own processes (/proc), for a
//! container whose cgroups cannot give them: one whose starter shares its
//! cgroup with other processes (a batch script's shell, a login session)
//! where apptheus may not, or cannot, give the container a cgroup with the
//! memory controller. They are kept apart from the cgroup statistics and
//! exported in families of their own (`apptheus_container_proc_*`), never
//! mixed into a cgroup family: they do not measure the same thing (a
//! cgroup's memory includes page cache and kernel memory charged to it; a
//! process's proportional set size is the share of its mapped pages).

use std::time::{Duration, Instant};

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
    /// Sum of the processes' resident set sizes (a shared page counts in
    /// every process that maps it).
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
/// [`ProcReading`]'s counters). Exact whoever reaps the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitedTotals {
    pub runtime_ns: u64,
    /// None when the kernel has no task I/O accounting.
    pub io: Option<(u64, u64)>,
}

impl ExitedTotals {
    pub fn plus(self, o: &ExitedTotals) -> ExitedTotals {
        ExitedTotals {
            runtime_ns: self.runtime_ns + o.runtime_ns,
            io: match (self.io, o.io) {
                (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
                (a, b) => a.or(b),
            },
        }
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

/// A container whose statistics are read from its processes: why, and the
/// latest statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcSource {
    /// Why its cgroups cannot give them (logged once, at info level).
    pub why: String,
    pub stats: Option<ProcStats>,
    /// When the proportional set sizes are to be read again.
    pss_due: Option<Instant>,
}

impl ProcSource {
    pub fn new(why: impl Into<String>) -> Self {
        ProcSource {
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
        let cpu = exited.map(|e| (e.runtime_ns + live.runtime_ns) as f64 / 1e9);
        let io = exited.and_then(|e| e.io);
        self.stats = Some(ProcStats {
            processes: live.processes,
            threads: live.threads,
            pss_bytes,
            rss_bytes: live.rss_bytes,
            cpu_seconds: match (prev.cpu_seconds, cpu) {
                (Some(o), Some(n)) => Some(o.max(n)),
                (o, n) => n.or(o),
            },
            read_bytes: keep(prev.read_bytes, io.map(|(r, _)| r + live.read_bytes)),
            write_bytes: keep(prev.write_bytes, io.map(|(_, w)| w + live.write_bytes)),
        });
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
        let mut s = ProcSource::new("shared");
        let exited = ExitedTotals {
            runtime_ns: 1_500_000_000,
            io: Some((100, 200)),
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
        let mut s = ProcSource::new("shared");
        let exited = ExitedTotals {
            runtime_ns: 1_000_000_000,
            io: Some((100, 0)),
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
        let mut s = ProcSource::new("shared");
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
        let mut s = ProcSource::new("shared");
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
        };
        let b = ExitedTotals {
            runtime_ns: 10,
            io: None,
        };
        assert_eq!(
            a.plus(&b),
            ExitedTotals {
                runtime_ns: 11,
                io: Some((2, 3))
            }
        );
    }
}
