//! Bounds on what callers of the socket can make the daemon hold, and a
//! rate limit for log lines they can cause.
use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::sync::lock;

/// Limits on connections to the monitoring socket.
///
/// Every open connection costs the daemon one descriptor (two, plus a
/// blocking thread, while it is being verified). An untrusted connection is
/// closed as soon as it is identified, so what a local user can hold open is
/// bounded by `max_pending_per_uid` (connections still being verified), and
/// what one user's containers can hold by `max_trusted_per_uid`. Connections
/// beyond a cap are closed at once and counted as rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections overall, being verified or trusted. Keep it under
    /// the daemon's descriptor limit (RLIMIT_NOFILE).
    pub max_connections: usize,
    /// Connections of one uid still being verified.
    pub max_pending_per_uid: usize,
    /// Trusted connections of one uid: one per running container, so a
    /// user's many containers cannot take every slot from other users.
    pub max_trusted_per_uid: usize,
    /// Time allowed to identify a caller, waiting for a verification slot
    /// included.
    pub verify_timeout: Duration,
    /// Verifications running at once (each reads `/proc` on a blocking
    /// thread); bounds the threads a stuck `/proc` could hold.
    pub max_concurrent_verifications: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_pending_per_uid: 64,
            max_trusted_per_uid: 1024,
            verify_timeout: Duration::from_secs(5),
            max_concurrent_verifications: 16,
        }
    }
}

/// Descriptors left for the rest of the daemon (cgroup files, HTTP, kernel
/// maps, verifications in flight) when the connection cap is fitted to the
/// descriptor limit.
const FD_RESERVE: u64 = 256;

impl Limits {
    /// These limits with `max_connections` lowered, if need be, so that the
    /// connections fit under a soft descriptor limit of `soft` with
    /// [`FD_RESERVE`] to spare; `None` when they already fit.
    pub(crate) fn fitted_to(&self, soft: u64) -> Option<Self> {
        let room = usize::try_from(soft.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
        (self.max_connections > room).then(|| Self {
            max_connections: room,
            ..self.clone()
        })
    }
}

/// Why a connection was refused before or after verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PendingPerUid,
    TrustedPerUid,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Total => "too many open connections",
            Self::PendingPerUid => "too many connections of this uid awaiting verification",
            Self::TrustedPerUid => "too many trusted connections of this uid",
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct UidCount {
    pending: usize,
    trusted: usize,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_uid: HashMap<u32, UidCount>,
}

/// Counts open connections; a [`Slot`] releases its count when dropped.
#[derive(Debug)]
pub(crate) struct Tracker {
    limits: Limits,
    state: Mutex<State>,
}

impl Tracker {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes a slot for a new connection of `uid`, awaiting verification.
    pub(crate) fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, Refusal> {
        let mut st = lock(&self.state);
        if st.total >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        let count = st.per_uid.entry(uid).or_default();
        if count.pending >= self.limits.max_pending_per_uid {
            if count.pending == 0 && count.trusted == 0 {
                st.per_uid.remove(&uid);
            }
            return Err(Refusal::PendingPerUid);
        }
        count.pending += 1;
        st.total += 1;
        Ok(Slot {
            tracker: Arc::clone(self),
            uid,
            trusted: false,
        })
    }

    /// Open connections overall, for tests and logs.
    pub(crate) fn open(&self) -> usize {
        lock(&self.state).total
    }
}

/// One open connection's share of the limits.
#[derive(Debug)]
pub(crate) struct Slot {
    tracker: Arc<Tracker>,
    uid: u32,
    trusted: bool,
}

impl Slot {
    /// Moves the connection from "awaiting verification" to "trusted".
    pub(crate) fn promote(&mut self) -> Result<(), Refusal> {
        if self.trusted {
            return Ok(());
        }
        let max = self.tracker.limits.max_trusted_per_uid;
        let mut st = lock(&self.tracker.state);
        let count = st.per_uid.entry(self.uid).or_default();
        if count.trusted >= max {
            return Err(Refusal::TrustedPerUid);
        }
        count.pending = count.pending.saturating_sub(1);
        count.trusted += 1;
        self.trusted = true;
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = lock(&self.tracker.state);
        st.total = st.total.saturating_sub(1);
        if let Some(count) = st.per_uid.get_mut(&self.uid) {
            if self.trusted {
                count.trusted = count.trusted.saturating_sub(1);
            } else {
                count.pending = count.pending.saturating_sub(1);
            }
            if count.pending == 0 && count.trusted == 0 {
                st.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, pending: usize, trusted: usize) -> Limits {
        Limits {
            max_connections: total,
            max_pending_per_uid: pending,
            max_trusted_per_uid: trusted,
            ..Limits::default()
        }
    }

    #[test]
    fn per_uid_pending_cap_applies_to_that_uid_only() {
        let t = Tracker::new(limits(10, 2, 5));
        let a = t.admit(1000).unwrap();
        let _b = t.admit(1000).unwrap();
        assert_eq!(t.admit(1000).unwrap_err(), Refusal::PendingPerUid);
        let _c = t.admit(1001).unwrap();
        drop(a);
        let _d = t.admit(1000).unwrap();
        assert_eq!(t.open(), 3);
    }

    #[test]
    fn overall_cap_counts_every_uid() {
        let t = Tracker::new(limits(2, 5, 5));
        let _a = t.admit(1).unwrap();
        let _b = t.admit(2).unwrap();
        assert_eq!(t.admit(3).unwrap_err(), Refusal::Total);
    }

    #[test]
    fn trusted_connections_free_the_pending_count_and_have_their_own_cap() {
        let t = Tracker::new(limits(10, 1, 2));
        let mut a = t.admit(7).unwrap();
        a.promote().unwrap();
        let mut b = t.admit(7).unwrap();
        b.promote().unwrap();
        let mut c = t.admit(7).unwrap();
        assert_eq!(c.promote().unwrap_err(), Refusal::TrustedPerUid);
        // c still awaits verification, so the pending cap of 1 is reached.
        assert_eq!(t.admit(7).unwrap_err(), Refusal::PendingPerUid);
        drop((a, b, c));
        assert_eq!(t.open(), 0);
        assert!(
            lock(&t.state).per_uid.is_empty(),
            "per-uid entries are freed"
        );
    }

    #[test]
    fn the_connection_cap_is_fitted_under_the_descriptor_limit() {
        let l = Limits::default();
        assert_eq!(l.fitted_to(1 << 20), None, "a high limit changes nothing");
        let fitted = l.fitted_to(1024).unwrap();
        assert_eq!(fitted.max_connections, 1024 - FD_RESERVE as usize);
        assert_eq!(fitted.max_trusted_per_uid, l.max_trusted_per_uid);
        assert_eq!(l.fitted_to(10).unwrap().max_connections, 16);
    }
}
