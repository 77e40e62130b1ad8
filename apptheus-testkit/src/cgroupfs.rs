//! The host's cgroup mounts, as the agent's tests look at them.
use std::path::{Path, PathBuf};

/// Directories named apptheus-* anywhere under the cgroup mounts.
pub fn our_cgroup_dirs() -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, depth: usize) {
        if depth > 16 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().starts_with("apptheus-") {
                    out.push(e.path());
                } else {
                    walk(&e.path(), out, depth + 1);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), &mut out, 0);
    out
}

/// The directories of [`our_cgroup_dirs`] that were not among `before`:
/// what a test's containers left, whatever other agents on a shared host
/// (another sandbox, an earlier run that was killed) left beside them.
pub fn new_cgroup_dirs(before: &[PathBuf]) -> Vec<PathBuf> {
    our_cgroup_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect()
}

/// Where this host's memory controller is: the v1 `memory` hierarchy
/// (hybrid and pure v1 layouts), or the cgroup2 mount when its root hands
/// `memory` to its children (pure v2). Read from /proc/self/mountinfo, so
/// it works on any layout and any mount point.
pub struct MemoryController {
    pub root: PathBuf,
    pub v2: bool,
}

impl MemoryController {
    /// None when no hierarchy offers the memory controller (e.g. kernels
    /// built without CONFIG_MEMCG_V1 under a v1 or hybrid layout).
    pub fn find() -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, mountpoint) = (*left.get(3)?, PathBuf::from(left.get(4)?));
            let (fstype, options) = (*right.first()?, *right.get(2)?);
            if root != "/" {
                return None;
            }
            let v1_memory = fstype == "cgroup" && options.split(',').any(|o| o == "memory");
            let v2_memory = fstype == "cgroup2"
                && std::fs::read_to_string(mountpoint.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
            (v1_memory || v2_memory).then_some(Self {
                root: mountpoint,
                v2: v2_memory,
            })
        })
    }

    pub fn limit_file(&self) -> &'static str {
        if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        }
    }

    /// The file that keeps memory from escaping to swap, and its value for
    /// a limit of `limit` bytes.
    pub fn swap_limit(&self, limit: u64) -> (&'static str, String) {
        if self.v2 {
            ("memory.swap.max", "0".into())
        } else {
            ("memory.memsw.limit_in_bytes", limit.to_string())
        }
    }

    /// The cgroup of `pid` in this hierarchy, from /proc/<pid>/cgroup.
    pub fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let ours = if self.v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            ours.then(|| path.to_string())
        })
    }
}
