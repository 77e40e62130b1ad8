//! The agent's own metrics, and the latest container sample, gathered into
//! one exposition.
use std::sync::{Arc, RwLock};

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, proto::MetricFamily,
};

use crate::{
    build_info,
    export::exposition::{self, EncodeError, Encoded, Format},
};

/// Results of a connection to the monitoring socket, for
/// `apptheus_socket_connections_total{result}`.
pub const SOCKET_RESULTS: [&str; 3] = ["accepted", "rejected", "error"];

pub struct AgentMetrics {
    registry: Registry,
    pub containers: IntGauge,
    pub containers_started: IntCounter,
    pub ebpf_events_lost: IntCounter,
    pub socket_connections: IntCounterVec,
    pub sample_duration: Gauge,
    pub mode: IntGaugeVec,
    pub placement_seconds: Histogram,
    /// Starter runs Apptainer made for itself (not containers), and runs
    /// that joined an instance.
    pub helper_runs: IntCounter,
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
    /// The latest per-container families, replaced whole at each sample.
    containers_families: RwLock<Arc<Encoded>>,
    /// Whether the container families are kept next to their encodings
    /// (pushing needs them; scrapes only need the bytes).
    keep_families: std::sync::atomic::AtomicBool,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only static, valid names and help strings are registered here; a
    // failure is a programming error caught by the unit tests.
    r.unwrap_or_else(|e| unreachable!("static metric definition rejected: {e}"))
}

