//! A snapshot as the `prometheus` crate's families, for what needs them:
//! pushing (Pushgateway, remote write) and tests. Scrapes do not: they are
//! written straight from the snapshot.
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric as ProtoMetric, MetricFamily, MetricType,
};

use crate::export::{
    catalogue::{Kind, Metric},
    families::{self, Value, Visitor},
    snapshot::Snapshot,
};

/// Every family of `snap`.
pub fn families(snap: &Snapshot) -> Vec<MetricFamily> {
    let mut b = Builder::default();
    families::visit(snap, &mut b);
    b.out
}

#[derive(Default)]
struct Builder {
    out: Vec<MetricFamily>,
}

impl Visitor for Builder {
    fn family(&mut self, m: &'static Metric) {
        let mut mf = MetricFamily::default();
        mf.set_name(m.name.to_string());
        mf.set_help(m.help.to_string());
        mf.set_field_type(match m.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
            Kind::Histogram => MetricType::HISTOGRAM,
        });
        self.out.push(mf);
    }

    fn sample(&mut self, m: &'static Metric, labels: &[(&str, &str)], value: Value<'_>) {
        let Some(mf) = self.out.last_mut() else {
            return;
        };
        let mut p = ProtoMetric::default();
        p.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        match (m.kind, value) {
            (Kind::Counter, Value::Number(v)) => {
                let mut c = Counter::default();
                c.set_value(v);
                p.set_counter(c);
            }
            (_, Value::Number(v)) => {
                let mut g = Gauge::default();
                g.set_value(v);
                p.set_gauge(g);
            }
            (_, Value::Histogram(h)) => {
                let mut ph = Histogram::default();
                ph.set_sample_count(h.count);
                ph.set_sample_sum(h.sum);
                ph.set_bucket(
                    h.buckets
                        .iter()
                        .map(|(le, n)| {
                            let mut b = Bucket::default();
                            b.set_upper_bound(*le);
                            b.set_cumulative_count(*n);
                            b
                        })
                        .collect(),
                );
                p.set_histogram(ph);
            }
        }
        mf.mut_metric().push(p);
    }
}
