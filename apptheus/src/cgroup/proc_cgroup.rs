//! Parsing /proc/<pid>/cgroup: which cgroup a process is in, per hierarchy.
//!
//! Each line is `hierarchy-id:controllers:path`; the cgroup2 line is
//! `0::/path`, v1 lines name their controllers (`4:cpu,cpuacct:/path`) or
//! a named hierarchy (`1:name=systemd:/path`).
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// Path in the cgroup2 hierarchy.
    pub v2: Option<String>,
    /// Path per v1 controller.
    pub v1: BTreeMap<String, String>,
}

pub(crate) fn parse(text: &str) -> ProcCgroups {
    let mut out = ProcCgroups::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_string());
        } else {
            for c in controllers
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
            {
                out.v1.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_host() {
        let text = "12:pids:/user.slice/user-1000.slice\n\
                    5:cpu,cpuacct:/slurm/uid_1000/job_42/step_0\n\
                    4:memory:/slurm/uid_1000/job_42/step_0\n\
                    1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n\
                    0::/user.slice/user-1000.slice/session-3.scope\n";
        let p = parse(text);
        assert_eq!(
            p.v2.as_deref(),
            Some("/user.slice/user-1000.slice/session-3.scope")
        );
        assert_eq!(p.v1["cpu"], "/slurm/uid_1000/job_42/step_0");
        assert_eq!(p.v1["cpuacct"], "/slurm/uid_1000/job_42/step_0");
        assert_eq!(p.v1["pids"], "/user.slice/user-1000.slice");
        assert!(!p.v1.contains_key("name=systemd"));
    }

    #[test]
    fn pure_v2_and_garbage() {
        assert_eq!(parse("0::/\n").v2.as_deref(), Some("/"));
        let p = parse("garbage\n3:memory\n::\n7:blkio:relative\n");
        assert_eq!(p, ProcCgroups::default());
    }

    #[test]
    fn paths_with_colons_survive() {
        assert_eq!(parse("0::/a:b\n").v2.as_deref(), Some("/a:b"));
    }
}
