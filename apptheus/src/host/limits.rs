//! Limits and pacing shared by the agent's servers (the monitoring socket,
//! the HTTP endpoint): the process's descriptor limit, log lines at most
//! once an interval, back-off for failing accepts.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::sync::lock;

/// The soft descriptor limit (RLIMIT_NOFILE), if it can be read.
pub(crate) fn fd_limit() -> Option<u64> {
    rlimit_nofile().ok().map(|l| l.rlim_cur)
}

/// Raises the soft descriptor limit to the hard one, as servers of many
/// connections do (service managers often start daemons with a soft limit
/// of 1,024), and returns it. Call it once at start-up, before [`serve`].
///
/// [`serve`]: super::serve
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut l = rlimit_nofile()?;
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: setrlimit reads one rlimit from `l`, which lives across
        // the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur)
}

fn rlimit_nofile() -> std::io::Result<libc::rlimit> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `l`, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

/// At most one log line per interval; counts the lines it suppressed.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now, with the number of
    /// lines suppressed since the last one; `None` to stay quiet.
    pub(crate) fn permit(&self) -> Option<u64> {
        self.permit_at(Instant::now())
    }

    fn permit_at(&self, now: Instant) -> Option<u64> {
        let mut st = lock(&self.state);
        let (last, suppressed) = &mut *st;
        match last {
            Some(t) if now.saturating_duration_since(*t) < self.interval => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

/// Exponential back-off for failing `accept` calls (EMFILE and the like):
/// the failure persists until something is closed, so retrying at once would
/// spin.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The delay to wait now; doubles up to one second.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_descriptor_limit_reaches_the_hard_limit() {
        let soft = raise_fd_limit().unwrap();
        let l = rlimit_nofile().unwrap();
        assert_eq!((soft, l.rlim_cur), (l.rlim_max, l.rlim_max));
        assert_eq!(fd_limit(), Some(soft));
    }

    #[test]
    fn throttle_lets_one_line_per_interval_and_counts_the_rest() {
        let th = LogThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(th.permit_at(t0), Some(0));
        assert_eq!(th.permit_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(th.permit_at(t0 + Duration::from_millis(900)), None);
        assert_eq!(th.permit_at(t0 + Duration::from_millis(1001)), Some(2));
        assert_eq!(th.permit_at(t0 + Duration::from_millis(1002)), None);
    }

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(5));
    }
}
