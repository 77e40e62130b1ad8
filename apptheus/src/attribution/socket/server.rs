//! The accept loop and the life of one connection.
use std::{
    io,
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec};
use tokio::{
    io::AsyncReadExt,
    net::UnixStream,
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

use super::{
    ConnId, ConnectionCaps, SocketEvent, SocketListenerHandle,
    caps::{Refusal, Slot, Tracker},
    verify::{Identified, NoHook, Peer, PeerCreds, VerifyError, identify},
};
use crate::error_chain::chain;
use crate::{
    attribution::trust::TrustedSet,
    host::{
        pacing::{Backoff, LogThrottle},
        rlimit::fd_limit,
    },
};

/// Bytes a trusted peer may send before its reads are slowed down.
const DRAIN_FREE_BYTES: u64 = 64 * 1024;
/// Pause after each read once a peer has sent more than that: at most
/// `DRAIN_BUF` bytes per pause (about 1 MiB/s), so a peer that writes
/// without end costs a few hundred wake-ups a second, and its close is
/// still seen within a fraction of a second (a socket buffer's worth).
const DRAIN_PAUSE: Duration = Duration::from_millis(4);
const DRAIN_BUF: usize = 4096;
const LOG_INTERVAL: Duration = Duration::from_secs(1);

struct Counters {
    accepted: IntCounter,
    rejected: IntCounter,
    error: IntCounter,
}

struct Throttles {
    rejected: LogThrottle,
    refused: LogThrottle,
    failed: LogThrottle,
    accept: LogThrottle,
}

struct Shared {
    trusted: watch::Receiver<TrustedSet>,
    tx: mpsc::Sender<SocketEvent>,
    counters: Counters,
    tracker: Arc<Tracker>,
    verify_slots: Arc<Semaphore>,
    logs: Throttles,
    procfs: PathBuf,
}

/// Serves the monitoring socket with the default [`ConnectionCaps`]; see
/// [`serve_with`].
pub(crate) async fn serve(
    listener: SocketListenerHandle,
    procfs: PathBuf,
    trusted: watch::Receiver<TrustedSet>,
    tx: mpsc::Sender<SocketEvent>,
    connections: IntCounterVec,
) {
    serve_with(
        listener,
        ConnectionCaps::default(),
        procfs,
        trusted,
        tx,
        connections,
    )
    .await
}

/// Accepts connections until the receiver of `tx` is dropped (or this
/// future is), verifying each caller on its own task; reports trusted
/// callers on `tx` and counts every connection in `connections`, by
/// result (the agent's `apptheus_socket_connections_total{result}`).
///
/// On return, open connections are closed without `Disconnected` events
/// and the socket file is removed. Callers are identified through the
/// /proc mounted at `procfs`.
pub async fn serve_with(
    listener: SocketListenerHandle,
    limits: ConnectionCaps,
    procfs: PathBuf,
    trusted: watch::Receiver<TrustedSet>,
    tx: mpsc::Sender<SocketEvent>,
    connections: IntCounterVec,
) {
    let limits = match fd_limit().and_then(|soft| limits.fitted_to(soft).map(|l| (soft, l))) {
        Some((soft, fitted)) => {
            tracing::warn!(
                fd_limit = soft,
                max_connections = fitted.max_connections,
                "the descriptor limit is low: monitoring socket connections capped accordingly; \
                 raise LimitNOFILE (or call socket::raise_fd_limit at start-up)"
            );
            fitted
        }
        None => limits,
    };
    let counter = |r: &str| connections.with_label_values(&[r]);
    let shared = Arc::new(Shared {
        trusted,
        tx,
        counters: Counters {
            accepted: counter("accepted"),
            rejected: counter("rejected"),
            error: counter("error"),
        },
        verify_slots: Arc::new(Semaphore::new(limits.max_concurrent_verifications.max(1))),
        tracker: Tracker::new(limits),
        logs: Throttles {
            rejected: LogThrottle::new(LOG_INTERVAL),
            refused: LogThrottle::new(LOG_INTERVAL),
            failed: LogThrottle::new(LOG_INTERVAL),
            accept: LogThrottle::new(LOG_INTERVAL),
        },
        procfs,
    });
    let next_id = AtomicU64::new(1);
    // Dropping the set (when this future ends) aborts every connection
    // task, which closes its socket.
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            biased;
            () = shared.tx.closed() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %chain(&e), "a monitoring socket connection task panicked");
                }
            }
            accepted = accept(&listener) => match accepted {
                Ok(stream) => {
                    backoff.reset();
                    let conn = ConnId(next_id.fetch_add(1, Ordering::Relaxed));
                    admit(&shared, &mut tasks, conn, stream);
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM persist until something
                    // is freed; ECONNABORTED and the like are one-offs. Back
                    // off in every case: never spin, never give up.
                    let delay = backoff.next_delay();
                    if let Some(suppressed) = shared.logs.accept.permit() {
                        tracing::warn!(error = %chain(&e), retry_in = ?delay, suppressed, "monitoring socket: accept failed");
                    }
                    tokio::time::sleep(delay).await;
                }
            },
        }
    }
    tracing::debug!(
        open = shared.tracker.open(),
        "monitoring socket server stopping"
    );
}

