//! The cgroups an earlier run of apptheus left (to take over the
//! containers still running, or remove the rest): found by walking every
//! hierarchy for directories with apptheus' naming and its mark.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    hierarchies::Hierarchies,
    mark::{self, Mark},
};
use crate::model::cgroups::ContainerCgroups;

/// Finds the cgroups apptheus created in an earlier run, in every
/// hierarchy: directories with apptheus' naming and its mark, naming
/// them (see [`mark`]). A directory of that name without the mark (a
/// user's) is neither taken nor touched.
pub(crate) fn find_marked(hierarchies: &Hierarchies) -> BTreeMap<Mark, ContainerCgroups> {
    let mut out: BTreeMap<Mark, ContainerCgroups> = BTreeMap::new();
    for h in hierarchies.iter() {
        let mut found = Vec::new();
        walk(&h.mountpoint, 0, &mut found);
        for (dir, m) in found {
            h.assign(out.entry(m).or_default(), dir);
        }
    }
    out
}

/// Collects the directories apptheus made (named apptheus-* and marked so,
/// the mark naming the directory), not descending into them; any other
/// directory, one of a user's with our naming included, is descended
/// into (one of ours may lie below).
fn walk(dir: &Path, depth: usize, found: &mut Vec<(PathBuf, Mark)>) {
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let name = e.file_name();
        let ours = name
            .to_str()
            .filter(|n| n.starts_with(mark::DIR_PREFIX))
            .and_then(|n| {
                mark::get(&path)
                    .ok()
                    .flatten()
                    .filter(|m| m.dir_name() == n)
            });
        match ours {
            Some(m) => found.push((path, m)),
            None => walk(&path, depth + 1, found),
        }
    }
}
