//! Placement without waiting for an RCU grace period.
//!
//! Every move of another task into a cgroup takes the kernel's global
//! cgroup migration lock (`cgroup_threadgroup_rwsem`) for writing. When
//! nobody has taken it for a while, taking it first waits for an RCU grace
//! period (rcu_sync), 10-30 ms on an idle node, and the mover holds
//! cgroup_mutex meanwhile, so nothing else about cgroups proceeds. Once it
//! has been taken, it stays quick to take until a grace period passes
//! without anybody taking it. (The `favordynmods` mount option keeps it
//! quick for good, and makes every fork and exit on the node slower.)
//!
//! Apptainer's command-line tool (`<prefix>/bin/apptainer`) execs the
//! starter some tens of milliseconds after it starts. The kernel program
//! reports the tool's exec (a "launcher", trusted by file identity like the
//! starters); from then until its starter runs, the tool exits, or
//! [`WINDOW`] passes, a thread here takes the lock every [`POKE_EVERY`] by
//! "moving" itself into the cgroup it is already in (and for
//! [`AFTER_START`] more, while the starter is placed). When the starter
//! arrives the lock is quick to take, and placement skips the wait. Forks
//! and exits on the node take the slower path only inside these windows.
use std::{
    collections::BTreeMap,
    io::Write as _,
    sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    time::{Duration, Instant},
};

use prometheus::IntCounter;

use super::placement::Placer;
use crate::error_chain::chain;
use crate::model::event::KernelEvent;

/// How long after a launcher's exec its starter is waited for.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// How long the lock is still kept warm after the starter's exec: its
/// placement (a few writes, each of which would otherwise wait again once a
/// grace period has passed without one) runs meanwhile.
pub(crate) const AFTER_START: Duration = Duration::from_millis(50);
/// How often the lock is taken inside a window: well under the shortest
/// grace period (a few jiffies: 4 ms a jiffy at HZ=250).
pub(crate) const POKE_EVERY: Duration = Duration::from_millis(2);
/// Launchers waited for at once; beyond that the oldest is forgotten.
pub(crate) const MAX_PENDING: usize = 4096;
/// Events queued for the warm-up thread; beyond that they are dropped
/// (a dropped launch only loses its warm-up).
const QUEUE: usize = 1024;

/// The launchers whose starter has not come yet, and until when each is
/// waited for. Pure: time and liveness come from the caller.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    pending: BTreeMap<u32, Instant>,
}

impl Windows {
    /// A launcher was executed by process `tgid` at `now`. Returns whether
    /// this opens a window (none was open).
    pub(crate) fn launched(&mut self, tgid: u32, now: Instant) -> bool {
        let opened = self.pending.is_empty();
        if self.pending.len() >= MAX_PENDING
            && !self.pending.contains_key(&tgid)
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, deadline)| **deadline)
                .map(|(t, _)| *t)
        {
            self.pending.remove(&oldest);
        }
        self.pending.insert(tgid, now + WINDOW);
        opened
    }

    /// Process `tgid` executed a starter at `now`: its launcher's window
    /// ends [`AFTER_START`] later, once the placement has had its lock.
    pub(crate) fn started(&mut self, tgid: u32, now: Instant) {
        if let Some(deadline) = self.pending.get_mut(&tgid) {
            *deadline = (*deadline).min(now + AFTER_START);
        }
    }

    /// Whether the lock should be kept warm at `now`; forgets launchers
    /// whose window is over or whose process is gone.
    pub(crate) fn active(&mut self, now: Instant, alive: impl Fn(u32) -> bool) -> bool {
        self.pending
            .retain(|tgid, deadline| *deadline > now && alive(*tgid));
        !self.pending.is_empty()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
enum Msg {
    Launched(u32),
    Started(u32),
}

/// What the warm-up thread did, for the agent's own metrics.
#[derive(Clone)]
pub(crate) struct Counters {
    /// Windows opened.
    pub windows: IntCounter,
    /// Times the lock was taken.
    pub writes: IntCounter,
}

/// The event reader's side: passes launches and starts to the warm-up
/// thread without ever blocking.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: SyncSender<Msg>,
}

