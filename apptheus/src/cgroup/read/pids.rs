//! The `pids` source: processes and threads counted by the pids controller
//! (pids.current, the smallest pids.max on the way up), and the threads in
//! the container's cgroup and below it, from cgroup2's cgroup.threads
//! (every cgroup2 directory has it) or a v1 hierarchy's `tasks`. The v1
//! pids controller has the v2 files.
use super::{
    Dirs, Family, Problem, Shared,
    files::{Ctx, Dir, File, Hier},
    parse,
};
use crate::model::stats::{CgroupStats, PidsStats};

/// Sub-cgroups visited when counting tasks below a container's cgroup.
const MAX_DIRS: usize = 1024;

pub(super) struct Pids;

pub(super) struct Files {
    /// pids.current and pids.max, and their hierarchy.
    pids: Option<(File, File, Hier)>,
    /// The list of threads (cgroup.threads, tasks) and its directory.
    threads: Option<(File, Dir)>,
}

impl Family for Pids {
    const NAME: &'static str = "pids";
    type Files = Files;

    fn plan(dirs: &Dirs<'_>) -> Option<Files> {
        let hier = match dirs.v2_with("pids.current") {
            Some(_) => Some(Hier::V2),
            None => dirs.v1_hier("pids"),
        };
        let pids = hier.map(|h| (File::new(h, "pids.current"), File::new(h, "pids.max"), h));
        // Any v1 hierarchy lists the same tasks.
        let threads = match dirs.v2 {
            Some(_) => Some((File::new(Hier::V2, "cgroup.threads"), Dir::new(Hier::V2))),
            None => ["memory", "pids", "cpu", "cpuacct", "blkio"]
                .into_iter()
                .find_map(|c| dirs.v1_hier(c))
                .map(|h| (File::new(h, "tasks"), Dir::new(h))),
        };
        (pids.is_some() || threads.is_some()).then_some(Files { pids, threads })
    }

    fn read(f: &mut Files, ctx: &mut Ctx<'_>, shared: &mut Shared, out: &mut CgroupStats) {
        if let Some((current, max, hier)) = &mut f.pids
            && let Some(n) = current.required(ctx, parse::single_u64)
        {
            let own = max.required(ctx, parse::limit).flatten();
            let above = match hier.dir(ctx.cg).map(|d| d.to_path_buf()) {
                Some(dir) => {
                    shared
                        .enclosing
                        .min_above(&dir, "pids.max", parse::limit, ctx, |_, _, _| true)
                }
                None => None,
            };
            out.pids = Some(PidsStats {
                current: n,
                limit: match (own, above) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            });
        }
        if let Some((list, dir)) = &mut f.threads {
            out.threads = threads(list, dir, ctx);
        }
    }
}

/// Entries of the thread list in the container's cgroup and in every
/// cgroup below it, the way the hierarchical counters (pids.current,
/// memory usage) count them too.
fn threads(list: &mut File, dir: &mut Dir, ctx: &mut Ctx<'_>) -> Option<u64> {
    let own = list.required(ctx, |t| Ok(parse::count_lines(t)))?;
    if !dir.has_children(ctx)? {
        return Some(own);
    }
    let top = dir.hier.dir(ctx.cg)?.to_path_buf();
    let mut total = own;
    let mut stack = subdirs(&top);
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        if visited == MAX_DIRS {
            ctx.warn(top.clone(), Problem::TooManyCgroups(MAX_DIRS));
            break;
        }
        visited += 1;
        // A child cgroup removed meanwhile is no error: it had no tasks.
        if let Ok(text) = std::fs::read_to_string(d.join(list.name)) {
            total = total.saturating_add(parse::count_lines(&text));
        }
        stack.extend(subdirs(&d));
    }
    Some(total)
}

fn subdirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}
