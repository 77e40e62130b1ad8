//! The cgroup directories a container's statistics are read from.
use std::{collections::BTreeSet, path::PathBuf};

/// The cgroup directories of one container: the cgroup2 one (if cgroup2 is
/// mounted) and one per v1 controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCgroups {
    pub v2: Option<PathBuf>,
    pub v1: V1Dirs,
}

/// A container's directory in each v1 hierarchy, by controller, in the
/// controllers' order: a handful of entries kept in one short list (every
/// container has one; a map's node would cost several times as much with
/// 10,000 containers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Dirs(Vec<(Box<str>, PathBuf)>);

impl V1Dirs {
    fn position(&self, controller: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| (**c).cmp(controller))
    }

    pub fn get(&self, controller: &str) -> Option<&PathBuf> {
        self.position(controller).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, controller: &str) -> bool {
        self.position(controller).is_ok()
    }

    /// Sets `controller`'s directory (the path's spare capacity dropped).
    pub fn insert(&mut self, controller: &str, dir: PathBuf) {
        let dir = PathBuf::from(dir.into_boxed_path());
        match self.position(controller) {
            Ok(i) => self.0[i].1 = dir,
            Err(i) => self.0.insert(i, (controller.into(), dir)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &PathBuf)> {
        self.0.iter().map(|(c, d)| (&**c, d))
    }

    pub fn values(&self) -> impl Iterator<Item = &PathBuf> {
        self.0.iter().map(|(_, d)| d)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&str> for V1Dirs {
    type Output = PathBuf;

    fn index(&self, controller: &str) -> &PathBuf {
        self.get(controller)
            .unwrap_or_else(|| panic!("no {controller} directory"))
    }
}

impl<'a> FromIterator<(&'a str, PathBuf)> for V1Dirs {
    fn from_iter<I: IntoIterator<Item = (&'a str, PathBuf)>>(iter: I) -> Self {
        let mut dirs = V1Dirs::default();
        for (c, d) in iter {
            dirs.insert(c, d);
        }
        dirs.0.shrink_to_fit();
        dirs
    }
}

impl<'a, const N: usize> From<[(&'a str, PathBuf); N]> for V1Dirs {
    fn from(entries: [(&'a str, PathBuf); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl ContainerCgroups {
    /// A hash of the directories' paths (FNV-1a over 8-byte words: cheap,
    /// and stable within a run): what tells that a set changed.
    pub fn fingerprint(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt as _;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |w: u64| {
            h ^= w;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for (_, d) in self.dirs() {
            let bytes = d.as_os_str().as_bytes();
            let (words, rest) = bytes.as_chunks::<8>();
            for w in words {
                mix(u64::from_le_bytes(*w));
            }
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            mix(u64::from_le_bytes(last) ^ (bytes.len() as u64) << 56);
        }
        h
    }

    /// Each hierarchy's directory: `None` for cgroup2, the controller for v1.
    pub fn dirs(&self) -> impl Iterator<Item = (Option<&str>, &PathBuf)> {
        self.v2
            .iter()
            .map(|d| (None, d))
            .chain(self.v1.iter().map(|(c, d)| (Some(c), d)))
    }

    /// Its directories, each once (co-mounted v1 controllers share one).
    pub fn distinct_dirs(&self) -> Vec<PathBuf> {
        let set: BTreeSet<&PathBuf> = self.v2.iter().chain(self.v1.values()).collect();
        set.into_iter().cloned().collect()
    }

    pub fn dir(&self, hierarchy: Option<&str>) -> Option<&PathBuf> {
        match hierarchy {
            None => self.v2.as_ref(),
            Some(c) => self.v1.get(c),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v2.is_none() && self.v1.is_empty()
    }

    /// Whether every directory of `other` is one of these or below one,
    /// hierarchy by hierarchy (a process in `other` is counted here).
    pub fn covers(&self, other: &ContainerCgroups) -> bool {
        !other.is_empty()
            && other
                .dirs()
                .all(|(h, d)| self.dir(h).is_some_and(|mine| d.starts_with(mine)))
    }

    /// The directories of these cgroups that none of `known` counts already
    /// (neither one of theirs nor below one) and that do not hold one of
    /// theirs (an ancestor would count it twice): what a new set of cgroups
    /// adds to a container's statistics.
    pub fn beyond(&self, known: &[&ContainerCgroups]) -> ContainerCgroups {
        let fresh = |h: Option<&str>, d: &PathBuf| {
            known.iter().all(|k| {
                k.dir(h)
                    .is_none_or(|mine| !d.starts_with(mine) && !mine.starts_with(d))
            })
        };
        ContainerCgroups {
            v2: self.v2.clone().filter(|d| fresh(None, d)),
            v1: self
                .v1
                .iter()
                .filter(|(c, d)| fresh(Some(c), d))
                .map(|(c, d)| (c, d.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(v2: &str, memory: &str) -> ContainerCgroups {
        ContainerCgroups {
            v2: Some(PathBuf::from(v2)),
            v1: [("memory", PathBuf::from(memory))].into(),
        }
    }

    #[test]
    fn v1_dirs_are_found_by_controller_in_order_and_replaced() {
        let mut d: V1Dirs = [("pids", PathBuf::from("/p")), ("cpu", PathBuf::from("/c"))].into();
        d.insert("memory", PathBuf::from("/m"));
        d.insert("cpu", PathBuf::from("/c2"));
        let all: Vec<(&str, &PathBuf)> = d.iter().collect();
        assert_eq!(
            all,
            [
                ("cpu", &PathBuf::from("/c2")),
                ("memory", &PathBuf::from("/m")),
                ("pids", &PathBuf::from("/p"))
            ]
        );
        assert_eq!(d["memory"], PathBuf::from("/m"));
        assert!(d.contains_key("pids") && !d.contains_key("blkio"));
        assert_eq!(d.get("blkio"), None);
        assert!(!d.is_empty() && V1Dirs::default().is_empty());
    }

    #[test]
    fn a_runtime_cgroup_beside_apptheus_own_is_new() {
        let own = cg("/u/job/apptheus-1", "/m/job/apptheus-1");
        let runtime = cg("/u/apptainer/7", "/m/apptainer/7");
        assert_eq!(runtime.beyond(&[&own]), runtime);
        assert!(!own.covers(&runtime));
    }

    #[test]
    fn below_above_or_equal_is_not_new() {
        let own = cg("/u/job/apptheus-1", "/m/job/apptheus-1");
        // Below ours (a runtime nesting its cgroup): counted already.
        let below = cg("/u/job/apptheus-1/x", "/m/job/apptheus-1/x");
        assert!(below.beyond(&[&own]).is_empty());
        assert!(own.covers(&below));
        // Above ours (the starter's own cgroup): would count twice.
        let above = cg("/u/job", "/m/job");
        assert!(above.beyond(&[&own]).is_empty());
        assert!(own.beyond(&[&own]).is_empty());
    }

    #[test]
    fn hierarchies_are_judged_one_by_one() {
        let own = cg("/u/job/apptheus-1", "/m/job/apptheus-1");
        // Moved in the memory hierarchy only.
        let partly = cg("/u/job/apptheus-1", "/m/apptainer/7");
        let fresh = partly.beyond(&[&own]);
        assert_eq!(fresh.v2, None);
        assert_eq!(fresh.v1["memory"], PathBuf::from("/m/apptainer/7"));
        assert!(!ContainerCgroups::default().covers(&own));
        assert!(!own.covers(&ContainerCgroups::default()));
    }
}