async fn accept(listener: &SocketListenerHandle) -> io::Result<UnixStream> {
    listener.listener.accept().await.map(|(stream, _)| stream)
}

/// Reads the caller's credentials and takes a slot for it, or closes it.
fn admit(shared: &Arc<Shared>, tasks: &mut JoinSet<()>, conn: ConnId, stream: UnixStream) {
    let creds = match PeerCreds::of(stream.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            shared.counters.error.inc();
            log_failure(shared, &e);
            return;
        }
    };
    match shared.tracker.admit(creds.uid) {
        Ok(slot) => {
            tasks.spawn(handle(Arc::clone(shared), conn, stream, creds, slot));
        }
        Err(refusal) => refuse(shared, &creds, refusal),
    }
}

fn refuse(shared: &Shared, creds: &PeerCreds, refusal: Refusal) {
    shared.counters.rejected.inc();
    if let Some(suppressed) = shared.logs.refused.permit() {
        tracing::warn!(
            uid = creds.uid,
            pid = creds.pid,
            reason = %refusal,
            suppressed,
            "monitoring socket: connection refused"
        );
    }
}

fn log_failure(shared: &Shared, e: &VerifyError) {
    let Some(suppressed) = shared.logs.failed.permit() else {
        return;
    };
    if e.is_peer_gone() {
        tracing::debug!(error = %chain(e), suppressed, "monitoring socket: caller gone before it was identified");
    } else {
        tracing::warn!(error = %chain(e), suppressed, "monitoring socket: cannot identify a caller");
    }
}

enum Outcome {
    Identified(Identified),
    Failed(VerifyError),
    TimedOut,
    Crashed,
}

/// Verifies the caller on a blocking thread, within the time limit.
async fn verify(shared: &Shared, stream: &UnixStream, creds: PeerCreds) -> Outcome {
    let work = async {
        let Ok(permit) = Arc::clone(&shared.verify_slots).acquire_owned().await else {
            return Outcome::Crashed;
        };
        let peer = match Peer::open(stream.as_fd(), creds) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        let set = shared.trusted.borrow().clone();
        let procfs = shared.procfs.clone();
        // The permit and the pidfd go with the blocking work: if we time
        // out, they are released when it finishes, so stuck reads of /proc
        // can never hold more than `max_concurrent_verifications` threads.
        let blocking = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            identify(&procfs, &peer, &set, &mut NoHook)
        });
        match blocking.await {
            Ok(Ok(id)) => Outcome::Identified(id),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Crashed,
        }
    };
    tokio::time::timeout(shared.tracker.limits().verify_timeout, work)
        .await
        .unwrap_or(Outcome::TimedOut)
}

/// One connection: verify, report, wait for the peer to close.
async fn handle(
    shared: Arc<Shared>,
    conn: ConnId,
    stream: UnixStream,
    creds: PeerCreds,
    mut slot: Slot,
) {
    let id = match verify(&shared, &stream, creds).await {
        Outcome::Identified(id) => id,
        Outcome::Failed(e) => {
            shared.counters.error.inc();
            log_failure(&shared, &e);
            return;
        }
        Outcome::TimedOut | Outcome::Crashed => {
            shared.counters.error.inc();
            if let Some(suppressed) = shared.logs.failed.permit() {
                tracing::warn!(
                    pid = creds.pid,
                    uid = creds.uid,
                    suppressed,
                    "monitoring socket: caller verification did not complete"
                );
            }
            return;
        }
    };
    if !id.trusted {
        shared.counters.rejected.inc();
        if let Some(suppressed) = shared.logs.rejected.permit() {
            tracing::warn!(
                uid = id.creds.uid,
                pid = id.creds.pid,
                exe = ?id.exe_path,
                dev = id.exe.dev,
                ino = id.exe.ino,
                suppressed,
                "monitoring socket: caller is not a trusted starter; closing"
            );
        }
        return;
    }
    if let Err(refusal) = slot.promote() {
        refuse(&shared, &id.creds, refusal);
        return;
    }
    shared.counters.accepted.inc();
    tracing::debug!(
        conn = conn.0,
        pid = id.creds.pid,
        uid = id.creds.uid,
        "monitoring socket: starter connected"
    );
    let connected = SocketEvent::Connected {
        conn,
        pid: id.creds.pid,
        uid: id.creds.uid,
        gid: id.creds.gid,
        exe: id.exe,
        start_time: id.start_time,
    };
    if shared.tx.send(connected).await.is_err() {
        return;
    }
    drain(stream).await;
    drop(slot);
    tracing::debug!(
        conn = conn.0,
        pid = id.creds.pid,
        "monitoring socket: starter disconnected"
    );
    let _ = shared.tx.send(SocketEvent::Disconnected { conn }).await;
}

/// Waits until the peer closes, discarding whatever it sends into a small
/// fixed buffer, slowed down once it has sent more than a little.
async fn drain(mut stream: UnixStream) {
    let mut buf = [0u8; DRAIN_BUF];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                total = total.saturating_add(n as u64);
                if total > DRAIN_FREE_BYTES {
                    tokio::time::sleep(DRAIN_PAUSE).await;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}
