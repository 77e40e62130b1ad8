//! A container's cgroups: its own, created beneath the cgroup each of its
//! starter runs started in (so every enclosing limit still applies), its
//! tasks moved there; and a runtime's own cgroup, followed wherever the
//! runtime moved the container's tasks (never moving them back).
use std::path::Path;

use super::Agent;
use crate::error_chain::chain;
use crate::{
    cgroup::{
        mark::Mark,
        placement::{self, Placed},
        tasks,
    },
    host::{clock, proctree},
    model::{
        cgroups::ContainerCgroups,
        collectors::Collector,
        container::{Origin, Part},
    },
};

impl Agent {
    /// Creates the cgroups of member `mk` of container `ck` beneath its
    /// starter's, unless the starter already runs in one of the
    /// container's cgroups (a join the runtime put into its instance's),
    /// and moves the member's tasks there.
    pub(super) fn place_member(&mut self, ck: u64, mk: u64, boot_ns: u64) {
        let Some(c) = self.registry.get(ck) else {
            return;
        };
        let Some(pid) = c.member(mk).map(|m| m.starter_pid) else {
            return;
        };
        let primary = mk == c.key;
        let id = c.id.clone();
        // Why the container has no cgroup of its own in a hierarchy, when
        // it has none there: its statistics of that kind are read from its
        // processes.
        let mut why_lacking = None;
        let mark = Mark {
            container: ck,
            container_pid: c.starter_pid(),
            member: mk,
            member_pid: pid,
            uid: c.uid,
            starter: c.starter_path.display().to_string(),
            meta: c.meta.clone(),
        };
        let cg = match c.placed_part(mk) {
            Some(p) => p.cgroups().clone(),
            None => {
                if !primary
                    && let Ok(now) = self.placer.hierarchies().cgroups_of(pid)
                    && c.live_parts().any(|p| p.cgroups().covers(&now))
                {
                    return;
                }
                match self.placer.create(&mark) {
                    Ok(created) => {
                        if let Some((dir, e)) = &created.unmarked {
                            tracing::warn!(container_id = %id, dir = %dir.display(), error = %e,
                                "cannot mark the container's cgroup as apptheus' (trusted.apptheus extended attribute); it will not be taken over after a restart");
                        }
                        let shared = created.shared.clone();
                        if let Some(why) = created.why_shared {
                            tracing::info!(container_id = %id, cgroups = ?shared.dirs().map(|(_, d)| d.display().to_string()).collect::<Vec<_>>(),
                                reason = %why,
                                "no cgroup of the container's own there; the starter's cgroup gives the container its limits only");
                            why_lacking = Some(why.to_string());
                        }
                        if let Some(c) = self.registry.get_mut(ck) {
                            c.parts.push(Part::new(
                                Origin::Placed { member: mk },
                                created.own.clone(),
                            ));
                            if !shared.is_empty() {
                                c.parts
                                    .push(Part::new(Origin::Shared { member: mk }, shared.clone()));
                            }
                        }
                        created.own
                    }
                    Err(e) => {
                        tracing::warn!(container_id = %id, error = %chain(&e), "cannot create the container's cgroups; its statistics are read from its processes");
                        if primary {
                            if let Some(c) = self.registry.get_mut(ck) {
                                c.life.unplaced();
                            }
                            self.decide_sources(
                                ck,
                                &ContainerCgroups::default(),
                                Some(format!("its cgroups could not be created: {}", chain(&e))),
                            );
                        }
                        return;
                    }
                }
            }
        };
        // Nothing of ours to move the tasks into (a Slurm job's cgroup v2
        // tree): they stay where they are.
        let placed = if cg.is_empty() {
            Ok(Placed {
                complete: true,
                ..Placed::default()
            })
        } else {
            self.move_tasks(mk, pid, &cg)
        };
        let complete = match &placed {
            Ok(p) => {
                if p.complete {
                    let elapsed = clock::boot_time_now().as_secs_f64() - boot_ns as f64 / 1e9;
                    self.metrics.own.placement_seconds.observe(elapsed.max(0.0));
                    tracing::debug!(container_id = %id, moved = p.moved, passes = p.passes,
                        seconds = elapsed, "container placed");
                    if let Some(dir) = &cg.v2
                        && let Some(why) = self.delegate(&id, dir)
                    {
                        why_lacking.get_or_insert(why);
                    }
                } else {
                    tracing::warn!(container_id = %id, passes = p.passes,
                        "container still forking tasks outside its cgroup; will retry");
                }
                p.complete
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %chain(e), "placing the container's tasks failed");
                false
            }
        };
        if let Ok(p) = placed {
            for tgid in p.elsewhere {
                self.follow_runtime(ck, mk, tgid);
            }
        }
        if primary {
            self.decide_sources(ck, &cg, why_lacking);
            self.register_cgroup(mk, &id, &cg);
            if let Some(c) = self.registry.get_mut(ck)
                && c.life.placed(complete)
            {
                tracing::warn!(container_id = %id, "giving up placing the container's tasks; those outside its cgroup are not in its statistics");
            }
        }
    }

    /// Moves member `mk`'s tasks into `cg`: first its starter's process
    /// tree (work in proportion to the container), then, if that left a
    /// task outside (e.g. one re-parented away), the kernel's map of every
    /// attributed task on the node.
    fn move_tasks(
        &self,
        mk: u64,
        pid: u32,
        cg: &ContainerCgroups,
    ) -> Result<Placed, placement::PlaceError> {
        let procfs = self.procfs.root();
        let first = self.placer.place(cg, || proctree::tree(procfs, pid))?;
        let Some(k) = &self.kernel else {
            return Ok(first);
        };
        if first.complete && all_inside(k, mk, cg) {
            return Ok(first);
        }
        let more = self.placer.place(cg, || k.tasks_of(mk))?;
        let mut elsewhere = first.elsewhere;
        for t in more.elsewhere {
            if !elsewhere.contains(&t) {
                elsewhere.push(t);
            }
        }
        Ok(Placed {
            moved: first.moved + more.moved,
            passes: first.passes + more.passes,
            complete: more.complete,
            elsewhere,
        })
    }

    /// Containers whose placement was incomplete are placed again.
    pub(super) fn retry_placements(&mut self) {
        let due: Vec<u64> = self
            .registry
            .iter()
            .filter(|c| c.life.needs_placement() && !c.parts.is_empty())
            .map(|c| c.key)
            .collect();
        for key in due {
            // The key is the CLOCK_BOOTTIME of the start.
            self.place_member(key, key, key);
        }
    }

    /// The kernel saw someone move process `tgid` of member `mk` into
    /// another cgroup.
    pub(super) fn on_task_moved(&mut self, mk: u64, tgid: u32) {
        if let Some(ck) = self.registry.container_of(mk)
            && self.registry.get(ck).is_some_and(|c| c.life.is_live())
        {
            self.follow_runtime(ck, mk, tgid);
        }
    }

    /// Reads container `ck`'s statistics also from the cgroups process
    /// `tgid` is in now, where they are beyond the container's known ones
    /// and hold nothing but the container's tasks (a runtime's own cgroup:
    /// Apptainer's limits or instance, runc, crun). The kernel reports the
    /// process's exit, so that the cgroup is read before the runtime
    /// removes it.
    fn follow_runtime(&mut self, ck: u64, mk: u64, tgid: u32) {
        let Ok(now) = self.placer.hierarchies().cgroups_of(tgid) else {
            return;
        };
        let Some(c) = self.registry.get(ck) else {
            return;
        };
        let mine = Origin::Runtime { tgid };
        let known: Vec<&ContainerCgroups> = c
            .parts
            .iter()
            .filter(|p| p.origin != mine && !p.gone)
            .map(|p| p.cgroups())
            .collect();
        let fresh = now.beyond(&known);
        if fresh.is_empty() {
            return;
        }
        if let Some(stranger) = self.stranger_in(ck, &fresh) {
            tracing::debug!(container_id = %c.id, pid = tgid, stranger,
                "a task of the container moved to a cgroup shared with other processes; not read as the container's");
            return;
        }
        let id = c.id.clone();
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        match c.parts.iter_mut().find(|p| p.origin == mine) {
            Some(p) => p.set_cgroups(fresh),
            None => {
                let dirs: Vec<String> =
                    fresh.dirs().map(|(_, d)| d.display().to_string()).collect();
                tracing::info!(container_id = %id, pid = tgid, cgroups = ?dirs,
                    "a runtime moved the container's tasks into a cgroup of its own; its statistics are read there too");
                c.parts.push(Part::new(mine, fresh));
                if let Some(k) = self.kernel.as_mut()
                    && let Err(e) = k.watch(tgid, mk)
                {
                    tracing::warn!(container_id = %id, error = %chain(&e), "cannot watch the process the runtime moved; its cgroup's last statistics may be missed");
                }
            }
        }
    }

    /// Without the kernel programs, nothing reports a runtime moving the
    /// container's processes: look for processes of its starters' trees
    /// outside its cgroups (at each sample).
    pub(super) fn find_moves(&mut self, ck: u64) {
        let Some(c) = self.registry.get(ck) else {
            return;
        };
        let mut moved = Vec::new();
        for m in c.members.iter().filter(|m| !m.ended) {
            for pid in proctree::tree(self.procfs.root(), m.starter_pid) {
                let Ok(now) = self.placer.hierarchies().cgroups_of(pid) else {
                    continue;
                };
                if !c.live_parts().any(|p| p.cgroups().covers(&now)) {
                    moved.push((m.key, pid));
                }
            }
        }
        for (mk, pid) in moved {
            self.follow_runtime(ck, mk, pid);
        }
    }

    /// A process in `cg` that is not container `ck`'s, if any.
    pub(super) fn stranger_in(&self, ck: u64, cg: &ContainerCgroups) -> Option<u32> {
        let c = self.registry.get(ck)?;
        // A task's kernel entry goes at its exit, before its parent reaps
        // it: a process that has exited is nobody's.
        let ours = |pid: u32| {
            c.members.iter().any(|m| m.starter_pid == pid)
                || self.procfs.has_exited(pid)
                || match &self.kernel {
                    Some(k) => k.container_of(pid).is_some_and(|m| c.member(m).is_some()),
                    None => c
                        .members
                        .iter()
                        .any(|m| proctree::tree(self.procfs.root(), m.starter_pid).contains(&pid)),
                }
        };
        cg.dirs()
            .flat_map(|(_, d)| tasks::procs(d))
            .find(|pid| !ours(*pid))
    }

    /// Removes the cgroups apptheus created for member `mk` (its
    /// statistics up to now are kept); directories still busy are retried.
    pub(super) fn remove_member_cgroups(&mut self, ck: u64, mk: u64) {
        let Some(c) = self.registry.get_mut(ck) else {
            return;
        };
        let id = c.id.clone();
        for p in &mut c.parts {
            if p.origin == (Origin::Shared { member: mk }) {
                p.gone = true;
            }
        }
        if let Some(p) = c
            .parts
            .iter_mut()
            .find(|p| p.origin == (Origin::Placed { member: mk }))
        {
            let busy = placement::Placer::remove(p.cgroups());
            if !busy.is_empty() {
                tracing::debug!(container_id = %id, dirs = ?busy, "cgroups still busy; removal retried at the next sample");
            }
            p.removal_pending = busy;
            p.gone = true;
        }
        self.delegated.release_unused();
    }

    /// Retries the removal of cgroups that were busy (tasks not yet reaped).
    pub(super) fn retry_removals(&mut self) {
        let mut any = false;
        for key in self.registry.keys() {
            let Some(c) = self.registry.get_mut(key) else {
                continue;
            };
            for p in &mut c.parts {
                any |= !p.removal_pending.is_empty();
                p.removal_pending.retain(|d| match std::fs::remove_dir(d) {
                    Ok(()) => false,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => {
                        tracing::debug!(dir = %d.display(), error = %chain(&e), "cgroup removal still failing");
                        true
                    }
                });
            }
        }
        if any {
            self.delegated.release_unused();
        }
    }

    /// cgroup v2: gives the container's cgroup the controllers its
    /// statistics need, if its parent (the starter's cgroup) can. Returns
    /// why its cgroup has no memory controller, if it has none (its
    /// statistics of that kind then come from its processes).
    fn delegate(&mut self, id: &str, dir: &Path) -> Option<String> {
        let parent = dir.parent()?;
        let mut why_not = None;
        // Never the root cgroup: that would change the whole host.
        if self.args.cgroup_enable_controllers
            && self
                .placer
                .hierarchies()
                .v2_root()
                .is_some_and(|root| root != parent)
        {
            match self.delegated.enable(parent) {
                Ok(enabled) if enabled.is_empty() => {}
                Ok(enabled) => {
                    tracing::info!(container_id = %id, cgroup = %parent.display(), controllers = ?enabled,
                        "enabled controllers in the starter's cgroup for the container's statistics");
                }
                Err(e @ crate::cgroup::delegation::DelegationError::Occupied { .. }) => {
                    why_not = Some(e.to_string());
                }
                Err(e) => {
                    let e = chain(&e).to_string();
                    tracing::warn!(container_id = %id, error = %e, "cannot enable controllers for the container's cgroup");
                    why_not = Some(e);
                }
            }
        }
        if self.placer.hierarchies().v1_has("memory") || dir.join("memory.current").exists() {
            return None;
        }
        Some(why_not.unwrap_or_else(|| {
            if self.args.cgroup_enable_controllers {
                format!(
                    "{} does not give its children the memory controller",
                    parent.display()
                )
            } else {
                "--cgroup.enable-controllers=false".to_string()
            }
        }))
    }

    /// Tells the network collector which cgroup2 id is the container's:
    /// the inode number of its cgroup2 directory.
    fn register_cgroup(&mut self, key: u64, id: &str, cg: &ContainerCgroups) {
        let Some(k) = self.kernel.as_mut() else {
            return;
        };
        if !k.collectors().contains(Collector::Network) {
            return;
        }
        let Some(dir) = &cg.v2 else {
            return;
        };
        let result = std::fs::metadata(dir)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .map_err(|e| chain(&e).to_string())
            .and_then(|ino| {
                k.register_cgroup(key, ino)
                    .map_err(|e| chain(&e).to_string())
            });
        if let Err(e) = result {
            tracing::warn!(container_id = %id, dir = %dir.display(), error = %e,
                "cannot hand the container's cgroup to the network collector; its network statistics will be missing");
        }
    }
}

/// Whether the container's cgroup holds as many tasks as the kernel
/// attributes to member `mk` (then none is left outside).
fn all_inside(k: &crate::attribution::kernel::Kernel, mk: u64, cg: &ContainerCgroups) -> bool {
    let Some(state) = k.container(mk) else {
        return false;
    };
    cg.distinct_dirs()
        .first()
        .is_some_and(|d| tasks::threads(d).len() as u64 == state.live_tasks)
}
