//! Which series a snapshot gives, family by family. Pure: a snapshot in,
//! each family's samples handed to a [`Visitor`] (the text and OpenMetrics
//! writers, the protobuf builder for pushing). Every family's name, type
//! and HELP come from the catalogue; a family with no sample is not
//! visited at all, and a statistic the host could not provide is left out,
//! never reported as 0.
use apptheus_common::RUNQ_BUCKETS;

use crate::export::{
    catalogue::{self as cat, Metric},
    snapshot::{Row, Snapshot},
};

mod cgroup;
mod kernel;

/// A histogram's samples: (upper bound, cumulative count) per finite
/// bucket (+Inf is `count`), the count and the sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Histogram {
    pub buckets: [(f64, u64); RUNQ_BUCKETS],
    pub count: u64,
    pub sum: f64,
}

/// One sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Number(f64),
    Histogram(&'a Histogram),
}

/// Receives the families of a snapshot: `family` once, then every sample
/// of it, family after family.
pub(crate) trait Visitor {
    fn family(&mut self, m: &'static Metric);
    fn sample(&mut self, m: &'static Metric, labels: &[(&str, &str)], value: Value<'_>);
}

/// A per-container family whose value, when there is one, is a number.
pub(crate) struct Scalar {
    pub metric: &'static Metric,
    pub get: fn(&Row) -> Option<f64>,
}

/// Calls `family` before the first sample only.
struct Lazy<'v, V: Visitor> {
    v: &'v mut V,
    started: bool,
}

impl<V: Visitor> Lazy<'_, V> {
    fn sample(&mut self, m: &'static Metric, labels: &[(&str, &str)], value: Value<'_>) {
        if !self.started {
            self.v.family(m);
            self.started = true;
        }
        self.v.sample(m, labels, value);
    }
}

/// Visits every family of `snap`.
pub(crate) fn visit(snap: &Snapshot, v: &mut impl Visitor) {
    info(snap, v);
    let scalars = kernel::SCALARS.iter().chain(cgroup::SCALARS);
    for s in scalars {
        let mut out = Lazy { v, started: false };
        for r in &snap.rows {
            if let Some(x) = (s.get)(r) {
                out.sample(s.metric, &[("container_id", &r.id)], Value::Number(x));
            }
        }
    }
    cgroup::blkio(snap, v);
    kernel::runq(snap, v);
    programs(snap, v);
}

fn info(snap: &Snapshot, v: &mut impl Visitor) {
    let mut out = Lazy { v, started: false };
    for r in &snap.rows {
        let mut buf = itoa::Buffer::new();
        let uid = buf.format(r.info.uid);
        let i = &r.info;
        let from_processes = r.info.from_processes.names();
        out.sample(
            &cat::CONTAINER_INFO,
            &[
                ("container_id", &r.id),
                ("starter", &i.starter),
                ("image", &i.image),
                ("instance", &i.instance),
                ("user", &i.user),
                ("uid", uid),
                ("slurm_job_id", &i.slurm_job_id),
                ("from_processes", &from_processes),
            ],
            Value::Number(1.0),
        );
    }
    let mut out = Lazy {
        v: out.v,
        started: false,
    };
    for r in &snap.rows {
        out.sample(
            &cat::CONTAINER_START_TIME,
            &[("container_id", &r.id)],
            Value::Number(r.start_time),
        );
    }
}

type ProgramValue = fn(&crate::model::programs::ProgramStats) -> f64;

