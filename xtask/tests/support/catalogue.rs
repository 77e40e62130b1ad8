//! What the agent exports, as Prometheus stores it: every series name with
//! its label names. Produced by the agent's own code (the same functions
//! that build its /metrics), not written down by hand: the agent's metrics
//! registry, and the per-container families of a container whose sample
//! has every statistic (cgroup statistics read from the checked-in fixture
//! trees by the real reader, every kernel collector on).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use apptheus::testing::{
    cgroup::ContainerCgroups,
    export::{
        self as families, AgentMetrics, Container, ExitedTotals, FsCounters, KernelCounters,
        Metadata, NetCounters, Origin, Part, ProcReading, ProcSource, ProgramStats, Registry,
    },
};
use prometheus::proto::{MetricFamily, MetricType};

/// Labels Prometheus attaches to every scraped series (and the agent's
/// pushes set): an exported label of the same name is kept as
/// `exported_<name>` (honor_labels: false, the default; the agent's push
/// renames them the same way).
pub const TARGET_LABELS: [&str; 2] = ["job", "instance"];

#[derive(Debug, Default)]
pub struct Catalogue {
    /// Series name -> label names as stored in Prometheus.
    pub series: BTreeMap<String, BTreeSet<String>>,
    /// Family name -> type, as exported.
    pub families: BTreeMap<String, MetricType>,
}

impl Catalogue {
    pub fn labels(&self, series: &str) -> Option<&BTreeSet<String>> {
        self.series.get(series)
    }

    fn add_series(&mut self, name: String, exported: &[String]) {
        let mut stored: BTreeSet<String> = exported
            .iter()
            .map(|l| {
                if TARGET_LABELS.contains(&l.as_str()) {
                    format!("exported_{l}")
                } else {
                    l.clone()
                }
            })
            .collect();
        stored.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        self.series.entry(name).or_default().extend(stored);
    }

    fn add_family(&mut self, f: &MetricFamily) {
        let name = f.name().to_string();
        let mut labels: BTreeSet<String> = BTreeSet::new();
        for m in &f.metric {
            labels.extend(m.label.iter().map(|l| l.name().to_string()));
        }
        let labels: Vec<String> = labels.into_iter().collect();
        let kind = f.type_();
        self.families.insert(name.clone(), kind);
        match kind {
            MetricType::HISTOGRAM | MetricType::SUMMARY => {
                let mut bucket = labels.clone();
                bucket.push(
                    if kind == MetricType::HISTOGRAM {
                        "le"
                    } else {
                        "quantile"
                    }
                    .into(),
                );
                let first = if kind == MetricType::HISTOGRAM {
                    format!("{name}_bucket")
                } else {
                    name.clone()
                };
                self.add_series(first, &bucket);
                self.add_series(format!("{name}_sum"), &labels);
                self.add_series(format!("{name}_count"), &labels);
            }
            _ => self.add_series(name, &labels),
        }
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../apptheus/tests/fixtures/cgroup")
        .join(rel)
}

/// A container with every statistic, its cgroups read from a fixture tree.
fn container(key: u64, cgroups: ContainerCgroups) -> Container {
    let mut c = Container::new(key, 100, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    c.starter_path = PathBuf::from("/usr/libexec/apptainer/bin/starter");
    c.uid = 1000;
    c.user = "alice".into();
    c.meta = Metadata {
        image: Some("/images/a.sif".into()),
        instance: Some("web".into()),
        slurm_job_id: Some("42".into()),
    };
    let mut part = Part::new(Origin::Placed { member: key }, cgroups.clone());
    part.last = Some(apptheus::testing::cgroup::read(&cgroups).0);
    c.parts.push(part);
    c.members[0].counters = Some(KernelCounters {
        oom_kills: Some(0),
        network: Some(NetCounters::default()),
        fs: Some(FsCounters::default()),
        runq: Some(Default::default()),
        ..Default::default()
    });
    c.refresh_sample();
    c
}

pub fn exported() -> Catalogue {
    let mut registry = Registry::default();
    // Pure cgroup v2, and hybrid (v1 controllers + cgroup2 for cpu.stat and
    // pressure): between them every cgroup statistic the agent reads.
    registry.insert(container(
        1,
        ContainerCgroups {
            v2: Some(fixture("v2/slurm/job_4242/apptheus-ctr")),
            v1: Default::default(),
        },
    ));
    registry.insert(container(
        2,
        ContainerCgroups {
            v2: Some(fixture("hybrid/unified/apptheus/ctr")),
            v1: [
                ("memory", "hybrid/memory/slurm/uid_1000/job_42/apptheus-ctr"),
                ("pids", "hybrid/pids/slurm/uid_1000/job_42/apptheus-ctr"),
                ("cpu", "hybrid/cpu/apptheus-ctr"),
                ("cpuacct", "hybrid/cpuacct/apptheus-ctr"),
                ("blkio", "hybrid/blkio/apptheus-ctr"),
            ]
            .into_iter()
            .map(|(c, p)| (c.to_string(), fixture(p)))
            .collect(),
        },
    ));
    // A container whose cgroups cannot give its memory (its starter's
    // cgroup shared with a batch script's shell): read from its processes.
    let mut shared = container(3, ContainerCgroups::default());
    let mut processes = ProcSource::new("shared with a shell");
    processes.update(
        &ProcReading {
            pss_bytes: Some(1),
            ..ProcReading::default()
        },
        Some(&ExitedTotals {
            runtime_ns: 1,
            io: Some((1, 1)),
        }),
        std::time::Instant::now(),
    );
    shared.processes = Some(processes);
    shared.refresh_sample();
    registry.insert(shared);

    let agent = AgentMetrics::new();
    // Families of labelled metrics appear once a child exists.
    agent.set_mode("ebpf");
    agent.trusted_files.with_label_values(&["starter"]);
    for target in ["pushgateway", "remote_write"] {
        agent.pushes.with_label_values(&[target]);
        agent.push_failures.with_label_values(&[target]);
    }
    agent.publish(families::build(&registry));

    let mut c = Catalogue::default();
    for f in agent.gather() {
        c.add_family(&f);
    }
    // --ebpf.stats
    for f in families::program_stats(&[ProgramStats {
        program: "apptheus_exec".into(),
        run_time: Duration::ZERO,
        runs: 0,
    }]) {
        c.add_family(&f);
    }
    // Prometheus' own series for every scrape target.
    c.add_series("up".into(), &[]);
    c
}
