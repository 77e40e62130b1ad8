//! One HTTP connection's life: admission into the [`Pool`], the wait for
//! its first byte (before anything is allocated for it), the TLS
//! handshake, the requests, and what cut it short, counted and logged at
//! most once a second per kind.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use prometheus::{IntCounterVec, IntGauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::Notify,
    time::{Instant, Sleep},
};

use super::{
    Server,
    limits::{Limits, Pool, Refusal, Timeouts, client_key},
};
use crate::{host::limits::LogThrottle, sync::lock};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// hyper's smallest read buffer limit; requests need far less.
const MAX_BUF: usize = 8 * 1024;
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What cut a connection short, for
/// `apptheus_http_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its slot went to a connection of an address that held fewer.
    Evicted,
    /// No first byte, or no next request on a kept-alive connection, in time.
    Idle,
    /// A request's headers did not arrive in time.
    Headers,
    TlsHandshakeTimeout,
    /// A failed handshake, or plain HTTP sent to the TLS port.
    TlsHandshakeFailed,
    /// A response write made no progress in time (the client does not read).
    WriteStall,
    /// Open longer than [`Limits::lifetime`].
    Lifetime,
}

impl Cut {
    pub const ALL: [Cut; 7] = [
        Cut::Evicted,
        Cut::Idle,
        Cut::Headers,
        Cut::TlsHandshakeTimeout,
        Cut::TlsHandshakeFailed,
        Cut::WriteStall,
        Cut::Lifetime,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cut::Evicted => "evicted",
            Cut::Idle => "idle_timeout",
            Cut::Headers => "header_timeout",
            Cut::TlsHandshakeTimeout => "tls_handshake_timeout",
            Cut::TlsHandshakeFailed => "tls_handshake_failed",
            Cut::WriteStall => "write_timeout",
            Cut::Lifetime => "lifetime_limit",
        }
    }
}

/// Rejection reasons, for `apptheus_http_connections_rejected_total{reason}`.
pub const REFUSALS: [Refusal; 2] = [Refusal::PerAddress, Refusal::Total];

/// The reason of `apptheus_http_requests_rejected_total` for a request
/// answered 429 because its address already had answers under way.
pub const REQUEST_REFUSALS: [&str; 1] = ["per_address_responses"];

/// Bytes handed to hyper at a time: hyper asks for the next piece only
/// once it has written most of the last, so an answer counts as under way
/// until it is nearly all written.
const PIECE: usize = 64 * 1024;

/// Closes an evicted connection: its task waits on this.
#[derive(Debug, Default)]
pub struct Evict(Notify);

impl Evict {
    fn evict(&self) {
        // Stores a permit if the task is not waiting yet.
        self.0.notify_one();
    }
}

struct Logs {
    refused: LogThrottle,
    throttled: LogThrottle,
    cut: LogThrottle,
    idle: LogThrottle,
    accept: LogThrottle,
    ended: LogThrottle,
}

/// Every listener's connections, counted together.
pub struct Connections {
    pool: Mutex<Pool<Arc<Evict>>>,
    rejected: IntCounterVec,
    closed: IntCounterVec,
    requests_rejected: IntCounterVec,
    open: IntGauge,
    logs: Logs,
}

impl Connections {
    pub fn new(limits: Limits, metrics: &crate::export::metrics::AgentMetrics) -> Self {
        // Every reason's series from the start, 0 until it happens.
        for r in REFUSALS {
            metrics.http_rejected.with_label_values(&[r.label()]);
        }
        for c in Cut::ALL {
            metrics.http_closed.with_label_values(&[c.label()]);
        }
        for r in REQUEST_REFUSALS {
            metrics.http_requests_rejected.with_label_values(&[r]);
        }
        Self {
            pool: Mutex::new(Pool::new(limits)),
            rejected: metrics.http_rejected.clone(),
            closed: metrics.http_closed.clone(),
            requests_rejected: metrics.http_requests_rejected.clone(),
            open: metrics.http_open.clone(),
            logs: Logs {
                refused: LogThrottle::new(LOG_INTERVAL),
                throttled: LogThrottle::new(LOG_INTERVAL),
                cut: LogThrottle::new(LOG_INTERVAL),
                idle: LogThrottle::new(LOG_INTERVAL),
                accept: LogThrottle::new(LOG_INTERVAL),
                ended: LogThrottle::new(LOG_INTERVAL),
            },
        }
    }

