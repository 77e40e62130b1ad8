//! The cgroup hierarchies apptheus places containers in and reads, and
//! which cgroup of each a process is in (per its `/proc/<pid>/cgroup`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    layout::{Layout, V1_CONTROLLERS},
    proc_cgroup::{self, ProcCgroups},
};
use crate::model::cgroups::ContainerCgroups;

/// One hierarchy apptheus places containers in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// v1 controllers mounted there that apptheus reads; empty for cgroup2.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// Its name in messages: `cgroup2`, or its v1 controllers.
    pub fn name(&self) -> String {
        if self.is_v2() {
            "cgroup2".into()
        } else {
            self.controllers.join(",")
        }
    }

    /// Makes `dir` the directory of `cg` in this hierarchy (for each of its
    /// controllers, in a v1 one).
    pub fn assign(&self, cg: &mut ContainerCgroups, dir: PathBuf) {
        if self.is_v2() {
            cg.v2 = Some(dir);
        } else {
            for c in &self.controllers {
                cg.v1.insert(c, dir.clone());
            }
        }
    }

    /// The directory of `cg` in this hierarchy.
    pub fn dir_in<'a>(&self, cg: &'a ContainerCgroups) -> Option<&'a PathBuf> {
        if self.is_v2() {
            cg.v2.as_ref()
        } else {
            cg.v1.get(&self.controllers[0])
        }
    }
}

/// The hierarchies of the host's layout that apptheus uses: cgroup2 (if
/// mounted) and one per mount of the v1 controllers it reads (co-mounted
/// controllers share one).
#[derive(Debug, Clone)]
pub struct Hierarchies {
    procfs: PathBuf,
    list: Vec<Hierarchy>,
}

impl Hierarchies {
    pub fn new(layout: &Layout, procfs: &Path) -> Self {
        let mut list = Vec::new();
        if let Some(v2) = &layout.v2 {
            list.push(Hierarchy {
                mountpoint: v2.clone(),
                controllers: Vec::new(),
            });
        }
        let mut by_mount: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for c in V1_CONTROLLERS {
            if let Some(m) = layout.v1.get(c) {
                by_mount
                    .entry(m.mountpoint.clone())
                    .or_default()
                    .push(c.to_string());
            }
        }
        list.extend(
            by_mount
                .into_iter()
                .map(|(mountpoint, controllers)| Hierarchy {
                    mountpoint,
                    controllers,
                }),
        );
        Self {
            procfs: procfs.to_path_buf(),
            list,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Hierarchy> {
        self.list.iter()
    }

    /// Whether a v1 hierarchy with `controller` is used.
    pub fn v1_has(&self, controller: &str) -> bool {
        self.list
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == controller))
    }

    /// Where cgroup2 is mounted, if it is.
    pub fn v2_root(&self) -> Option<&Path> {
        self.list
            .iter()
            .find(|h| h.is_v2())
            .map(|h| h.mountpoint.as_path())
    }

    /// Which cgroups task `pid` is in, as its /proc cgroup file says.
    pub fn proc_cgroups(&self, pid: u32) -> std::io::Result<ProcCgroups> {
        let text = std::fs::read_to_string(self.procfs.join(pid.to_string()).join("cgroup"))?;
        Ok(proc_cgroup::parse(&text))
    }

    /// The directory in hierarchy `h` of a process, per its /proc cgroup file.
    pub fn dir_of(&self, h: &Hierarchy, cgs: &ProcCgroups) -> Option<PathBuf> {
        let rel = if h.is_v2() {
            cgs.v2.as_deref()?
        } else {
            cgs.v1.get(&h.controllers[0])?.as_str()
        };
        Some(h.mountpoint.join(rel.trim_start_matches('/')))
    }

    /// The cgroups process `pid` is in now, one directory per hierarchy.
    pub fn cgroups_of(&self, pid: u32) -> std::io::Result<ContainerCgroups> {
        let cgs = self.proc_cgroups(pid)?;
        let mut out = ContainerCgroups::default();
        for h in &self.list {
            if let Some(dir) = self.dir_of(h, &cgs) {
                h.assign(&mut out, dir);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::layout::V1Mount;

    /// Co-mounted v1 controllers are one hierarchy; a process's directory
    /// in each is its /proc cgroup path below the mountpoint.
    #[test]
    fn a_process_has_one_directory_per_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let procfs = root.path().join("proc");
        std::fs::create_dir_all(procfs.join("9")).unwrap();
        std::fs::write(
            procfs.join("9/cgroup"),
            "5:cpu,cpuacct:/job\n4:memory:/job/step\n1:name=systemd:/x\n0::/user.slice\n",
        )
        .unwrap();
        let mut layout = Layout {
            v2: Some(root.path().join("unified")),
            v1: Default::default(),
        };
        for (c, mount) in [
            ("cpu", "cpu,cpuacct"),
            ("cpuacct", "cpu,cpuacct"),
            ("memory", "memory"),
        ] {
            layout.v1.insert(
                c.into(),
                V1Mount {
                    mountpoint: root.path().join(mount),
                    controllers: vec![c.into()],
                },
            );
        }
        let h = Hierarchies::new(&layout, &procfs);
        let names: Vec<String> = h.iter().map(Hierarchy::name).collect();
        assert_eq!(names, ["cgroup2", "cpu,cpuacct", "memory"]);
        assert!(h.v1_has("cpuacct") && !h.v1_has("pids"));
        assert_eq!(h.v2_root(), Some(root.path().join("unified").as_path()));
        let cg = h.cgroups_of(9).unwrap();
        assert_eq!(cg.v2, Some(root.path().join("unified/user.slice")));
        assert_eq!(cg.v1["cpu"], root.path().join("cpu,cpuacct/job"));
        assert_eq!(cg.v1["cpuacct"], cg.v1["cpu"]);
        assert_eq!(cg.v1["memory"], root.path().join("memory/job/step"));
        assert_eq!(cg.distinct_dirs().len(), 3);
        assert!(h.cgroups_of(10).is_err(), "no such process");
    }
}
