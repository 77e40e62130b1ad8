//! A container's life: discovered -> running -> ended -> expired. It ends
//! with its last task, however long that outlives its starter (the kernel
//! reports it; without the kernel programs, the agent looks at its tasks).
//! Pure: time is passed in, and the caller does what a transition calls
//! for (place, take the final sample, remove cgroups, drop series).
use std::time::{Duration, Instant};

/// Placement attempts (the first, then one per sample) before a container
/// whose tasks keep escaping its cgroup is left as it is.
pub const MAX_PLACEMENTS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Seen; its tasks are not all in its cgroups yet.
    Discovered,
    /// Its tasks are in its cgroups, or placement gave up on them.
    Running,
    /// Its last task is gone and its final sample taken; its series stay
    /// until `expires`.
    Ended { expires: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    phase: Phase,
    placements: u32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: Phase::Discovered,
            placements: 0,
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Not ended yet.
    pub fn is_live(&self) -> bool {
        !matches!(self.phase, Phase::Ended { .. })
    }

    /// Its tasks still have to be placed.
    pub fn needs_placement(&self) -> bool {
        self.phase == Phase::Discovered
    }

    /// A placement attempt finished, `complete` if no task was left outside.
    /// Returns true when it gives up (the tasks left outside stay there).
    pub fn placed(&mut self, complete: bool) -> bool {
        if self.phase != Phase::Discovered {
            return false;
        }
        self.placements += 1;
        let give_up = !complete && self.placements >= MAX_PLACEMENTS;
        if complete || give_up {
            self.phase = Phase::Running;
        }
        give_up
    }

    /// Placement is not possible (no cgroup could be created): running,
    /// without cgroup statistics.
    pub fn unplaced(&mut self) {
        if self.phase == Phase::Discovered {
            self.phase = Phase::Running;
        }
    }

    /// Its last task is gone: ended, its series kept for `grace`. True the
    /// first time (the caller then takes the final sample first).
    pub fn end(&mut self, now: Instant, grace: Duration) -> bool {
        if !self.is_live() {
            return false;
        }
        self.phase = Phase::Ended {
            expires: now + grace,
        };
        true
    }

    /// Whether its series are to go.
    pub fn expired(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Ended { expires } if now >= expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(35);

    #[test]
    fn a_container_is_placed_runs_ends_and_expires() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert!(l.needs_placement());
        assert!(!l.placed(true));
        assert_eq!(l.phase(), Phase::Running);
        assert!(!l.needs_placement());
        assert!(l.end(t0, GRACE));
        assert!(!l.end(t0, GRACE), "an end is taken once");
        assert!(!l.is_live());
        assert!(!l.expired(t0 + GRACE - Duration::from_millis(1)));
        assert!(l.expired(t0 + GRACE));
    }

    #[test]
    fn placement_is_retried_then_given_up() {
        let mut l = Lifecycle::default();
        for _ in 1..MAX_PLACEMENTS {
            assert!(!l.placed(false));
            assert!(l.needs_placement());
        }
        assert!(l.placed(false), "the last attempt gives up");
        assert_eq!(l.phase(), Phase::Running);
        // Later results change nothing.
        assert!(!l.placed(true));
    }

    #[test]
    fn an_unplaceable_container_still_runs_and_ends() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        l.unplaced();
        assert_eq!(l.phase(), Phase::Running);
        assert!(l.end(t0, GRACE));
    }
}
