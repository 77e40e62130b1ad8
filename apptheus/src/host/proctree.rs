//! A process tree from /proc: the starter's descendants, for attribution
//! without the kernel programs (socket mode) and as placement's first,
//! cheap guess of a container's tasks.
use std::{collections::BTreeMap, path::Path};

/// Processes a tree walk collects at most.
const MAX_TREE: usize = 1_000_000;

/// `root` and its descendants through the kernel's per-thread `children`
/// files (/proc/<pid>/task/<tid>/children): work in proportion to the tree,
/// not to every process on the node. None when the kernel has no such
/// files (CONFIG_PROC_CHILDREN unset) or `root` is gone.
pub(crate) fn tree_by_children(procfs: &Path, root: u32) -> Option<Vec<u32>> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_TREE {
        let pid = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(procfs.join(pid.to_string()).join("task")) else {
            if pid == root {
                return None;
            }
            continue;
        };
        let mut any_children_file = false;
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            any_children_file = true;
            out.extend(parse_children(&text).filter(|c| *c != root));
        }
        if pid == root && !any_children_file {
            return None;
        }
    }
    Some(out)
}

/// The pids in a `/proc/<pid>/task/<tid>/children` file (space-separated);
/// anything else is skipped.
pub(crate) fn parse_children(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
}

/// `root` and its descendants: [`tree_by_children`] where the kernel
/// allows, else [`descendants`].
pub(crate) fn tree(procfs: &Path, root: u32) -> Vec<u32> {
    tree_by_children(procfs, root).unwrap_or_else(|| descendants(procfs, root))
}

/// Parses the parent pid out of /proc/<pid>/stat text. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from
/// the last ')'.
pub(crate) fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `root` and every process descended from it, found through parent pids.
/// Processes re-parented away (daemonized) are not found this way; the
/// cgroup keeps them once the tree is placed, since children inherit it.
pub(crate) fn descendants(procfs: &Path, root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(procfs) {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if let Some(ppid) = parse_ppid(&stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_TREE {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|p| *p != root));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_with_hostile_command_names() {
        assert_eq!(parse_ppid("123 (sleep) S 45 123 123 0"), Some(45));
        assert_eq!(parse_ppid("123 (a) b) (c) R 7 1 1"), Some(7));
        assert_eq!(parse_ppid("123 (x"), None);
        assert_eq!(parse_ppid(""), None);
    }

    fn fixture(tree: &[(u32, u32, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (pid, tid, children) in tree {
            let task = d.path().join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(&task).unwrap();
            std::fs::write(task.join("children"), children).unwrap();
        }
        d
    }

    #[test]
    fn tree_by_children_follows_every_threads_children() {
        // 10 forks 11 from its main thread and 12 from thread 15; 11 forks
        // 13; 14 is not ours; a bogus entry and a loop back to the root
        // are ignored.
        let d = fixture(&[
            (10, 10, "11 "),
            (10, 15, "12 x 10"),
            (11, 11, "13\n"),
            (12, 12, ""),
            (14, 14, "16"),
        ]);
        let mut t = tree_by_children(d.path(), 10).unwrap();
        t.sort_unstable();
        assert_eq!(t, [10, 11, 12, 13]);
        // 13 has no /proc entry (exited meanwhile): still listed, as the
        // kernel listed it; placing it finds it gone.
    }

    #[test]
    fn tree_by_children_is_none_without_the_kernels_children_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("10/task/10")).unwrap();
        assert_eq!(tree_by_children(d.path(), 10), None);
        assert_eq!(tree_by_children(d.path(), 99), None);
    }

    #[test]
    fn both_walks_find_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let proc = Path::new("/proc");
        let walks = [descendants(proc, me), tree(proc, me)];
        let _ = child.kill();
        let _ = child.wait();
        for w in walks {
            assert_eq!(w[0], me);
            assert!(w.contains(&child.id()), "{w:?}");
        }
    }
}
