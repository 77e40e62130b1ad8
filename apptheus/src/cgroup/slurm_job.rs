//! The numeric id of a Slurm job whose cgroup v2 directory Slurm named
//! after its SLUID (Slurm 26.05's cgroup/v2 plugin, unless
//! `CgroupJobIdPaths=yes`). Users know a job by its numeric id (`sbatch`
//! prints it, `squeue` and `sacct` list it), which the directory does not
//! carry; the job's own slurmstepd does. It runs as root in the step's
//! `slurm` cgroup (`<job>/step_<step>/slurm`, next to `user/` where the
//! tasks run) and titles itself `slurmstepd: [<id>.<step>]`: a place and a
//! process only root controls, like the path itself.
use std::path::Path;

use crate::{cgroup::tasks, host::procfs::Procfs, model::slurm};

/// The numeric id of the job whose directory is `job_dir` (a cgroup v2
/// path below `v2_root`), from the slurmstepd of one of its steps; None
/// if no root-owned slurmstepd there names it.
pub(crate) fn numeric_id(v2_root: &Path, job_dir: &str, procfs: &Procfs) -> Option<String> {
    let dir = v2_root.join(job_dir.trim_start_matches('/'));
    let mut steps: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step_"))
        .map(|e| e.path().join("slurm"))
        .collect();
    steps.sort();
    steps.into_iter().find_map(|slurm_dir| {
        tasks::procs(&slurm_dir).into_iter().find_map(|pid| {
            if procfs.uid(pid) != Some(0) {
                return None;
            }
            let title = procfs.arg0(pid).ok()?;
            slurm::stepd_job_id(&title).map(str::to_string)
        })
    })
}

/// The Slurm job of a process from its `/proc/<pid>/cgroup` text, as users
/// know it: the job's directory in its cgroup path ([`slurm::parse`]),
/// its numeric id read from the job's slurmstepd where the directory
/// names a SLUID ([`numeric_id`]; the SLUID if none tells it).
pub(crate) fn job_of(proc_cgroup: &str, v2_root: Option<&Path>, procfs: &Procfs) -> Option<String> {
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next(), f.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let Some(p) = slurm::parse(path) else {
            continue;
        };
        if slurm::is_sluid_job(p.job)
            && controllers.is_empty()
            && let Some(id) = v2_root.and_then(|root| numeric_id(root, p.job_dir, procfs))
        {
            return Some(id);
        }
        return Some(p.job.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout seen with Slurm 26.05 under systemd: the job's slurmstepd
    /// in `step_batch/slurm`, the batch script and the container in
    /// `step_batch/user/task_0`.
    fn node(stepd_uid: u32, title: &str) -> (tempfile::TempDir, Procfs) {
        let d = tempfile::tempdir().unwrap();
        let job = d
            .path()
            .join("cgroup/system.slice/apptheus-node_slurmstepd.scope/sC3DM96VEMQW00");
        std::fs::create_dir_all(job.join("step_batch/slurm")).unwrap();
        std::fs::create_dir_all(job.join("step_batch/user/task_0")).unwrap();
        std::fs::write(job.join("step_batch/slurm/cgroup.procs"), "945\n").unwrap();
        std::fs::write(job.join("step_batch/user/task_0/cgroup.procs"), "953\n").unwrap();
        let pid = d.path().join("proc/945");
        std::fs::create_dir_all(&pid).unwrap();
        std::fs::write(pid.join("cmdline"), format!("{title}\0")).unwrap();
        std::fs::write(
            pid.join("status"),
            format!(
                "Name:\tslurmstepd\nUid:\t{stepd_uid}\t{stepd_uid}\t{stepd_uid}\t{stepd_uid}\n"
            ),
        )
        .unwrap();
        let procfs = Procfs::new(&d.path().join("proc"));
        (d, procfs)
    }

    const TASK: &str =
        "0::/system.slice/apptheus-node_slurmstepd.scope/sC3DM96VEMQW00/step_batch/user/task_0\n";

    #[test]
    fn a_sluid_directory_gives_the_numeric_id_its_slurmstepd_names() {
        let (d, procfs) = node(0, "slurmstepd: [1.batch]");
        let root = d.path().join("cgroup");
        assert_eq!(job_of(TASK, Some(&root), &procfs).as_deref(), Some("1"));
        // Without the cgroup2 mount the SLUID is what there is.
        assert_eq!(
            job_of(TASK, None, &procfs).as_deref(),
            Some("sC3DM96VEMQW00")
        );
    }

    #[test]
    fn only_roots_slurmstepd_is_believed() {
        let (d, procfs) = node(1500, "slurmstepd: [666.batch]");
        let root = d.path().join("cgroup");
        assert_eq!(
            job_of(TASK, Some(&root), &procfs).as_deref(),
            Some("sC3DM96VEMQW00")
        );
        let (d, procfs) = node(0, "/usr/sbin/slurmstepd infinity");
        let root = d.path().join("cgroup");
        assert_eq!(
            job_of(TASK, Some(&root), &procfs).as_deref(),
            Some("sC3DM96VEMQW00")
        );
    }

    #[test]
    fn numeric_directories_need_no_lookup() {
        let procfs = Procfs::new(Path::new("/nonexistent"));
        let v2 = "0::/system.slice/node1_slurmstepd.scope/job_4242/step_0/user/task_0\n";
        assert_eq!(
            job_of(v2, Some(Path::new("/nonexistent")), &procfs).as_deref(),
            Some("4242")
        );
        let v1 = "4:memory:/slurm_node1/uid_0/job_17/step_batch/task_0\n0::/\n";
        assert_eq!(job_of(v1, None, &procfs).as_deref(), Some("17"));
        assert_eq!(
            job_of(
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                None,
                &procfs
            ),
            None
        );
    }
}
