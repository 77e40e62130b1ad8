//! The HTTP endpoint: metrics, a landing page, health and readiness; TLS,
//! basic authentication and extra headers from `--web.config.file`.
use std::{
    hash::{Hash as _, Hasher as _},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
};
use tokio::net::{TcpListener, TcpSocket};

use crate::{
    export::{cadence::Reader, exposition, metrics::AgentMetrics},
    host::limits::{Backoff, fd_limit},
    webconfig::{WebConfigHandle, watch::Active},
};

mod conn;
pub mod limits;

pub use conn::Connections;
#[cfg(feature = "testing")]
pub(crate) use conn::serve_stream;
pub use limits::Limits;

/// The address a request came from (a request extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub IpAddr);

/// The header Prometheus (and the scrapers built on its scrape code:
/// Grafana Agent and Alloy, the OpenTelemetry Collector, vmagent) sends
/// with every scrape: a reader that sends it scrapes on a schedule.
const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";

/// Who a scrape is, for sampling: its address and, when it says it
/// scrapes on a schedule, what it says of itself (its User-Agent and its
/// timeout), which tells two scrapers at one address apart when they are
/// configured differently (timing tells them apart when not).
fn reader_of<B>(req: &Request<B>, addr: IpAddr, encoding: exposition::Encoding) -> Reader {
    let h = req.headers();
    let scraper = h.get(SCRAPE_TIMEOUT_HEADER).map(|timeout| {
        let mut hasher = std::hash::DefaultHasher::new();
        timeout.as_bytes().hash(&mut hasher);
        h.get(header::USER_AGENT)
            .map(HeaderValue::as_bytes)
            .hash(&mut hasher);
        hasher.finish()
    });
    Reader::Scrape {
        addr,
        scraper,
        encoding: encoding.index(),
    }
}

/// The encoding a request asks for: the format its Accept header prefers,
/// gzip-compressed when its Accept-Encoding allows.
fn encoding_of<B>(req: &Request<B>) -> exposition::Encoding {
    let get = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or("")
    };
    exposition::Encoding {
        format: exposition::negotiate(get(header::ACCEPT)),
        gzip: accepts_gzip(get(header::ACCEPT_ENCODING)),
    }
}

/// Connections the kernel queues for `accept`; the accept loop never
/// stops, so this only absorbs bursts (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid --web.listen-address '{addr}': {why} (expected host:port or :port)")]
    Address { addr: String, why: String },
    #[error(
        "cannot listen on {addr}: {source}; is another exporter using the port? Choose another with --web.listen-address"
    )]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Server {
    pub metrics: Arc<AgentMetrics>,
    pub telemetry_path: String,
    pub ready: Arc<AtomicBool>,
    /// `--web.config.file`, when given.
    pub web: Option<Arc<WebConfigHandle>>,
    conns: Connections,
}

impl Server {
    /// A server with the default [`Limits`], fitted under the descriptor
    /// limit.
    pub fn new(
        metrics: Arc<AgentMetrics>,
        telemetry_path: String,
        ready: Arc<AtomicBool>,
        web: Option<Arc<WebConfigHandle>>,
    ) -> Self {
        let limits = Limits::default();
        let limits = match fd_limit().and_then(|soft| limits.fitted_to(soft).map(|l| (soft, l))) {
            Some((soft, fitted)) => {
                tracing::warn!(
                    fd_limit = soft,
                    max_connections = fitted.max_connections,
                    "the descriptor limit is low: HTTP connections capped accordingly; raise LimitNOFILE"
                );
                fitted
            }
            None => limits,
        };
        Self::with_limits(metrics, telemetry_path, ready, web, limits)
    }

    /// A server with the given connection limits, as they are.
    pub fn with_limits(
        metrics: Arc<AgentMetrics>,
        telemetry_path: String,
        ready: Arc<AtomicBool>,
        web: Option<Arc<WebConfigHandle>>,
        limits: Limits,
    ) -> Self {
        let conns = Connections::new(limits, &metrics);
        Self {
            metrics,
            telemetry_path,
            ready,
            web,
            conns,
        }
    }
}

/// Parses a listen address the way Go does: ":9091" means every address.
pub fn parse_listen_address(addr: &str) -> Result<Vec<SocketAddr>, HttpError> {
    let bad = |why: &str| HttpError::Address {
        addr: addr.to_string(),
        why: why.to_string(),
    };
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        return Ok(vec![SocketAddr::from(([0u16; 8], port))]);
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(vec![sa]);
    }
    // host:port with a name (e.g. localhost:9091).
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| bad(&format!("cannot resolve host: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("host has no address"));
    }
    Ok(addrs)
}

