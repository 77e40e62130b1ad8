//! The Slurm job a process runs in, from where Slurm put it: its job's
//! directory in its cgroup path, below a component naming Slurm. That path
//! is chosen by Slurm (root), unlike an environment variable, which whoever
//! starts the process sets. Slurm's layouts, for example:
//!
//! - cgroup v1: `/slurm_<node>/uid_<uid>/job_<id>/step_<step>/task_<n>`
//!   (or `/slurm/uid_<uid>/job_<id>/...`), in each controller it uses;
//! - cgroup v2: `/system.slice/<node>_slurmstepd.scope/job_<id>/step_<step>/user/task_<n>`
//!   (`slurmstepd.scope` in older releases; `step_<step>/slurm` holds
//!   slurmstepd itself);
//! - cgroup v2 from Slurm 26.05 on: the job's directory is named after its
//!   SLUID, `s` and 13 Crockford base-32 digits, e.g.
//!   `/system.slice/slurmstepd.scope/sEKNKTV3WPV500/step_0/user/task_0`,
//!   unless `CgroupJobIdPaths=yes`. Slurm's commands take a SLUID wherever
//!   they take a job id.
//!
//! Releases have named these differently over time, so no one shape is
//! assumed: any component naming Slurm, then below it `job_<digits>` (or
//! `job<digits>`, `job-<digits>`), or a SLUID followed by a `step_`
//! component.

/// Where a cgroup path lies in Slurm's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlurmPath<'a> {
    /// The job: its numeric id, or its SLUID where Slurm names the job's
    /// directory so.
    pub job: &'a str,
    /// The job's directory: `path` up to and including its component.
    pub job_dir: &'a str,
    /// The step's component (`step_batch`, `step_0`, `step_extern`, ...),
    /// if the path lies below the job's directory in one.
    pub step: Option<&'a str>,
}

/// Where `path` (a cgroup path, as in /proc/<pid>/cgroup) lies in Slurm's
/// tree, if Slurm put it there.
pub(crate) fn parse(path: &str) -> Option<SlurmPath<'_>> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut below_slurm = false;
    for (i, part) in parts.iter().enumerate() {
        if part.to_ascii_lowercase().contains("slurm") {
            below_slurm = true;
            continue;
        }
        if !below_slurm {
            continue;
        }
        let next = parts.get(i + 1).copied();
        let job = job_id(part).or_else(|| {
            next.is_some_and(|n| n.starts_with("step_"))
                .then_some(*part)
                .filter(|p| is_sluid(p))
        });
        if let Some(job) = job {
            // The byte offset of the end of component i.
            let end: usize = parts[..=i].iter().map(|p| p.len() + 1).sum::<usize>() - 1;
            return Some(SlurmPath {
                job,
                job_dir: &path[..end],
                step: next.filter(|n| n.starts_with("step")),
            });
        }
    }
    None
}

/// The job (id or SLUID) of one cgroup path, if Slurm put the process there.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn job_in_path(path: &str) -> Option<String> {
    parse(path).map(|p| p.job.to_string())
}

/// The job of a process from its `/proc/<pid>/cgroup` text: the first
/// hierarchy whose path names a Slurm job (they agree where Slurm
/// placed the process in several).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn job_in_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(job_in_path)
}

/// Whether `job` (as [`SlurmPath::job`] gives it) is a SLUID rather
/// than the numeric id users see.
pub(crate) fn is_sluid_job(job: &str) -> bool {
    is_sluid(job)
}

/// The job's numeric id in the title slurmstepd gives itself (its
/// command line): `slurmstepd: [<job id>.<step>]`, e.g. `slurmstepd:
/// [42.batch]`, `slurmstepd: [42.0]`, `slurmstepd: [42.extern]`.
pub(crate) fn stepd_job_id(title: &str) -> Option<&str> {
    let inner = title
        .trim_end_matches(['\0', ' '])
        .strip_prefix("slurmstepd: [")?
        .strip_suffix(']')?;
    let (job, step) = inner.split_once('.')?;
    (!job.is_empty()
        && job.len() <= 20
        && job.bytes().all(|b| b.is_ascii_digit())
        && !step.is_empty())
    .then_some(job)
}

