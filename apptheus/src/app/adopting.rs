//! At start-up: the containers an earlier run of the agent placed that
//! still run are taken over (with every task of their starter's process
//! tree, also those a runtime moved into a cgroup of its own); the cgroups
//! of those that ended meanwhile are removed.
use apptheus_common::ContainerState;

use super::{Agent, StartFacts};
use crate::{
    cgroup::placement::{self, Placer},
    host::proctree,
    model::container::{Source, parse_container_id},
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

impl Agent {
    pub(super) fn adopt_existing(&mut self) {
        for (id, cg) in self.placer.find_existing() {
            let tids: Vec<u32> = Placer::dirs(&cg)
                .first()
                .map(|d| placement::threads(d))
                .unwrap_or_default();
            let (Some((pid, key)), false) = (parse_container_id(&id), tids.is_empty()) else {
                tracing::info!(container_id = %id, "removing cgroups left by an earlier run");
                let busy = Placer::remove(&cg);
                if !busy.is_empty() {
                    tracing::debug!(container_id = %id, dirs = ?busy, "cgroups still busy; left for now");
                }
                continue;
            };
            let uid = std::iter::once(pid)
                .chain(tids.iter().copied())
                .find_map(|p| self.procfs.uid(p))
                .unwrap_or(0);
            // The processes in our cgroup: the starter, or where it is gone
            // (`instance start` runs it once, and it exits once its fork,
            // the instance's master, runs) what it left there.
            let procs: Vec<u32> = Placer::dirs(&cg)
                .first()
                .map(|d| placement::procs(d))
                .unwrap_or_default();
            let read_from = if self.procfs.exists(pid) {
                pid
            } else {
                procs.first().copied().unwrap_or(pid)
            };
            // Tasks a runtime moved out of our cgroup (with Apptainer's
            // systemd cgroups, an instance's processes and its joins in
            // apptainer-<pid>.scope) descend from those: they are handed
            // to the kernel programs with the rest, so that the runtime's
            // cgroup is read as the container's again.
            let mut tids = tids;
            for root in std::iter::once(pid).chain(procs) {
                for p in proctree::tree(self.procfs.root(), root) {
                    for t in threads_of(self.procfs.root(), p) {
                        if !tids.contains(&t) {
                            tids.push(t);
                        }
                    }
                }
            }
            if let Some(k) = self.kernel.as_mut() {
                let state = ContainerState {
                    start_boot_ns: key,
                    starter_tgid: pid,
                    uid,
                    ..ContainerState::default()
                };
                if let Err(e) = k.adopt(key, &state, &tids) {
                    tracing::warn!(container_id = %id, error = %e, "cannot hand an adopted container to the kernel programs");
                }
            }
            tracing::info!(container_id = %id, tasks = tids.len(), "adopting a running container from an earlier run");
            self.on_start(StartFacts {
                key,
                starter_pid: pid,
                uid,
                boot_ns: key,
                file: None,
                parent_launcher: Some(false),
                arg0: None,
                source: Source::Adopted,
                socket: None,
                cgroups: Some(cg),
                read_from: Some(read_from),
            });
        }
        self.delegated.release_unused();
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
