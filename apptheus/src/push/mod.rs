//! Pushing the metrics, for nodes that Prometheus cannot scrape: to a
//! Pushgateway, and with Prometheus remote write 1.0. Each target has its
//! own task, so a slow or failing target never delays sampling or the
//! other target.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, StatusCode, header};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prometheus::proto::MetricFamily;
use tokio::{task::JoinHandle, time::Instant};
use url::Url;

use crate::{
    duration::parse_duration,
    export::{cadence::Reader, metrics::AgentMetrics},
};

pub mod pushgateway;
pub mod remote_write;

/// The `job` label of pushed metrics.
pub const JOB: &str = "apptheus";
/// A push that takes longer than this has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry waits this long; each further one twice as long.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Retries wait at most this long (or the push interval, if longer).
const MAX_RETRY: Duration = Duration::from_secs(30);
/// `--push.interval` unless given: what Pushgateway and remote-write users
/// expect, as often as Prometheus scrapes by default.
const DEFAULT_INTERVAL: &str = "15s";

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PushArgs {
    /// Push the metrics to this Prometheus Pushgateway (e.g.
    /// http://pushgateway:9091), grouped by job="apptheus" and
    /// instance=<host name>. user:password@ in the URL is sent as basic auth.
    #[arg(long = "push.gateway-url", value_name = "URL", value_parser = parse_url)]
    pub gateway_url: Option<Url>,

    /// Send the metrics with Prometheus remote write 1.0 to this URL (e.g.
    /// http://prometheus:9090/api/v1/write), labelled job="apptheus" and
    /// instance=<host name>. user:password@ in the URL is sent as basic auth.
    #[arg(long = "push.remote-write-url", value_name = "URL", value_parser = parse_url)]
    pub remote_write_url: Option<Url>,

    /// How often to push: 15s by default, as Prometheus scrapes. Each
    /// push is served a sample taken just before it (see --monitor.interval).
    #[arg(long = "push.interval", value_name = "DURATION", value_parser = parse_push_interval, default_value = DEFAULT_INTERVAL)]
    pub interval: Duration,

    /// The instance label of pushed metrics (default: the host name).
    #[arg(long = "push.instance", value_name = "NAME")]
    pub instance: Option<String>,
}

fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "'{s}' must be an http:// or https:// URL with a host"
        ));
    }
    Ok(url)
}

fn parse_push_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{s}' is too short: push at most every 100ms"));
    }
    Ok(d)
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot determine the host name for the instance label ({0}); set --push.instance")]
    Hostname(std::io::Error),
    #[error("the TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("building the request for {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("encoding the metrics: {0}")]
    Encode(String),
    #[error("sending to {url}: {source}")]
    Send {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One place to push to.
pub enum Target {
    Pushgateway(pushgateway::Pushgateway),
    RemoteWrite(remote_write::RemoteWrite),
}

impl Target {
    /// The `target` label of the push counters.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Pushgateway(_) => "pushgateway",
            Target::RemoteWrite(_) => "remote_write",
        }
    }

    fn request(&self, families: &[MetricFamily]) -> Result<Request<Full<Bytes>>, PushError> {
        match self {
            Target::Pushgateway(t) => t.request(families),
            Target::RemoteWrite(t) => t.request(families),
        }
    }

    fn url(&self) -> &str {
        match self {
            Target::Pushgateway(t) => t.url(),
            Target::RemoteWrite(t) => t.url(),
        }
    }
}

/// Starts a task per configured target; none when nothing is configured.
pub fn spawn(
    args: &PushArgs,
    metrics: Arc<AgentMetrics>,
) -> Result<Vec<JoinHandle<()>>, PushError> {
    if args.gateway_url.is_none() && args.remote_write_url.is_none() {
        return Ok(Vec::new());
    }
    let instance = match &args.instance {
        Some(i) => i.clone(),
        None => hostname()?,
    };
    let interval = args.interval;
    let client = client()?;
    let mut targets = Vec::new();
    if let Some(url) = &args.gateway_url {
        targets.push(Target::Pushgateway(pushgateway::Pushgateway::new(
            url, &instance,
        )));
    }
    if let Some(url) = &args.remote_write_url {
        targets.push(Target::RemoteWrite(remote_write::RemoteWrite::new(
            url, &instance,
        )));
    }
    Ok(targets
        .into_iter()
        .map(|t| {
            tracing::info!(target = t.name(), url = %t.url(), %instance, ?interval, "pushing metrics");
            tokio::spawn(run(t, client.clone(), metrics.clone(), interval))
        })
        .collect())
}

fn hostname() -> Result<String, PushError> {
    let name = nix::unistd::gethostname()
        .map_err(|e| PushError::Hostname(e.into()))?
        .to_string_lossy()
        .into_owned();
    let name = name.trim();
    if name.is_empty() {
        return Err(PushError::Hostname(std::io::Error::other(
            "the host name is empty",
        )));
    }
    Ok(name.to_string())
}

fn client() -> Result<HttpClient, PushError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "loading a system CA certificate failed");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(certificates = added, "system CA certificates for pushing");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

/// The wait before retry number `failed` (1 for the first).
pub fn backoff(failed: u32, interval: Duration) -> Duration {
    let doublings = failed.saturating_sub(1).min(16);
    FIRST_RETRY
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY.max(interval))
}