    pub fn limits(&self) -> Limits {
        lock(&self.pool).limits().clone()
    }

    /// Logs a failed accept, at most once a second.
    pub fn accept_failed(&self, e: &io::Error, retry_in: Duration) {
        if let Some(suppressed) = self.logs.accept.permit() {
            tracing::warn!(error = %e, ?retry_in, suppressed, "HTTP: accepting a connection failed");
        }
    }

    fn count_cut(&self, peer: SocketAddr, cut: Cut) {
        self.closed.with_label_values(&[cut.label()]).inc();
        // A kept-alive connection left idle is the normal end of a
        // scraper's connection between scrapes.
        let logs = if cut == Cut::Idle {
            &self.logs.idle
        } else {
            &self.logs.cut
        };
        if let Some(suppressed) = logs.permit() {
            if cut == Cut::Idle {
                tracing::debug!(%peer, reason = cut.label(), suppressed, "HTTP: connection cut");
            } else {
                tracing::info!(%peer, reason = cut.label(), suppressed, "HTTP: connection cut");
            }
        }
    }

    fn release(&self, key: IpAddr, id: u64) {
        let mut pool = lock(&self.pool);
        pool.remove(key, id);
        self.open.set(gauge(pool.open()));
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A connection's slot; freed when dropped.
struct Slot {
    server: Arc<Server>,
    key: IpAddr,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.conns.release(self.key, self.id);
    }
}

/// Takes a slot for a connection just accepted and starts serving it, or
/// resets it. Never waits.
pub fn admit(server: &Arc<Server>, stream: TcpStream, peer: SocketAddr) {
    let conns = &server.conns;
    let key = client_key(peer.ip());
    let evict = Arc::new(Evict::default());
    let admitted = {
        let mut pool = lock(&conns.pool);
        let r = pool.admit(key, Arc::clone(&evict));
        conns.open.set(gauge(pool.open()));
        r
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            conns.rejected.with_label_values(&[refusal.label()]).inc();
            if let Some(suppressed) = conns.logs.refused.permit() {
                tracing::warn!(%peer, reason = refusal.label(), suppressed, "HTTP: connection refused");
            }
            reset(&stream);
            return;
        }
    };
    if let Some(victim) = admitted.evicted {
        victim.evict();
    }
    let slot = Slot {
        server: Arc::clone(server),
        key,
        id: admitted.id,
    };
    tokio::spawn(run(slot, stream, peer, admitted.timeouts, evict));
}

/// An answer under way, counted against its address until dropped.
struct Responding {
    server: Arc<Server>,
    key: IpAddr,
}

impl Responding {
    fn start(server: &Arc<Server>, key: IpAddr, peer: SocketAddr) -> Option<Self> {
        if lock(&server.conns.pool).start_response(key) {
            return Some(Self {
                server: Arc::clone(server),
                key,
            });
        }
        let conns = &server.conns;
        conns
            .requests_rejected
            .with_label_values(&[REQUEST_REFUSALS[0]])
            .inc();
        if let Some(suppressed) = conns.logs.throttled.permit() {
            tracing::warn!(%peer, suppressed, "HTTP: request refused, its address has answers under way");
        }
        None
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        lock(&self.server.conns.pool).end_response(self.key);
    }
}

/// A response body handed out in pieces of [`PIECE`] bytes, each a copy,
/// holding its [`Responding`] as long as it holds the answer: once the last
/// piece is taken, what is left of the answer is at most two pieces in
/// hyper's hands, whoever (a client that reads all but the end) stalls.
pub struct Paced {
    data: Bytes,
    responding: Option<Responding>,
}

impl Paced {
    fn new(data: Bytes, responding: Option<Responding>) -> Self {
        Self { data, responding }
    }
}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.data.is_empty() {
            this.responding = None;
            return Poll::Ready(None);
        }
        let n = this.data.len().min(PIECE);
        let piece = if n == this.data.len() && this.responding.is_none() {
            std::mem::take(&mut this.data)
        } else {
            let piece = Bytes::copy_from_slice(&this.data[..n]);
            this.data = this.data.slice(n..);
            piece
        };
        if this.data.is_empty() {
            // Frees the answer, and its count.
            this.data = Bytes::new();
            this.responding = None;
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.len() as u64)
    }
}

