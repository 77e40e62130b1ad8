//! Prometheus remote write 1.0: a protobuf `WriteRequest`, snappy block
//! compressed, POSTed with the protocol's headers. The messages are written
//! by hand after prometheus/prompb (types.proto, remote.proto), so no
//! protoc is needed at build time.
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use prost::Message as _;
use url::Url;

use super::{JOB, PushError, request};
use crate::export::exposition::format_value;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TimeSeries {
    /// Sorted by name, names unique.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub(crate) struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MetricMetadata {
    /// prompb's MetricType: 0 unknown, 1 counter, 2 gauge, 3 histogram,
    /// 5 summary.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

pub(crate) struct RemoteWrite {
    url: Url,
    display: String,
    instance: String,
}

impl RemoteWrite {
    pub(crate) fn new(url: &Url, instance: &str) -> Self {
        let mut display = url.clone();
        let _ = display.set_password(None);
        Self {
            url: url.clone(),
            display: display.to_string(),
            instance: instance.to_string(),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.display
    }

    pub(crate) fn request(
        &self,
        families: &[MetricFamily],
    ) -> Result<Request<Full<Bytes>>, PushError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let body = encode(&write_request(families, &self.instance, now_ms))?;
        request(Method::POST, &self.url, "application/x-protobuf")
            .header(hyper::header::CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| PushError::Request {
                url: self.display.clone(),
                source,
            })
    }
}

/// Protobuf, then snappy's block format (not its framed format).
pub(crate) fn encode(req: &WriteRequest) -> Result<Vec<u8>, PushError> {
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| PushError::Encode(e.to_string()))
}

/// One series per sample, all at `timestamp_ms`, labelled with
/// job="apptheus" and `instance`; labels named job or instance in the
/// metrics become exported_job and exported_instance.
pub(crate) fn write_request(
    families: &[MetricFamily],
    instance: &str,
    timestamp_ms: i64,
) -> WriteRequest {
    let mut out = WriteRequest::default();
    for mf in families {
        if mf.metric.is_empty() {
            continue;
        }
        let name = mf.name();
        let kind = match mf.type_() {
            MetricType::COUNTER => 1,
            MetricType::GAUGE => 2,
            MetricType::HISTOGRAM => 3,
            MetricType::SUMMARY => 5,
            MetricType::UNTYPED => 0,
        };
        out.metadata.push(MetricMetadata {
            r#type: kind,
            metric_family_name: name.to_string(),
            help: mf.help().to_string(),
            unit: String::new(),
        });
        let mut push = |series: &str, labels: &[LabelPair], extra: Option<(&str, f64)>, v: f64| {
            out.timeseries.push(TimeSeries {
                labels: labels_of(series, labels, extra, instance),
                samples: vec![Sample {
                    value: v,
                    timestamp: timestamp_ms,
                }],
            });
        };
        for m in &mf.metric {
            let labels = &m.label;
            match mf.type_() {
                MetricType::COUNTER => push(name, labels, None, m.counter.value()),
                MetricType::GAUGE => push(name, labels, None, m.gauge.value()),
                MetricType::UNTYPED => push(name, labels, None, m.untyped.value()),
                MetricType::HISTOGRAM => {
                    let h = &m.histogram;
                    let bucket = format!("{name}_bucket");
                    let mut inf_seen = false;
                    for b in &h.bucket {
                        inf_seen |= b.upper_bound().is_infinite();
                        push(
                            &bucket,
                            labels,
                            Some(("le", b.upper_bound())),
                            b.cumulative_count() as f64,
                        );
                    }
                    if !inf_seen {
                        push(
                            &bucket,
                            labels,
                            Some(("le", f64::INFINITY)),
                            h.sample_count() as f64,
                        );
                    }
                    push(
                        &format!("{name}_count"),
                        labels,
                        None,
                        h.sample_count() as f64,
                    );
                    push(&format!("{name}_sum"), labels, None, h.sample_sum());
                }
                MetricType::SUMMARY => {
                    let s = &m.summary;
                    for q in &s.quantile {
                        push(name, labels, Some(("quantile", q.quantile())), q.value());
                    }
                    push(
                        &format!("{name}_count"),
                        labels,
                        None,
                        s.sample_count() as f64,
                    );
                    push(&format!("{name}_sum"), labels, None, s.sample_sum());
                }
            }
        }
    }
    out
}

