//! A cgroup per container, created *beneath* the cgroup its starter was
//! started in, in every hierarchy apptheus reads, so that every limit and
//! the accounting of an enclosing Slurm job or systemd slice still apply.
//! The original Apptheus created a new top-level cgroup instead, a way out
//! of those limits for any user. None where Slurm needs its cgroups as it
//! made them (see [`NoOwnCgroup`]): there the starter's own cgroup is the
//! container's, read while nothing else runs in it. Never beside the
//! starter's cgroup either: the cgroups between belong to Slurm or systemd,
//! which rely on where the processes are.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use super::{
    hierarchies::Hierarchies,
    layout::Layout,
    mark::{self, Mark},
    policy::{NoOwnCgroup, own_cgroup_refused},
};
use crate::model::cgroups::ContainerCgroups;

/// Passes over a container's tasks before placement gives up.
const MAX_PASSES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("reading the cgroups of pid {pid}")]
    ProcCgroup {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid} is in no cgroup of the {hierarchy} hierarchy (per /proc/{pid}/cgroup)")]
    NotInHierarchy { pid: u32, hierarchy: String },
    #[error("creating cgroup {dir}")]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir} exists and is not apptheus' cgroup for this container (it has no mark, or another's): \
         made by someone else, it is not used"
    )]
    NotOurs { dir: PathBuf },
    #[error("moving task {tid} into {dir}")]
    Move {
        tid: u32,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Placer {
    hierarchies: Hierarchies,
}

/// How a placement went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// Writes to cgroup.procs.
    pub moved: usize,
    /// Passes over the container's tasks until none was left outside.
    pub passes: usize,
    /// False if tasks were still being found outside after the last pass.
    pub complete: bool,
    /// Processes found in neither the container's cgroup nor the one its
    /// starter started in, in some hierarchy: a runtime moved them into a
    /// cgroup of its own, and they stay there.
    pub elsewhere: Vec<u32>,
}

impl Placer {
    pub fn new(layout: &Layout, procfs: &Path) -> Self {
        Self {
            hierarchies: Hierarchies::new(layout, procfs),
        }
    }

    /// The hierarchies it places in.
    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// Which cgroups task `pid` is in.
    fn proc_cgroups(&self, pid: u32) -> Result<super::proc_cgroup::ProcCgroups, PlaceError> {
        self.hierarchies
            .proc_cgroups(pid)
            .map_err(|source| PlaceError::ProcCgroup { pid, source })
    }

