//! Which starter runs become containers, so that no local user can flood
//! the readers with containers that never ran, or with more than a cap:
//!
//! - a user's new runs are let in at a rate, with a burst above it, and a
//!   user holds at most so many live containers (`model::caps`); a run
//!   beyond is counted by reason, and the kernel lets it go;
//! - a run the kernel reported is followed and placed at once, but shown
//!   only once it runs something of its own: a task of it executed
//!   another program (what Apptainer's starter does as soon as the
//!   container runs: its workload, or an instance's init), or it lived
//!   [`SHOW_AFTER`]. A run that ends before (a start that fails at once,
//!   such as a user running the trusted starter by hand with an argv[0]
//!   and environment of their choosing) is counted, never exported.
//!   Runs found through the monitoring socket (their starter connects
//!   only once the container is being set up) and adopted ones are shown
//!   at once.
use std::time::Instant;

use super::{Agent, StartFacts};
use crate::{
    host::clock,
    model::{
        caps::{Refusal, SHOW_AFTER},
        container::FoundBy,
    },
};

impl Agent {
    /// A new starter run: let in, or refused for its user's rate.
    pub(super) fn admit_run(&mut self, s: &StartFacts) -> bool {
        if s.found_by.at_start_up() {
            return true;
        }
        match self.caps.start(s.uid, Instant::now()) {
            Ok(()) => true,
            Err(why) => {
                self.refuse(s, why);
                false
            }
        }
    }

    /// A run about to be a container of its own: counted among its user's
    /// live containers, or refused.
    pub(super) fn admit_container(&mut self, s: &StartFacts) -> bool {
        let now = Instant::now();
        if s.found_by.at_start_up() {
            self.caps.open_anyway(s.uid, now);
            return true;
        }
        match self.caps.open(s.uid, now) {
            Ok(()) => true,
            Err(why) => {
                self.refuse(s, why);
                false
            }
        }
    }

    /// A run not followed: counted, said once per user and reason, and
    /// let go by the kernel.
    fn refuse(&mut self, s: &StartFacts, why: Refusal) {
        self.metrics
            .own
            .starter_runs_refused
            .with_label_values(&[why.label()])
            .inc();
        if self.caps.first_refusal(s.uid, why) {
            let l = self.caps.limits();
            tracing::warn!(
                uid = s.uid,
                pid = s.starter_pid,
                reason = why.label(),
                starts_per_second = l.starts_per_second,
                start_burst = l.start_burst,
                containers = l.live,
                "a user's starter run is over a cap and not followed (counted in apptheus_starter_runs_refused_total; said once per user and reason); raise {} if this is real work",
                why.flag()
            );
        } else {
            tracing::debug!(
                uid = s.uid,
                pid = s.starter_pid,
                reason = why.label(),
                "starter run refused"
            );
        }
        if let Some(k) = self.kernel.as_mut() {
            k.forget(s.key);
        }
    }

    /// Whether a run of container `ck` has run something of its own: a
    /// task of it executed a program other than its starter, or it has
    /// lived [`SHOW_AFTER`] (its key is the boot time of its start).
    fn runs_something(&self, ck: u64) -> bool {
        let Some(c) = self.registry.get(ck) else {
            return false;
        };
        let execs = |mk: u64| {
            self.kernel
                .as_ref()
                .and_then(|k| k.container(mk))
                .map(|s| s.execs)
                .or_else(|| c.member(mk)?.counters.as_ref().map(|k| k.execs))
                .unwrap_or(0)
        };
        let now = clock::boot_time_now().as_nanos() as u64;
        c.members.iter().any(|m| execs(m.key) > 1)
            || now.saturating_sub(c.key) >= SHOW_AFTER.as_nanos() as u64
    }

    /// Shows container `ck`: from now on it is exported and counted.
    fn show(&mut self, ck: u64) {
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        if c.shown {
            return;
        }
        c.shown = true;
        self.metrics.own.containers_started.inc();
        super::starts::log_started(c, FoundBy::Kernel);
        self.publish_soon = true;
    }

    /// Shows the runs not shown yet that run something of their own now
    /// (before each publication, and at every housekeeping tick).
    pub(super) fn show_runs(&mut self) {
        let waiting: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| !c.shown && c.life.is_live())
            .map(|c| c.key)
            .collect();
        for ck in waiting {
            if self.runs_something(ck) {
                self.show(ck);
            }
        }
    }

    /// First step of a container's end: its user holds one live container
    /// less; a run that was never shown is shown if it ran something, else
    /// it was no container: counted, its cgroups removed, never exported
    /// (true: the caller has nothing more to do).
    pub(super) fn close_admission(&mut self, ck: u64) -> bool {
        let Some(c) = self.registry.get(ck) else {
            return false;
        };
        if !c.life.is_live() {
            return false;
        }
        self.caps.close(c.uid);
        if c.shown {
            return false;
        }
        if self.runs_something(ck) {
            self.show(ck);
            return false;
        }
        self.metrics.own.starter_runs_unstarted.inc();
        tracing::debug!(container_id = %c.id, pid = c.starter_pid(), uid = c.uid,
            "a starter run ended without running anything of its own; not a container");
        let members: Vec<u64> = c.members.iter().map(|m| m.key).collect();
        let grace = self.args.grace_period;
        self.sources.forget(ck);
        for mk in members {
            if let Some(k) = self.kernel.as_mut() {
                k.forget(mk);
            }
            self.remove_member_cgroups(ck, mk);
        }
        if let Some(c) = self.registry.get_mut(ck) {
            for m in &mut c.members {
                m.ended = true;
            }
            c.life.end(Instant::now(), grace);
        }
        true
    }

    /// Housekeeping: runs that ended without being shown go as soon as
    /// their cgroups are gone, and each user's live count is recounted
    /// from the registry.
    pub(super) fn tidy_runs(&mut self) {
        let gone: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| !c.shown && !c.life.is_live())
            .filter(|c| c.parts.iter().all(|p| p.removal_pending.is_empty()))
            .map(|c| c.key)
            .collect();
        for ck in gone {
            self.registry.remove(ck);
        }
        self.caps
            .recount(&self.registry.live_by_user(), Instant::now());
    }
}
