//! cgroup v2 controllers for a container's cgroup.
//!
//! cgroup v2 gives a child only the controllers its parent enables in
//! `cgroup.subtree_control`, and a (non-root) cgroup that holds processes
//! can enable none ("no internal processes"). A container's cgroup is
//! created beneath its starter's; once placement has moved the container's
//! tasks out of that parent, and if no other process is left there, the
//! parent can enable what the container's statistics need (memory, io,
//! pids, and cpu for throttling). Limits set on the parent (memory.max,
//! pids.max, cpu.max, io.max) keep holding for the container: they are
//! hierarchical. While controllers are enabled the parent cannot take
//! processes, so apptheus disables what it enabled as soon as the parent
//! has no child cgroup left.
use crate::error_chain::chain;
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// The controllers apptheus asks for, in the order they are enabled.
pub(crate) const WANTED: [&str; 4] = ["memory", "io", "pids", "cpu"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum DelegationError {
    #[error(
        "{dir} still holds {procs} process(es) that are not the container's; cgroup v2 lets a cgroup \
         with processes give its children no controller"
    )]
    Occupied { dir: PathBuf, procs: usize },
    #[error("{dir} is a {kind:?} cgroup; controllers are enabled for domain cgroups only")]
    NotDomain { dir: PathBuf, kind: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {file}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The wanted controllers that `available` (a cgroup.controllers) offers
/// and `enabled` (a cgroup.subtree_control) lacks.
pub(crate) fn missing(available: &str, enabled: &str) -> Vec<&'static str> {
    let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
    WANTED
        .into_iter()
        .filter(|c| has(available, c) && !has(enabled, c))
        .collect()
}

fn read(file: PathBuf) -> Result<String, DelegationError> {
    std::fs::read_to_string(&file).map_err(|source| DelegationError::Read { path: file, source })
}

fn write_subtree_control(dir: &Path, what: &str) -> Result<(), DelegationError> {
    let file = dir.join("cgroup.subtree_control");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|mut f| f.write_all(what.as_bytes()))
        .map_err(|source| DelegationError::Write { file, source })
}

