//! The connection's stream, watched for a client that stops reading and
//! for whether it is in the middle of a request.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// What [`Watched`] saw, read after hyper is done with the connection.
#[derive(Debug, Default)]
pub(super) struct Flags {
    /// Bytes of a request came in since the last response bytes went out.
    pub(super) in_request: AtomicBool,
    /// A write made no progress within the stall limit.
    pub(super) write_stalled: AtomicBool,
}

/// The connection's stream, watched: a write that stays pending longer
/// than `stall` fails (hyper has no write timeout), and reads and writes
/// tell whether the client is in the middle of a request.
pub(super) struct Watched<I> {
    pub(super) io: I,
    pub(super) stall: Duration,
    pub(super) sleep: Option<Pin<Box<Sleep>>>,
    pub(super) flags: Arc<Flags>,
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
