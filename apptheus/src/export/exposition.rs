//! Exposition formats: Prometheus text 0.0.4 and OpenMetrics 1.0.0, chosen
//! from the scraper's Accept header. The agent's own metrics (a few dozen
//! series) go through the `prometheus` crate's families; the containers'
//! are written straight from a snapshot, in pieces (a compressor takes
//! them as they come: see `prepared`, which keeps what was encoded).
use std::{fmt::Write as _, io::Write as _};

use prometheus::{
    Encoder as _, TextEncoder,
    proto::{LabelPair, MetricFamily, MetricType},
};

use crate::export::{
    catalogue::Metric,
    families::{self, Value, Visitor},
    snapshot::Snapshot,
};

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// An encoding of the exposition: a format, gzip-compressed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub format: Format,
    pub gzip: bool,
}

impl Encoding {
    /// A small number for it (0-3).
    pub fn index(self) -> u8 {
        u8::from(self.format == Format::OpenMetrics) | (u8::from(self.gzip) << 1)
    }

    /// The encoding whose [`Self::index`] is `i` (its low two bits).
    pub fn from_index(i: u8) -> Self {
        Encoding {
            format: if i & 1 == 0 {
                Format::Text
            } else {
                Format::OpenMetrics
            },
            gzip: i & 2 != 0,
        }
    }
}

/// Picks the format from an Accept header: OpenMetrics 1.0.0 when the
/// client prefers it (as Prometheus does), the classic text format
/// otherwise.
pub fn negotiate(accept: &str) -> Format {
    let mut best_om: f32 = -1.0;
    let mut best_text: f32 = -1.0;
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version: Option<String> = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("q=") {
                q = v.parse().unwrap_or(0.0);
            } else if let Some(v) = p.strip_prefix("version=") {
                version = Some(v.to_string());
            }
        }
        match media.as_str() {
            "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => {
                best_om = best_om.max(q)
            }
            "text/plain" | "*/*" | "text/*" => best_text = best_text.max(q),
            _ => {}
        }
    }
    if best_om > 0.0 && best_om >= best_text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("text encoding: {0}")]
    Text(#[from] prometheus::Error),
    #[error("writing the exposition: {0}")]
    Write(#[from] std::io::Error),
}

pub fn encode(families: &[MetricFamily], format: Format) -> Result<Vec<u8>, EncodeError> {
    match format {
        Format::Text => {
            let mut buf = Vec::with_capacity(16 * 1024);
            TextEncoder::new().encode(families, &mut buf)?;
            Ok(buf)
        }
        Format::OpenMetrics => Ok(encode_openmetrics(families).into_bytes()),
    }
}

/// OpenMetrics 1.0.0 text. Counters are named without `_total` in their
/// TYPE and HELP lines, with it on samples.
pub fn encode_openmetrics(families: &[MetricFamily]) -> String {
    let mut out = encode_openmetrics_body(families);
    out.push_str("# EOF\n");
    out
}

/// The exposition of the agent's own metrics (`own`, encoded now) followed
/// by the containers' of a snapshot, written straight from it (what
/// `prepared` gives in pieces).
#[cfg(test)]
pub fn encode_with(
    own: &[MetricFamily],
    snap: &Snapshot,
    format: Format,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = encode_own(own, format)?;
    // About 100 bytes per series, some 30 series per container.
    out.reserve(snap.rows.len() * 3200);
    write_containers(snap, format, &mut out)?;
    Ok(out)
}

/// The agent's own metrics (a few dozen series), in `format`; OpenMetrics
/// without its closing `# EOF` (the containers' part ends with it).
pub fn encode_own(own: &[MetricFamily], format: Format) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(16 * 1024);
    match format {
        Format::Text => TextEncoder::new().encode(own, &mut buf)?,
        Format::OpenMetrics => buf.extend_from_slice(encode_openmetrics_body(own).as_bytes()),
    }
    Ok(buf)
}

/// Bytes written at a time to [`write_containers`]' sink.
const CHUNK: usize = 64 * 1024;

