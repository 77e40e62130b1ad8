//! A container's life in the agent: registered, placed in its cgroups,
//! sampled, ended (final sample, cgroups removed), expired.
use std::{path::Path, time::Instant};

use apptheus_common::{ContainerState, FileId};

use super::Agent;
use crate::{
    cgroup::{
        delegation,
        placement::{self, Placed, Placer},
        stats::ContainerCgroups,
    },
    collectors::Collector,
    environ,
    registry::{self, Container, FsCounters, KernelCounters, NetCounters, Phase, Source},
    users,
};

/// What the kernel programs are loaded with: the collectors asked for, and
/// the cgroup2 mount the network collector attaches to.
pub(super) fn kernel_options(
    args: &crate::cli::Args,
    host: &crate::preflight::Host,
) -> crate::kernel::Options {
    crate::kernel::Options {
        collectors: args.collectors.selected(),
        cgroup2: host.layout.v2.clone(),
    }
}

/// What is known of a container when it is first seen.
pub struct NewContainer {
    pub key: u64,
    pub starter_pid: u32,
    pub uid: u32,
    pub boot_ns: u64,
    pub file: Option<FileId>,
    pub source: Source,
    /// Its cgroups, when they exist already (adopted after a restart).
    pub cgroups: Option<ContainerCgroups>,
}

impl Agent {
    /// Registers a container and places its tasks in its own cgroups.
    pub(super) fn start_container(&mut self, n: NewContainer) {
        if self.registry.get(n.key).is_some() {
            return;
        }
        let c = Container {
            key: n.key,
            id: registry::container_id(n.starter_pid, n.key),
            starter_pid: n.starter_pid,
            starter_path: Default::default(),
            start_time: registry::boot_ns_to_system_time(n.boot_ns),
            uid: n.uid,
            user: String::new(),
            meta: Default::default(),
            source: n.source,
            phase: Phase::Running,
            sample: None,
            cgroups: n.cgroups,
            placed: false,
        };
        // Adopted containers started before this agent did.
        if self.registry.insert(c) && n.source != Source::Adopted {
            self.metrics.containers_started.inc();
        }
        // Placement first: until its tasks are inside, a container's memory
        // is charged to the enclosing cgroup (v1 never moves charges).
        self.place(n.key, n.boot_ns);

        let starter_path = n
            .file
            .and_then(|f| {
                self.trusted
                    .files
                    .iter()
                    .find(|t| t.id == f)
                    .map(|t| t.path.clone())
            })
            .or_else(|| {
                std::fs::read_link(self.args.procfs.join(n.starter_pid.to_string()).join("exe"))
                    .ok()
            })
            .unwrap_or_default();
        let meta = environ::read(&self.args.procfs, n.starter_pid).unwrap_or_default();
        let user = users::name(n.uid);
        let Some(c) = self.registry.get_mut(n.key) else {
            return;
        };
        c.starter_path = starter_path;
        c.meta = meta;
        c.user = user;
        tracing::info!(container_id = %c.id, pid = n.starter_pid, uid = n.uid, user = %c.user,
            starter = %c.starter_path.display(), source = ?n.source, placed = c.placed, "container started");
    }