/// The handler's answer to `req`, or a 429 when `key`'s address already
/// has answers under way (`key` is None only when fuzzing).
async fn answer<B>(
    server: &Arc<Server>,
    req: &hyper::Request<B>,
    key: Option<(IpAddr, SocketAddr)>,
) -> hyper::Response<Paced> {
    use http_body_util::BodyExt as _;
    let responding = match key {
        Some((key, peer)) => match Responding::start(server, key, peer) {
            Some(r) => Some(r),
            None => {
                let mut r = hyper::Response::new(Paced::new(
                    Bytes::from_static(b"Too many requests under way from this address\n"),
                    None,
                ));
                *r.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from_static("1"),
                );
                return r;
            }
        },
        None => None,
    };
    let (parts, body) = server.respond(req).await.into_parts();
    let data = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    hyper::Response::from_parts(parts, Paced::new(data, responding))
}

/// Closes with a reset: nothing is left in TIME_WAIT, and the client
/// learns at once.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger);
}

/// How a connection ended, when not cut.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("{0}")]
    Cut(Cut),
    #[error("{0}")]
    Http(hyper::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

async fn run(slot: Slot, stream: TcpStream, peer: SocketAddr, t: Timeouts, evict: Arc<Evict>) {
    let server = Arc::clone(&slot.server);
    let lifetime = server.conns.limits().lifetime;
    let served = tokio::select! {
        biased;
        () = evict.0.notified() => Err(Ended::Cut(Cut::Evicted)),
        r = tokio::time::timeout(lifetime, serve(stream, &server, t, (slot.key, peer))) => {
            r.unwrap_or(Err(Ended::Cut(Cut::Lifetime)))
        }
    };
    match served {
        Ok(()) => {}
        Err(Ended::Cut(cut)) => server.conns.count_cut(peer, cut),
        Err(e) => {
            if let Some(suppressed) = server.conns.logs.ended.permit() {
                tracing::debug!(%peer, error = %e, suppressed, "HTTP connection ended with an error");
            }
        }
    }
    drop(slot);
}

async fn serve(
    stream: TcpStream,
    server: &Arc<Server>,
    t: Timeouts,
    key: (IpAddr, SocketAddr),
) -> Result<(), Ended> {
    let accepted = Instant::now();
    // Nothing is allocated for the connection before its first byte.
    tokio::time::timeout(t.first_byte, stream.readable())
        .await
        .map_err(|_| Ended::Cut(Cut::Idle))??;
    let headers_by = accepted + t.headers;
    let tls = server.web.as_ref().and_then(|w| w.current().tls.clone());
    let stall = server.conns.limits().write_stall;
    match tls {
        None => serve_http(stream, server, headers_by, stall, Some(key)).await,
        Some(tls) => {
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout_at(headers_by, stream.peek(&mut first))
                .await
                .map_err(|_| Ended::Cut(Cut::TlsHandshakeTimeout))??;
            if peeked == 0 {
                return Ok(());
            }
            if first[0] != TLS_HANDSHAKE {
                // Tell a plain-HTTP client what went wrong, as Go's servers
                // do, rather than leave it to make sense of a TLS alert.
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(
                        b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
                    ),
                )
                .await;
                let _ = stream.shutdown().await;
                return Err(Ended::Cut(Cut::TlsHandshakeFailed));
            }
            let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
            let tls_stream = tokio::time::timeout_at(headers_by, accept)
                .await
                .map_err(|_| Ended::Cut(Cut::TlsHandshakeTimeout))?
                .map_err(|_| Ended::Cut(Cut::TlsHandshakeFailed))?;
            serve_http(tls_stream, server, headers_by, stall, Some(key)).await
        }
    }
}

