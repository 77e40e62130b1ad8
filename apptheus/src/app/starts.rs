//! A starter run seen, by the kernel (its exec) or through the monitoring
//! socket: what it is (a container, an instance, a join of an instance, a
//! helper run of Apptainer's own) and what is known of it, read at once,
//! before a short run can end.
use std::path::PathBuf;

use apptheus_common::FileId;

use super::Agent;
use crate::{
    attribution::apptainer::{self, RunKind, StarterFacts},
    host::{clock, slurmjob, users},
    model::{
        cgroups::ContainerCgroups,
        container::{Container, Member, Origin, Part, Source},
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
    pub source: Source,
    /// The monitoring-socket connection it made.
    pub socket: Option<u64>,
    /// Its cgroups, when they exist already (adopted after a restart).
    pub cgroups: Option<ContainerCgroups>,
    /// The process its command line, environment and executable are read
    /// from, when not the starter itself (gone: an adopted instance's
    /// starter, whose master, its fork, runs on).
    pub read_from: Option<u32>,
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
        let pid = s.starter_pid;
        let src = s.read_from.unwrap_or(pid);
        let environ = self.procfs.environ(src).ok();
        let cwd = self.procfs.cwd(src);
        let arg0 = s
            .arg0
            .clone()
            .or_else(|| self.procfs.arg0(src).ok())
            .unwrap_or_default();
        let parent_launcher = s
            .parent_launcher
            .unwrap_or_else(|| self.parent_runs_launcher(src));
        let run = apptainer::describe(&StarterFacts {
            arg0: &arg0,
            parent_launcher,
            environ: environ.as_deref(),
            cwd: cwd.as_deref(),
        });
        match &run.kind {
            RunKind::Helper => {
                tracing::debug!(pid, arg0 = %arg0, "a helper run of Apptainer's own, not a container");
                self.metrics.helper_runs.inc();
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

        // Where Slurm put the job is trusted over the environment.
        let cgroups = self.procfs.cgroup(src).ok();
        let slurm_job_id = cgroups
            .as_deref()
            .and_then(|t| slurmjob::job_of(t, self.placer.v2_root(), &self.procfs))
            .or(run.env_slurm_job_id);
        let mut c = Container::new(s.key, pid, clock::boot_ns_to_system_time(s.boot_ns));
        c.members[0].socket = s.socket;
        c.uid = s.uid;
        c.user = users::name(s.uid);
        c.starter_path = self.starter_path(s.file, src);
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
        tracing::info!(container_id = %c.id, pid, uid = s.uid, user = %c.user,
            starter = %c.starter_path.display(), image = c.meta.image.as_deref().unwrap_or(""),
            instance = c.meta.instance.as_deref().unwrap_or(""),
            slurm_job_id = c.meta.slurm_job_id.as_deref().unwrap_or(""),
            source = ?s.source, "container started");
        if self.registry.insert(c) && s.source != Source::Adopted {
            self.metrics.containers_started.inc();
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
        self.metrics.joins.inc();
        if let Some(c) = self.registry.get(ck) {
            tracing::info!(container_id = %c.id, pid = s.starter_pid,
                instance = c.meta.instance.as_deref().unwrap_or(""), "a run joined the instance");
        }
        self.place_member(ck, s.key, s.boot_ns);
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