    /// Creates the container's cgroups (beneath its starter's) and moves
    /// every task of the container into them.
    fn place(&mut self, key: u64, boot_ns: u64) {
        let Some(placer) = &self.placer else { return };
        let Some(c) = self.registry.get(key) else {
            return;
        };
        let (id, starter_pid) = (c.id.clone(), c.starter_pid);
        let cg = match c.cgroups.clone() {
            Some(cg) => cg,
            None => match placer.create(&id, starter_pid) {
                Ok(cg) => cg,
                Err(e) => {
                    tracing::warn!(container_id = %id, error = %e, "cannot create the container's cgroups; its cgroup statistics will be missing");
                    return;
                }
            },
        };
        let kernel = self.kernel.as_ref();
        let procfs = self.args.procfs.clone();
        // First the starter's process tree (work in proportion to the
        // container); the kernel's map of every attributed task on the
        // node is walked only if that left a task outside, e.g. one
        // re-parented away (daemonized).
        let mut result = placer.place(&cg, || crate::proctree::tree(&procfs, starter_pid));
        if let (Ok(first), Some(k)) = (&result, kernel)
            && !(first.complete && all_inside(k, key, &cg))
        {
            result = placer.place(&cg, || k.tasks_of(key)).map(|p| Placed {
                moved: p.moved + first.moved,
                passes: p.passes + first.passes,
                complete: p.complete,
            });
        }
        let placed = match result {
            Ok(p) => {
                let elapsed = registry::boot_time_now().as_secs_f64() - boot_ns as f64 / 1e9;
                if p.complete {
                    self.metrics.placement_seconds.observe(elapsed.max(0.0));
                    tracing::debug!(container_id = %id, moved = p.moved, passes = p.passes,
                        seconds = elapsed, "container placed");
                    if let Some(dir) = &cg.v2 {
                        self.delegate(&id, dir);
                    }
                } else {
                    tracing::warn!(container_id = %id, passes = p.passes,
                        "container still forking tasks outside its cgroup; will retry");
                }
                p.complete
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "placing the container's tasks failed");
                false
            }
        };
        self.register_cgroup(key, &id, &cg);
        if let Some(c) = self.registry.get_mut(key) {
            c.cgroups = Some(cg);
            c.placed = placed;
        }
    }

    /// cgroup v2: gives the container's cgroup the controllers its
    /// statistics need, if its parent (the starter's cgroup) can.
    fn delegate(&mut self, id: &str, dir: &Path) {
        if !self.args.cgroup_enable_controllers {
            return;
        }
        let Some(parent) = dir.parent() else { return };
        // Never the root cgroup: that would change the whole host.
        if self
            .placer
            .as_ref()
            .and_then(|p| p.v2_root())
            .is_none_or(|root| root == parent)
        {
            return;
        }
        match delegation::enable(parent) {
            Ok(enabled) if enabled.is_empty() => {}
            Ok(enabled) => {
                tracing::info!(container_id = %id, cgroup = %parent.display(), controllers = ?enabled,
                    "enabled controllers in the starter's cgroup for the container's statistics");
                let entry = self.delegated.entry(parent.to_path_buf()).or_default();
                entry.extend(enabled);
            }
            Err(e @ delegation::DelegationError::Occupied { .. }) => {
                tracing::info!(container_id = %id, reason = %e,
                    "the container's cgroup gets no memory, io or pids controller; those statistics are left out for it");
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e,
                    "cannot enable controllers for the container's cgroup; its memory, io and pids statistics are left out");
            }
        }
    }

    /// Disables the controllers apptheus enabled in starters' cgroups
    /// that have no child cgroup left.
    fn release_delegated(&mut self) {
        self.delegated
            .retain(|parent, controllers| match delegation::release(parent, controllers) {
                Ok(released) => {
                    if released {
                        tracing::debug!(cgroup = %parent.display(), controllers = ?controllers, "disabled the controllers apptheus had enabled");
                    }
                    !released
                }
                Err(e) => {
                    tracing::warn!(cgroup = %parent.display(), error = %e, "cannot disable the controllers apptheus had enabled");
                    false
                }
            });
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
            .map_err(|e| e.to_string())
            .and_then(|ino| k.register_cgroup(key, ino).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(container_id = %id, dir = %dir.display(), error = %e,
                "cannot hand the container's cgroup to the network collector; its network statistics will be missing");
        }
    }

    /// The kernel chose a task of a container as an OOM victim.
    pub(super) fn on_oom_kill(&mut self, key: u64, pid: u32, comm: &str) {
        // Kernels before 6.8 give only the pid; the task may still be there.
        let comm = if comm.is_empty() {
            std::fs::read_to_string(self.args.procfs.join(pid.to_string()).join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        } else {
            comm.to_string()
        };
        let id = self
            .registry
            .get(key)
            .map_or_else(|| format!("(unknown key {key})"), |c| c.id.clone());
        tracing::warn!(container_id = %id, pid, comm = %comm, "OOM killer chose a task of the container");
    }

    /// A container's last task is gone: final sample, cgroups removed, then
    /// its series stay for the grace period.
    pub(super) fn end_container(&mut self, key: u64) {
        if self
            .registry
            .get(key)
            .is_none_or(|c| c.phase != Phase::Running)
        {
            return;
        }
        self.sample_container(key);
        if !self.registry.mark_exited(key, Instant::now()) {
            return;
        }
        self.publish_soon = true;
        let Some(c) = self.registry.get(key) else {
            return;
        };
        tracing::info!(container_id = %c.id, "container exited");
        if let Some(cg) = &c.cgroups {
            self.remove_cgroups(&c.id.clone(), cg.clone());
        }
    }

    pub(super) fn remove_cgroups(&mut self, id: &str, cg: ContainerCgroups) {
        let busy = Placer::remove(&cg);
        if !busy.is_empty() {
            tracing::debug!(container_id = %id, dirs = ?busy, "cgroups still busy; removal retried at the next sample");
            self.pending_removal.extend(busy);
        }
        self.release_delegated();
    }

    /// Retries removal of cgroups that were busy (tasks not yet reaped).
    pub(super) fn retry_removals(&mut self) {
        self.pending_removal
            .retain(|d| match std::fs::remove_dir(d) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::debug!(dir = %d.display(), error = %e, "cgroup removal still failing");
                    true
                }
            });
        self.release_delegated();
    }

    /// Reads the kernel counters and cgroup statistics of one container.
    pub(super) fn sample_container(&mut self, key: u64) {
        // Ended while a sample was under way: its final sample is taken.
        if self
            .registry
            .get(key)
            .is_none_or(|c| c.phase != Phase::Running)
        {
            return;
        }
        let kernel = self
            .kernel
            .as_ref()
            .and_then(|k| k.container(key).map(|s| (k, s)))
            .map(|(k, s)| {
                let on = k.collectors();
                KernelCounters {
                    execs: s.execs,
                    forks: s.forks,
                    threads_created: s.threads_created,
                    process_exits: s.process_exits,
                    live_tasks: s.live_tasks,
                    oom_kills: on.contains(Collector::Oom).then_some(s.oom_kills),
                    network: on.contains(Collector::Network).then_some(NetCounters {
                        rx_bytes: s.net_rx_bytes,
                        rx_packets: s.net_rx_packets,
                        tx_bytes: s.net_tx_bytes,
                        tx_packets: s.net_tx_packets,
                    }),
                    fs: on.contains(Collector::Fsio).then_some(FsCounters {
                        read_bytes: s.fs_read_bytes,
                        write_bytes: s.fs_write_bytes,
                    }),
                    runq: k.runq_histogram(key),
                }
            });
        let Some(c) = self.registry.get_mut(key) else {
            return;
        };
        let mut sample = c.sample.take().unwrap_or_default();
        if kernel.is_some() {
            sample.kernel = kernel;
        }
        if let Some(cg) = &c.cgroups {
            let (stats, warnings) = crate::cgroup::stats::read(cg);
            for w in warnings {
                tracing::warn!(container_id = %c.id, warning = %w, "cgroup statistics incomplete");
            }
            sample.cgroup = stats;
        }
        c.sample = Some(sample);
        // The starter's environment may lack what the container's own
        // processes have (Apptainer sets APPTAINER_CONTAINER inside).
        if !c.meta.is_complete()
            && c.phase == Phase::Running
            && let Some(pid) = c
                .cgroups
                .as_ref()
                .and_then(|cg| Placer::dirs(cg).into_iter().next())
                .and_then(|d| {
                    placement::procs(&d)
                        .into_iter()
                        .find(|p| *p != c.starter_pid)
                })
            && let Ok(m) = environ::read(&self.args.procfs, pid)
        {
            c.meta.merge(m);
        }
    }

    /// Containers whose cgroups hold no process any more have ended, even
    /// if their end was never reported (lost event, socket mode).
    pub(super) fn end_empty_containers(&mut self) {
        let empty: Vec<u64> = self
            .registry
            .running()
            .filter(|c| c.placed)
            .filter(|c| {
                // The sample just taken counted the cgroup's threads; read
                // cgroup.procs only where it could not.
                match c.sample.as_ref().and_then(|s| s.cgroup.threads) {
                    Some(threads) => threads == 0,
                    None => c
                        .cgroups
                        .as_ref()
                        .and_then(|cg| Placer::dirs(cg).into_iter().next())
                        .is_some_and(|d| placement::procs(&d).is_empty()),
                }
            })
            .map(|c| c.key)
            .collect();
        for key in empty {
            self.end_container(key);
        }
        // Placement that was incomplete is retried.
        let unplaced: Vec<u64> = self
            .registry
            .running()
            .filter(|c| !c.placed && c.cgroups.is_some())
            .map(|c| c.key)
            .collect();
        for key in unplaced {
            // The key is the CLOCK_BOOTTIME of the start.
            self.place(key, key);
        }
    }

    /// At start-up: adopt the containers an earlier run placed that still
    /// run; remove the cgroups of those that ended meanwhile.
    pub(super) fn adopt_existing(&mut self) {
        let Some(placer) = &self.placer else { return };
        for (id, cg) in placer.find_existing() {
            let dirs = Placer::dirs(&cg);
            let tids: Vec<u32> = dirs
                .first()
                .map(|d| placement::threads(d))
                .unwrap_or_default();
            let parsed = registry::parse_container_id(&id);
            let (Some((pid, key)), false) = (parsed, tids.is_empty()) else {
                tracing::info!(container_id = %id, "removing cgroups left by an earlier run");
                self.remove_cgroups(&id, cg);
                continue;
            };
            let uid = owner_uid(&self.args.procfs, pid, &tids);
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
            self.start_container(NewContainer {
                key,
                starter_pid: pid,
                uid,
                boot_ns: key,
                file: None,
                source: Source::Adopted,
                cgroups: Some(cg),
            });
        }
    }
}

/// The real uid of the starter, or of any task of the container.
fn owner_uid(procfs: &std::path::Path, pid: u32, tids: &[u32]) -> u32 {
    std::iter::once(pid)
        .chain(tids.iter().copied())
        .find_map(|p| {
            let status = std::fs::read_to_string(procfs.join(p.to_string()).join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether the container's cgroup holds as many tasks as the kernel
/// attributes to the container (then none is left outside).
fn all_inside(k: &crate::kernel::Kernel, key: u64, cg: &ContainerCgroups) -> bool {
    let Some(state) = k.container(key) else {
        return false;
    };
    Placer::dirs(cg)
        .first()
        .is_some_and(|d| placement::threads(d).len() as u64 == state.live_tasks)
}