async fn run(target: Target, client: HttpClient, metrics: Arc<AgentMetrics>, interval: Duration) {
    let name = target.name();
    let pushes = metrics.pushes.with_label_values(&[name]);
    let failures = metrics.push_failures.with_label_values(&[name]);
    let mut failed: u32 = 0;
    // The first push after the first samples.
    let mut next = Instant::now() + interval;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        // Sampled for the push, or just before it.
        metrics.fresh(Reader::Push(name)).await;
        match push_once(&target, &client, &metrics).await {
            Ok(()) => {
                pushes.inc();
                if failed > 0 {
                    tracing::info!(target = name, failed, "pushing works again");
                }
                failed = 0;
                next = (started + interval).max(Instant::now());
            }
            Err(e) => {
                failures.inc();
                failed = failed.saturating_add(1);
                let wait = backoff(failed, interval);
                // Logarithmic: a long outage does not flood the log.
                if failed.is_power_of_two() {
                    tracing::warn!(target = name, error = %e, failed, retry_in = ?wait, "push failed");
                } else {
                    tracing::debug!(target = name, error = %e, failed, retry_in = ?wait, "push failed");
                }
                next = Instant::now() + wait;
            }
        }
    }
}

/// Gathers fresh metrics and sends them once.
async fn push_once(
    target: &Target,
    client: &HttpClient,
    metrics: &AgentMetrics,
) -> Result<(), PushError> {
    let req = target.request(&metrics.gather())?;
    let url = target.url().to_string();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
        .await
        .map_err(|_| PushError::Timeout { url: url.clone() })?
        .map_err(|source| PushError::Send {
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    // Read (a bounded part of) the body either way, so that the connection
    // can be reused.
    let body = tokio::time::timeout(
        REQUEST_TIMEOUT,
        Limited::new(response.into_body(), 4096).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
    .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    Err(PushError::Status { url, status, body })
}

/// Builds a request with the URL's credentials, if any, as basic auth.
fn request(method: hyper::Method, url: &Url, content_type: &str) -> hyper::http::request::Builder {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    let mut b = Request::builder()
        .method(method)
        .uri(clean.as_str())
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::USER_AGENT,
            format!("apptheus/{}", crate::build_info::VERSION),
        );
    if !url.username().is_empty() {
        use base64::Engine as _;
        let user = percent_decode(url.username());
        let password = url.password().map(percent_decode).unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        b = b.header(header::AUTHORIZATION, format!("Basic {token}"));
    }
    b
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A copy of the families whose `job` and `instance` labels (the grouping
/// labels that pushing adds) are renamed `exported_job` and
/// `exported_instance`, as Prometheus does when it scrapes them.
pub fn without_target_labels(families: &[MetricFamily]) -> Vec<MetricFamily> {
    let mut out = families.to_vec();
    for mf in &mut out {
        for m in &mut mf.metric {
            for l in &mut m.label {
                if l.name() == "job" || l.name() == "instance" {
                    let renamed = format!("exported_{}", l.name());
                    l.set_name(renamed);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The push flags on their own, as the command line takes them.
    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        push: PushArgs,
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let i = Duration::from_millis(500);
        assert_eq!(backoff(1, i), Duration::from_millis(250));
        assert_eq!(backoff(2, i), Duration::from_millis(500));
        assert_eq!(backoff(3, i), Duration::from_secs(1));
        assert_eq!(backoff(20, i), MAX_RETRY);
        assert_eq!(backoff(u32::MAX, i), MAX_RETRY);
        assert_eq!(
            backoff(30, Duration::from_secs(120)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn flags() {
        let a = Flags::try_parse_from([
            "apptheus",
            "--push.gateway-url=http://gw:9091/",
            "--push.remote-write-url=https://u:p@prom/api/v1/write",
            "--push.interval=15s",
        ])
        .unwrap();
        assert_eq!(a.push.gateway_url.unwrap().as_str(), "http://gw:9091/");
        assert_eq!(a.push.interval, Duration::from_secs(15));
        let a = Flags::try_parse_from(["apptheus", "--push.interval=1m"]).unwrap();
        assert_eq!(a.push.interval, Duration::from_secs(60));
        // Pushing every 15 s unless told (whatever --monitor.interval is:
        // see the cli tests).
        let a = Flags::try_parse_from(["apptheus"]).unwrap();
        assert!(a.push.gateway_url.is_none());
        assert_eq!(a.push.interval, Duration::from_secs(15));
        for bad in [
            "--push.gateway-url=gw:9091",
            "--push.gateway-url=ftp://gw",
            "--push.remote-write-url=nope",
            "--push.interval=1ms",
        ] {
            let e = Flags::try_parse_from(["apptheus", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth() {
        let url = Url::parse("https://us%40er:p%3Ass@host:1/x").unwrap();
        let r = request(hyper::Method::PUT, &url, "text/plain")
            .body(())
            .unwrap();
        assert_eq!(r.uri().to_string(), "https://host:1/x");
        use base64::Engine as _;
        let want = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(r.headers()[header::AUTHORIZATION], format!("Basic {want}"));
    }

    #[test]
    fn grouping_labels_in_the_metrics_are_renamed() {
        let r = prometheus::Registry::new();
        let g = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("x_info", "x"),
            &["instance", "other"],
        )
        .unwrap();
        g.with_label_values(&["inst", "o"]).set(1);
        r.register(Box::new(g)).unwrap();
        let out = without_target_labels(&r.gather());
        let names: Vec<&str> = out[0].metric[0].label.iter().map(|l| l.name()).collect();
        assert_eq!(names, vec!["exported_instance", "other"]);
    }
}
