//! A starter run seen, by the kernel (its exec) or through the monitoring
//! socket: what it is (a container, an instance, a join of an instance, a
//! helper run of Apptainer's own) and what is known of it, read at once,
//! before a short run can end.
use std::path::PathBuf;

use apptheus_common::FileId;

use super::Agent;
use crate::{
    attribution::apptainer::{self, RunKind, StarterFacts},
    cgroup::slurm_job,
    host::{clock, users},
    model::{
        cgroups::ContainerCgroups,
        container::{Container, FoundBy, Member, Origin, Part},
    },
};

/// What the event that revealed a starter run says of it.
pub(super) struct StartFacts {
    /// The kernel's key for the run, or one of the agent's own.
    pub key: u64,
    pub starter_pid: u32,
    pub uid: u32,
    /// CLOCK_BOOTTIME of the start.
    pub boot_ns: u64,
    /// The trusted file it runs, when known.
    pub file: Option<FileId>,
    /// Whether its parent runs a launcher, when the kernel saw it.
    pub parent_launcher: Option<bool>,
    /// Its first argument, when the kernel read it.
    pub arg0: Option<String>,
    pub found_by: FoundBy,
    /// The monitoring-socket connection it made.
    pub socket: Option<u64>,
    /// Its cgroups, when they exist already (adopted after a restart).
    pub cgroups: Option<ContainerCgroups>,
}

impl Agent {
    /// Handles a starter run: registers a container (placing its tasks in
    /// their cgroups), adds a join to its instance, or lets a helper run go.
    pub(super) fn on_start(&mut self, s: StartFacts) {
        if self.registry.container_of(s.key).is_some() {
            if let Some(conn) = s.socket {
                self.registry.set_socket(s.key, conn);
            }
            return;
        }
        if !self.admit_run(&s) {
            return;
        }
        let pid = s.starter_pid;
        let alive = self.starter_is_the_runs(&s);
        let environ = alive.then(|| self.procfs.environ(pid).ok()).flatten();
        let cwd = alive.then(|| self.procfs.cwd(pid)).flatten();
        let arg0 = s
            .arg0
            .clone()
            .or_else(|| alive.then(|| self.procfs.arg0(pid).ok()).flatten())
            .unwrap_or_default();
        let parent_launcher = s
            .parent_launcher
            .unwrap_or_else(|| alive && self.parent_runs_launcher(pid));
        let run = apptainer::describe(&StarterFacts {
            arg0: &arg0,
            parent_launcher,
            environ: environ.as_deref(),
            cwd: cwd.as_deref(),
        });
        match &run.kind {
            RunKind::Helper => {
                tracing::debug!(pid, arg0 = %arg0, "a helper run of Apptainer's own, not a container");
                self.metrics.own.helper_runs.inc();
                if let Some(k) = self.kernel.as_mut() {
                    k.forget(s.key);
                }
                return;
            }
            RunKind::Join { instance } => {
                if let Some(ck) = self.registry.instance(s.uid, instance) {
                    self.join(ck, &s);
                    return;
                }
                tracing::info!(pid, instance = %instance, uid = s.uid,
                    "a run joining an instance apptheus does not know; counted as a container of its own");
            }
            RunKind::Container | RunKind::Instance { .. } => {}
        }
        if !self.admit_container(&s) {
            return;
        }

        // Where Slurm put the job is trusted over the environment.
        let cgroups = alive.then(|| self.procfs.cgroup(pid).ok()).flatten();
        let slurm_job_id = cgroups
            .as_deref()
            .and_then(|t| slurm_job::job_of(t, self.placer.hierarchies().v2_root(), &self.procfs))
            .or(run.env_slurm_job_id);
        let mut c = Container::new(s.key, pid, clock::boot_ns_to_system_time(s.boot_ns));
        c.members[0].socket = s.socket;
        c.uid = s.uid;
        c.user = users::name(s.uid);
        c.starter_path = self.starter_path(s.file, pid);
        c.meta.image = run.image;
        c.meta.instance = match run.kind {
            RunKind::Instance { name } => Some(name),
            _ => None,
        };
        c.meta.slurm_job_id = slurm_job_id;
        if let Some(cg) = s.cgroups.clone() {
            c.parts
                .push(Part::new(Origin::Placed { member: s.key }, cg));
        }
        // A run the kernel reported is shown once it runs something of
        // its own (see `admission`).
        c.shown = s.found_by != FoundBy::Kernel;
        if c.shown {
            log_started(&c, s.found_by);
        } else {
            tracing::debug!(container_id = %c.id, pid, uid = s.uid,
                "starter run seen; shown once it runs something of its own");
        }
        let shown = c.shown;
        if self.registry.insert(c) && shown && !s.found_by.at_start_up() {
            self.metrics.own.containers_started.inc();
        }
        // Placement at once: until its tasks are inside, a container's
        // memory is charged to the enclosing cgroup (v1 never moves charges).
        self.place_member(s.key, s.key, s.boot_ns);
    }

    /// A run joining instance `ck`: its tasks count in the instance's
    /// container.
    fn join(&mut self, ck: u64, s: &StartFacts) {
        let member = Member {
            key: s.key,
            starter_pid: s.starter_pid,
            socket: s.socket,
            counters: None,
            ended: false,
        };
        if !self.registry.join(ck, member) {
            return;
        }
        self.metrics.own.joins.inc();
        if let Some(c) = self.registry.get(ck) {
            tracing::info!(container_id = %c.id, pid = s.starter_pid,
                instance = c.meta.instance.as_deref().unwrap_or(""), "a run joined the instance");
        }
        self.place_member(ck, s.key, s.boot_ns);
    }

    /// Whether `s.starter_pid` is surely the run's starter, so that its
    /// /proc files (environment, arguments, cgroups) are the run's. Not
    /// for an adopted container whose starter is no longer in its cgroups
    /// (which a user cannot move a process into): the pid may be another
    /// process's now.
    fn starter_is_the_runs(&self, s: &StartFacts) -> bool {
        if s.found_by != FoundBy::Adopted {
            return true;
        }
        let Some(cg) = &s.cgroups else {
            return false;
        };
        self.placer
            .hierarchies()
            .cgroups_of(s.starter_pid)
            .is_ok_and(|now| {
                cg.dirs()
                    .any(|(h, d)| now.dir(h).is_some_and(|p| p.starts_with(d)))
            })
    }

    /// Whether the parent of `pid` runs one of the trusted launchers.
    fn parent_runs_launcher(&self, pid: u32) -> bool {
        self.procfs
            .ppid(pid)
            .and_then(|ppid| self.procfs.exe_identity(ppid).ok())
            .is_some_and(|id| self.trust.launchers.contains(&id))
    }

    /// The path of the trusted starter a container runs, for its label.
    fn starter_path(&self, file: Option<FileId>, pid: u32) -> PathBuf {
        file.and_then(|f| {
            self.trust
                .starters
                .files
                .iter()
                .find(|t| t.id == f)
                .map(|t| t.path.clone())
        })
        .or_else(|| self.procfs.exe_path(pid))
        .unwrap_or_default()
    }
}

/// Logs a container's start, with what is known of it.
pub(super) fn log_started(c: &Container, found_by: FoundBy) {
    tracing::info!(container_id = %c.id, pid = c.starter_pid(), uid = c.uid, user = %c.user,
        starter = %c.starter_path.display(), image = c.meta.image.as_deref().unwrap_or(""),
        instance = c.meta.instance.as_deref().unwrap_or(""),
        slurm_job_id = c.meta.slurm_job_id.as_deref().unwrap_or(""),
        source = ?found_by, "container started");
}