/// The kernel's statistics of our programs (`--ebpf.stats`).
fn programs(snap: &Snapshot, v: &mut impl Visitor) {
    let families: [(&'static Metric, ProgramValue); 2] = [
        (&cat::EBPF_PROGRAM_RUN_SECONDS, |p| p.run_time.as_secs_f64()),
        (&cat::EBPF_PROGRAM_RUNS, |p| p.runs as f64),
    ];
    for (m, get) in families {
        let mut out = Lazy { v, started: false };
        for p in &snap.programs {
            out.sample(m, &[("program", &p.program)], Value::Number(get(p)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        export::snapshot::Row,
        model::{
            container::{Container, KernelCounters, Sample},
            registry::Registry,
        },
    };

    /// Family names and samples, as a visitor sees them.
    #[derive(Default)]
    struct Seen {
        families: Vec<&'static str>,
        samples: Vec<(String, f64)>,
        labels: Vec<Vec<(String, String)>>,
    }

    impl Visitor for Seen {
        fn family(&mut self, m: &'static Metric) {
            self.families.push(m.name);
        }
        fn sample(&mut self, m: &'static Metric, labels: &[(&str, &str)], value: Value<'_>) {
            assert_eq!(
                self.families.last(),
                Some(&m.name),
                "a sample outside its family"
            );
            let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
            assert_eq!(names, m.labels, "{}", m.name);
            self.labels.push(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            if let Value::Number(x) = value {
                self.samples.push((m.name.to_string(), x));
            }
        }
    }

    #[test]
    fn kernel_counters_without_cgroup_statistics() {
        let mut r = Registry::default();
        let mut c = Container::new(7, 10, SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        c.sample = Some(std::sync::Arc::new(Sample {
            kernel: Some(KernelCounters {
                execs: 3,
                forks: 2,
                ..Default::default()
            }),
            ..Default::default()
        }));
        r.insert(c);
        let snap = Snapshot {
            rows: r.iter().map(Row::of).collect(),
            programs: Vec::new(),
        };
        let mut seen = Seen::default();
        visit(&snap, &mut seen);
        assert!(
            seen.samples
                .contains(&("apptheus_container_execs_total".into(), 3.0))
        );
        assert!(
            seen.samples
                .contains(&("apptheus_container_start_time_seconds".into(), 100.0))
        );
        assert!(seen.families.contains(&"apptheus_container_info"));
        // No cgroup sample: no cgroup family at all, never zeros; no
        // collector on: none of theirs.
        for absent in [
            "apptheus_container_cpu_usage_seconds_total",
            "apptheus_container_memory_oom_kills_total",
            "apptheus_container_network_receive_bytes_total",
            "apptheus_ebpf_program_runs_total",
        ] {
            assert!(!seen.families.contains(&absent), "{absent}");
        }
        // Every family once.
        let mut f = seen.families.clone();
        f.sort();
        f.dedup();
        assert_eq!(f.len(), seen.families.len());
    }

    /// Which families come from a container's processes is decided when
    /// it is placed: its info series says so from then, before its first
    /// sample (a reader between the two saw an empty label).
    #[test]
    fn the_info_series_says_what_comes_from_processes_before_any_sample() {
        use crate::model::processes::{FromProcesses, ProcessStats};
        let mut c = Container::new(1, 10, SystemTime::UNIX_EPOCH);
        c.processes = Some(ProcessStats::new(FromProcesses::ALL, "shared"));
        let row = crate::export::snapshot::Row::of(&c);
        assert!(row.sample.is_none());
        let snap = Snapshot {
            rows: vec![row],
            programs: Vec::new(),
        };
        let mut seen = Seen::default();
        visit(&snap, &mut seen);
        assert!(
            seen.labels
                .iter()
                .any(|l| l.contains(&("from_processes".into(), "cpu,memory,pids,io".into()))),
            "{:?}",
            seen.labels
        );
    }

    /// A container read from its processes has its values in the same
    /// families as one read from its cgroups, and says so in its info.
    #[test]
    fn statistics_from_processes_are_in_the_usual_families() {
        use crate::model::{
            processes::{ExitedTotals, FromProcesses, ProcReading, ProcessStats},
            stats::{CgroupStats, MemoryStats},
        };
        let mut by_cgroup = Container::new(1, 10, SystemTime::UNIX_EPOCH);
        let mut part = crate::model::container::Part::new(
            crate::model::container::Origin::Placed { member: 1 },
            Default::default(),
        );
        part.last = Some(CgroupStats {
            memory: Some(MemoryStats {
                usage_bytes: 1000,
                ..MemoryStats::default()
            }),
            ..CgroupStats::default()
        });
        by_cgroup.parts.push(part);
        by_cgroup.refresh_sample();
        let mut by_processes = Container::new(2, 20, SystemTime::UNIX_EPOCH);
        let mut p = ProcessStats::new(FromProcesses::ALL, "shared");
        p.update(
            &ProcReading {
                processes: 2,
                threads: 5,
                pss_bytes: Some(4096),
                rss_bytes: 2048,
                runtime_ns: 500_000_000,
                read_bytes: 10,
                write_bytes: 20,
                ..ProcReading::default()
            },
            Some(&ExitedTotals {
                runtime_ns: 1_000_000_000,
                io: Some((0, 0)),
                ..ExitedTotals::default()
            }),
            std::time::Instant::now(),
        );
        by_processes.processes = Some(p);
        by_processes.refresh_sample();
        let mut r = Registry::default();
        r.insert(by_cgroup);
        r.insert(by_processes);
        let snap = Snapshot {
            rows: r.iter().map(Row::of).collect(),
            programs: Vec::new(),
        };
        let mut seen = Seen::default();
        visit(&snap, &mut seen);
        let of = |name: &str| -> Vec<f64> {
            seen.samples
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(
            of("apptheus_container_memory_usage_bytes"),
            [1000.0, 4096.0]
        );
        assert_eq!(of("apptheus_container_memory_rss_bytes"), [2048.0]);
        assert_eq!(of("apptheus_container_pids"), [5.0]);
        assert_eq!(of("apptheus_container_threads"), [5.0]);
        assert_eq!(of("apptheus_container_cpu_usage_seconds_total"), [1.5]);
        assert_eq!(of("apptheus_container_blkio_read_bytes_total"), [10.0]);
        assert_eq!(of("apptheus_container_blkio_write_bytes_total"), [20.0]);
        // No operation counts, no split of CPU time, no families of their own.
        for absent in [
            "apptheus_container_blkio_read_operations_total",
            "apptheus_container_cpu_user_seconds_total",
        ] {
            assert!(!seen.families.contains(&absent), "{absent}");
        }
        assert!(
            !seen
                .families
                .iter()
                .any(|f| f.starts_with("apptheus_container_proc_"))
        );
        let infos: Vec<String> = snap
            .rows
            .iter()
            .map(|r| r.info.from_processes.names())
            .collect();
        assert_eq!(infos, ["", "cpu,memory,pids,io"]);
    }

    #[test]
    fn an_empty_snapshot_has_no_family() {
        let mut seen = Seen::default();
        visit(&Snapshot::default(), &mut seen);
        assert!(seen.families.is_empty());
    }
}