fn job_id(component: &str) -> Option<&str> {
    let rest = component.strip_prefix("job")?;
    let digits = rest.strip_prefix(['_', '-']).unwrap_or(rest);
    (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

/// A SLUID as Slurm prints it: `s` (or `S`) and 13 digits of Crockford's
/// base 32 (0-9 and the letters but I, L, O and U; either case; I, L and O
/// are read as 1, 1 and 0 too).
fn is_sluid(component: &str) -> bool {
    let Some(rest) = component.strip_prefix(['s', 'S']) else {
        return false;
    };
    rest.len() == 13
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() && !matches!(b.to_ascii_uppercase(), b'U'))
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
    fn where_in_the_tree() {
        let p = parse("/system.slice/n1_slurmstepd.scope/job_42/step_batch/user/task_0").unwrap();
        assert_eq!(p.job, "42");
        assert_eq!(p.job_dir, "/system.slice/n1_slurmstepd.scope/job_42");
        assert_eq!(p.step, Some("step_batch"));
        let p = parse("/slurm_n1/uid_0/job_7").unwrap();
        assert_eq!(
            (p.job, p.job_dir, p.step),
            ("7", "/slurm_n1/uid_0/job_7", None)
        );
        // Relative paths (a cgroup2 path below its mount point) too.
        let p = parse("system.slice/slurmstepd.scope/job_5/step_0/slurm").unwrap();
        assert_eq!(p.job_dir, "system.slice/slurmstepd.scope/job_5");
    }

    /// Slurm 26.05 names a job's cgroup v2 directory after its SLUID.
    #[test]
    fn a_sluid_names_the_job_where_a_step_follows() {
        let v2 = "0::/system.slice/slurmstepd.scope/sEKNKTV3WPV500/step_batch/user/task_0\n";
        assert_eq!(job_in_proc_cgroup(v2).as_deref(), Some("sEKNKTV3WPV500"));
        let p = parse("/system.slice/slurmstepd.scope/s0123456789abc/step_0/user/task_special")
            .unwrap();
        assert_eq!(p.job, "s0123456789abc");
        assert_eq!(p.step, Some("step_0"));
        // Without a step below it, a word of that shape is nobody's job.
        assert_eq!(
            job_in_path("/system.slice/slurmstepd.scope/sEKNKTV3WPV500"),
            None
        );
        for bad in [
            "/system.slice/slurmstepd.scope/sEKNKTV3WPV50/step_0",
            "/system.slice/slurmstepd.scope/sEKNKTV3WPV5000/step_0",
            "/system.slice/slurmstepd.scope/xEKNKTV3WPV500/step_0",
            "/system.slice/slurmstepd.scope/sEKNKTV3WPVU00/step_0",
            "/system.slice/slurmstepd.scope/sEKNKTV3WP-500/step_0",
            // No Slurm above it.
            "/user.slice/sEKNKTV3WPV500/step_0",
        ] {
            assert_eq!(job_in_path(bad), None, "{bad}");
        }
    }

    /// Seen with Slurm 26.05 on the systemd node: the job's slurmstepd
    /// titles itself with the numeric id its directory does not carry.
    #[test]
    fn slurmstepd_names_its_job() {
        assert_eq!(stepd_job_id("slurmstepd: [1.batch]"), Some("1"));
        assert_eq!(stepd_job_id("slurmstepd: [4242.0]"), Some("4242"));
        assert_eq!(stepd_job_id("slurmstepd: [7.extern]\0\0"), Some("7"));
        for bad in [
            "slurmstepd: [.batch]",
            "slurmstepd: [1]",
            "slurmstepd: [1.]",
            "slurmstepd: [x1.batch]",
            "slurmstepd: [sC3DM96VEMQW00.batch]",
            "/usr/sbin/slurmstepd infinity",
            "slurmstepd: [1.batch",
            "",
        ] {
            assert_eq!(stepd_job_id(bad), None, "{bad}");
        }
        assert!(is_sluid_job("sC3DM96VEMQW00"));
        assert!(!is_sluid_job("42"));
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
            // Slurm's daemons, no job.
            "0::/system.slice/slurmd.service\n",
            "0::/system.slice/slurmstepd.scope/system\n",
            "",
            "garbage",
        ] {
            assert_eq!(job_in_proc_cgroup(text), None, "{text}");
        }
    }
}
