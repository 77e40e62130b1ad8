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
        self.publish();
        // Scheduled scrapes then only copy the encoded exposition.
        self.metrics.prepare();
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

    /// The kernel saw the last task of member `mk` exit (or, without the
    /// kernel programs, its tasks are gone): the container ends with its
    /// last member, an instance with the last of its own run and its joins,
    /// whichever ends last.
    pub(super) fn on_member_exited(&mut self, mk: u64) {
        let Some(ck) = self.registry.container_of(mk) else {
            return;
        };
        let others = self
            .registry
            .get(ck)
            .is_some_and(|c| c.members.iter().any(|m| m.key != mk && !m.ended));
        if others {
            self.end_member(ck, mk);
        } else {
            self.end_container(ck);
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
        if self.ending(ck) {
            return;
        }
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

    /// One starter run of a container with others still running ended (a
    /// join of an instance, or the instance's own run while a join lives
    /// on): the container keeps what it used.
    fn end_member(&mut self, ck: u64, mk: u64) {
        self.sample_one(ck);
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        let id = c.id.clone();
        let primary = mk == c.key;
        let Some(m) = c.member_mut(mk).filter(|m| !m.ended) else {
            return;
        };
        m.ended = true;
        if primary {
            tracing::info!(container_id = %id, pid = m.starter_pid,
                "the instance's own run ended; a run that joined it goes on, and the container with it");
        } else {
            tracing::debug!(container_id = %id, pid = m.starter_pid, "a run that joined the instance ended");
        }
        if let Some(k) = self.kernel.as_mut() {
            k.forget(mk);
        }
        self.remove_member_cgroups(ck, mk);
        if let Some(c) = self.registry.get_mut(ck) {
            c.refresh_sample();
        }
    }

    /// Containers whose tasks are all gone have ended, even if their end
    /// was never reported (a lost event): with the kernel programs, when
    /// the kernel no longer counts a live task of theirs; without, see
    /// [`Self::end_finished_without_kernel`].
    fn end_empty_containers(&mut self) {
        let Some(k) = &self.kernel else {
            self.end_finished_without_kernel();
            return;
        };
        let empty: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| c.life.phase() == Phase::Running)
            .filter(|c| {
                c.members
                    .iter()
                    .filter(|m| !m.ended)
                    .all(|m| k.container(m.key).is_none_or(|s| s.live_tasks == 0))
            })
            .map(|c| c.key)
            .collect();
        for key in empty {
            self.end_container(key);
        }
    }

    /// Without the kernel programs, a starter run has ended when it holds
    /// no monitoring-socket connection and no task is left where the agent
    /// can see its tasks: in its own cgroups (which every process it forks
    /// inherits), or, where it has none, among the processes seen of it
    /// that still run. A container ends with its last run.
    pub(super) fn end_finished_without_kernel(&mut self) {
        if self.kernel.is_some() {
            return;
        }
        let keys: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| c.life.phase() == Phase::Running)
            .filter(|c| c.members.iter().any(|m| !m.ended && m.socket.is_none()))
            .map(|c| c.key)
            .collect();
        for ck in keys {
            let processes = self.processes_of(ck);
            let Some(c) = self.registry.get(ck) else {
                continue;
            };
            let finished: Vec<u64> = c
                .members
                .iter()
                .filter(|m| !m.ended && m.socket.is_none())
                .filter(|m| {
                    let own = c
                        .parts
                        .iter()
                        .filter(|p| !p.gone && p.origin != (Origin::Shared { member: m.key }))
                        .filter(|p| match p.origin {
                            Origin::Placed { member } => member == m.key,
                            // A runtime's cgroup holds the whole container's.
                            Origin::Runtime { .. } => true,
                            Origin::Shared { .. } => false,
                        })
                        .collect::<Vec<_>>();
                    let placed = own.iter().any(|p| {
                        matches!(p.origin, Origin::Placed { .. }) && !p.cgroups.is_empty()
                    });
                    if placed {
                        own.iter().all(|p| {
                            crate::cgroup::placement::Placer::dirs(&p.cgroups)
                                .iter()
                                .all(|d| crate::cgroup::placement::procs(d).is_empty())
                        })
                    } else {
                        processes.is_empty()
                    }
                })
                .map(|m| m.key)
                .collect();
            for mk in finished {
                self.on_member_exited(mk);
            }
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
                });
            }
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
        self.publish_soon = false;
        let programs = match (&self.kernel, &self.bpf_stats) {
            (Some(k), Some(_)) => k.program_stats(),
            _ => Vec::new(),
        };
        self.metrics.publish(Snapshot::of(&self.registry, programs));
        self.metrics.containers.set(self.registry.count() as i64);
    }
}
