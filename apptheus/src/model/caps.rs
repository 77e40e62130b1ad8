//! Per-user caps on starter runs, so that no local user can flood the
//! agent (and Prometheus) with containers: a user's new runs are let in at
//! a sustained rate with a burst above it (a token bucket), and a user
//! holds at most so many live containers. Pure: time is passed in, and the
//! caller counts and drops what is refused.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// The caps, per user (`--limit.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// New starter runs per second, sustained.
    pub starts_per_second: f64,
    /// New starter runs at once above the rate (the bucket's size).
    pub start_burst: u32,
    /// Live containers (not yet ended; runs not shown yet included).
    pub live: u32,
}

impl Default for Limits {
    /// Far above what a real site starts: a job array of thousands of
    /// short containers on one node starts them at tens per second (each
    /// `apptainer exec` costs its caller about 0.1-0.2 CPU seconds).
    fn default() -> Self {
        Limits {
            starts_per_second: 500.0,
            start_burst: 5000,
            live: 1024,
        }
    }
}

/// Why a run was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The user started runs faster than the rate, beyond the burst.
    Rate,
    /// The user holds the most live containers allowed.
    Live,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::Rate, Refusal::Live];

    pub const fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Live => "live",
        }
    }

    /// The flag that sets the cap.
    pub const fn flag(self) -> &'static str {
        match self {
            Refusal::Rate => "--limit.user-starts-per-second and --limit.user-start-burst",
            Refusal::Live => "--limit.user-containers",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct User {
    /// Runs the user may start now, fractional.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Live containers.
    live: u32,
}

/// Each user's state.
#[derive(Debug)]
pub struct Caps {
    limits: Limits,
    users: BTreeMap<u32, User>,
    /// (uid, reason) refused already: said once in the log.
    said: std::collections::BTreeSet<(u32, Refusal)>,
}

impl Caps {
    pub fn new(limits: Limits) -> Self {
        Caps {
            limits,
            users: BTreeMap::new(),
            said: Default::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn user(&mut self, uid: u32, now: Instant) -> &mut User {
        let full = f64::from(self.limits.start_burst);
        let rate = self.limits.starts_per_second;
        let u = self.users.entry(uid).or_insert(User {
            tokens: full,
            at: now,
            live: 0,
        });
        let elapsed = now.saturating_duration_since(u.at).as_secs_f64();
        u.tokens = (u.tokens + elapsed * rate).min(full);
        u.at = now;
        u
    }

    /// A new run of user `uid` at `now`: let in (one of the user's runs
    /// taken), or refused for its rate.
    pub fn start(&mut self, uid: u32, now: Instant) -> Result<(), Refusal> {
        let u = self.user(uid, now);
        if u.tokens >= 1.0 {
            u.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal::Rate)
        }
    }

    /// A run of user `uid` becomes a container: counted live, or refused
    /// when the user holds the most allowed.
    pub fn open(&mut self, uid: u32, now: Instant) -> Result<(), Refusal> {
        let live = self.limits.live;
        let u = self.user(uid, now);
        if u.live >= live {
            return Err(Refusal::Live);
        }
        u.live += 1;
        Ok(())
    }

    /// A container of user `uid` found without asking (adopted after a
    /// restart): counted live, whatever the cap.
    pub fn open_anyway(&mut self, uid: u32, now: Instant) {
        let u = self.user(uid, now);
        u.live += 1;
    }

    /// A container of user `uid` ended.
    pub fn close(&mut self, uid: u32) {
        if let Some(u) = self.users.get_mut(&uid) {
            u.live = u.live.saturating_sub(1);
        }
    }

    /// Sets each user's live count to what the registry says (`live`:
    /// uid and count), forgetting users with none whose runs are all
    /// refilled (so the map holds only active users).
    pub fn recount(&mut self, live: &BTreeMap<u32, u32>, now: Instant) {
        let uids: Vec<u32> = self.users.keys().chain(live.keys()).copied().collect();
        for uid in uids {
            let n = live.get(&uid).copied().unwrap_or(0);
            let full = f64::from(self.limits.start_burst);
            let u = self.user(uid, now);
            u.live = n;
            if n == 0 && u.tokens >= full {
                self.users.remove(&uid);
            }
        }
    }

    /// Whether a refusal of `uid` for `why` is the first (said in the log).
    pub fn first_refusal(&mut self, uid: u32, why: Refusal) -> bool {
        self.said.insert((uid, why))
    }

    /// Users with state.
    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// How long a starter run that has not yet run anything of its own (no
/// task of it executed another program) lives before it is shown as a
/// container anyway.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(rate: f64, burst: u32, live: u32) -> Caps {
        Caps::new(Limits {
            starts_per_second: rate,
            start_burst: burst,
            live,
        })
    }

    #[test]
    fn the_defaults_fit_a_job_array_of_thousands() {
        let l = Limits::default();
        assert!(l.start_burst >= 2000, "2,000 at once");
        assert!(l.starts_per_second >= 100.0);
        assert!(l.live >= 512);
        // 5,000 starts over 20 s (250 a second) all get in.
        let mut c = Caps::new(l);
        let t0 = Instant::now();
        for i in 0..5000u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 4);
            assert_eq!(c.start(1000, now), Ok(()), "start {i}");
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut c = caps(10.0, 5, 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(c.start(7, t0), Ok(()));
        }
        assert_eq!(c.start(7, t0), Err(Refusal::Rate));
        // 0.1 s gives one more run, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(c.start(7, t1), Ok(()));
        assert_eq!(c.start(7, t1), Err(Refusal::Rate));
        // Refilled up to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(c.start(7, t2), Ok(()));
        }
        assert_eq!(c.start(7, t2), Err(Refusal::Rate));
        // Time going backwards (it can't, but) takes nothing.
        assert_eq!(c.start(7, t0), Err(Refusal::Rate));
    }

    #[test]
    fn one_users_flood_leaves_the_others_alone() {
        let mut c = caps(1.0, 3, 2);
        let t0 = Instant::now();
        for _ in 0..3 {
            c.start(1, t0).unwrap();
        }
        assert_eq!(c.start(1, t0), Err(Refusal::Rate));
        assert_eq!(c.start(2, t0), Ok(()), "another user");
        c.open(1, t0).unwrap();
        c.open(1, t0).unwrap();
        assert_eq!(c.open(1, t0), Err(Refusal::Live));
        assert_eq!(c.open(2, t0), Ok(()));
        c.close(1);
        assert_eq!(c.open(1, t0), Ok(()), "one ended, one more");
        c.close(9);
    }

    #[test]
    fn adopted_containers_count_and_recount_follows_the_registry() {
        let mut c = caps(1.0, 3, 1);
        let t0 = Instant::now();
        c.open_anyway(5, t0);
        c.open_anyway(5, t0);
        assert_eq!(c.open(5, t0), Err(Refusal::Live));
        c.recount(&BTreeMap::from([(5, 0)]), t0);
        assert_eq!(c.open(5, t0), Ok(()));
        // A user with nothing live and every run refilled is forgotten.
        c.recount(&BTreeMap::new(), t0 + Duration::from_secs(10));
        assert_eq!(c.users(), 0);
        c.start(6, t0).unwrap();
        c.recount(&BTreeMap::new(), t0);
        assert_eq!(c.users(), 1, "still refilling");
    }

    #[test]
    fn refusals_are_said_once_per_user_and_reason() {
        let mut c = caps(1.0, 1, 1);
        assert!(c.first_refusal(1, Refusal::Rate));
        assert!(!c.first_refusal(1, Refusal::Rate));
        assert!(c.first_refusal(1, Refusal::Live));
        assert!(c.first_refusal(2, Refusal::Rate));
        assert_eq!(Refusal::Rate.label(), "rate");
    }
}