impl Handle {
    /// Starts the warm-up thread.
    pub(crate) fn spawn(placer: Placer, counters: Counters) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("cgroup-prewarm".into())
            .spawn(move || run(&placer, &rx, &counters))?;
        Ok(Self { tx })
    }

    /// Passes on a launcher's exec or a starter's.
    pub(crate) fn observe(&self, ev: &KernelEvent) {
        let msg = match ev {
            KernelEvent::LauncherExec { tgid, .. } => Msg::Launched(*tgid),
            KernelEvent::Started { tgid, .. } => Msg::Started(*tgid),
            _ => return,
        };
        if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
            tracing::debug!("the cgroup warm-up thread has stopped");
        }
    }
}

fn alive(tgid: u32) -> bool {
    let Ok(pid) = i32::try_from(tgid) else {
        return false;
    };
    // Signal 0: only whether the process exists (EPERM means it does).
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn run(placer: &Placer, rx: &mpsc::Receiver<Msg>, counters: &Counters) {
    let tid = u32::try_from(nix::unistd::gettid().as_raw()).unwrap_or(0);
    let mut windows = Windows::default();
    let mut last_poke: Option<Instant> = None;
    loop {
        let first = if windows.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            let wait = last_poke.map_or(Duration::ZERO, |t| POKE_EVERY.saturating_sub(t.elapsed()));
            rx.recv_timeout(wait)
        };
        let now = Instant::now();
        let mut apply = |m: Msg| match m {
            Msg::Launched(tgid) => {
                if windows.launched(tgid, now) {
                    counters.windows.inc();
                    tracing::debug!(launcher = tgid, "cgroup warm-up window opened");
                }
            }
            Msg::Started(tgid) => windows.started(tgid, now),
        };
        match first {
            Ok(m) => apply(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(m) = rx.try_recv() {
            apply(m);
        }
        if !windows.active(Instant::now(), alive) {
            last_poke = None;
            continue;
        }
        if last_poke.is_some_and(|t| t.elapsed() < POKE_EVERY) {
            continue;
        }
        let started = Instant::now();
        match poke(placer, tid) {
            Ok(()) => {
                counters.writes.inc();
                if last_poke.is_none() {
                    tracing::debug!(
                        seconds = started.elapsed().as_secs_f64(),
                        "cgroup warm-up: first lock of the window"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %chain(e.as_ref()), "cgroup warm-up disabled: taking the cgroup migration lock failed; placements may wait for an RCU grace period (see --cgroup.prewarm)");
                return;
            }
        }
        last_poke = Some(started);
    }
}

/// Writes this thread's id into the cgroup it is in (read afresh each time,
/// so a thread moved by an administrator stays where it was moved).
fn poke(placer: &Placer, tid: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let file = placer.own_thread_file(tid)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .with_context(|| format!("opening {}", file.display()))?;
    f.write_all(format!("{tid}\n").as_bytes())
        .with_context(|| format!("writing {tid} to {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_lasts_until_the_starter_comes() {
        let t0 = Instant::now();
        let mut w = Windows::default();
        assert!(!w.active(t0, |_| true));
        assert!(w.launched(10, t0));
        assert!(
            !w.launched(11, t0),
            "a second launcher joins the open window"
        );
        assert!(w.active(t0 + Duration::from_millis(5), |_| true));
        let t1 = t0 + Duration::from_millis(10);
        w.started(10, t1);
        w.started(11, t1);
        w.started(12, t1);
        // The placement that follows still finds the lock warm.
        assert!(w.active(t1 + AFTER_START - Duration::from_millis(1), |_| true));
        assert!(!w.active(t1 + AFTER_START, |_| true));
        assert!(w.is_empty());
    }

    #[test]
    fn a_window_closes_when_the_launcher_exits_or_time_is_up() {
        let t0 = Instant::now();
        let mut w = Windows::default();
        w.launched(10, t0);
        w.launched(11, t0 + Duration::from_millis(500));
        assert!(w.active(t0 + WINDOW - Duration::from_millis(1), |_| true));
        // 10's time is up, 11 is still waited for.
        assert!(w.active(t0 + WINDOW, |_| true));
        assert!(!w.active(t0 + WINDOW, |tgid| tgid != 11));
        assert!(w.is_empty());
    }

    #[test]
    fn pending_launchers_are_bounded() {
        let t0 = Instant::now();
        let mut w = Windows::default();
        for i in 0..(MAX_PENDING as u32 + 10) {
            w.launched(i, t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(w.pending.len(), MAX_PENDING);
        // The oldest were forgotten, the newest kept.
        assert!(!w.pending.contains_key(&0));
        assert!(w.pending.contains_key(&(MAX_PENDING as u32 + 9)));
    }
}
