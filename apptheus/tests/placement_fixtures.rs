//! Where a container's cgroups go, decided on checked-in trees of real
//! layouts (`tests/fixtures/cgroup/placement/<case>`: a mountinfo, the
//! cgroup tree as its owner made it, and /proc/<pid>/cgroup of the
//! starter and of the processes beside it). Each case is copied into a
//! temporary directory, its mount points rewritten there, and placed.
use std::path::{Path, PathBuf};

use apptheus::testing::cgroup::{
    Layout, Mark, NoOwnCgroup, Placer, find_marked, slurm_job_of, v2_root,
};

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Every directory below `dir`, relative to it, sorted.
fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The mark of container `key`'s own run, started by `pid`.
fn own(pid: u32, key: u64) -> Mark {
    Mark {
        container: key,
        container_pid: pid,
        member: key,
        member_pid: pid,
        ..Mark::default()
    }
}

/// A case placed: its root (the temporary copy) and its placer.
struct Case {
    root: tempfile::TempDir,
    placer: Placer,
}

impl Case {
    fn new(name: &str) -> Self {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup/placement")
            .join(name);
        let root = tempfile::tempdir().unwrap();
        copy_tree(&fixture, root.path());
        let mountinfo = std::fs::read_to_string(root.path().join("mountinfo"))
            .unwrap()
            .replace("@ROOT@", &root.path().display().to_string());
        let layout = Layout::parse(&mountinfo);
        let placer = Placer::new(&layout, &root.path().join("proc"));
        Case { root, placer }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        dirs(&self.path("sys/fs/cgroup"))
    }
}

/// `sbatch job.sh` under Slurm 22.05's cgroup/v2 plugin: the starter
/// beside the script's shell in `task_0`. Nothing is created anywhere in
/// the tree; `task_0` is the cgroup the container shares.
#[test]
fn slurm_cgroup_v2_batch_task_gets_nothing_of_ours() {
    let case = Case::new("slurm-22.05-v2");
    let before = case.cgroup_dirs();
    let created = case.placer.create(&own(4711, 1)).unwrap();
    assert!(created.own.is_empty(), "{created:?}");
    assert_eq!(
        created.shared.v2,
        Some(case.path(
            "sys/fs/cgroup/system.slice/node1_slurmstepd.scope/job_42/step_batch/user/task_0"
        ))
    );
    assert_eq!(created.why_shared, Some(NoOwnCgroup::SlurmV2));
    assert_eq!(case.cgroup_dirs(), before, "no directory created");
}

/// Slurm 26.05 names the job's directory after its SLUID: recognised the
/// same.
#[test]
fn slurm_sluid_named_job_is_recognised() {
    let case = Case::new("slurm-26.05-v2-sluid");
    let before = case.cgroup_dirs();
    let created = case.placer.create(&own(4711, 1)).unwrap();
    assert!(created.own.is_empty(), "{created:?}");
    assert_eq!(created.why_shared, Some(NoOwnCgroup::SlurmV2));
    assert_eq!(case.cgroup_dirs(), before);
}

/// Slurm 22.05's cgroup/v1 plugin on a hybrid host: nothing of ours in
/// the memory hierarchy (the task's cgroup is shared), our own in the
/// hierarchies Slurm leaves alone, beneath the starter's cgroups there.
#[test]
fn slurm_cgroup_v1_job_shares_memory_only() {
    let case = Case::new("slurm-22.05-v1-hybrid");
    let created = case.placer.create(&own(4711, 1)).unwrap();
    assert_eq!(
        created.shared.v1.get("memory"),
        Some(&case.path("sys/fs/cgroup/memory/slurm_node1/uid_0/job_17/step_batch/task_0"))
    );
    assert_eq!(created.why_shared, Some(NoOwnCgroup::SlurmV1Memory));
    assert!(!created.own.v1.contains_key("memory"));
    assert_eq!(
        created.own.v1.get("cpu"),
        Some(&case.path("sys/fs/cgroup/cpu,cpuacct/apptheus-4711-1"))
    );
    assert_eq!(
        created.own.v2,
        Some(case.path("sys/fs/cgroup/unified/system.slice/slurmd.service/apptheus-4711-1"))
    );
    assert!(!case.path("sys/fs/cgroup/freezer/apptheus-4711-1").exists());
    let in_job: Vec<PathBuf> = case
        .cgroup_dirs()
        .into_iter()
        .filter(|d| {
            d.to_string_lossy().contains("job_17") && d.to_string_lossy().contains("apptheus-")
        })
        .collect();
    assert!(in_job.is_empty(), "{in_job:?}");
}