/// The containers' families of a snapshot in `format` (and, in
/// OpenMetrics, the closing `# EOF`), written to `sink` a piece of about
/// [`CHUNK`] bytes at a time: a compressor gets the exposition without the
/// whole of it being held.
pub fn write_containers(
    snap: &Snapshot,
    format: Format,
    sink: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut w = Writer {
        out: Vec::with_capacity(CHUNK + 4096),
        sink,
        failed: None,
        openmetrics: format == Format::OpenMetrics,
    };
    families::visit(snap, &mut w);
    if format == Format::OpenMetrics {
        w.out.extend_from_slice(b"# EOF\n");
    }
    w.flush();
    match w.failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes visited families in the text format 0.0.4 or OpenMetrics (without
/// its closing `# EOF`) to a sink, through a buffer.
struct Writer<'a> {
    out: Vec<u8>,
    sink: &'a mut dyn std::io::Write,
    /// The sink failed: nothing more is written.
    failed: Option<std::io::Error>,
    openmetrics: bool,
}

impl Writer<'_> {
    fn flush(&mut self) {
        if self.failed.is_none()
            && let Err(e) = self.sink.write_all(&self.out)
        {
            self.failed = Some(e);
        }
        self.out.clear();
    }
}

impl Visitor for Writer<'_> {
    fn family(&mut self, m: &'static Metric) {
        let o = &mut self.out;
        if self.openmetrics {
            let f = m.family();
            let _ = write!(o, "# TYPE {f} {}\n# HELP {f} ", m.kind.as_str());
            escape_into(o, m.help, true);
        } else {
            let _ = write!(o, "# HELP {} ", m.name);
            escape_into(o, m.help, false);
            let _ = write!(o, "\n# TYPE {} {}", m.name, m.kind.as_str());
        }
        o.push(b'\n');
    }

    fn sample(&mut self, m: &'static Metric, labels: &[(&str, &str)], value: Value<'_>) {
        let o = &mut self.out;
        match value {
            Value::Number(v) => line(o, m.name, "", labels, None, v),
            Value::Histogram(h) => {
                let name = m.family();
                for (le, n) in h.buckets {
                    line(o, name, "_bucket", labels, Some(le), n as f64);
                }
                line(
                    o,
                    name,
                    "_bucket",
                    labels,
                    Some(f64::INFINITY),
                    h.count as f64,
                );
                line(o, name, "_sum", labels, None, h.sum);
                line(o, name, "_count", labels, None, h.count as f64);
            }
        }
        if self.out.len() >= CHUNK {
            self.flush();
        }
    }
}

fn line(
    o: &mut Vec<u8>,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<f64>,
    value: f64,
) {
    o.extend_from_slice(name.as_bytes());
    o.extend_from_slice(suffix.as_bytes());
    if !labels.is_empty() || le.is_some() {
        o.push(b'{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            o.extend_from_slice(k.as_bytes());
            o.extend_from_slice(b"=\"");
            escape_into(o, v, true);
            o.push(b'"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                o.push(b',');
            }
            // Bucket bounds keep their plain decimal spelling
            // (le="0.000001"): queries and dashboards match them as text.
            o.extend_from_slice(b"le=\"");
            o.extend_from_slice(format_value(le).as_bytes());
            o.push(b'"');
        }
        o.push(b'}');
    }
    o.push(b' ');
    write_value(o, value);
    o.push(b'\n');
}

/// Backslashes and newlines escaped, and double quotes when `quotes`
/// (label values; OpenMetrics HELP).
fn escape_into(o: &mut Vec<u8>, s: &str, quotes: bool) {
    let plain = |b: u8| b != b'\\' && b != b'\n' && !(quotes && b == b'"');
    if s.bytes().all(plain) {
        o.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => o.extend_from_slice(b"\\\\"),
            b'\n' => o.extend_from_slice(b"\\n"),
            b'"' if quotes => o.extend_from_slice(b"\\\""),
            _ => o.push(b),
        }
    }
}

/// A sample value, as [`format_value`] gives it but without an allocation
/// (integers as such, other values in their shortest exact form).
fn write_value(o: &mut Vec<u8>, v: f64) {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        o.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else if v.is_finite() {
        o.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        o.extend_from_slice(format_value(v).as_bytes());
    }
}