/// Enables in `parent` the wanted controllers it can give and does not
/// give yet; returns those it enabled (empty when there was nothing to do).
/// Refuses while `parent` holds a process: that is not the container's
/// (its tasks were moved out), so it stays where it is.
pub(crate) fn enable(parent: &Path) -> Result<Vec<String>, DelegationError> {
    let want = {
        let available = read(parent.join("cgroup.controllers"))?;
        let enabled = read(parent.join("cgroup.subtree_control"))?;
        missing(&available, &enabled)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    if want.is_empty() {
        return Ok(want);
    }
    let kind = read(parent.join("cgroup.type"))?;
    if kind.trim() != "domain" {
        return Err(DelegationError::NotDomain {
            dir: parent.to_path_buf(),
            kind: kind.trim().to_string(),
        });
    }
    let procs = read(parent.join("cgroup.procs"))?.lines().count();
    if procs > 0 {
        return Err(DelegationError::Occupied {
            dir: parent.to_path_buf(),
            procs,
        });
    }
    // One write per controller: one the kernel refuses does not keep the
    // others from the container.
    let mut done = Vec::new();
    let mut first_error = None;
    for c in want {
        match write_subtree_control(parent, &format!("+{c}")) {
            Ok(()) => done.push(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if done.is_empty() => Err(e),
        Some(e) => {
            tracing::debug!(dir = %parent.display(), error = %chain(&e), enabled = ?done, "some controllers could not be enabled");
            Ok(done)
        }
        None => Ok(done),
    }
}

/// Whether `dir` has a child cgroup.
fn has_children(dir: &Path) -> Result<bool, DelegationError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DelegationError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries
        .flatten()
        .any(|e| e.file_type().is_ok_and(|t| t.is_dir())))
}

/// Disables `controllers` in `parent` again if it has no child cgroup
/// left; returns whether it did (false: children remain, try later).
/// A parent that is gone needs nothing.
pub(crate) fn release(parent: &Path, controllers: &[String]) -> Result<bool, DelegationError> {
    if !parent.exists() {
        return Ok(true);
    }
    if has_children(parent)? {
        return Ok(false);
    }
    // Reverse order: cpu before memory does not matter to the kernel, but
    // undoing in reverse is what a reader expects.
    for c in controllers.iter().rev() {
        write_subtree_control(parent, &format!("-{c}"))?;
    }
    Ok(true)
}

/// The controllers apptheus enabled, by parent cgroup, so that each is
/// disabled again once the parent has no child cgroup left.
#[derive(Debug, Default)]
pub(crate) struct Delegated {
    by_parent: std::collections::BTreeMap<PathBuf, Vec<String>>,
}

impl Delegated {
    /// Enables in `parent` what a container's cgroup below it needs, and
    /// remembers what it enabled.
    pub(crate) fn enable(&mut self, parent: &Path) -> Result<Vec<String>, DelegationError> {
        let enabled = enable(parent)?;
        if !enabled.is_empty() {
            self.by_parent
                .entry(parent.to_path_buf())
                .or_default()
                .extend(enabled.iter().cloned());
        }
        Ok(enabled)
    }

    /// Disables what was enabled in parents that have no child cgroup
    /// left.
    pub(crate) fn release_unused(&mut self) {
        self.by_parent
            .retain(|parent, controllers| match release(parent, controllers) {
                Ok(released) => {
                    if released {
                        tracing::debug!(cgroup = %parent.display(), controllers = ?controllers, "disabled the controllers apptheus had enabled");
                    }
                    !released
                }
                Err(e) => {
                    tracing::warn!(cgroup = %parent.display(), error = %chain(&e), "cannot disable the controllers apptheus had enabled");
                    false
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_what_the_parent_can_give_and_does_not() {
        assert_eq!(
            missing("cpuset cpu io memory hugetlb pids rdma misc\n", "cpu\n"),
            ["memory", "io", "pids"]
        );
        assert_eq!(
            missing("cpu io memory pids", "cpu io memory pids"),
            Vec::<&str>::new()
        );
        // Hybrid hosts: the v1 hierarchies hold the controllers.
        assert_eq!(missing("hugetlb\n", ""), Vec::<&str>::new());
        assert_eq!(missing("", ""), Vec::<&str>::new());
        // Words, not substrings.
        assert_eq!(missing("cpuset memoryx", ""), Vec::<&str>::new());
    }

    fn fixture(controllers: &str, subtree: &str, kind: &str, procs: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", subtree),
            ("cgroup.type", kind),
            ("cgroup.procs", procs),
        ] {
            std::fs::write(d.path().join(f), v).unwrap();
        }
        d
    }

    #[test]
    fn an_occupied_parent_is_left_alone() {
        let d = fixture("cpu memory pids io\n", "", "domain\n", "42\n4242\n");
        let e = enable(d.path()).unwrap_err();
        assert!(
            matches!(e, DelegationError::Occupied { procs: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("2 process(es)"));
        // Nothing written.
        let sc = std::fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(sc, "");
    }

    #[test]
    fn a_threaded_parent_is_left_alone() {
        let d = fixture("cpu memory\n", "", "domain threaded\n", "");
        assert!(matches!(
            enable(d.path()).unwrap_err(),
            DelegationError::NotDomain { .. }
        ));
    }

    #[test]
    fn nothing_missing_touches_nothing() {
        // cgroup.type and cgroup.procs are not even read.
        let d = fixture("cpu memory\n", "cpu memory\n", "garbage", "1\n");
        assert_eq!(enable(d.path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn missing_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = enable(d.path()).unwrap_err();
        assert!(e.to_string().contains("cgroup.controllers"), "{e}");
    }

    #[test]
    fn release_waits_for_the_last_child() {
        let d = fixture("", "", "domain", "");
        std::fs::create_dir(d.path().join("apptheus-1-2")).unwrap();
        assert!(!release(d.path(), &["memory".into()]).unwrap());
        std::fs::remove_dir(d.path().join("apptheus-1-2")).unwrap();
        assert!(release(d.path(), &["memory".into(), "pids".into()]).unwrap());
        // A regular file stands in for the kernel's: the last write wins.
        let sc = std::fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(sc, "-memory");
        assert!(release(&d.path().join("gone"), &["memory".into()]).unwrap());
    }
}
