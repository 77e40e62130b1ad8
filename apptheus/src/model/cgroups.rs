//! The cgroup directories a container's statistics are read from.
use std::{collections::BTreeMap, path::PathBuf};

/// The cgroup directories of one container: the cgroup2 one (if cgroup2 is
/// mounted) and one per v1 controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCgroups {
    pub v2: Option<PathBuf>,
    pub v1: BTreeMap<String, PathBuf>,
}

impl ContainerCgroups {
    /// Each hierarchy's directory: `None` for cgroup2, the controller for v1.
    pub fn dirs(&self) -> impl Iterator<Item = (Option<&str>, &PathBuf)> {
        self.v2
            .iter()
            .map(|d| (None, d))
            .chain(self.v1.iter().map(|(c, d)| (Some(c.as_str()), d)))
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
                .map(|(c, d)| (c.clone(), d.clone()))
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
            v1: [("memory".to_string(), PathBuf::from(memory))].into(),
        }
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