async fn serve_http<I>(
    io: I,
    server: &Arc<Server>,
    headers_by: Instant,
    stall: Duration,
    key: Option<(IpAddr, SocketAddr)>,
) -> Result<(), Ended>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::{TokioIo, TokioTimer};

    let flags = Arc::new(Flags::default());
    let io = Watched {
        io,
        stall,
        sleep: None,
        flags: Arc::clone(&flags),
    };
    let handler = Arc::clone(server);
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let handler = Arc::clone(&handler);
        // Where a scrape comes from (sampling follows each scraper).
        if let Some((_, peer)) = key {
            req.extensions_mut().insert(super::Peer(peer.ip()));
        }
        async move { Ok::<_, std::convert::Infallible>(answer(&handler, &req, key).await) }
    });
    // The first request's headers are due by `headers_by`; later ones (and
    // the idle time before them) get as long.
    let header_timeout = headers_by
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_BUF)
        // A client that shuts down its sending side after its request
        // (`printf ... | nc`) still gets the answer.
        .half_close(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
    match served {
        Ok(()) => Ok(()),
        Err(_) if flags.write_stalled.load(Ordering::Relaxed) => Err(Ended::Cut(Cut::WriteStall)),
        Err(e) if e.is_timeout() => Err(Ended::Cut(if flags.in_request.load(Ordering::Relaxed) {
            Cut::Headers
        } else {
            Cut::Idle
        })),
        Err(e) => Err(Ended::Http(e)),
    }
}

#[cfg(feature = "testing")]
/// Serves one connection's worth of bytes from `io` as a connection just
/// accepted is served (without its slot and first-byte wait): for fuzzing
/// the request handling in memory.
pub(crate) async fn serve_stream<I>(io: I, server: &Arc<Server>) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = server.conns.limits();
    serve_http(
        io,
        server,
        Instant::now() + limits.headers,
        limits.write_stall,
        None,
    )
    .await
    .map_err(|e| e.to_string())
}

/// What [`Watched`] saw, read after hyper is done with the connection.
#[derive(Debug, Default)]
struct Flags {
    /// Bytes of a request came in since the last response bytes went out.
    in_request: AtomicBool,
    /// A write made no progress within the stall limit.
    write_stalled: AtomicBool,
}

/// The connection's stream, watched: a write that stays pending longer
/// than `stall` fails (hyper has no write timeout), and reads and writes
/// tell whether the client is in the middle of a request.
struct Watched<I> {
    io: I,
    stall: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    flags: Arc<Flags>,
}