    /// Creates the cgroups of a container's starter run (`mark`: whose,
    /// and which run; its starter is `mark.member_pid`) beneath the
    /// starter's current ones, in every hierarchy where that is harmless,
    /// each marked (see [`mark`]); in the others the starter's own cgroups
    /// are returned as shared (see [`own_cgroup_refused`]). A directory of
    /// that name that exists without this mark is someone else's: an error.
    pub fn create(&self, mark: &Mark) -> Result<Created, PlaceError> {
        let starter_pid = mark.member_pid;
        let cgs = self.proc_cgroups(starter_pid)?;
        let name = mark.dir_name();
        let mut out = Created::default();
        for h in self.hierarchies.iter() {
            let parent =
                self.hierarchies
                    .dir_of(h, &cgs)
                    .ok_or_else(|| PlaceError::NotInHierarchy {
                        pid: starter_pid,
                        hierarchy: h.name(),
                    })?;
            let relative = parent.strip_prefix(&h.mountpoint).unwrap_or(&parent);
            if let Some(why) = own_cgroup_refused(&h.controllers, relative) {
                h.assign(&mut out.shared, parent);
                out.why_shared.get_or_insert(why);
                continue;
            }
            // The starter may be placed already (a second attempt, or the
            // socket and the kernel reporting the same container).
            let dir = if parent.file_name().is_some_and(|n| n == name.as_str()) {
                parent
            } else {
                parent.join(&name)
            };
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    if let Err(e) = mark::set(&dir, mark) {
                        out.unmarked
                            .get_or_insert_with(|| (dir.clone(), e.to_string()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !made_for(&dir, mark) {
                        return Err(PlaceError::NotOurs { dir });
                    }
                }
                Err(source) => return Err(PlaceError::Create { dir, source }),
            }
            h.assign(&mut out.own, dir);
        }
        Ok(out)
    }

    /// The file through which thread `tid` of the agent would be moved into
    /// the cgroup it is in now: `tasks` in a v1 hierarchy (there are no
    /// placement rules there), else cgroup2's `cgroup.threads`. Writing the
    /// thread's id there moves nothing, but takes the kernel's cgroup
    /// migration lock like any placement does (see [`super::prewarm`]).
    pub fn own_thread_file(&self, tid: u32) -> Result<PathBuf, PlaceError> {
        let cgs = self.proc_cgroups(tid)?;
        let h = self
            .hierarchies
            .iter()
            .find(|h| !h.is_v2())
            .or_else(|| self.hierarchies.iter().next())
            .ok_or_else(|| PlaceError::NotInHierarchy {
                pid: tid,
                hierarchy: "any".into(),
            })?;
        let dir = self
            .hierarchies
            .dir_of(h, &cgs)
            .ok_or_else(|| PlaceError::NotInHierarchy {
                pid: tid,
                hierarchy: h.name(),
            })?;
        Ok(dir.join(if h.is_v2() { "cgroup.threads" } else { "tasks" }))
    }

    /// Where task `tid` is against the container's cgroups: per hierarchy,
    /// inside already, in the cgroup the container's cgroup was created in
    /// (so to be moved), or elsewhere (a runtime's own cgroup: left alone).
    fn whereabouts(&self, cg: &ContainerCgroups, tid: u32) -> Result<Whereabouts, PlaceError> {
        let cgs = self.proc_cgroups(tid)?;
        let mut w = Whereabouts::default();
        for h in self.hierarchies.iter() {
            let (Some(want), Some(have)) = (h.dir_in(cg), self.hierarchies.dir_of(h, &cgs)) else {
                continue;
            };
            if *want == have {
                continue;
            }
            if want.parent() == Some(have.as_path()) {
                w.to_move.push(want.clone());
            } else {
                w.elsewhere = true;
            }
        }
        Ok(w)
    }

    /// Moves a task's thread group into `dir`'s cgroup.procs.
    fn move_into(dir: &Path, tid: u32) -> Result<(), PlaceError> {
        let procs = dir.join("cgroup.procs");
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .and_then(|mut f| f.write_all(tid.to_string().as_bytes()));
        match result {
            // The task exited meanwhile: nothing to move.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(PlaceError::Move {
                tid,
                dir: dir.to_path_buf(),
                source,
            }),
            Ok(()) => Ok(()),
        }
    }

    /// Moves every task of the container that is still in the cgroup its
    /// starter started in into the container's cgroups, asking `tasks`
    /// again after each pass (tasks forked meanwhile included), until a
    /// pass moves none. A task a runtime moved elsewhere is never moved
    /// back: the runtime's limits hold, and its cgroup is read instead.
    pub fn place(
        &self,
        cg: &ContainerCgroups,
        mut tasks: impl FnMut() -> Vec<u32>,
    ) -> Result<Placed, PlaceError> {
        let mut placed = Placed::default();
        for pass in 1..=MAX_PASSES {
            placed.passes = pass;
            let mut moved_now = 0;
            for tid in tasks() {
                let w = match self.whereabouts(cg, tid) {
                    Ok(w) => w,
                    // Gone already.
                    Err(PlaceError::ProcCgroup { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if w.elsewhere && !placed.elsewhere.contains(&tid) {
                    placed.elsewhere.push(tid);
                }
                if w.to_move.is_empty() {
                    continue;
                }
                for dir in &w.to_move {
                    Self::move_into(dir, tid)?;
                }
                moved_now += 1;
            }
            placed.moved += moved_now;
            if moved_now == 0 {
                placed.complete = true;
                return Ok(placed);
            }
        }
        Ok(placed)
    }

    /// Removes the container's cgroups; the ones still busy (tasks not yet
    /// reaped) are returned for a later attempt.
    pub fn remove(cg: &ContainerCgroups) -> Vec<PathBuf> {
        cg.distinct_dirs()
            .into_iter()
            .filter(|d| match std::fs::remove_dir(d) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(_) => true,
            })
            .collect()
    }
}

/// A container's cgroups as created: its own, and those of its starter it
/// shares because a child there would do harm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Created {
    pub own: ContainerCgroups,
    pub shared: ContainerCgroups,
    /// Why `shared` is not empty.
    pub why_shared: Option<NoOwnCgroup>,
    /// A directory created that could not be marked, and why: the
    /// container is placed, but would not be taken over after a restart.
    pub unmarked: Option<(PathBuf, String)>,
}

