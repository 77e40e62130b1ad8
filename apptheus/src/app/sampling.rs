//! Statistics: each container's members' kernel counters and its cgroups'
//! statistics read and combined; ended containers expired; the exposition
//! refreshed. (How a container ends, with a final sample, is `ending`.)
use std::time::{Duration, Instant};

use apptheus_common::Stat;
use tokio::sync::mpsc;

use super::Agent;
use crate::{
    export::{on_demand::Trigger, snapshot::Snapshot},
    model::event::KernelEvent,
};

/// Containers sampled between two looks at pending kernel events (a
/// container's sample takes some tens of microseconds: placing a new
/// container waits a millisecond at most).
const EVENTS_EVERY: usize = 16;

/// How often the registry is compared with the kernel's maps when no event
/// was lost (ends are reported by the kernel; this is a safety net).
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

impl Agent {
    /// Samples every live container, then publishes: for a reader
    /// (`trigger`), or at start (None). Kernel events that arrive meanwhile
    /// are handled between containers, so that a sample of thousands of
    /// containers does not hold up the placement of new ones.
    pub(super) fn sample_all(
        &mut self,
        events: &mut mpsc::Receiver<KernelEvent>,
        trigger: Option<Trigger>,
    ) {
        let started = Instant::now();
        self.metrics.demand.started(started);
        self.sources.begin_round();
        for (i, key) in self.registry.live_keys().into_iter().enumerate() {
            if i % EVENTS_EVERY == EVENTS_EVERY - 1 {
                while let Ok(ev) = events.try_recv() {
                    self.on_kernel_event(ev);
                }
            }
            if self.kernel.is_none() {
                self.find_moves(key);
            }
            self.sample_container(key);
        }
        // Without the kernel programs, an end shows in a sample.
        if self.kernel.is_none() {
            self.end_empty_containers();
        }
        self.show_runs();
        self.publish_sample();
        self.sources.publish(&self.metrics);
        self.metrics
            .own
            .sample_duration
            .set(started.elapsed().as_secs_f64());
        if let Some(t) = trigger {
            self.metrics
                .own
                .samples
                .with_label_values(&[t.name()])
                .inc();
        }
        self.metrics.demand.published(started);
    }

    /// What is not a sample and must happen whether anybody reads or not:
    /// placements and removals retried, ended containers' series expired,
    /// and, when the kernel lost events (or every [`RECONCILE_EVERY`]),
    /// the registry reconciled with the kernel's maps.
    pub(super) fn housekeep(&mut self) {
        let lost = self.kernel.as_ref().map_or(0, |k| k.stat(Stat::EventsLost));
        let now = Instant::now();
        let due = lost > self.lost_seen
            || self
                .reconciled
                .is_none_or(|t| now.duration_since(t) >= RECONCILE_EVERY);
        if lost > self.lost_seen {
            self.metrics
                .own
                .ebpf_events_lost
                .inc_by(lost - self.lost_seen);
            self.lost_seen = lost;
        }
        if due {
            self.reconciled = Some(now);
            self.reconcile();
            self.end_empty_containers();
        }
        self.report_drops();
        self.retry_placements();
        self.retry_removals();
        self.end_finished_without_kernel();
        // A run that has lived long enough, or runs something of its own,
        // is a container whether or not anybody reads.
        self.show_runs();
        self.tidy_runs();
        let expired = self.registry.expire(now);
        for c in &expired {
            tracing::debug!(container_id = %c.id, "series removed after the grace period");
            self.sources.forget(c.key);
        }
        if !expired.is_empty() || self.publish_soon {
            self.publish_changes();
        }
    }

    /// Reads the kernel counters of a live container's members and the
    /// statistics of its cgroups (and processes, for the families its
    /// cgroups cannot give), and combines them into what is exported
    /// (within a sample of every container).
    pub(super) fn sample_container(&mut self, key: u64) {
        let Some(c) = self.registry.get_mut(key) else {
            return;
        };
        if !c.life.is_live() {
            return;
        }
        self.sources.sample(c, self.kernel.as_ref());
        self.sample_processes(key);
    }

    /// [`Self::sample_container`] on its own (a kernel event asks for it).
    pub(super) fn sample_one(&mut self, key: u64) {
        self.sources.begin_one();
        self.sample_container(key);
    }

    /// A watched process (one a runtime moved into its own cgroup) exited:
    /// its cgroup is read now, before the runtime removes it.
    pub(super) fn on_watched_exit(&mut self, mk: u64, tgid: u32) {
        if let Some(ck) = self.registry.container_of(mk) {
            tracing::debug!(
                pid = tgid,
                "a process in a runtime's cgroup exited; sampling"
            );
            self.sample_one(ck);
        }
    }

    /// Makes changes made outside a sample (a container's final sample,
    /// expired series) what scrapes see: at once, unless the sample for a
    /// scrape about to come is ready (its exposition encoded for it): then
    /// once that scrape came (the soon tick retries).
    pub(super) fn publish_changes(&mut self) {
        self.publish_soon = true;
        if !self.metrics.demand.hold(Instant::now()) {
            self.publish();
        }
    }

    /// Makes the registry's current state what scrapes see.
    pub(super) fn publish(&mut self) {
        let snapshot = self.snapshot();
        self.metrics.publish(snapshot);
    }

    /// [`Self::publish`] after a sample: the exposition is encoded for the
    /// scheduled scrapes before it replaces the last, so that they only
    /// copy it, and never wait for it.
    fn publish_sample(&mut self) {
        let snapshot = self.snapshot();
        self.metrics.publish_prepared(snapshot);
    }

    fn snapshot(&mut self) -> Snapshot {
        self.publish_soon = false;
        let programs = match (&self.kernel, &self.bpf_stats) {
            (Some(k), Some(_)) => k.program_stats(),
            _ => Vec::new(),
        };
        self.metrics
            .own
            .containers
            .set(self.registry.count() as i64);
        Snapshot::of(&self.registry, programs)
    }
}