fn labels_of(
    name: &str,
    labels: &[LabelPair],
    extra: Option<(&str, f64)>,
    instance: &str,
) -> Vec<Label> {
    let label = |n: &str, v: &str| Label {
        name: n.to_string(),
        value: v.to_string(),
    };
    let mut out = Vec::with_capacity(labels.len() + 4);
    out.push(label("__name__", name));
    out.push(label("job", JOB));
    out.push(label("instance", instance));
    for l in labels {
        // An empty value is the same as no label in Prometheus.
        if l.value().is_empty() {
            continue;
        }
        if l.name() == "job" || l.name() == "instance" {
            out.push(label(&format!("exported_{}", l.name()), l.value()));
        } else {
            out.push(label(l.name(), l.value()));
        }
    }
    if let Some((n, v)) = extra {
        out.push(label(n, &format_value(v)));
    }
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    out
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

    use super::*;

    fn families() -> Vec<MetricFamily> {
        let r = Registry::new();
        let c = IntCounterVec::new(
            Opts::new("x_execs_total", "Execs."),
            &["container_id", "instance"],
        )
        .unwrap();
        c.with_label_values(&["10-7", "web"]).inc_by(3);
        let h =
            Histogram::with_opts(HistogramOpts::new("x_seconds", "S.").buckets(vec![0.5])).unwrap();
        h.observe(0.7);
        r.register(Box::new(c)).unwrap();
        r.register(Box::new(h)).unwrap();
        r.gather()
    }

    fn names(ts: &TimeSeries) -> Vec<(&str, &str)> {
        ts.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn series_labels_are_sorted_and_carry_job_and_instance() {
        let w = write_request(&families(), "node1", 1234);
        assert_eq!(w.timeseries.len(), 1 + 4);
        assert_eq!(
            names(&w.timeseries[0]),
            vec![
                ("__name__", "x_execs_total"),
                ("container_id", "10-7"),
                ("exported_instance", "web"),
                ("instance", "node1"),
                ("job", "apptheus"),
            ]
        );
        assert_eq!(
            w.timeseries[0].samples,
            vec![Sample {
                value: 3.0,
                timestamp: 1234
            }]
        );
        let buckets: Vec<_> = w
            .timeseries
            .iter()
            .filter(|t| t.labels[0].value == "x_seconds_bucket")
            .map(|t| {
                (
                    t.labels
                        .iter()
                        .find(|l| l.name == "le")
                        .unwrap()
                        .value
                        .clone(),
                    t.samples[0].value,
                )
            })
            .collect();
        assert_eq!(buckets, vec![("0.5".into(), 0.0), ("+Inf".into(), 1.0)]);
        assert_eq!(w.metadata.len(), 2);
        assert_eq!(w.metadata[0].r#type, 1);
        for ts in &w.timeseries {
            let mut sorted = ts.labels.clone();
            sorted.sort();
            assert_eq!(sorted, ts.labels);
        }
    }

    #[test]
    fn body_is_snappy_block_protobuf_with_the_protocol_headers() {
        let rw = RemoteWrite::new(&Url::parse("http://p:9090/api/v1/write").unwrap(), "n");
        let r = rw.request(&families()).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers()["content-encoding"], "snappy");
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        assert_eq!(r.headers()["x-prometheus-remote-write-version"], "0.1.0");
        let w = write_request(&families(), "n", 5);
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&encode(&w).unwrap())
            .unwrap();
        assert_eq!(WriteRequest::decode(raw.as_slice()).unwrap(), w);
    }
}
