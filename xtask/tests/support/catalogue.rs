//! What the agent exports, as Prometheus stores it: every series name with
//! its label names. Taken from the agent's metric catalogue (every name,
//! type, HELP and label set, defined once in apptheus/src/export/
//! catalogue.rs and used by every emit site), not written down here.
use std::collections::{BTreeMap, BTreeSet};

use apptheus::testing::export::{CATALOGUE, Kind};

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
    pub families: BTreeMap<String, Kind>,
}

impl Catalogue {
    pub fn labels(&self, series: &str) -> Option<&BTreeSet<String>> {
        self.series.get(series)
    }

    fn add_series(&mut self, name: String, exported: &[&str]) {
        let mut stored: BTreeSet<String> = exported
            .iter()
            .map(|l| {
                if TARGET_LABELS.contains(l) {
                    format!("exported_{l}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        stored.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        self.series.entry(name).or_default().extend(stored);
    }

    fn add_family(&mut self, name: &str, kind: Kind, labels: &[&str]) {
        self.families.insert(name.to_string(), kind);
        match kind {
            Kind::Histogram => {
                let mut bucket = labels.to_vec();
                bucket.push("le");
                self.add_series(format!("{name}_bucket"), &bucket);
                self.add_series(format!("{name}_sum"), labels);
                self.add_series(format!("{name}_count"), labels);
            }
            Kind::Counter | Kind::Gauge => self.add_series(name.to_string(), labels),
        }
    }
}

/// The catalogue, and Prometheus' own `up` series of every target.
pub fn exported() -> Catalogue {
    let mut c = Catalogue::default();
    for m in CATALOGUE {
        c.add_family(m.name, m.kind, m.labels);
    }
    c.add_series("up".into(), &[]);
    c
}
