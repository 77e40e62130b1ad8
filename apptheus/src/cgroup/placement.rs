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
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
};

use super::{
    layout::{Layout, V1_CONTROLLERS},
    mark::{self, Mark},
    procfile,
};
use crate::model::cgroups::ContainerCgroups;

pub use super::mark::DIR_PREFIX;
/// Passes over a container's tasks before placement gives up.
const MAX_PASSES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("reading the cgroups of pid {pid}: {source}")]
    ProcCgroup { pid: u32, source: std::io::Error },
    #[error("pid {pid} is in no cgroup of the {hierarchy} hierarchy (per /proc/{pid}/cgroup)")]
    NotInHierarchy { pid: u32, hierarchy: String },
    #[error("creating cgroup {dir}: {source}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir} exists and is not apptheus' cgroup for this container (it has no mark, or another's): \
         made by someone else, it is not used"
    )]
    NotOurs { dir: PathBuf },
    #[error("moving task {tid} into {dir}: {source}")]
    Move {
        tid: u32,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// One hierarchy apptheus places containers in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mountpoint: PathBuf,
    /// v1 controllers mounted there that apptheus reads; empty for cgroup2.
    controllers: Vec<String>,
}

impl Hierarchy {
    fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    fn name(&self) -> String {
        if self.is_v2() {
            "cgroup2".into()
        } else {
            self.controllers.join(",")
        }
    }
}