/// Where a task is against a container's cgroups.
#[derive(Debug, Default)]
struct Whereabouts {
    /// The container's directories, in the hierarchies where the task is
    /// still in their parent.
    to_move: Vec<PathBuf>,
    /// In some hierarchy it is neither inside nor in the parent.
    elsewhere: bool,
}

/// Whether `dir`, found existing, was made for the run `mark` by apptheus
/// (a second placement): marked so, or, where marking failed, root's (a
/// user can make no directory of root's). Never another run's, nor a
/// user's.
fn made_for(dir: &Path, mark: &Mark) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match mark::get(dir) {
        Ok(Some(m)) => m == *mark,
        Ok(None) => std::fs::symlink_metadata(dir).is_ok_and(|m| m.uid() == 0),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{layout::V1Mount, leftovers::find_marked};

    /// The mark of container `key`'s own run, started by `pid` (uid 0).
    fn own(pid: u32, key: u64) -> Mark {
        Mark {
            container: key,
            container_pid: pid,
            member: key,
            member_pid: pid,
            ..Mark::default()
        }
    }

    fn hybrid(root: &Path) -> Layout {
        let mut layout = Layout {
            v2: Some(root.join("unified")),
            v1: Default::default(),
        };
        for c in ["cpu", "cpuacct", "memory"] {
            layout.v1.insert(
                c.into(),
                V1Mount {
                    mountpoint: root.join(if c == "memory" {
                        "memory"
                    } else {
                        "cpu,cpuacct"
                    }),
                    controllers: vec![c.into()],
                },
            );
        }
        layout
    }

    /// The agent's own thread is "moved" into the cgroup it is in: a v1
    /// hierarchy's `tasks` file when there is one, cgroup2's
    /// `cgroup.threads` on a pure v2 host.
    #[test]
    fn own_thread_file_names_the_threads_current_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        let task = procfs.join("31");
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(
            task.join("cgroup"),
            "4:cpu,cpuacct:/system.slice/apptheus.service\n3:memory:/system.slice\n0::/system.slice/apptheus.service\n",
        )
        .unwrap();
        let placer = Placer::new(&hybrid(root.path()), &procfs);
        let file = placer.own_thread_file(31).unwrap();
        assert_eq!(
            file,
            root.path()
                .join("cpu,cpuacct/system.slice/apptheus.service/tasks")
        );
        let v2_only = Layout {
            v2: Some(root.path().join("unified")),
            v1: Default::default(),
        };
        let placer = Placer::new(&v2_only, &procfs);
        assert_eq!(
            placer.own_thread_file(31).unwrap(),
            root.path()
                .join("unified/system.slice/apptheus.service/cgroup.threads")
        );
        let err = placer.own_thread_file(32).unwrap_err().to_string();
        assert!(err.contains("32"), "{err}");
    }

    /// On a fixture tree: directories land beneath the starter's cgroups,
    /// co-mounted controllers share one directory, leftovers are found.
    #[test]
    fn creates_beneath_the_starters_cgroups() {
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        std::fs::create_dir_all(procfs.join("77")).unwrap();
        std::fs::write(
            procfs.join("77/cgroup"),
            "4:cpu,cpuacct:/batch/a\n3:memory:/batch/a/b\n0::/user.slice\n",
        )
        .unwrap();
        for d in [
            "unified/user.slice",
            "cpu,cpuacct/batch/a",
            "memory/batch/a/b",
        ] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let placer = Placer::new(&hybrid(root.path()), &procfs);
        let created = placer.create(&own(77, 5)).unwrap();
        assert_eq!(created.shared, ContainerCgroups::default());
        let cg = created.own;
        assert_eq!(
            cg.v2,
            Some(root.path().join("unified/user.slice/apptheus-77-5"))
        );
        assert_eq!(
            cg.v1["cpu"],
            root.path().join("cpu,cpuacct/batch/a/apptheus-77-5")
        );
        assert_eq!(cg.v1["cpuacct"], cg.v1["cpu"]);
        assert_eq!(
            cg.v1["memory"],
            root.path().join("memory/batch/a/b/apptheus-77-5")
        );
        assert!(cg.v1["memory"].is_dir());
        assert_eq!(cg.distinct_dirs().len(), 3);
        // Creating again is harmless.
        assert_eq!(placer.create(&own(77, 5)).unwrap().own, cg);

        let created = placer.create(&own(77, 5)).unwrap();
        if let Some((dir, e)) = created.unmarked {
            // Marking needs CAP_SYS_ADMIN (`trusted.`).
            apptheus_testkit::skip(&format!("marking {}: {e}", dir.display()));
        } else {
            let found = find_marked(placer.hierarchies());
            assert_eq!(found.len(), 1);
            assert_eq!(found[&own(77, 5)], cg);
        }

        assert!(Placer::remove(&cg).is_empty());
        assert!(!cg.v1["memory"].exists());
        assert!(find_marked(placer.hierarchies()).is_empty());
    }

    /// In a Slurm job on cgroup v1 the memory hierarchy gets no cgroup of
    /// ours (Slurm counts OOM kills in its own); the others do.
    #[test]
    fn a_slurm_jobs_v1_memory_cgroup_is_shared_not_nested() {
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        std::fs::create_dir_all(procfs.join("77")).unwrap();
        std::fs::write(
            procfs.join("77/cgroup"),
            "4:cpu,cpuacct:/\n3:memory:/slurm_n1/uid_0/job_9/step_batch/task_0\n0::/\n",
        )
        .unwrap();
        std::fs::create_dir_all(
            root.path()
                .join("memory/slurm_n1/uid_0/job_9/step_batch/task_0"),
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("cpu,cpuacct")).unwrap();
        std::fs::create_dir_all(root.path().join("unified")).unwrap();
        let placer = Placer::new(&hybrid(root.path()), &procfs);
        let created = placer.create(&own(77, 5)).unwrap();
        let task = root
            .path()
            .join("memory/slurm_n1/uid_0/job_9/step_batch/task_0");
        assert_eq!(created.shared.v1["memory"], task);
        assert!(!created.own.v1.contains_key("memory"));
        assert_eq!(
            created.own.v1["cpu"],
            root.path().join("cpu,cpuacct/apptheus-77-5")
        );
        assert_eq!(
            std::fs::read_dir(&task).unwrap().count(),
            0,
            "nothing below Slurm's"
        );
        assert_eq!(created.why_shared, Some(NoOwnCgroup::SlurmV1Memory));
    }

    /// Pure v2, a batch script's task: nothing of ours in Slurm's tree,
    /// the task's cgroup is the container's shared one.
    #[test]
    fn a_slurm_jobs_cgroup2_tree_gets_nothing_of_ours() {
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        let task = "system.slice/n1_slurmstepd.scope/job_9/step_batch/user/task_0";
        std::fs::create_dir_all(procfs.join("77")).unwrap();
        std::fs::write(procfs.join("77/cgroup"), format!("0::/{task}\n")).unwrap();
        std::fs::create_dir_all(root.path().join(task)).unwrap();
        let v2 = Layout {
            v2: Some(root.path().to_path_buf()),
            v1: Default::default(),
        };
        let placer = Placer::new(&v2, &procfs);
        let created = placer.create(&own(77, 5)).unwrap();
        assert!(created.own.is_empty(), "{created:?}");
        assert_eq!(created.shared.v2, Some(root.path().join(task)));
        assert_eq!(created.why_shared, Some(NoOwnCgroup::SlurmV2));
        assert_eq!(
            std::fs::read_dir(root.path().join(task)).unwrap().count(),
            0
        );
    }

    /// A task still where the starter started is moved; one a runtime
    /// moved into a cgroup of its own stays there and is reported.
    #[test]
    fn tasks_a_runtime_moved_are_left_where_they_are() {
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        let write = |pid: u32, cgroup: &str| {
            std::fs::create_dir_all(procfs.join(pid.to_string())).unwrap();
            std::fs::write(procfs.join(format!("{pid}/cgroup")), cgroup).unwrap();
        };
        write(10, "4:cpu,cpuacct:/job\n3:memory:/job\n0::/job\n");
        write(
            11,
            "4:cpu,cpuacct:/apptainer/11\n3:memory:/apptainer/11\n0::/apptainer/11\n",
        );
        for d in ["unified/job", "cpu,cpuacct/job", "memory/job"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let placer = Placer::new(&hybrid(root.path()), &procfs);
        let cg = placer.create(&own(10, 1)).unwrap().own;
        for dir in cg.distinct_dirs() {
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        let placed = placer.place(&cg, || vec![10, 11]).unwrap();
        assert_eq!(placed.elsewhere, vec![11]);
        // Only the starter's pid was written, in every hierarchy.
        for dir in cg.distinct_dirs() {
            let written = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert_eq!(written, "10", "{}", dir.display());
        }
        assert_eq!(
            placer.hierarchies().cgroups_of(11).unwrap().v1["memory"],
            root.path().join("memory/apptainer/11")
        );
    }

    /// A directory with our naming that is not marked (a user's, in a
    /// subtree delegated to them) is neither found nor used, and one of
    /// ours below it is found.
    #[test]
    fn an_unmarked_directory_with_our_name_is_not_ours() {
        if !nix::unistd::geteuid().is_root() {
            apptheus_testkit::skip("root (a directory of a user's, a mark)");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        std::fs::create_dir_all(procfs.join("77")).unwrap();
        std::fs::write(procfs.join("77/cgroup"), "0::/user/apptheus-1-1\n").unwrap();
        let forged = root.path().join("user/apptheus-1-1");
        std::fs::create_dir_all(forged.join("apptheus-77-5")).unwrap();
        let v2 = Layout {
            v2: Some(root.path().to_path_buf()),
            v1: Default::default(),
        };
        let placer = Placer::new(&v2, &procfs);
        assert!(find_marked(placer.hierarchies()).is_empty());
        // Our run's directory exists already, unmarked and a user's: not
        // used.
        std::os::unix::fs::chown(forged.join("apptheus-77-5"), Some(1500), None).unwrap();
        let e = placer.create(&own(77, 5)).unwrap_err();
        assert!(matches!(e, PlaceError::NotOurs { .. }), "{e}");
        assert!(e.to_string().contains("apptheus-77-5"), "{e}");
        std::fs::remove_dir(forged.join("apptheus-77-5")).unwrap();
        let created = placer.create(&own(77, 5)).unwrap();
        if created.unmarked.is_some() {
            apptheus_testkit::skip("CAP_SYS_ADMIN (trusted.* extended attributes)");
            return;
        }
        let found = find_marked(placer.hierarchies());
        assert_eq!(found.len(), 1, "ours, below the user's: {found:?}");
        assert_eq!(found[&own(77, 5)].v2, Some(forged.join("apptheus-77-5")));
        // Renamed by whoever owns the parent: not taken for ours.
        std::fs::rename(forged.join("apptheus-77-5"), forged.join("apptheus-77-6")).unwrap();
        assert!(find_marked(placer.hierarchies()).is_empty());
    }

    #[test]
    fn missing_process_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let placer = Placer::new(&hybrid(root.path()), root.path());
        let e = placer.create(&own(424242, 1)).unwrap_err().to_string();
        assert!(e.contains("424242"), "{e}");
    }
}
