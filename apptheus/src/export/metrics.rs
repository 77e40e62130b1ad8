//! The agent's own metrics, and the latest container sample, gathered into
//! one exposition.
use std::sync::{Arc, RwLock};

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, proto::MetricFamily,
};

use crate::{
    build_info,
    export::{
        cadence::{ReadKind, Reader, Trigger},
        catalogue::{self as cat, Metric},
        demand::Demand,
        exposition::{self, EncodeError, Encoding},
        prepared::Prepared,
        protos,
        snapshot::Snapshot,
    },
    sync,
};

/// Results of a connection to the monitoring socket, for
/// `apptheus_socket_connections_total{result}`.
pub const SOCKET_RESULTS: [&str; 3] = ["accepted", "rejected", "error"];

/// A read's answer, for `apptheus_reads_total{answer}`: served at once, or
/// after waiting for a sample.
pub const READ_ANSWERS: [&str; 2] = ["at_once", "waited"];

pub struct AgentMetrics {
    registry: Registry,
    pub containers: IntGauge,
    pub containers_started: IntCounter,
    pub ebpf_events_lost: IntCounter,
    /// What the kernel programs dropped: a map full, by map; a run that
    /// failed, by program (see `model::drops`).
    pub ebpf_map_full: IntCounterVec,
    pub ebpf_program_errors: IntCounterVec,
    pub socket_connections: IntCounterVec,
    pub sample_duration: Gauge,
    pub mode: IntGaugeVec,
    pub placement_seconds: Histogram,
    /// Starter runs Apptainer made for itself (not containers), and runs
    /// that joined an instance.
    pub helper_runs: IntCounter,
    /// Starter runs that never ran anything, and runs refused by a cap
    /// (see `model::caps`).
    pub starter_runs_unstarted: IntCounter,
    pub starter_runs_refused: IntCounterVec,
    pub joins: IntCounter,
    /// Trusted files, by role (starter, launcher).
    pub trusted_files: IntGaugeVec,
    /// Launcher execs that opened a cgroup warm-up window, and the lock
    /// takings inside windows (cgroup::prewarm).
    pub prewarm_windows: IntCounter,
    pub prewarm_writes: IntCounter,
    /// Pushes that succeeded / failed, by target (pushgateway, remote_write).
    pub pushes: IntCounterVec,
    pub push_failures: IntCounterVec,
    /// HTTP connections refused and cut, by reason, and open now (http).
    pub http_rejected: IntCounterVec,
    pub http_closed: IntCounterVec,
    pub http_requests_rejected: IntCounterVec,
    pub http_open: IntGauge,
    /// Samples taken, by trigger (see [`cat::SAMPLES`]).
    pub samples: IntCounterVec,
    /// Reads, by kind and whether they waited; scrape schedules followed.
    pub reads: IntCounterVec,
    pub scrape_schedules: IntGauge,
    /// Each statistics source's outcome and time in the latest sample.
    pub source_success: IntGaugeVec,
    pub source_duration: prometheus::GaugeVec,
    /// cgroup files kept open between samples.
    pub cgroup_open_files: IntGauge,
    /// The latest snapshot of every container, replaced whole at each
    /// sample, and its encodings as they are asked for.
    prepared: RwLock<Arc<Prepared>>,
    /// When readers read, and when to sample for them.
    pub demand: Demand,
}

fn opts(m: &Metric) -> Opts {
    Opts::new(m.name, m.help)
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only static, valid names and help strings are registered here; a
    // failure is a programming error caught by the unit tests.
    r.unwrap_or_else(|e| unreachable!("static metric definition rejected: {e}"))
}

impl AgentMetrics {
    /// The agent's metrics, its samples taken on a clock (readers never
    /// wait).
    #[cfg(feature = "testing")]
    pub fn new() -> Arc<Self> {
        Self::with_demand(Demand::new(std::time::Duration::from_secs(1), false))
    }