/// OpenMetrics families without the closing `# EOF` line.
fn encode_openmetrics_body(families: &[MetricFamily]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for mf in families {
        if mf.metric.is_empty() {
            continue;
        }
        let name = mf.name();
        let (family, kind) = match mf.type_() {
            MetricType::COUNTER => (name.strip_suffix("_total").unwrap_or(name), "counter"),
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        if !mf.help().is_empty() {
            let _ = writeln!(out, "# HELP {family} {}", escape_help(mf.help()));
        }
        for m in &mf.metric {
            let labels = &m.label;
            match mf.type_() {
                MetricType::COUNTER => sample(
                    &mut out,
                    &format!("{family}_total"),
                    labels,
                    None,
                    m.counter.value(),
                ),
                MetricType::GAUGE => sample(&mut out, family, labels, None, m.gauge.value()),
                MetricType::UNTYPED => sample(&mut out, family, labels, None, m.untyped.value()),
                MetricType::HISTOGRAM => {
                    let h = &m.histogram;
                    let mut inf_seen = false;
                    for b in &h.bucket {
                        inf_seen |= b.upper_bound().is_infinite();
                        sample(
                            &mut out,
                            &format!("{family}_bucket"),
                            labels,
                            Some(("le", b.upper_bound())),
                            b.cumulative_count() as f64,
                        );
                    }
                    if !inf_seen {
                        sample(
                            &mut out,
                            &format!("{family}_bucket"),
                            labels,
                            Some(("le", f64::INFINITY)),
                            h.sample_count() as f64,
                        );
                    }
                    sample(
                        &mut out,
                        &format!("{family}_count"),
                        labels,
                        None,
                        h.sample_count() as f64,
                    );
                    sample(
                        &mut out,
                        &format!("{family}_sum"),
                        labels,
                        None,
                        h.sample_sum(),
                    );
                }
                MetricType::SUMMARY => {
                    let s = &m.summary;
                    for q in &s.quantile {
                        sample(
                            &mut out,
                            family,
                            labels,
                            Some(("quantile", q.quantile())),
                            q.value(),
                        );
                    }
                    sample(
                        &mut out,
                        &format!("{family}_count"),
                        labels,
                        None,
                        s.sample_count() as f64,
                    );
                    sample(
                        &mut out,
                        &format!("{family}_sum"),
                        labels,
                        None,
                        s.sample_sum(),
                    );
                }
            }
        }
    }
    out
}

fn sample(
    out: &mut String,
    name: &str,
    labels: &[LabelPair],
    extra: Option<(&str, f64)>,
    value: f64,
) {
    out.push_str(name);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for l in labels {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{}=\"{}\"", l.name(), escape_label(l.value()));
        }
        if let Some((k, v)) = extra {
            if !first {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", format_value(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// Formats a sample value as Prometheus and OpenMetrics expect.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('\n', r"\n")
        .replace('"', "\\\"")
}

fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('\n', r"\n")
        .replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

    use super::*;

    #[test]
    fn prometheus_prefers_openmetrics() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(prom), Format::OpenMetrics);
        assert_eq!(negotiate(""), Format::Text);
        assert_eq!(negotiate("text/plain"), Format::Text);
        assert_eq!(
            negotiate("application/openmetrics-text;version=0.0.1"),
            Format::Text
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0,text/plain"),
            Format::Text
        );
        assert_eq!(
            negotiate("application/openmetrics-text"),
            Format::OpenMetrics
        );
    }

    #[test]
    fn openmetrics_counter_histogram_and_eof() {
        let r = Registry::new();
        let c = IntCounterVec::new(
            Opts::new("x_requests_total", "Requests \"served\"."),
            &["path"],
        )
        .unwrap();
        c.with_label_values(&["/a\"b"]).inc_by(3);
        let h = Histogram::with_opts(
            HistogramOpts::new("x_latency_seconds", "Latency.").buckets(vec![0.5, 1.0]),
        )
        .unwrap();
        h.observe(0.7);
        r.register(Box::new(c)).unwrap();
        r.register(Box::new(h)).unwrap();
        let text = encode_openmetrics(&r.gather());
        assert!(text.contains("# TYPE x_requests counter\n"), "{text}");
        assert!(
            text.contains("# HELP x_requests Requests \\\"served\\\".\n"),
            "{text}"
        );
        assert!(
            text.contains("x_requests_total{path=\"/a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"0.5\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_latency_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_latency_seconds_sum 0.7\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_bounds_keep_their_decimal_spelling() {
        let mut o = Vec::new();
        line(&mut o, "h", "_bucket", &[("id", "1")], Some(1e-6), 3.0);
        line(
            &mut o,
            "h",
            "_bucket",
            &[("id", "1")],
            Some(f64::INFINITY),
            1.5e-7,
        );
        let text = String::from_utf8(o).unwrap();
        assert_eq!(
            text,
            "h_bucket{id=\"1\",le=\"0.000001\"} 3\nh_bucket{id=\"1\",le=\"+Inf\"} 1.5e-7\n"
        );
    }

    #[test]
    fn values() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.25), "0.25");
    }
}
