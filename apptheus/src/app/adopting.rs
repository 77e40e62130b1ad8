//! At start-up: the containers an earlier run of the agent placed that
//! still run are taken over; the cgroups of those that ended meanwhile
//! are removed.
use apptheus_common::ContainerState;

use super::{Agent, StartFacts};
use crate::{
    cgroup::placement::{self, Placer},
    model::container::{Source, parse_container_id},
};

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
            if let Some(k) = self.kernel.as_mut() {
                let used = crate::host::procstats::used_by(self.procfs.root(), &tids);
                let state = ContainerState {
                    start_boot_ns: key,
                    starter_tgid: pid,
                    uid,
                    start_runtime_ns: used.runtime_ns,
                    start_read_bytes: used.read_bytes,
                    start_write_bytes: used.write_bytes,
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
            });
        }
        self.delegated.release_unused();
    }
}
