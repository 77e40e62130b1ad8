//! At start-up: the containers an earlier run of the agent placed that
//! still run are taken over; the cgroups of those that ended meanwhile
//! are removed; runs of trusted starters that no marked cgroup tells of
//! are then looked for among the processes (see `recovering`). Only
//! directories apptheus marked as its own count (see `cgroup::mark`): one
//! with its naming that a user made is neither taken over nor removed. The mark says whose container each directory is and
//! which run of it, so an instance's joins are taken over as its members,
//! whatever the order of their process ids.
use std::collections::BTreeMap;

use apptheus_common::ContainerState;

use super::{Agent, StartFacts};
use crate::error_chain::chain;
use crate::{
    cgroup::{leftovers, mark::Mark, placement::Placer, tasks},
    host::proctree,
    model::{
        cgroups::ContainerCgroups,
        container::{FoundBy, Member, Origin, Part},
    },
};

/// The threads of process `pid` (/proc/<pid>/task); none if it is gone.
fn threads_of(procfs: &std::path::Path, pid: u32) -> Vec<u32> {
    std::fs::read_dir(procfs.join(pid.to_string()).join("task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A run of a container found in its marked cgroups, and its tasks there.
struct Found {
    mark: Mark,
    cgroups: ContainerCgroups,
    tids: Vec<u32>,
}

impl Agent {
    pub(super) fn adopt_existing(&mut self) {
        let mut containers: BTreeMap<u64, Vec<Found>> = BTreeMap::new();
        for (mark, cgroups) in leftovers::find_marked(self.placer.hierarchies()) {
            let tids = cgroups
                .distinct_dirs()
                .first()
                .map(|d| tasks::threads(d))
                .unwrap_or_default();
            containers.entry(mark.container).or_default().push(Found {
                mark,
                cgroups,
                tids,
            });
        }
        for (ck, runs) in containers {
            let (running, ended): (Vec<Found>, Vec<Found>) =
                runs.into_iter().partition(|r| !r.tids.is_empty());
            for r in ended {
                tracing::info!(container_id = %r.mark.member_id(), "removing cgroups left by an earlier run");
                let busy = Placer::remove(&r.cgroups);
                if !busy.is_empty() {
                    tracing::debug!(container_id = %r.mark.member_id(), dirs = ?busy, "cgroups still busy; left for now");
                }
            }
            if !running.is_empty() {
                let running = running
                    .into_iter()
                    .map(|r| self.with_moved_tasks(r))
                    .collect();
                self.adopt(ck, running);
            }
        }
        self.delegated.release_unused();
        // Runs no marked cgroup told of: found among the processes.
        let trusted = self.trust.starters.ids();
        self.recover_runs(&trusted, super::recovering::Search::AtStartUp);
    }

    /// Run `r` with the tasks a runtime moved out of our cgroup (with
    /// Apptainer's systemd cgroups, an instance's processes and its joins
    /// in apptainer-<pid>.scope): they descend from its starter or from
    /// what the starter left in our cgroup (`instance start`'s starter
    /// exits once its fork, the master, runs), and are handed to the kernel
    /// programs with the rest, so that the runtime's cgroup is read as the
    /// container's again.
    fn with_moved_tasks(&self, mut r: Found) -> Found {
        let procs: Vec<u32> = r
            .cgroups
            .distinct_dirs()
            .first()
            .map(|d| tasks::procs(d))
            .unwrap_or_default();
        for root in std::iter::once(r.mark.member_pid).chain(procs) {
            for p in proctree::tree(self.procfs.root(), root) {
                for t in threads_of(self.procfs.root(), p) {
                    if !r.tids.contains(&t) {
                        r.tids.push(t);
                    }
                }
            }
        }
        r
    }

    /// Takes over container `ck` from the runs of it still running.
    fn adopt(&mut self, ck: u64, runs: Vec<Found>) {
        if let Some(k) = self.kernel.as_mut() {
            for r in &runs {
                // Its counters start from here: what its tasks used before
                // is not subtracted otherwise.
                let used = crate::host::procstats::used_by(self.procfs.root(), &r.tids);
                let state = ContainerState {
                    start_boot_ns: r.mark.member,
                    starter_tgid: r.mark.member_pid,
                    uid: r.mark.uid,
                    start_runtime_ns: used.runtime_ns,
                    start_read_bytes: used.read_bytes,
                    start_write_bytes: used.write_bytes,
                    ..ContainerState::default()
                };
                if let Err(e) = k.adopt(r.mark.member, &state, &r.tids) {
                    tracing::warn!(container_id = %r.mark.member_id(), error = %chain(&e), "cannot hand an adopted container to the kernel programs");
                }
            }
        }
        let own = runs.iter().find(|r| r.mark.member == ck);
        // The container's facts: from its own run's mark (a join's tells
        // the same container, user and labels when the instance's own run
        // ended).
        let mark = own.map_or_else(|| runs[0].mark.clone(), |r| r.mark.clone());
        let tasks: usize = runs.iter().map(|r| r.tids.len()).sum();
        tracing::info!(container_id = %mark.container_id(), tasks, runs = runs.len(),
            "adopting a running container from an earlier run");
        self.on_start(StartFacts {
            key: ck,
            starter_pid: mark.container_pid,
            uid: mark.uid,
            boot_ns: ck,
            file: None,
            parent_launcher: Some(false),
            arg0: None,
            found_by: FoundBy::Adopted,
            socket: None,
            cgroups: own.map(|r| r.cgroups.clone()),
        });
        // Its labels are those read at its start, recorded in the mark.
        if let Some(c) = self.registry.get_mut(ck) {
            // An instance whose own run ended before the restart lives on
            // in its joins only.
            if own.is_none() {
                c.members[0].ended = true;
            }
            c.meta = mark.meta.clone();
            if !mark.starter.is_empty() {
                c.starter_path = mark.starter.clone().into();
            }
        }
        for r in runs.into_iter().filter(|r| r.mark.member != ck) {
            let member = Member {
                key: r.mark.member,
                starter_pid: r.mark.member_pid,
                socket: None,
                counters: None,
                ended: false,
            };
            if self.registry.join(ck, member)
                && let Some(c) = self.registry.get_mut(ck)
            {
                tracing::info!(container_id = %c.id, join = %r.mark.member_id(), "a join of the adopted instance, adopted as its member");
                c.parts.push(Part::new(
                    Origin::Placed {
                        member: r.mark.member,
                    },
                    r.cgroups,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_this_process_and_of_none() {
        let me = std::process::id();
        let t = threads_of(std::path::Path::new("/proc"), me);
        assert!(t.contains(&me), "{t:?}");
        assert!(threads_of(std::path::Path::new("/nonexistent"), me).is_empty());
    }
}
