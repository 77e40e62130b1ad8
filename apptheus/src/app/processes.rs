//! Statistics from a container's own processes, for the families its own
//! cgroups cannot give (see [`crate::model::processes`]): its starter
//! shares a cgroup with other processes, where apptheus may not (a Slurm
//! job) or cannot (cgroup v2's rule against internal processes) give it a
//! cgroup of its own with that controller. Without the kernel programs,
//! also the container's processes as far as /proc shows them.
use std::collections::BTreeSet;

use super::Agent;
use crate::{
    cgroup::read,
    host::{procstats, proctree},
    model::{cgroups::ContainerCgroups, processes::ProcSource},
};

impl Agent {
    /// Decides, once for its life, which of container `ck`'s statistics
    /// families come from its processes: those its own cgroups `own` lack
    /// (all of them when it has none). `why` says why they lack them, when
    /// known; logged at info level.
    pub(super) fn decide_sources(&mut self, ck: u64, own: &ContainerCgroups, why: Option<String>) {
        if self.registry.get(ck).is_none_or(|c| c.sources_decided) {
            return;
        }
        let families = read::lacking(own, |s| self.args.sources.enabled(s));
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        c.sources_decided = true;
        if !families.any() {
            return;
        }
        let why = why.unwrap_or_else(|| {
            if own.is_empty() {
                "the container has no cgroup of its own".to_string()
            } else {
                "the container's own cgroups lack these controllers".to_string()
            }
        });
        tracing::info!(container_id = %c.id, families = %families.names(), reason = %why,
            "these statistics of the container are read from its own processes, for its whole life \
             (same metric names; the info metric's from_processes label says which)");
        c.processes = Some(ProcSource::new(families, why));
    }

    /// Reads the processes of container `ck`, if some of its statistics
    /// come from them, and refreshes what it exports.
    pub(super) fn sample_processes(&mut self, ck: u64) {
        if self.registry.get(ck).is_none_or(|c| c.processes.is_none()) {
            return;
        }
        let tgids = self.processes_of(ck);
        let Some(c) = self.registry.get(ck) else {
            return;
        };
        // The exited tasks' totals first, /proc after: a task exiting in
        // between is then counted in neither for this sample (the counters
        // hold their value meanwhile), never in both.
        let exited = self.kernel.as_ref().and_then(|k| {
            c.members
                .iter()
                .filter_map(|m| k.counters(m.key).or_else(|| m.counters.clone()))
                .filter_map(|k| k.exited)
                .reduce(|a, b| a.plus(&b))
        });
        let procfs = self.procfs.root();
        let now = std::time::Instant::now();
        let pss = c.processes.as_ref().is_some_and(|p| p.pss_due(now));
        let mut tgids = tgids;
        let mut reading = procstats::read(procfs, &tgids.iter().copied().collect::<Vec<_>>(), pss);
        // A task re-parented away is missing from the trees: when the
        // kernel counts more tasks than were found, ask it for every one.
        if let Some(k) = &self.kernel {
            let live: Vec<_> = c.members.iter().filter(|m| !m.ended).collect();
            let counted: u64 = live
                .iter()
                .filter_map(|m| k.container(m.key))
                .map(|s| s.live_tasks)
                .sum();
            if counted > reading.threads {
                let more: BTreeSet<u32> = live
                    .iter()
                    .flat_map(|m| k.tasks_of(m.key))
                    .filter_map(|tid| procstats::tgid_of(procfs, tid))
                    .filter(|t| !tgids.contains(t))
                    .collect();
                if !more.is_empty() {
                    tgids.extend(&more);
                    reading =
                        procstats::read(procfs, &tgids.iter().copied().collect::<Vec<_>>(), pss);
                }
            }
        }
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        if let Some(p) = c.processes.as_mut() {
            p.update(&reading, exited.as_ref(), now);
        }
        c.refresh_sample();
    }

    /// The processes of container `ck` that /proc shows: its live starters'
    /// trees, and without the kernel programs also every process of it
    /// seen before that still runs, and their trees (a process re-parented
    /// away from its starter stays the container's). The latter are
    /// remembered.
    pub(super) fn processes_of(&mut self, ck: u64) -> BTreeSet<u32> {
        let procfs = self.procfs.root();
        let Some(c) = self.registry.get(ck) else {
            return BTreeSet::new();
        };
        let mut tgids: BTreeSet<u32> = c
            .members
            .iter()
            .filter(|m| !m.ended)
            .flat_map(|m| proctree::tree(procfs, m.starter_pid))
            .collect();
        if self.kernel.is_some() {
            return tgids;
        }
        let still: Vec<u32> = c
            .known
            .0
            .iter()
            .filter(|(pid, started)| self.procfs.start_time(**pid) == Some(**started))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in still {
            tgids.extend(proctree::tree(procfs, pid));
        }
        let known = tgids
            .iter()
            .filter_map(|pid| Some((*pid, self.procfs.start_time(*pid)?)))
            .collect();
        if let Some(c) = self.registry.get_mut(ck) {
            c.known.0 = known;
        }
        tgids
    }
}