/// A login session's scope on pure v2: the container's cgroup goes
/// beneath it (the session's limits hold), never beside it in the slice.
#[test]
fn login_session_scope_gets_a_child_not_a_sibling() {
    let case = Case::new("login-session-v2");
    let created = case.placer.create(&own(5000, 1)).unwrap();
    assert_eq!(created.why_shared, None);
    assert_eq!(
        created.own.v2,
        Some(case.path("sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/apptheus-5000-1"))
    );
    let slice = dirs(&case.path("sys/fs/cgroup/user.slice/user-1000.slice"));
    assert!(
        slice.iter().all(|d| d.starts_with("session-3.scope")),
        "nothing beside the scope: {slice:?}"
    );
}

/// Seen on the systemd node (`cargo xtask vm-test --layout systemd`): an
/// ordinary user's `apptainer exec --memory 64M --cpus 0.5` from a login
/// session. The starter stays in the session's scope beside `su`; the
/// user's systemd made `apptainer-601.scope` for the workload. The
/// container's cgroup goes beneath the session's scope, the starter alone
/// is moved into it, and the workload stays in systemd's scope: nothing is
/// created there, nothing moved out of it.
#[test]
fn a_users_systemd_scope_keeps_its_workload() {
    let case = Case::new("apptainer-1.4-systemd-user-limits");
    let scope = case.path(
        "sys/fs/cgroup/user.slice/user-1500.slice/user@1500.service/user.slice/apptainer-601.scope",
    );
    let before = dirs(&scope);
    let created = case.placer.create(&own(546, 1)).unwrap();
    assert_eq!(created.why_shared, None);
    let own = created.own.v2.clone().unwrap();
    assert_eq!(
        own,
        case.path("sys/fs/cgroup/user.slice/user-1500.slice/session-c2.scope/apptheus-546-1")
    );
    // A regular file stands in for the kernel's.
    std::fs::write(own.join("cgroup.procs"), "").unwrap();
    let placed = case.placer.place(&created.own, || vec![546, 601]).unwrap();
    assert_eq!(placed.elsewhere, vec![601], "{placed:?}");
    assert_eq!(
        std::fs::read_to_string(own.join("cgroup.procs")).unwrap(),
        "546"
    );
    assert_eq!(
        std::fs::read_to_string(scope.join("cgroup.procs")).unwrap(),
        "601\n"
    );
    assert_eq!(dirs(&scope), before, "nothing created in systemd's scope");
    assert!(before.is_empty());
}

/// Seen on the systemd node: Slurm 26.05's cgroup/v2 plugin under systemd
/// on a node named `apptheus-node`. Its scope is
/// `apptheus-node_slurmstepd.scope`, the job's directory its SLUID, the
/// job's slurmstepd in `step_batch/slurm`. Nothing is created in the job;
/// the scope, though named `apptheus-...`, is not taken for a cgroup of
/// ours; the label is the job's numeric id, which its slurmstepd names.
#[test]
fn slurm_26_05_under_systemd_is_left_alone_and_named_by_its_job_id() {
    let case = Case::new("slurm-26.05-v2-systemd");
    let before = case.cgroup_dirs();
    let created = case.placer.create(&own(953, 1)).unwrap();
    assert!(created.own.is_empty(), "{created:?}");
    assert_eq!(created.why_shared, Some(NoOwnCgroup::SlurmV2));
    assert_eq!(case.cgroup_dirs(), before);
    assert!(
        find_marked(&case.placer).is_empty(),
        "Slurm's scope is not ours: {:?}",
        find_marked(&case.placer)
    );
    let task = std::fs::read_to_string(case.path("proc/953/cgroup")).unwrap();
    assert_eq!(
        slurm_job_of(&task, v2_root(&case.placer), &case.path("proc")).as_deref(),
        Some("1")
    );
}
