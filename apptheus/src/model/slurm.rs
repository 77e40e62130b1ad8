//! The Slurm job a process runs in, from where Slurm put it: the
//! `job_<id>` component of its cgroup path, below a component naming Slurm.
//! That path is chosen by Slurm (root), unlike an environment variable,
//! which whoever starts the process sets. Slurm's layouts, for example:
//!
//! - cgroup v1: `/slurm_<node>/uid_<uid>/job_<id>/step_<step>/task_<n>`
//!   (or `/slurm/uid_<uid>/job_<id>/...`), in each controller it uses;
//! - cgroup v2: `/system.slice/<node>_slurmstepd.scope/job_<id>/step_<step>/user/task_<n>`
//!   (`slurmstepd.scope` in older releases).
//!
//! Releases have named these differently over time, so no one shape is
//! assumed: any component naming Slurm, then `job_<digits>` (or `job<digits>`,
//! `job-<digits>`) somewhere below it.

/// The job id in one cgroup path, if Slurm put the process there.
pub fn job_in_path(path: &str) -> Option<String> {
    let mut below_slurm = false;
    for part in path.split('/') {
        if part.to_ascii_lowercase().contains("slurm") {
            below_slurm = true;
            continue;
        }
        if below_slurm && let Some(id) = job_id(part) {
            return Some(id.to_string());
        }
    }
    None
}

/// The job id of a process from its `/proc/<pid>/cgroup` text: the first
/// hierarchy whose path names a Slurm job (they agree where Slurm
/// placed the process in several).
pub fn job_in_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(job_in_path)
}

fn job_id(component: &str) -> Option<&str> {
    let rest = component.strip_prefix("job")?;
    let digits = rest.strip_prefix(['_', '-']).unwrap_or(rest);
    (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_v1_and_v2_layouts() {
        // Seen here: Slurm 22.05, cgroup/v1 plugin, on a hybrid host.
        let v1 = "9:name=systemd:/\n4:memory:/slurm_node1/uid_0/job_17/step_batch/task_0\n3:freezer:/slurm_node1/uid_0/job_17/step_batch\n0::/\n";
        assert_eq!(job_in_proc_cgroup(v1).as_deref(), Some("17"));
        let v2 = "0::/system.slice/node1_slurmstepd.scope/job_4242/step_0/user/task_0\n";
        assert_eq!(job_in_proc_cgroup(v2).as_deref(), Some("4242"));
        assert_eq!(
            job_in_path("/slurm/uid_1000/job-99/step_extern").as_deref(),
            Some("99")
        );
        assert_eq!(
            job_in_path("/system.slice/slurmstepd.scope/job123/step_0").as_deref(),
            Some("123")
        );
    }

    #[test]
    fn no_job_outside_slurm() {
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            // A user's own cgroup named like a job, with no Slurm above it.
            "0::/user.slice/user-1000.slice/user@1000.service/job_42\n",
            "4:memory:/slurm_node1/uid_0/job_/step_0\n",
            "4:memory:/slurm_node1/uid_0/jobs_1/x\n",
            "4:memory:/slurm_node1/uid_0/job_1a/x\n",
            "",
            "garbage",
        ] {
            assert_eq!(job_in_proc_cgroup(text), None, "{text}");
        }
    }
}
