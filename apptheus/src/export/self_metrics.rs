//! The agent's own metrics (`apptheus_*` about the agent itself, and the
//! process collector's): their registry and the handles the rest of the
//! daemon counts with. Names, types and HELP come from the catalogue.
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, proto::MetricFamily,
};

use crate::{
    build_info,
    export::{
        catalogue::{self as cat, Metric},
        on_demand::{ReadKind, Trigger},
    },
};

/// Results of a connection to the monitoring socket, for
/// `apptheus_socket_connections_total{result}`.
pub(crate) const SOCKET_RESULTS: [&str; 3] = ["accepted", "rejected", "error"];

/// A read's answer, for `apptheus_reads_total{answer}`: served at once, or
/// after waiting for a sample.
pub(crate) const READ_ANSWERS: [&str; 2] = ["at_once", "waited"];

pub struct SelfMetrics {
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
}

fn opts(m: &Metric) -> Opts {
    Opts::new(m.name, m.help)
}

/// Registers `c` in `registry` and hands it back (a handle on the same
/// metric).
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    must(registry.register(Box::new(c.clone())));
    c
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only static, valid names and help strings are registered here; a
    // failure is a programming error caught by the unit tests.
    r.unwrap_or_else(|e| unreachable!("static metric definition rejected: {e}"))
}

impl SelfMetrics {
    /// Every metric of the agent's own, registered.
    pub(crate) fn new() -> Self {
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
        let containers = register(&registry, must(IntGauge::with_opts(opts(&cat::CONTAINERS))));
        let containers_started = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::CONTAINERS_STARTED))),
        );
        let ebpf_events_lost = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::EBPF_EVENTS_LOST))),
        );
        let ebpf_map_full = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::EBPF_MAP_FULL),
                cat::EBPF_MAP_FULL.labels,
            )),
        );
        for m in crate::model::drops::Map::ALL {
            ebpf_map_full.with_label_values(&[m.label()]);
        }
        let ebpf_program_errors = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::EBPF_PROGRAM_ERRORS),
                cat::EBPF_PROGRAM_ERRORS.labels,
            )),
        );
        for (p, _, _) in crate::model::drops::PROGRAM_ERRORS {
            ebpf_program_errors.with_label_values(&[p]);
        }
        let socket_connections = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::SOCKET_CONNECTIONS),
                cat::SOCKET_CONNECTIONS.labels,
            )),
        );
        for r in SOCKET_RESULTS {
            socket_connections.with_label_values(&[r]);
        }
        let sample_duration = register(
            &registry,
            must(Gauge::with_opts(opts(&cat::SAMPLE_DURATION))),
        );
        let samples = register(
            &registry,
            must(IntCounterVec::new(opts(&cat::SAMPLES), cat::SAMPLES.labels)),
        );
        for t in Trigger::ALL {
            samples.with_label_values(&[t.name()]);
        }
        let reads = register(
            &registry,
            must(IntCounterVec::new(opts(&cat::READS), cat::READS.labels)),
        );
        for k in ReadKind::ALL {
            for answer in READ_ANSWERS {
                reads.with_label_values(&[k.name(), answer]);
            }
        }
        let scrape_schedules = register(
            &registry,
            must(IntGauge::with_opts(opts(&cat::SCRAPE_SCHEDULES))),
        );
        let source_success = register(
            &registry,
            must(IntGaugeVec::new(
                opts(&cat::SOURCE_SUCCESS),
                cat::SOURCE_SUCCESS.labels,
            )),
        );
        let source_duration = register(
            &registry,
            must(prometheus::GaugeVec::new(
                opts(&cat::SOURCE_DURATION),
                cat::SOURCE_DURATION.labels,
            )),
        );
        let cgroup_open_files = register(
            &registry,
            must(IntGauge::with_opts(opts(&cat::CGROUP_OPEN_FILES))),
        );
        let mode = register(
            &registry,
            must(IntGaugeVec::new(
                opts(&cat::ATTRIBUTION_MODE),
                cat::ATTRIBUTION_MODE.labels,
            )),
        );
        let placement_seconds = register(
            &registry,
            must(Histogram::with_opts(
                HistogramOpts::new(cat::CONTAINER_PLACEMENT.name, cat::CONTAINER_PLACEMENT.help)
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ]),
            )),
        );
        let helper_runs = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::HELPER_RUNS))),
        );
        let starter_runs_unstarted = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::STARTER_RUNS_UNSTARTED))),
        );
        let starter_runs_refused = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::STARTER_RUNS_REFUSED),
                cat::STARTER_RUNS_REFUSED.labels,
            )),
        );
        for r in crate::model::caps::Refusal::ALL {
            starter_runs_refused.with_label_values(&[r.label()]);
        }
        let joins = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::INSTANCE_JOINS))),
        );
        let trusted_files = register(
            &registry,
            must(IntGaugeVec::new(
                opts(&cat::TRUSTED_FILES),
                cat::TRUSTED_FILES.labels,
            )),
        );
        let prewarm_windows = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::CGROUP_PREWARM_WINDOWS))),
        );
        let prewarm_writes = register(
            &registry,
            must(IntCounter::with_opts(opts(&cat::CGROUP_PREWARM_WRITES))),
        );
        let pushes = register(
            &registry,
            must(IntCounterVec::new(opts(&cat::PUSHES), cat::PUSHES.labels)),
        );
        let push_failures = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::PUSH_FAILURES),
                cat::PUSH_FAILURES.labels,
            )),
        );
        let http_rejected = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::HTTP_CONNECTIONS_REJECTED),
                cat::HTTP_CONNECTIONS_REJECTED.labels,
            )),
        );
        let http_closed = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::HTTP_CONNECTIONS_CLOSED),
                cat::HTTP_CONNECTIONS_CLOSED.labels,
            )),
        );
        let http_requests_rejected = register(
            &registry,
            must(IntCounterVec::new(
                opts(&cat::HTTP_REQUESTS_REJECTED),
                cat::HTTP_REQUESTS_REJECTED.labels,
            )),
        );
        let http_open = register(
            &registry,
            must(IntGauge::with_opts(opts(&cat::HTTP_CONNECTIONS))),
        );
        must(registry.register(Box::new(build)));
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Self {
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
        }
    }

    /// Records which attribution mode runs.
    pub fn set_mode(&self, mode: &str) {
        for m in ["ebpf", "socket"] {
            self.mode.with_label_values(&[m]).set(i64::from(m == mode));
        }
    }

    /// Counts a read of `kind`, and whether it waited.
    pub(crate) fn count_read(&self, kind: ReadKind, waited: bool) {
        let answer = READ_ANSWERS[usize::from(waited)];
        self.reads.with_label_values(&[kind.name(), answer]).inc();
    }

    /// The agent's own families, as they are now.
    pub(crate) fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}