/// Binds a listener; "every address" falls back to IPv4 only on hosts
/// without IPv6.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    match listen(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::debug!(error = %e, "IPv6 unavailable, listening on IPv4 only");
            listen(v4).map_err(|source| HttpError::Bind {
                addr: v4.to_string(),
                source,
            })
        }
        Err(source) => Err(HttpError::Bind {
            addr: addr.to_string(),
            source,
        }),
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves connections on `listener` until the task is dropped. Accepting
/// never waits for a free slot: a connection beyond the limits is refused
/// at once, or takes the slot of a heavier address's (see [`limits`]).
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let mut backoff = Backoff::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.reset();
                conn::admit(&server, stream, peer);
            }
            Err(e) => {
                // EMFILE and friends last until something is closed: back
                // off instead of spinning.
                let delay = backoff.next_delay();
                server.conns.accept_failed(&e, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Server {
    /// Authentication, the route, and the configured extra headers.
    pub(crate) async fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let active: Option<Arc<Active>> = self.web.as_ref().map(|w| w.current());
        let mut response = match active.as_ref().and_then(|a| a.auth.as_ref()) {
            Some(auth) if !auth.check(req.headers().get(header::AUTHORIZATION)).await => {
                let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"apptheus\", charset=\"UTF-8\""),
                );
                r
            }
            _ => {
                // The metrics are sampled for the scrape, or just before it.
                if req.uri().path() == self.telemetry_path
                    && let Some(Peer(addr)) = req.extensions().get::<Peer>()
                {
                    let reader = reader_of(req, *addr, encoding_of(req));
                    self.metrics.fresh(reader).await;
                }
                self.handle(req)
            }
        };
        if let Some(a) = &active {
            for (name, value) in &a.headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are supported\n",
            );
        }
        let path = req.uri().path();
        if path == self.telemetry_path {
            return self.metrics(req);
        }
        match path {
            "/" => html(&landing_page(&self.telemetry_path)),
            "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
            "/-/ready" => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "Ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Not ready: the first sample is not taken yet\n",
                    )
                }
            }
            _ => text(StatusCode::NOT_FOUND, "Not found\n"),
        }
    }

    fn metrics<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let encoding = encoding_of(req);
        let body = match self.metrics.exposition(encoding) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "encoding metrics failed");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n",
                );
            }
        };
        let mut builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, encoding.format.content_type())
            .header(header::VARY, "Accept-Encoding");
        if encoding.gzip {
            builder = builder.header(header::CONTENT_ENCODING, "gzip");
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response error\n"))
    }
}

/// Whether an Accept-Encoding header allows gzip (and does not refuse it
/// with q=0).
pub fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|part| {
        let mut it = part.split(';').map(str::trim);
        let coding = it.next().unwrap_or("");
        let q_zero = it.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn html(body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn landing_page(telemetry_path: &str) -> String {
    let path = html_escape(telemetry_path);
    format!(
        "<!DOCTYPE html>\n<html><head><title>apptheus</title></head><body>\n\
         <h1>apptheus</h1>\n<p>Per-container metrics for Apptainer, version {}.</p>\n\
         <ul>\n<li><a href=\"{path}\">Metrics</a></li>\n<li><a href=\"/-/healthy\">Health</a></li>\n\
         <li><a href=\"/-/ready\">Readiness</a></li>\n</ul>\n</body></html>\n",
        crate::build_info::VERSION_LONG
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address(":9091").unwrap(),
            vec!["[::]:9091".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            parse_listen_address("127.0.0.1:80").unwrap(),
            vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert!(
            parse_listen_address("localhost:9091")
                .unwrap()
                .iter()
                .all(|a| a.ip().is_loopback())
        );
        for bad in ["9091", ":port", "host:", ":99999"] {
            let e = parse_listen_address(bad).unwrap_err().to_string();
            assert!(e.contains("--web.listen-address"), "{e}");
        }
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
    }

    fn server(ready: bool) -> Server {
        Server::new(
            AgentMetrics::new(),
            "/metrics".into(),
            Arc::new(AtomicBool::new(ready)),
            None,
        )
    }

    fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
        let mut b = Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        s.handle(&b.body(()).unwrap())
    }

    #[test]
    fn routes() {
        let s = server(false);
        assert_eq!(get(&s, "/", &[]).status(), StatusCode::OK);
        assert_eq!(get(&s, "/-/healthy", &[]).status(), StatusCode::OK);
        assert_eq!(
            get(&s, "/-/ready", &[]).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&server(true), "/-/ready", &[]).status(), StatusCode::OK);
        assert_eq!(get(&s, "/nope", &[]).status(), StatusCode::NOT_FOUND);
        let r = get(&s, "/metrics", &[]);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let r = get(&s, "/metrics", &[("accept-encoding", "gzip")]);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let post = Request::builder()
            .method(Method::POST)
            .uri("/metrics")
            .body(())
            .unwrap();
        assert_eq!(s.handle(&post).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn auth_and_headers_from_the_web_config() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(
            &path,
            format!(
                "basic_auth_users:\n  alice: '{}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n",
                bcrypt::hash("pw", 4).unwrap()
            ),
        )
        .unwrap();
        let mut s = server(true);
        s.web = Some(WebConfigHandle::load(&path).unwrap());
        let req = |auth: Option<String>| {
            let mut b = Request::builder().uri("/metrics");
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            b.body(()).unwrap()
        };
        let basic = |up: &str| {
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(up)
            ))
        };
        for denied in [None, basic("alice:nope"), basic("bob:pw")] {
            let r = s.respond(&req(denied)).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert!(
                r.headers()[header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic ")
            );
            assert_eq!(r.headers()["x-frame-options"], "deny");
        }
        let r = s.respond(&req(basic("alice:pw"))).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-frame-options"], "deny");
    }

    #[test]
    fn landing_page_links_the_metrics_path_escaped() {
        let p = landing_page("/m\"<x>");
        assert!(p.contains("href=\"/m&quot;&lt;x&gt;\""), "{p}");
    }
}