#[derive(Debug, Clone)]
pub struct Placer {
    procfs: PathBuf,
    hierarchies: Vec<Hierarchy>,
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
        let mut hierarchies = Vec::new();
        if let Some(v2) = &layout.v2 {
            hierarchies.push(Hierarchy {
                mountpoint: v2.clone(),
                controllers: Vec::new(),
            });
        }
        let mut by_mount: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for c in V1_CONTROLLERS {
            if let Some(m) = layout.v1.get(c) {
                by_mount
                    .entry(m.mountpoint.clone())
                    .or_default()
                    .push(c.to_string());
            }
        }
        hierarchies.extend(
            by_mount
                .into_iter()
                .map(|(mountpoint, controllers)| Hierarchy {
                    mountpoint,
                    controllers,
                }),
        );
        Self {
            procfs: procfs.to_path_buf(),
            hierarchies,
        }
    }

    /// Whether a v1 hierarchy with `controller` is placed in.
    pub fn v1_has(&self, controller: &str) -> bool {
        self.hierarchies
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == controller))
    }

    /// Where cgroup2 is mounted, if it is.
    pub fn v2_root(&self) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.is_v2())
            .map(|h| h.mountpoint.as_path())
    }

    fn proc_cgroups(&self, pid: u32) -> Result<procfile::ProcCgroups, PlaceError> {
        let text = std::fs::read_to_string(self.procfs.join(pid.to_string()).join("cgroup"))
            .map_err(|source| PlaceError::ProcCgroup { pid, source })?;
        Ok(procfile::parse(&text))
    }

    /// The directory in hierarchy `h` of a process, per its /proc cgroup file.
    fn dir_of(&self, h: &Hierarchy, cgs: &procfile::ProcCgroups) -> Option<PathBuf> {
        let rel = if h.is_v2() {
            cgs.v2.as_deref()?
        } else {
            cgs.v1.get(&h.controllers[0])?.as_str()
        };
        Some(h.mountpoint.join(rel.trim_start_matches('/')))
    }

    /// The cgroups process `pid` is in now, one directory per hierarchy.
    pub fn cgroups_of(&self, pid: u32) -> Result<ContainerCgroups, PlaceError> {
        let cgs = self.proc_cgroups(pid)?;
        let mut out = ContainerCgroups::default();
        for h in &self.hierarchies {
            let Some(dir) = self.dir_of(h, &cgs) else {
                continue;
            };
            if h.is_v2() {
                out.v2 = Some(dir);
            } else {
                for c in &h.controllers {
                    out.v1.insert(c.clone(), dir.clone());
                }
            }
        }
        Ok(out)
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
        for h in &self.hierarchies {
            let parent = self
                .dir_of(h, &cgs)
                .ok_or_else(|| PlaceError::NotInHierarchy {
                    pid: starter_pid,
                    hierarchy: h.name(),
                })?;
            let relative = parent.strip_prefix(&h.mountpoint).unwrap_or(&parent);
            if let Some(why) = own_cgroup_refused(&h.controllers, relative) {
                set(&mut out.shared, h, parent);
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
            set(&mut out.own, h, dir);
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
            .or_else(|| self.hierarchies.first())
            .ok_or_else(|| PlaceError::NotInHierarchy {
                pid: tid,
                hierarchy: "any".into(),
            })?;
        let dir = self
            .dir_of(h, &cgs)
            .ok_or_else(|| PlaceError::NotInHierarchy {
                pid: tid,
                hierarchy: h.name(),
            })?;
        Ok(dir.join(if h.is_v2() { "cgroup.threads" } else { "tasks" }))
    }

    /// The container's directories, one per hierarchy.
    pub fn dirs(cg: &ContainerCgroups) -> Vec<PathBuf> {
        let set: BTreeSet<&PathBuf> = cg.v2.iter().chain(cg.v1.values()).collect();
        set.into_iter().cloned().collect()
    }

    /// Where task `tid` is against the container's cgroups: per hierarchy,
    /// inside already, in the cgroup the container's cgroup was created in
    /// (so to be moved), or elsewhere (a runtime's own cgroup: left alone).
    fn whereabouts(&self, cg: &ContainerCgroups, tid: u32) -> Result<Whereabouts, PlaceError> {
        let cgs = self.proc_cgroups(tid)?;
        let mut w = Whereabouts::default();
        for h in &self.hierarchies {
            let want = if h.is_v2() {
                cg.v2.as_ref()
            } else {
                cg.v1.get(&h.controllers[0])
            };
            let (Some(want), Some(have)) = (want, self.dir_of(h, &cgs)) else {
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
        Self::dirs(cg)
            .into_iter()
            .filter(|d| match std::fs::remove_dir(d) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(_) => true,
            })
            .collect()
    }

    /// Finds the cgroups apptheus created in an earlier run, in every
    /// hierarchy: directories with apptheus' naming and its mark, naming
    /// them (see [`mark`]). A directory of that name without the mark (a
    /// user's) is neither taken nor touched.
    pub fn find_marked(&self) -> BTreeMap<Mark, ContainerCgroups> {
        let mut out: BTreeMap<Mark, ContainerCgroups> = BTreeMap::new();
        for h in &self.hierarchies {
            let mut found = Vec::new();
            walk(&h.mountpoint, 0, &mut found);
            for (dir, m) in found {
                let entry = out.entry(m).or_default();
                if h.is_v2() {
                    entry.v2 = Some(dir);
                } else {
                    for c in &h.controllers {
                        entry.v1.insert(c.clone(), dir.clone());
                    }
                }
            }
        }
        out
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

fn set(cg: &mut ContainerCgroups, h: &Hierarchy, dir: PathBuf) {
    if h.is_v2() {
        cg.v2 = Some(dir);
    } else {
        for c in &h.controllers {
            cg.v1.insert(c.clone(), dir.clone());
        }
    }
}

/// Why a container gets no cgroup of its own in a hierarchy: the
/// starter's own cgroup is shared with it instead (read while nothing else
/// runs there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoOwnCgroup {
    /// A Slurm job's cgroup v1 memory hierarchy. There the kernel counts
    /// an OOM kill only in the victim's own cgroup (v1 passes no memory
    /// event up), and Slurm reads them in its task and step cgroups to
    /// tell that a job ran out of memory; Slurm also removes those cgroups
    /// at the end of each step, which a child of ours would make fail.
    SlurmV1Memory,
    /// A Slurm job's cgroup2 tree. Slurm's cgroup/v2 plugin follows a
    /// step's processes by reading the `cgroup.procs` of the `task_<n>` and
    /// `slurm` cgroups it created, not of cgroups below or beside them: a
    /// process moved into a cgroup of ours (child or sibling) would no
    /// longer be signalled by Slurm (scancel, time limit, the clean-up
    /// SIGKILL where `cgroup.kill` is not used), nor waited for at the
    /// step's end, nor seen by jobacct_gather/linux; and Slurm's `rmdir`
    /// of its cgroups fails while a directory of ours is left there.
    /// Controllers enabled in `task_<n>` would also keep Slurm from adding
    /// processes to it.
    SlurmV2,
}

impl std::fmt::Display for NoOwnCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoOwnCgroup::SlurmV1Memory => {
                "a Slurm job's cgroup v1 memory hierarchy (Slurm counts OOM kills in its own cgroups there)"
            }
            NoOwnCgroup::SlurmV2 => {
                "a Slurm job's cgroup v2 tree (Slurm finds a step's processes in its task_<n> cgroups only, and removes them at the step's end)"
            }
        })
    }
}

/// Whether a container's own cgroup may be created below `parent` (its
/// path in a hierarchy holding v1 `controllers`; none for cgroup2): None
/// if so, else why not. Everywhere but in a Slurm job it may: beneath the
/// starter's cgroup every enclosing limit holds.
pub fn own_cgroup_refused(controllers: &[String], parent: &Path) -> Option<NoOwnCgroup> {
    crate::model::slurm::parse(&parent.to_string_lossy())?;
    if controllers.is_empty() {
        Some(NoOwnCgroup::SlurmV2)
    } else if controllers.iter().any(|c| c == "memory") {
        Some(NoOwnCgroup::SlurmV1Memory)
    } else {
        None
    }
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

/// Collects the directories apptheus made (named apptheus-* and marked so,
/// the mark naming the directory), not descending into them; any other
/// directory, one of a user's with our naming included, is descended
/// into (one of ours may lie below).
fn walk(dir: &Path, depth: usize, found: &mut Vec<(PathBuf, Mark)>) {
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let name = e.file_name();
        let ours = name
            .to_str()
            .filter(|n| n.starts_with(DIR_PREFIX))
            .and_then(|n| {
                mark::get(&path)
                    .ok()
                    .flatten()
                    .filter(|m| m.dir_name() == n)
            });
        match ours {
            Some(m) => found.push((path, m)),
            None => walk(&path, depth + 1, found),
        }
    }
}