impl<I> Watched<I> {
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        wrote: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Ok(v)) => {
                self.sleep = None;
                if wrote(&v) {
                    // Response bytes: what comes in next is a new request.
                    self.flags.in_request.store(false, Ordering::Relaxed);
                }
                Poll::Ready(Ok(v))
            }
            Poll::Pending => {
                let stall = self.stall;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.flags.write_stalled.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not read the response",
                    )));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.flags.in_request.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        this.watch(cx, r, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r, |()| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, r, |()| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::AgentMetrics;
    use tokio::io::{AsyncReadExt as _, DuplexStream};

    fn server(limits: Limits) -> Arc<Server> {
        Arc::new(Server::with_limits(
            AgentMetrics::new(),
            "/metrics".into(),
            Arc::new(AtomicBool::new(true)),
            None,
            limits,
        ))
    }

    async fn serve_duplex(server: &Arc<Server>, headers: Duration, io: DuplexStream) -> Ended {
        let stall = server.conns.limits().write_stall;
        let key = Some(("127.0.0.1".parse().unwrap(), "127.0.0.1:1".parse().unwrap()));
        match serve_http(io, server, Instant::now() + headers, stall, key).await {
            Ok(()) => panic!("the connection ended without being cut"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_reason_is_exported_from_the_start() {
        let metrics = AgentMetrics::new();
        let _server = Connections::new(Limits::default(), &metrics);
        let text = String::from_utf8(
            metrics
                .encode(crate::export::exposition::Format::Text)
                .unwrap(),
        )
        .unwrap();
        let series = |name: &str, reason: &str| format!("{name}{{reason=\"{reason}\"}} 0\n");
        for r in REFUSALS {
            let want = series("apptheus_http_connections_rejected_total", r.label());
            assert!(text.contains(&want), "{want}");
        }
        for c in Cut::ALL {
            let want = series("apptheus_http_connections_closed_total", c.label());
            assert!(text.contains(&want), "{want}");
        }
        let want = series("apptheus_http_requests_rejected_total", REQUEST_REFUSALS[0]);
        assert!(text.contains(&want), "{want}");
        assert!(text.contains("\napptheus_http_connections 0\n"), "{text}");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_cut_after_the_write_stall() {
        let s = server(Limits {
            write_stall: Duration::from_millis(300),
            ..Limits::default()
        });
        let (mut client, io) = tokio::io::duplex(4096);
        // Twenty pipelined scrapes, and no read: the answers fill the pipe.
        client
            .write_all(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let ended = serve_duplex(&s, Duration::from_secs(10), io).await;
        assert!(matches!(ended, Ended::Cut(Cut::WriteStall)), "{ended:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(client);
    }

    #[tokio::test]
    async fn unfinished_headers_and_a_silent_kept_alive_connection_are_told_apart() {
        let s = server(Limits::default());
        let (mut client, io) = tokio::io::duplex(64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        let ended = serve_duplex(&s, Duration::from_millis(200), io).await;
        assert!(matches!(ended, Ended::Cut(Cut::Headers)), "{ended:?}");

        let (mut client, io) = tokio::io::duplex(64 * 1024);
        let talk = async {
            client
                .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let n = client.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            // Then silence, connection kept alive.
            client
        };
        let (ended, _client) = tokio::join!(serve_duplex(&s, Duration::from_millis(300), io), talk);
        assert!(matches!(ended, Ended::Cut(Cut::Idle)), "{ended:?}");
    }

    #[tokio::test]
    async fn a_big_answer_counts_against_its_address_until_its_last_piece_is_taken() {
        use http_body_util::BodyExt as _;
        let s = server(Limits {
            max_responses_per_address: 1,
            ..Limits::default()
        });
        let key: IpAddr = "127.0.0.1".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let r = Responding::start(&s, key, peer).unwrap();
        assert!(Responding::start(&s, key, peer).is_none(), "one at a time");
        let answer = Bytes::from(vec![7u8; PIECE * 2 + 5]);
        let mut body = Paced::new(answer.clone(), Some(r));
        let mut got = Vec::new();
        for left in [true, true, false] {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
            assert_eq!(
                Responding::start(&s, key, peer).is_none(),
                left,
                "counted while pieces are left: {left}"
            );
        }
        assert!(body.frame().await.is_none());
        assert_eq!(got, answer);
        let rejected = s
            .conns
            .requests_rejected
            .with_label_values(&[REQUEST_REFUSALS[0]])
            .get();
        assert_eq!(rejected, 3);
    }

    #[tokio::test]
    async fn a_request_beyond_the_answers_under_way_gets_429() {
        let s = server(Limits {
            max_responses_per_address: 0,
            ..Limits::default()
        });
        let (mut client, io) = tokio::io::duplex(64 * 1024);
        let talk = async {
            client
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        };
        let key = Some(("127.0.0.1".parse().unwrap(), "127.0.0.1:1".parse().unwrap()));
        let stall = s.conns.limits().write_stall;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (served, answer) = tokio::join!(serve_http(io, &s, deadline, stall, key), talk);
        assert!(served.is_ok());
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
    }

    async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Whether the agent closed (or reset) `s` within a second.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_full_server_refuses_an_address_over_its_cap_and_evicts_for_a_lighter_one() {
        let s = server(Limits {
            max_connections: 3,
            max_per_address: 2,
            ..Limits::default()
        });
        let listener = super::super::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(super::super::serve(listener, Arc::clone(&s)));
        let open = |n: i64| {
            let s = Arc::clone(&s);
            async move {
                for _ in 0..100 {
                    if s.conns.open.get() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{} open, expected {n}", s.conns.open.get());
            }
        };
        let mut a1 = connect_from([127, 0, 0, 1], addr).await;
        open(1).await;
        let mut a2 = connect_from([127, 0, 0, 1], addr).await;
        open(2).await;
        let mut a3 = connect_from([127, 0, 0, 1], addr).await;
        assert!(closed(&mut a3).await, "a third of 127.0.0.1 is refused");
        let mut b1 = connect_from([127, 0, 0, 2], addr).await;
        open(3).await;
        // Full: 127.0.0.3 holds none, 127.0.0.1 two; its oldest goes.
        let mut c1 = connect_from([127, 0, 0, 3], addr).await;
        assert!(closed(&mut a1).await, "the oldest of the heaviest address");
        open(3).await;
        assert!(!closed(&mut a2).await && !closed(&mut b1).await && !closed(&mut c1).await);

        let refused = s
            .conns
            .rejected
            .with_label_values(&[Refusal::PerAddress.label()])
            .get();
        let evicted = s
            .conns
            .closed
            .with_label_values(&[Cut::Evicted.label()])
            .get();
        assert_eq!((refused, evicted), (1, 1));
        task.abort();
    }
}
