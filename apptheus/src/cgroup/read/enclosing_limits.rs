//! Limits set on the cgroups enclosing a container's (a Slurm job's, a
//! systemd slice's): the one in force is the smallest on the way up. Many
//! containers share their ancestors, so each ancestor's file is read once
//! per sample, not once per container.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{
    Problem,
    files::{Ctx, read_small},
    parse::ParseError,
};

/// Ancestors visited looking for an enclosing limit; real hierarchies are a
/// handful of levels deep.
const MAX_DEPTH: usize = 64;

/// Entries kept before the cache starts afresh (distinct enclosing cgroups
/// of the node's containers: a few per job).
const MAX_ENTRIES: usize = 16_384;

/// What an ancestor's file said at this sample.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// A limit, or None for "max".
    Value(Option<u64>),
    /// No such file: the hierarchy's root (or above a v1 mount point).
    Absent,
    /// Not a limit (warned about when first read); the walk goes on.
    Unparsable,
    /// Unreadable (warned about when first read); the walk stops.
    Unreadable,
}

/// Enclosing cgroups' files, read at most once per sample.
#[derive(Debug, Default)]
pub(crate) struct Ancestors {
    sample: u64,
    /// File name -> directory -> what it said, and at which sample.
    seen: HashMap<&'static str, HashMap<PathBuf, (u64, Seen)>>,
}

impl Ancestors {
    /// A new sample: every file is read afresh.
    pub(crate) fn begin(&mut self) {
        self.sample += 1;
        for m in self.seen.values_mut() {
            if m.len() > MAX_ENTRIES {
                m.clear();
            }
        }
    }

    fn get(
        &mut self,
        dir: &Path,
        name: &'static str,
        parse: fn(&str) -> Result<Option<u64>, ParseError>,
        ctx: &mut Ctx<'_>,
    ) -> Seen {
        if let Some((at, seen)) = self.seen.get(name).and_then(|m| m.get(dir))
            && *at == self.sample
        {
            return *seen;
        }
        let path = dir.join(name);
        let seen = match read_small(&path) {
            Ok(text) => match parse(&text) {
                Ok(v) => Seen::Value(v),
                Err(e) => {
                    ctx.warn(path, e.into());
                    Seen::Unparsable
                }
            },
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::InvalidData =>
            {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    ctx.warn(path, Problem::NotUtf8);
                    Seen::Unreadable
                } else {
                    Seen::Absent
                }
            }
            Err(e) => {
                ctx.warn(path, Problem::Io(e));
                Seen::Unreadable
            }
        };
        self.seen
            .entry(name)
            .or_default()
            .insert(dir.to_path_buf(), (self.sample, seen));
        seen
    }

    /// The smallest limit in file `name` of the cgroups above `dir`, up to
    /// the hierarchy's root, which is where the file stops existing (the
    /// root cgroup has no memory.max or pids.max; above a v1 mount point
    /// there is no cgroup file at all). `applies_above(parent)` says
    /// whether a parent's limit (and those above it) holds for its
    /// children; v1 memory without use_hierarchy is where it does not.
    pub(crate) fn min_above(
        &mut self,
        dir: &Path,
        name: &'static str,
        parse: fn(&str) -> Result<Option<u64>, ParseError>,
        ctx: &mut Ctx<'_>,
        mut applies_above: impl FnMut(&mut Self, &Path, &mut Ctx<'_>) -> bool,
    ) -> Option<u64> {
        let mut min: Option<u64> = None;
        let mut cur = dir;
        for _ in 0..MAX_DEPTH {
            let Some(parent) = cur.parent() else { break };
            if !applies_above(self, parent, ctx) {
                break;
            }
            match self.get(parent, name, parse, ctx) {
                Seen::Absent | Seen::Unreadable => break,
                Seen::Unparsable | Seen::Value(None) => {}
                Seen::Value(Some(v)) => min = Some(min.map_or(v, |m| m.min(v))),
            }
            cur = parent;
        }
        min
    }

    /// v1 memory.use_hierarchy of `dir` (true unless it reads "0"; kernels
    /// since 5.11 always use the hierarchy).
    pub(crate) fn use_hierarchy(&mut self, dir: &Path, ctx: &mut Ctx<'_>) -> bool {
        fn parse(t: &str) -> Result<Option<u64>, ParseError> {
            Ok(Some(u64::from(t.trim() != "0")))
        }
        !matches!(
            self.get(dir, "memory.use_hierarchy", parse, ctx),
            Seen::Value(Some(0))
        )
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{
        cgroup::read::{Budget, parse},
        model::cgroups::ContainerCgroups,
    };

    #[test]
    fn limits_walk_up_until_the_file_stops_and_are_read_once_per_sample() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let job = root.join("job");
        let ctr = job.join("ctr");
        fs::create_dir_all(&ctr).unwrap();
        let write = |d: &Path, v: &str| fs::write(d.join("pids.max"), v).unwrap();
        let cg = ContainerCgroups::default();
        let mut buf = Vec::new();
        let budget = Budget::new(0);
        let mut ctx = Ctx::new(&cg, &mut buf, &budget);
        let mut a = Ancestors::default();
        let yes = |_: &mut Ancestors, _: &Path, _: &mut Ctx<'_>| true;
        // The root has no limit file: the walk stops there.
        write(&job, "100\n");
        a.begin();
        assert_eq!(
            a.min_above(&ctr, "pids.max", parse::limit, &mut ctx, yes),
            Some(100)
        );
        // Read once per sample: a change shows at the next one.
        write(&job, "max\n");
        assert_eq!(
            a.min_above(&ctr, "pids.max", parse::limit, &mut ctx, yes),
            Some(100)
        );
        a.begin();
        assert_eq!(
            a.min_above(&ctr, "pids.max", parse::limit, &mut ctx, yes),
            None
        );
        write(&root, "7\n");
        a.begin();
        assert_eq!(
            a.min_above(&ctr, "pids.max", parse::limit, &mut ctx, yes),
            Some(7)
        );
        let not_above_root = |_: &mut Ancestors, p: &Path, _: &mut Ctx<'_>| p != root.as_path();
        assert_eq!(
            a.min_above(&ctr, "pids.max", parse::limit, &mut ctx, not_above_root),
            None
        );
        write(&job, "garbage\n");
        a.begin();
        assert_eq!(
            a.min_above(&ctr, "pids.max", parse::limit, &mut ctx, yes),
            Some(7)
        );
        assert_eq!(ctx.warnings.len(), 1, "{:?}", ctx.warnings);
    }
}
