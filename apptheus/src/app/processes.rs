//! Statistics from a container's own processes, for a container whose
//! cgroups cannot give its memory (see [`crate::model::processes`]): its
//! starter shares its cgroup with other processes, and apptheus may not
//! (a Slurm job) or cannot (cgroup v2's rule against internal processes)
//! give it a cgroup with the memory controller.
use std::collections::BTreeSet;

use super::Agent;
use crate::{
    host::{procstats, proctree},
    model::processes::ProcSource,
};

impl Agent {
    /// From now on, container `ck`'s statistics are read from its
    /// processes too, from the next sample on (not now: this may run in
    /// the middle of its placement); `why` says why its cgroups cannot
    /// give them (logged once, at info level).
    pub(super) fn read_from_processes(&mut self, ck: u64, why: String) {
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        if c.processes.is_some() {
            return;
        }
        tracing::info!(container_id = %c.id, reason = %why,
            "the container's cgroups cannot give its memory: the cgroup families they lack are left out, \
             and its memory, processes, CPU time and I/O are read from its own processes (apptheus_container_proc_*)");
        c.processes = Some(ProcSource::new(why));
    }

    /// Reads the processes of container `ck`, if its statistics come from
    /// them, and refreshes what it exports.
    pub(super) fn sample_processes(&mut self, ck: u64) {
        let Some(c) = self.registry.get(ck) else {
            return;
        };
        if c.processes.is_none() {
            return;
        }
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
        let live: Vec<_> = c.members.iter().filter(|m| !m.ended).collect();
        // The starters' trees first (work in proportion to the container).
        let mut tgids: BTreeSet<u32> = live
            .iter()
            .flat_map(|m| proctree::tree(procfs, m.starter_pid))
            .collect();
        let now = std::time::Instant::now();
        let pss = c.processes.as_ref().is_some_and(|p| p.pss_due(now));
        let mut reading = procstats::read(procfs, &tgids.iter().copied().collect::<Vec<_>>(), pss);
        // A task re-parented away is missing from the trees: when the
        // kernel counts more tasks than were found, ask it for every one.
        if let Some(k) = &self.kernel {
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
}