/// The processes (thread-group ids) in a cgroup directory.
pub fn procs(dir: &Path) -> Vec<u32> {
    read_ids(&dir.join("cgroup.procs"))
}

/// The threads in a cgroup directory (v2 cgroup.threads, v1 tasks).
pub fn threads(dir: &Path) -> Vec<u32> {
    let v2 = dir.join("cgroup.threads");
    if v2.exists() {
        read_ids(&v2)
    } else {
        read_ids(&dir.join("tasks"))
    }
}

fn read_ids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::layout::V1Mount;

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
            v1: BTreeMap::new(),
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
            v1: BTreeMap::new(),
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
        assert_eq!(Placer::dirs(&cg).len(), 3);
        // Creating again is harmless.
        assert_eq!(placer.create(&own(77, 5)).unwrap().own, cg);

        let created = placer.create(&own(77, 5)).unwrap();
        if let Some((dir, e)) = created.unmarked {
            // Marking needs CAP_SYS_ADMIN (`trusted.`).
            apptheus_testkit::skip(&format!("marking {}: {e}", dir.display()));
        } else {
            let found = placer.find_marked();
            assert_eq!(found.len(), 1);
            assert_eq!(found[&own(77, 5)], cg);
        }

        assert!(Placer::remove(&cg).is_empty());
        assert!(!cg.v1["memory"].exists());
        assert!(placer.find_marked().is_empty());
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

    /// Which hierarchies refuse a cgroup of ours, and why.
    #[test]
    fn refusals_are_for_slurms_memory_and_cgroup2_trees_only() {
        let memory = ["memory".to_string()];
        let cpu = ["cpu".to_string(), "cpuacct".to_string()];
        let job_v1 = Path::new("/slurm_n1/uid_0/job_1/step_0/task_0");
        let job_v2 = Path::new("/system.slice/n1_slurmstepd.scope/job_1/step_batch/user/task_0");
        let sluid = Path::new("/system.slice/slurmstepd.scope/sEKNKTV3WPV500/step_0/user/task_0");
        assert_eq!(own_cgroup_refused(&memory, Path::new("/user.slice")), None);
        assert_eq!(
            own_cgroup_refused(&memory, job_v1),
            Some(NoOwnCgroup::SlurmV1Memory)
        );
        assert_eq!(own_cgroup_refused(&cpu, job_v1), None);
        assert_eq!(own_cgroup_refused(&[], job_v2), Some(NoOwnCgroup::SlurmV2));
        assert_eq!(own_cgroup_refused(&[], sluid), Some(NoOwnCgroup::SlurmV2));
        // slurmd's own service is no job.
        assert_eq!(
            own_cgroup_refused(&[], Path::new("/system.slice/slurmd.service")),
            None
        );
        assert_eq!(
            own_cgroup_refused(
                &[],
                Path::new("/user.slice/user-1000.slice/session-3.scope")
            ),
            None
        );
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
            v1: BTreeMap::new(),
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
        for dir in Placer::dirs(&cg) {
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        let placed = placer.place(&cg, || vec![10, 11]).unwrap();
        assert_eq!(placed.elsewhere, vec![11]);
        // Only the starter's pid was written, in every hierarchy.
        for dir in Placer::dirs(&cg) {
            let written = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert_eq!(written, "10", "{}", dir.display());
        }
        assert_eq!(
            placer.cgroups_of(11).unwrap().v1["memory"],
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
            v1: BTreeMap::new(),
        };
        let placer = Placer::new(&v2, &procfs);
        assert!(placer.find_marked().is_empty());
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
        let found = placer.find_marked();
        assert_eq!(found.len(), 1, "ours, below the user's: {found:?}");
        assert_eq!(found[&own(77, 5)].v2, Some(forged.join("apptheus-77-5")));
        // Renamed by whoever owns the parent: not taken for ours.
        std::fs::rename(forged.join("apptheus-77-5"), forged.join("apptheus-77-6")).unwrap();
        assert!(placer.find_marked().is_empty());
    }

    #[test]
    fn missing_process_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let placer = Placer::new(&hybrid(root.path()), root.path());
        let e = placer.create(&own(424242, 1)).unwrap_err().to_string();
        assert!(e.contains("424242"), "{e}");
    }
}
