//! An answer under way: counted against its client's address (more at
//! once get 429), and handed to hyper in pieces so that what a slow
//! reader holds stays small.
use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;

use super::REQUEST_REFUSALS;
use crate::{http::Server, sync::lock};

/// Bytes handed to hyper at a time: hyper asks for the next piece only
/// once it has written most of the last, so an answer counts as under way
/// until it is nearly all written.
pub(super) const PIECE: usize = 64 * 1024;

/// An answer under way, counted against its address until dropped.
pub(super) struct Responding {
    server: Arc<Server>,
    key: IpAddr,
}

impl Responding {
    pub(super) fn start(server: &Arc<Server>, key: IpAddr, peer: SocketAddr) -> Option<Self> {
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
pub(super) struct Paced {
    data: Bytes,
    responding: Option<Responding>,
}

impl Paced {
    pub(super) fn new(data: Bytes, responding: Option<Responding>) -> Self {
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
pub(super) async fn answer<B>(
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