    /// The agent's metrics, its samples taken as `demand` says.
    pub fn with_demand(demand: Demand) -> Arc<Self> {
        let registry = Registry::new();
        let build = must(IntGaugeVec::new(
            opts(&cat::BUILD_INFO),
            cat::BUILD_INFO.labels,
        ));
        build
            .with_label_values(&[
                build_info::VERSION,
                build_info::REVISION,
                build_info::BRANCH,
                build_info::RUSTVERSION,
                build_info::TARGET,
            ])
            .set(1);
        let containers = must(IntGauge::with_opts(opts(&cat::CONTAINERS)));
        let containers_started = must(IntCounter::with_opts(opts(&cat::CONTAINERS_STARTED)));
        let ebpf_events_lost = must(IntCounter::with_opts(opts(&cat::EBPF_EVENTS_LOST)));
        let ebpf_map_full = must(IntCounterVec::new(
            opts(&cat::EBPF_MAP_FULL),
            cat::EBPF_MAP_FULL.labels,
        ));
        for m in crate::model::drops::Map::ALL {
            ebpf_map_full.with_label_values(&[m.label()]);
        }
        let ebpf_program_errors = must(IntCounterVec::new(
            opts(&cat::EBPF_PROGRAM_ERRORS),
            cat::EBPF_PROGRAM_ERRORS.labels,
        ));
        for (p, _, _) in crate::model::drops::PROGRAM_ERRORS {
            ebpf_program_errors.with_label_values(&[p]);
        }
        let socket_connections = must(IntCounterVec::new(
            opts(&cat::SOCKET_CONNECTIONS),
            cat::SOCKET_CONNECTIONS.labels,
        ));
        for r in SOCKET_RESULTS {
            socket_connections.with_label_values(&[r]);
        }
        let sample_duration = must(Gauge::with_opts(opts(&cat::SAMPLE_DURATION)));
        let samples = must(IntCounterVec::new(opts(&cat::SAMPLES), cat::SAMPLES.labels));
        for t in Trigger::ALL {
            samples.with_label_values(&[t.name()]);
        }
        let reads = must(IntCounterVec::new(opts(&cat::READS), cat::READS.labels));
        for k in ReadKind::ALL {
            for answer in READ_ANSWERS {
                reads.with_label_values(&[k.name(), answer]);
            }
        }
        let scrape_schedules = must(IntGauge::with_opts(opts(&cat::SCRAPE_SCHEDULES)));
        let source_success = must(IntGaugeVec::new(
            opts(&cat::SOURCE_SUCCESS),
            cat::SOURCE_SUCCESS.labels,
        ));
        let source_duration = must(prometheus::GaugeVec::new(
            opts(&cat::SOURCE_DURATION),
            cat::SOURCE_DURATION.labels,
        ));
        let cgroup_open_files = must(IntGauge::with_opts(opts(&cat::CGROUP_OPEN_FILES)));
        let mode = must(IntGaugeVec::new(
            opts(&cat::ATTRIBUTION_MODE),
            cat::ATTRIBUTION_MODE.labels,
        ));
        let placement_seconds = must(Histogram::with_opts(
            HistogramOpts::new(cat::CONTAINER_PLACEMENT.name, cat::CONTAINER_PLACEMENT.help)
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
        ));
        let helper_runs = must(IntCounter::with_opts(opts(&cat::HELPER_RUNS)));
        let starter_runs_unstarted =
            must(IntCounter::with_opts(opts(&cat::STARTER_RUNS_UNSTARTED)));
        let starter_runs_refused = must(IntCounterVec::new(
            opts(&cat::STARTER_RUNS_REFUSED),
            cat::STARTER_RUNS_REFUSED.labels,
        ));
        for r in crate::model::caps::Refusal::ALL {
            starter_runs_refused.with_label_values(&[r.label()]);
        }
        let joins = must(IntCounter::with_opts(opts(&cat::INSTANCE_JOINS)));
        let trusted_files = must(IntGaugeVec::new(
            opts(&cat::TRUSTED_FILES),
            cat::TRUSTED_FILES.labels,
        ));
        let prewarm_windows = must(IntCounter::with_opts(opts(&cat::CGROUP_PREWARM_WINDOWS)));
        let prewarm_writes = must(IntCounter::with_opts(opts(&cat::CGROUP_PREWARM_WRITES)));
        let pushes = must(IntCounterVec::new(opts(&cat::PUSHES), cat::PUSHES.labels));
        let push_failures = must(IntCounterVec::new(
            opts(&cat::PUSH_FAILURES),
            cat::PUSH_FAILURES.labels,
        ));
        let http_rejected = must(IntCounterVec::new(
            opts(&cat::HTTP_CONNECTIONS_REJECTED),
            cat::HTTP_CONNECTIONS_REJECTED.labels,
        ));
        let http_closed = must(IntCounterVec::new(
            opts(&cat::HTTP_CONNECTIONS_CLOSED),
            cat::HTTP_CONNECTIONS_CLOSED.labels,
        ));
        let http_requests_rejected = must(IntCounterVec::new(
            opts(&cat::HTTP_REQUESTS_REJECTED),
            cat::HTTP_REQUESTS_REJECTED.labels,
        ));
        let http_open = must(IntGauge::with_opts(opts(&cat::HTTP_CONNECTIONS)));
        for c in [
            Box::new(build) as Box<dyn prometheus::core::Collector>,
            Box::new(containers.clone()),
            Box::new(containers_started.clone()),
            Box::new(ebpf_events_lost.clone()),
            Box::new(ebpf_map_full.clone()),
            Box::new(ebpf_program_errors.clone()),
            Box::new(socket_connections.clone()),
            Box::new(sample_duration.clone()),
            Box::new(samples.clone()),
            Box::new(reads.clone()),
            Box::new(scrape_schedules.clone()),
            Box::new(source_success.clone()),
            Box::new(source_duration.clone()),
            Box::new(cgroup_open_files.clone()),
            Box::new(mode.clone()),
            Box::new(placement_seconds.clone()),
            Box::new(helper_runs.clone()),
            Box::new(starter_runs_unstarted.clone()),
            Box::new(starter_runs_refused.clone()),
            Box::new(joins.clone()),
            Box::new(trusted_files.clone()),
            Box::new(prewarm_windows.clone()),
            Box::new(prewarm_writes.clone()),
            Box::new(pushes.clone()),
            Box::new(push_failures.clone()),
            Box::new(http_rejected.clone()),
            Box::new(http_closed.clone()),
            Box::new(http_requests_rejected.clone()),
            Box::new(http_open.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            must(registry.register(c));
        }
        Arc::new(Self {
            registry,
            containers,
            containers_started,
            ebpf_events_lost,
            ebpf_map_full,
            ebpf_program_errors,
            socket_connections,
            sample_duration,
            samples,
            reads,
            scrape_schedules,
            source_success,
            source_duration,
            cgroup_open_files,
            mode,
            placement_seconds,
            helper_runs,
            starter_runs_unstarted,
            starter_runs_refused,
            joins,
            trusted_files,
            prewarm_windows,
            prewarm_writes,
            pushes,
            push_failures,
            http_rejected,
            http_closed,
            http_requests_rejected,
            http_open,
            prepared: RwLock::new(Arc::new(Prepared::new(Arc::new(Snapshot::default())))),
            demand,
        })
    }

    /// Waits, when need be, for a sample recent enough for `reader`, and
    /// counts the read.
    pub async fn fresh(&self, reader: Reader) {
        let (kind, waited) = self.demand.fresh(reader).await;
        let answer = READ_ANSWERS[usize::from(waited)];
        self.reads.with_label_values(&[kind.name(), answer]).inc();
        self.scrape_schedules.set(self.demand.schedules() as i64);
    }

    /// Records which attribution mode runs.
    pub fn set_mode(&self, mode: &str) {
        for m in ["ebpf", "socket"] {
            self.mode.with_label_values(&[m]).set(i64::from(m == mode));
        }
    }

    /// Replaces the containers' snapshot with a new one.
    pub fn publish(&self, snapshot: Snapshot) {
        let large = snapshot.rows.len() > 2000;
        let new = Arc::new(Prepared::new(Arc::new(snapshot)));
        let mut guard = sync::write(&self.prepared);
        let old = std::mem::replace(&mut *guard, new);
        drop(guard);
        drop(old);
        // Large snapshots leave large freed blocks behind; glibc keeps them
        // unless asked (the threshold keeps small nodes from paying for it).
        if large {
            crate::memory::release_free_heap();
        }
    }

    /// Encodes the latest snapshot now in the encodings that scrapers with
    /// a schedule ask for (after a sample: their scrapes then only copy
    /// it).
    pub fn prepare(&self) {
        let set = self.demand.encodings();
        if set != 0 {
            self.current().prepare(set);
        }
    }

    fn current(&self) -> Arc<Prepared> {
        sync::read(&self.prepared).clone()
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current().snapshot.clone()
    }

    /// Everything to expose, as families, sorted by name (for pushing).
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut all = self.registry.gather();
        all.extend(protos::families(&self.snapshot()));
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The exposition in `encoding`: the agent's own metrics, encoded now,
    /// then the containers' from the latest snapshot, as it was encoded
    /// for an earlier read or after the sample (see `prepared`).
    pub fn exposition(&self, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
        let own = exposition::encode_own(&self.registry.gather(), encoding.format)?;
        self.current().body(own, encoding)
    }

    /// The plain exposition in `format`.
    #[cfg(feature = "testing")]
    pub fn encode(&self, format: exposition::Format) -> Result<Vec<u8>, EncodeError> {
        self.exposition(Encoding {
            format,
            gzip: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::exposition::Format;

    #[test]
    fn build_info_and_process_metrics_are_exposed() {
        let m = AgentMetrics::new();
        let names: Vec<String> = m.gather().iter().map(|f| f.name().to_string()).collect();
        for want in [
            "apptheus_build_info",
            "apptheus_containers",
            "apptheus_containers_started_total",
            "apptheus_ebpf_events_lost_total",
            "apptheus_socket_connections_total",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let bi = m
            .gather()
            .into_iter()
            .find(|f| f.name() == "apptheus_build_info")
            .unwrap();
        let labels: Vec<(String, String)> = bi.metric[0]
            .label
            .iter()
            .map(|l| (l.name().to_string(), l.value().to_string()))
            .collect();
        assert!(labels.contains(&("version".into(), env!("CARGO_PKG_VERSION").into())));
    }

    /// Publishes a snapshot of one container with 3 pids.
    fn publish_pids(m: &AgentMetrics) {
        use crate::{
            export::snapshot::Row,
            model::{
                container::Sample,
                stats::{CgroupStats, PidsStats},
            },
        };
        m.publish(Snapshot {
            rows: vec![Row {
                id: "1-2".into(),
                sample: Some(Arc::new(Sample {
                    cgroup: CgroupStats {
                        pids: Some(PidsStats {
                            current: 3,
                            limit: None,
                        }),
                        ..CgroupStats::default()
                    },
                    ..Sample::default()
                })),
                ..Row::default()
            }],
            programs: Vec::new(),
        });
    }

    #[test]
    fn a_published_sample_is_served_in_both_formats_with_one_eof() {
        let m = AgentMetrics::new();
        publish_pids(&m);
        let text = String::from_utf8(m.encode(Format::Text).unwrap()).unwrap();
        assert!(text.contains("apptheus_build_info{"), "{text}");
        assert!(
            text.contains("apptheus_container_pids{container_id=\"1-2\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE apptheus_container_pids gauge\n"),
            "{text}"
        );
        let om = String::from_utf8(m.encode(Format::OpenMetrics).unwrap()).unwrap();
        assert!(
            om.contains("apptheus_container_pids{container_id=\"1-2\"} 3\n"),
            "{om}"
        );
        assert_eq!(om.matches("# EOF").count(), 1);
        assert!(om.ends_with("# EOF\n"));
        // Pushing sees the same families.
        assert!(
            m.gather()
                .iter()
                .any(|f| f.name() == "apptheus_container_pids")
        );
        // A new snapshot replaces the old one whole.
        m.publish(Snapshot::default());
        let text = String::from_utf8(m.encode(Format::Text).unwrap()).unwrap();
        assert!(!text.contains("apptheus_container_pids"), "{text}");
    }

    /// Every family the agent's registry exposes is in the catalogue, with
    /// the catalogue's type and HELP.
    #[test]
    fn the_registry_matches_the_catalogue() {
        use prometheus::proto::MetricType;
        let m = AgentMetrics::new();
        m.set_mode("ebpf");
        for f in m.registry.gather() {
            let c =
                cat::find(f.name()).unwrap_or_else(|| panic!("{} not in the catalogue", f.name()));
            assert_eq!(f.help(), c.help, "{}", f.name());
            let kind = match f.type_() {
                MetricType::COUNTER => cat::Kind::Counter,
                MetricType::GAUGE => cat::Kind::Gauge,
                MetricType::HISTOGRAM => cat::Kind::Histogram,
                other => panic!("{}: {other:?}", f.name()),
            };
            assert_eq!(kind, c.kind, "{}", f.name());
            for metric in &f.metric {
                // The crate sorts labels by name.
                let mut labels: Vec<&str> = metric.label.iter().map(|l| l.name()).collect();
                let mut want = c.labels.to_vec();
                labels.sort_unstable();
                want.sort_unstable();
                assert_eq!(labels, want, "{}", f.name());
            }
        }
    }
}
