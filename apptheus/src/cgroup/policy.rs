//! Where a container's own cgroup may be created: beneath its starter's
//! cgroup in every hierarchy, except where a child there would do harm (a
//! Slurm job's trees); there the starter's own cgroup is shared with the
//! container instead, and [`NoOwnCgroup`] says why.
use std::path::Path;

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
pub(crate) fn own_cgroup_refused(controllers: &[String], parent: &Path) -> Option<NoOwnCgroup> {
    crate::model::slurm::parse(&parent.to_string_lossy())?;
    if controllers.is_empty() {
        Some(NoOwnCgroup::SlurmV2)
    } else if controllers.iter().any(|c| c == "memory") {
        Some(NoOwnCgroup::SlurmV1Memory)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
