//! How containers end: a starter run's last task exited (the kernel
//! reports it, or, without the kernel programs, its tasks are gone), a
//! join ends with a final sample of the container, a container with its
//! last run: final sample, cgroups removed, series kept for the grace
//! period. Ends the kernel never reported (a lost event) are found here
//! too.
use std::time::Instant;

use super::Agent;
use crate::model::{container::Origin, lifecycle::Phase};

impl Agent {
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

    /// A container's last task is gone: final sample, its cgroups removed,
    /// its series kept for the grace period.
    pub(super) fn end_container(&mut self, ck: u64) {
        if self.close_admission(ck) {
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
    pub(super) fn end_empty_containers(&mut self) {
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
                        matches!(p.origin, Origin::Placed { .. }) && !p.cgroups().is_empty()
                    });
                    if placed {
                        own.iter().all(|p| {
                            p.cgroups()
                                .distinct_dirs()
                                .iter()
                                .all(|d| crate::cgroup::tasks::procs(d).is_empty())
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
}
