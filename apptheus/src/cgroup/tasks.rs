//! The tasks in a cgroup directory: its processes (`cgroup.procs`) and
//! threads (cgroup2's `cgroup.threads`, v1's `tasks`). A directory that is
//! gone, or a file that cannot be read, holds none.
use std::path::Path;

/// The processes (thread-group ids) in a cgroup directory.
pub(crate) fn procs(dir: &Path) -> Vec<u32> {
    read_ids(&dir.join("cgroup.procs"))
}

/// The threads in a cgroup directory (v2 cgroup.threads, v1 tasks).
pub(crate) fn threads(dir: &Path) -> Vec<u32> {
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
