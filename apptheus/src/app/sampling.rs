//! Statistics: each container's members' kernel counters and its cgroups'
//! statistics read and combined; containers and joins ended with a final
//! sample; ended containers expired; the exposition refreshed.
use std::time::{Duration, Instant};

use apptheus_common::Stat;
use tokio::sync::mpsc;

use super::Agent;
use crate::{
    export::{cadence::Trigger, snapshot::Snapshot},
    model::{
        container::{Origin, Source},
        event::KernelEvent,
        lifecycle::Phase,
    },
};

/// Containers sampled between two looks at pending kernel events (a
/// container's sample takes some tens of microseconds: placing a new
/// container waits a millisecond at most).
const EVENTS_EVERY: usize = 16;

/// How often the registry is compared with the kernel's maps when no event
/// was lost (ends are reported by the kernel; this is a safety net).
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// Longest wait, after a master closed its connection, for its container's
/// last tasks to exit before the container is ended anyway.
pub(super) const CLOSE_SETTLE: Duration = Duration::from_secs(2);

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
        self.publish();
        self.sources.publish(&self.metrics);
        self.metrics
            .sample_duration
            .set(started.elapsed().as_secs_f64());
        if let Some(t) = trigger {
            self.metrics.samples.with_label_values(&[t.name()]).inc();
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
            self.metrics.ebpf_events_lost.inc_by(lost - self.lost_seen);
            self.lost_seen = lost;
        }
        if due {
            self.reconciled = Some(now);
            self.reconcile();
            self.end_empty_containers();
        }
        self.retry_placements();
        self.retry_removals();
        let expired = self.registry.expire(now);
        for c in &expired {
            tracing::debug!(container_id = %c.id, "series removed after the grace period");
            self.sources.forget(c.key);
        }
        if !expired.is_empty() || self.publish_soon {
            self.publish();
        }
    }

    /// Reads the kernel counters of a live container's members and the
    /// statistics of its cgroups, and combines them into what is exported
    /// (within a sample of every container).
    pub(super) fn sample_container(&mut self, key: u64) {
        // A cgroup shared with the container's starter is read as its own
        // only while nothing else runs there; from the first time another
        // process is seen there, the container's processes are read too
        // (a process of Apptainer's own may be there for a moment only).
        let (readable, crowded): (Vec<bool>, Vec<_>) = match self.registry.get(key) {
            Some(c) => c
                .parts
                .iter()
                .map(|p| {
                    if !matches!(p.origin, Origin::Shared { .. }) || p.gone {
                        return (true, None);
                    }
                    match self.stranger_in(key, &p.cgroups) {
                        Some(_) => (false, Some(p.cgroups.clone())),
                        None => (true, None),
                    }
                })
                .unzip(),
            None => return,
        };
        for cg in crowded.into_iter().flatten() {
            self.check_shared(key, &cg);
        }
        let Some(c) = self.registry.get_mut(key) else {
            return;
        };
        if !c.life.is_live() {
            return;
        }
        self.sources.sample(c, self.kernel.as_ref(), &readable);
        self.sample_processes(key);
    }

    /// [`Self::sample_container`] on its own (a kernel event asks for it).
    pub(super) fn sample_one(&mut self, key: u64) {
        self.sources.begin_one();
        self.sample_container(key);
    }

    /// The kernel saw the last task of member `mk` exit.
    pub(super) fn on_member_exited(&mut self, mk: u64) {
        let Some(ck) = self.registry.container_of(mk) else {
            return;
        };
        if ck == mk {
            self.end_container(ck);
        } else {
            self.end_member(ck, mk);
        }
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

    /// A container's last task is gone: final sample, its cgroups removed,
    /// its series kept for the grace period.
    pub(super) fn end_container(&mut self, ck: u64) {
        self.sample_one(ck);
        let grace = self.args.grace_period;
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        if !c.life.end(Instant::now(), grace) {
            return;
        }
        for m in &mut c.members {
            m.ended = true;
        }
        let members: Vec<u64> = c.members.iter().map(|m| m.key).collect();
        tracing::info!(container_id = %c.id, "container exited");
        self.publish_soon = true;
        // Its files are closed before its cgroups are removed.
        self.sources.forget(ck);
        for mk in members {
            if let Some(k) = self.kernel.as_mut() {
                k.forget(mk);
            }
            self.remove_member_cgroups(ck, mk);
        }
    }

    /// A join of an instance ended: the instance keeps what it used.
    fn end_member(&mut self, ck: u64, mk: u64) {
        self.sample_one(ck);
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        let id = c.id.clone();
        let Some(m) = c.member_mut(mk).filter(|m| !m.ended) else {
            return;
        };
        m.ended = true;
        tracing::debug!(container_id = %id, pid = m.starter_pid, "a run that joined the instance ended");
        if let Some(k) = self.kernel.as_mut() {
            k.forget(mk);
        }
        self.remove_member_cgroups(ck, mk);
        if let Some(c) = self.registry.get_mut(ck) {
            c.refresh_sample();
        }
    }

    /// Containers whose tasks are all gone have ended, even if their end
    /// was never reported (a lost event, socket mode): with the kernel
    /// programs, when the kernel no longer counts a live task of theirs;
    /// without, when their cgroups hold no task.
    fn end_empty_containers(&mut self) {
        let empty: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| c.life.phase() == Phase::Running)
            .filter(|c| match &self.kernel {
                Some(k) => c
                    .members
                    .iter()
                    .filter(|m| !m.ended)
                    .all(|m| k.container(m.key).is_none_or(|s| s.live_tasks == 0)),
                _ => {
                    !c.parts.is_empty()
                        && c.live_parts().all(|p| {
                            p.last
                                .as_ref()
                                .and_then(|s| s.threads)
                                .is_some_and(|t| t == 0)
                        })
                }
            })
            .map(|c| c.key)
            .collect();
        for key in empty {
            self.end_container(key);
        }
    }

    /// Recovers from lost events: the kernel's map is the truth.
    fn reconcile(&mut self) {
        let Some(k) = &self.kernel else { return };
        let states = k.containers();
        for (key, st) in &states {
            if self.registry.container_of(*key).is_none() && st.exited == 0 {
                tracing::warn!(
                    key,
                    "container missed by the event stream; recovered from the kernel's map"
                );
                if let Some(k) = self.kernel.as_mut() {
                    k.runq_track(*key);
                }
                self.on_start(super::StartFacts {
                    key: *key,
                    starter_pid: st.starter_tgid,
                    uid: st.uid,
                    boot_ns: st.start_boot_ns,
                    file: Some(st.starter),
                    parent_launcher: None,
                    arg0: None,
                    source: Source::Kernel,
                    socket: None,
                    cgroups: None,
                    read_from: None,
                });
            }
        }
    }

    /// Whether a container waits for its tasks after its starter closed
    /// the monitoring socket.
    pub(super) fn any_closing(&self) -> bool {
        self.registry
            .iter()
            .any(|c| matches!(c.life.phase(), Phase::Closing { .. }))
    }

    /// Ends the containers whose starter closed its connection, once their
    /// tasks are gone (so the final sample has everything) or after
    /// [`CLOSE_SETTLE`].
    pub(super) fn end_closed(&mut self) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| matches!(c.life.phase(), Phase::Closing { .. }))
            .filter(|c| {
                let gone = match &self.kernel {
                    Some(k) => c
                        .members
                        .iter()
                        .all(|m| k.container(m.key).is_none_or(|s| s.live_tasks == 0)),
                    None => !self.procfs.exists(c.starter_pid()),
                };
                gone || c.life.close_due(now)
            })
            .map(|c| c.key)
            .collect();
        for key in done {
            self.end_container(key);
        }
    }

    /// Makes the registry's current state what scrapes see.
    pub(super) fn publish(&mut self) {
        self.publish_soon = false;
        let programs = match (&self.kernel, &self.bpf_stats) {
            (Some(k), Some(_)) => k.program_stats(),
            _ => Vec::new(),
        };
        self.metrics.publish(Snapshot::of(&self.registry, programs));
        self.metrics.containers.set(self.registry.count() as i64);
    }
}
