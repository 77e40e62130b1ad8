//! A process tree from /proc, for attribution without the kernel programs
//! (socket mode): the starter's descendants, found by parent pid.
use std::{collections::BTreeMap, path::Path};

/// Parses the parent pid out of /proc/<pid>/stat text. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from
/// the last ')'.
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `root` and every process descended from it, found through parent pids.
/// Processes re-parented away (daemonized) are not found this way; the
/// cgroup keeps them once the tree is placed, since children inherit it.
pub fn descendants(procfs: &Path, root: u32) -> Vec<u32> {
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
    while i < out.len() && out.len() < 1_000_000 {
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

    #[test]
    fn finds_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let d = descendants(Path::new("/proc"), me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(d[0], me);
        assert!(d.contains(&child.id()), "{d:?}");
    }
}