impl AgentMetrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let build = must(IntGaugeVec::new(
            Opts::new(
                "apptheus_build_info",
                "A metric with a constant '1' value labeled by version, revision, branch, rustversion and target from which apptheus was built.",
            ),
            &["version", "revision", "branch", "rustversion", "target"],
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
        let containers = must(IntGauge::new(
            "apptheus_containers",
            "Containers currently tracked (running, or ended and within the grace period).",
        ));
        let containers_started = must(IntCounter::new(
            "apptheus_containers_started_total",
            "Containers seen starting since the agent started (not those adopted from an earlier run).",
        ));
        let ebpf_events_lost = must(IntCounter::new(
            "apptheus_ebpf_events_lost_total",
            "Kernel events that did not fit in the ring buffer (recovered by reconciling with the kernel's maps).",
        ));
        let socket_connections = must(IntCounterVec::new(
            Opts::new(
                "apptheus_socket_connections_total",
                "Connections to the monitoring socket, by result.",
            ),
            &["result"],
        ));
        for r in SOCKET_RESULTS {
            socket_connections.with_label_values(&[r]);
        }
        let sample_duration = must(Gauge::new(
            "apptheus_sample_duration_seconds",
            "How long the latest sample of every container's statistics took.",
        ));
        let mode = must(IntGaugeVec::new(
            Opts::new(
                "apptheus_attribution_mode",
                "How containers are found: 1 for the mode in use (ebpf: kernel programs; socket: Apptainer's monitoring socket alone).",
            ),
            &["mode"],
        ));
        let placement_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "apptheus_container_placement_seconds",
                "Time from a starter's exec to every task of its container being inside the container's cgroups.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        ));
        let helper_runs = must(IntCounter::new(
            "apptheus_helper_runs_total",
            "Runs of a starter that Apptainer's command-line tool made for itself (unpacking an image into a temporary sandbox, a clean-up); not containers.",
        ));
        let joins = must(IntCounter::new(
            "apptheus_instance_joins_total",
            "Runs that joined an instance (exec, run or shell instance://<name>), counted in the instance's container.",
        ));
        let trusted_files = must(IntGaugeVec::new(
            Opts::new(
                "apptheus_trusted_files",
                "Files trusted by identity, by role: starter (its exec starts a container) and launcher (Apptainer's command-line tool). 0 starters: nothing is attributed.",
            ),
            &["role"],
        ));
        let prewarm_windows = must(IntCounter::new(
            "apptheus_cgroup_prewarm_windows_total",
            "Warm-up windows opened by the exec of an Apptainer launcher (--cgroup.prewarm).",
        ));
        let prewarm_writes = must(IntCounter::new(
            "apptheus_cgroup_prewarm_writes_total",
            "Times the cgroup migration lock was taken inside warm-up windows (--cgroup.prewarm).",
        ));
        let pushes = must(IntCounterVec::new(
            Opts::new(
                "apptheus_pushes_total",
                "Successful pushes of the metrics, by target (pushgateway, remote_write).",
            ),
            &["target"],
        ));
        let push_failures = must(IntCounterVec::new(
            Opts::new(
                "apptheus_push_failures_total",
                "Failed push attempts (each retry counts), by target (pushgateway, remote_write).",
            ),
            &["target"],
        ));
        let http_rejected = must(IntCounterVec::new(
            Opts::new(
                "apptheus_http_connections_rejected_total",
                "HTTP connections refused at once, by reason (per_address_limit: the client address holds its share; total_limit: every slot is taken by addresses holding no more).",
            ),
            &["reason"],
        ));
        for r in crate::http::REFUSALS {
            http_rejected.with_label_values(&[r.label()]);
        }
        let http_closed = must(IntCounterVec::new(
            Opts::new(
                "apptheus_http_connections_closed_total",
                "HTTP connections cut by the agent, by reason (evicted, idle_timeout, header_timeout, tls_handshake_timeout, tls_handshake_failed, write_timeout, lifetime_limit).",
            ),
            &["reason"],
        ));
        for c in crate::http::Cut::ALL {
            http_closed.with_label_values(&[c.label()]);
        }
        let http_requests_rejected = must(IntCounterVec::new(
            Opts::new(
                "apptheus_http_requests_rejected_total",
                "HTTP requests answered 429, by reason (per_address_responses: the client address already has answers under way).",
            ),
            &["reason"],
        ));
        for r in crate::http::REQUEST_REFUSALS {
            http_requests_rejected.with_label_values(&[r]);
        }
        let http_open = must(IntGauge::new(
            "apptheus_http_connections",
            "HTTP connections open now, every listener together.",
        ));
        for c in [
            Box::new(build) as Box<dyn prometheus::core::Collector>,
            Box::new(containers.clone()),
            Box::new(containers_started.clone()),
            Box::new(ebpf_events_lost.clone()),
            Box::new(socket_connections.clone()),
            Box::new(sample_duration.clone()),
            Box::new(mode.clone()),
            Box::new(placement_seconds.clone()),
            Box::new(helper_runs.clone()),
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
            socket_connections,
            sample_duration,
            mode,
            placement_seconds,
            helper_runs,
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
            containers_families: RwLock::new(Arc::new(Encoded::default())),
            keep_families: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Records which attribution mode runs.
    pub fn set_mode(&self, mode: &str) {
        for m in ["ebpf", "socket"] {
            self.mode.with_label_values(&[m]).set(i64::from(m == mode));
        }
    }

    /// Nothing pushes: [`AgentMetrics::gather`] need not include the
    /// containers, whose families then are not kept once encoded (at
    /// 10,000 containers they take more memory than their encodings).
    pub fn scrapes_only(&self) {
        self.keep_families
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replaces the per-container families with a new sample, encoded
    /// once here so that scrapes only copy bytes.
    pub fn publish(&self, families: Vec<MetricFamily>) {
        let keep = self
            .keep_families
            .load(std::sync::atomic::Ordering::Relaxed);
        let encoded = match Encoded::new(families, keep) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "encoding the container sample failed; keeping the previous one");
                return;
            }
        };
        let mut guard = self
            .containers_families
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = std::mem::replace(&mut *guard, Arc::new(encoded));
        drop(guard);
        // Large samples leave large freed buffers behind; glibc keeps them
        // unless asked (the threshold keeps small nodes from paying for it).
        let large = old.text.len() > 4 << 20;
        drop(old);
        if large {
            crate::memory::release_free_heap();
        }
    }

    fn containers(&self) -> Arc<Encoded> {
        self.containers_families
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Everything to expose, sorted by name; the containers' families are
    /// left out after [`AgentMetrics::scrapes_only`].
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut all = self.registry.gather();
        all.extend(self.containers().families.iter().cloned());
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The exposition in `format`: the agent's own metrics encoded now,
    /// the containers' as encoded at the last sample.
    pub fn encode(&self, format: Format) -> Result<Vec<u8>, EncodeError> {
        exposition::encode_with(&self.registry.gather(), &self.containers(), format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Publishes a sample of one container with 3 pids.
    fn publish_pids(m: &AgentMetrics) {
        let mut f = crate::export::families::Families::default();
        f.gauge(
            "apptheus_container_pids",
            "Pids.",
            &[("container_id", "1-2")],
            3.0,
        );
        m.publish(f.into_vec());
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
        let om = String::from_utf8(m.encode(Format::OpenMetrics).unwrap()).unwrap();
        assert!(
            om.contains("apptheus_container_pids{container_id=\"1-2\"} 3\n"),
            "{om}"
        );
        assert_eq!(om.matches("# EOF").count(), 1);
        assert!(om.ends_with("# EOF\n"));
        // A new sample replaces the old one whole.
        m.publish(Vec::new());
        let text = String::from_utf8(m.encode(Format::Text).unwrap()).unwrap();
        assert!(!text.contains("apptheus_container_pids"), "{text}");
    }

    #[test]
    fn without_pushing_the_sample_is_served_but_not_gathered() {
        let gathered = |m: &AgentMetrics| {
            m.gather()
                .iter()
                .any(|f| f.name() == "apptheus_container_pids")
        };
        let pushing = AgentMetrics::new();
        publish_pids(&pushing);
        assert!(gathered(&pushing));
        let m = AgentMetrics::new();
        m.scrapes_only();
        publish_pids(&m);
        assert!(!gathered(&m));
        let text = String::from_utf8(m.encode(Format::Text).unwrap()).unwrap();
        assert!(
            text.contains("apptheus_container_pids{container_id=\"1-2\"} 3\n"),
            "{text}"
        );
    }
}
