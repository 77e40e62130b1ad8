//! What readers read: the agent's own metrics (`self_metrics`), the latest
//! container snapshot (`store`), and when to sample for them
//! (`on_demand`), gathered into one exposition.
use std::sync::Arc;

use prometheus::proto::MetricFamily;

use crate::export::{
    exposition::{self, EncodeError, Encoding},
    on_demand::{Demand, Reader},
    protos,
    self_metrics::SelfMetrics,
    snapshot::Snapshot,
    store::SnapshotStore,
};

pub struct AgentMetrics {
    /// The agent's own metrics, which the rest of the daemon counts in.
    pub own: SelfMetrics,
    /// The latest snapshot of every container and its encodings.
    store: SnapshotStore,
    /// When readers read, and when to sample for them.
    pub demand: Demand,
}

impl AgentMetrics {
    /// The agent's metrics, its samples taken on a clock (readers never
    /// wait).
    #[cfg(feature = "testing")]
    pub fn new() -> Arc<Self> {
        Self::with_demand(Demand::new(std::time::Duration::from_secs(1), false))
    }

    /// The agent's metrics, its samples taken as `on_demand` says.
    pub fn with_demand(demand: Demand) -> Arc<Self> {
        Arc::new(Self {
            own: SelfMetrics::new(),
            store: SnapshotStore::new(),
            demand,
        })
    }

    /// Waits, when need be, for a sample recent enough for `reader`, and
    /// counts the read.
    pub async fn fresh(&self, reader: Reader) {
        let (kind, waited) = self.demand.fresh(reader).await;
        self.own.count_read(kind, waited);
        self.own
            .scrape_schedules
            .set(self.demand.schedules() as i64);
    }

    /// Replaces the containers' snapshot with a new one (encoded as reads
    /// ask for it).
    pub fn publish(&self, snapshot: Snapshot) {
        self.store.publish(snapshot);
    }

    /// Replaces the containers' snapshot with a new one, encoded first in
    /// the encodings that scrapers with a schedule ask for (after a
    /// sample: their scrapes then only copy it, and a scrape meanwhile
    /// gets the last one, ready).
    pub(crate) fn publish_prepared(&self, snapshot: Snapshot) {
        self.store
            .publish_prepared(snapshot, self.demand.encodings());
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.snapshot()
    }

    /// Everything to expose, as families, sorted by name (for pushing).
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut all = self.own.gather();
        all.extend(protos::families(&self.snapshot()));
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The exposition in `encoding`: the agent's own metrics, encoded now,
    /// then the containers' from the latest snapshot, as it was encoded
    /// for an earlier read or after the sample (see `prepared`).
    pub fn exposition(&self, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
        let own = exposition::encode_own(&self.own.gather(), encoding.format)?;
        self.store.body(own, encoding)
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
    use crate::export::{catalogue as cat, exposition::Format};

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
        m.own.set_mode("ebpf");
        for f in m.own.gather() {
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
