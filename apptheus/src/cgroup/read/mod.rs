//! Per-container cgroup statistics, read by one source per family: `cpu`,
//! `memory`, `pids` (with threads), `blkio` and `pressure`, each a module
//! of its own and a [`StatsSource`] for the sampler. A family the host cannot
//! provide is None.
//!
//! Which hierarchy gives a family: the cgroup2 directory when it has the
//! family's files (pure v2 hosts with the controllers enabled), else the v1
//! controller's. On hybrid hosts that means CPU usage and PSI from cgroup2
//! (its cpu.stat and pressure files exist without any controller) and
//! memory, pids, block I/O and CFS throttling from v1. A family never mixes
//! sources for one container: when the chosen file is broken the family is
//! left out (with a warning) rather than filled from the other hierarchy,
//! whose counters would not continue the same series.
//!
//! Which files each family reads is decided once per cgroup set (and again
//! when a family found nothing, in case controllers were enabled since);
//! the files are kept open and re-read in place (see `files`).
use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    path::Path,
    time::{Duration, Instant},
};

mod blkio;
mod cpu;
mod enclosing_limits;
mod files;
mod memory;
pub(crate) mod parse;
mod pids;
mod pressure;

pub(crate) use files::Budget;
pub use files::Problem;
#[cfg(feature = "testing")]
pub use files::StatWarning;
use files::{Ctx, Hier};
pub use v1_hz::user_hz;

use crate::model::{
    cgroups::ContainerCgroups,
    processes::FromProcesses,
    stats::CgroupStats,
    stats_source::{CgroupSource as Which, Fresh, Outcome, StatsSource, Target},
};

/// Devices reported per container at most: a container touching more
/// block devices than this is unusual, and every device is four series.
pub const MAX_DEVICES: usize = 256;

/// How long a family that found nothing to read waits before it looks
/// again (a controller enabled in the container's cgroup since).
const REPLAN_AFTER: Duration = Duration::from_secs(30);

/// The statistics families a container's own cgroups `own` (holding
/// nothing but its tasks) cannot give, among those `enabled`: a hierarchy
/// where it has no cgroup of its own (a Slurm job's), or a cgroup2
/// directory without the family's controller.
pub(crate) fn lacking(own: &ContainerCgroups, enabled: impl Fn(Which) -> bool) -> FromProcesses {
    let v2 = |f: &str| own.v2.as_ref().is_some_and(|d| d.join(f).exists());
    let v1 = |c: &str| own.v1.contains_key(c);
    FromProcesses {
        cpu: enabled(Which::Cpu) && !(v2("cpu.stat") || v1("cpuacct")),
        memory: enabled(Which::Memory) && !(v2("memory.current") || v1("memory")),
        pids: enabled(Which::Pids) && !(v2("pids.current") || v1("pids")),
        io: enabled(Which::Blkio) && !(v2("io.stat") || v1("blkio")),
    }
}

/// A family of statistics read from cgroup files.
trait Family {
    /// The source's name.
    const NAME: &'static str;
    /// The files it reads of one cgroup set.
    type Files: Send;
    /// Which files give the family here; None when none does.
    fn plan(dirs: &Dirs<'_>) -> Option<Self::Files>;
    /// Reads them into `out`.
    fn read(files: &mut Self::Files, ctx: &mut Ctx<'_>, shared: &mut Shared, out: &mut CgroupStats);
}

/// The directories of a cgroup set that exist, checked when a family plans
/// its files.
pub(crate) struct Dirs<'a> {
    pub v2: Option<&'a Path>,
    pub v1: BTreeMap<&'a str, &'a Path>,
}

impl<'a> Dirs<'a> {
    /// The directories of `cg` that exist; each missing one is a warning
    /// (the cgroup was removed, or never created).
    fn probe(cg: &'a ContainerCgroups, ctx: &mut Ctx<'_>) -> Self {
        let mut seen: BTreeMap<&Path, bool> = BTreeMap::new();
        let mut there = |d: &'a Path, ctx: &mut Ctx<'_>| {
            *seen.entry(d).or_insert_with(|| {
                let ok = d.is_dir();
                if !ok {
                    ctx.warn(d.to_path_buf(), Problem::Missing);
                }
                ok
            })
        };
        let v2 = cg.v2.as_deref().filter(|d| there(d, ctx));
        let v1 = cg
            .v1
            .iter()
            .filter(|(_, d)| there(d, ctx))
            .map(|(c, d)| (c, d.as_path()))
            .collect();
        Dirs { v2, v1 }
    }

    /// The cgroup2 directory, if it has `file` (a controller's mark).
    pub(crate) fn v2_with(&self, file: &str) -> Option<&'a Path> {
        self.v2.filter(|d| d.join(file).exists())
    }

    /// A v1 controller's directory, if it exists.
    pub(crate) fn v1(&self, controller: &str) -> Option<&'a Path> {
        self.v1.get(controller).copied()
    }

    /// The v1 controller of `hier` as the `'static` name files keep.
    pub(crate) fn v1_hier(&self, controller: &'static str) -> Option<Hier> {
        self.v1(controller).map(|_| Hier::V1(controller))
    }

    fn is_empty(&self) -> bool {
        self.v2.is_none() && self.v1.is_empty()
    }
}

/// What a family's files share across containers within one sample.
pub(crate) struct Shared {
    /// The unit of cpuacct.stat.
    pub user_hz: u64,
    /// Enclosing cgroups' limits, read once per sample.
    pub enclosing: enclosing_limits::Ancestors,
    /// When the sample began (what is looked at now and then goes by it).
    pub now: Instant,
}

/// One family's files per cgroup set, planned once.
struct Planned<F> {
    /// Which cgroup set they were planned for (its directories' hash).
    fingerprint: u64,
    at: Instant,
    files: Option<F>,
}

/// A [`Family`] as a [`StatsSource`]: its files per (container, cgroup set).
/// Boxed: a hash table has up to twice the slots it fills, each the size
/// of its entry (a few hundred bytes of files), so with 10,000 containers
/// the empty slots would cost megabytes.
struct FamilySource<F: Family> {
    parts: HashMap<(u64, usize), Box<Planned<F::Files>>>,
    shared: Shared,
    budget: Budget,
    buf: Vec<u8>,
}

impl<F: Family> FamilySource<F> {
    fn new(budget: Budget, user_hz: u64) -> Self {
        FamilySource {
            parts: HashMap::new(),
            shared: Shared {
                user_hz,
                enclosing: enclosing_limits::Ancestors::default(),
                now: Instant::now(),
            },
            budget,
            buf: Vec::new(),
        }
    }
}

impl<F: Family> StatsSource for FamilySource<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn begin(&mut self) {
        self.shared.enclosing.begin();
        self.shared.now = Instant::now();
    }

    fn read(&mut self, t: &Target<'_>, out: &mut Fresh) -> Outcome {
        let mut o = Outcome::default();
        for (i, (p, fresh)) in t.parts.iter().zip(&mut out.parts).enumerate() {
            if !fresh.read {
                // Gone (removed by apptheus or its runtime): its files closed.
                self.parts.remove(&(t.key, i));
                continue;
            }
            let mut ctx = Ctx::new(p.cgroups(), &mut self.buf, &self.budget);
            let fp = fresh.fingerprint;
            let now = self.shared.now;
            let planned = match self.parts.entry((t.key, i)) {
                Entry::Occupied(e) => {
                    let pl = e.into_mut();
                    let stale = pl.files.is_none() && now.duration_since(pl.at) > REPLAN_AFTER;
                    if pl.fingerprint != fp || stale {
                        **pl = Planned {
                            fingerprint: fp,
                            at: now,
                            files: plan::<F>(p.cgroups(), &mut ctx),
                        };
                    }
                    pl
                }
                Entry::Vacant(e) => e.insert(Box::new(Planned {
                    fingerprint: fp,
                    at: now,
                    files: plan::<F>(p.cgroups(), &mut ctx),
                })),
            };
            if let Some(files) = &mut planned.files {
                o.found = true;
                F::read(files, &mut ctx, &mut self.shared, &mut fresh.stats);
            }
            if ctx.gone {
                fresh.gone = true;
                self.parts.remove(&(t.key, i));
            }
            o.warnings
                .extend(ctx.warnings.into_iter().map(|w| Box::new(w) as _));
        }
        o
    }

    fn forget(&mut self, key: u64) {
        self.parts.retain(|(k, _), _| *k != key);
    }
}

/// A family's files for `cg`; a set none of whose directories exists is
/// gone.
fn plan<F: Family>(cg: &ContainerCgroups, ctx: &mut Ctx<'_>) -> Option<F::Files> {
    let dirs = Dirs::probe(cg, ctx);
    if dirs.is_empty() {
        ctx.gone = !cg.is_empty();
        return None;
    }
    F::plan(&dirs)
}

/// The cgroup sources selected, in the order they are read.
pub(crate) fn sources(
    selected: impl Fn(Which) -> bool,
    budget: &Budget,
    user_hz: u64,
) -> Vec<Box<dyn StatsSource + Send>> {
    let mut out: Vec<Box<dyn StatsSource + Send>> = Vec::new();
    let b = || budget.clone();
    if selected(Which::Cpu) {
        out.push(Box::new(FamilySource::<cpu::Cpu>::new(b(), user_hz)));
    }
    if selected(Which::Memory) {
        out.push(Box::new(FamilySource::<memory::Memory>::new(b(), user_hz)));
    }
    if selected(Which::Pids) {
        out.push(Box::new(FamilySource::<pids::Pids>::new(b(), user_hz)));
    }
    if selected(Which::Blkio) {
        out.push(Box::new(FamilySource::<blkio::Blkio>::new(b(), user_hz)));
    }
    if selected(Which::Pressure) {
        out.push(Box::new(FamilySource::<pressure::Pressure>::new(
            b(),
            user_hz,
        )));
    }
    out
}

#[cfg(feature = "testing")]
/// Reads a container's statistics once, every family, nothing kept open
/// (tests, fixture trees). Never fails: what cannot be read is left out
/// and explained in the warnings, each naming its file, once.
pub fn read(cg: &ContainerCgroups) -> (CgroupStats, Vec<StatWarning>) {
    read_with(cg, user_hz())
}

#[cfg(feature = "testing")]
/// [`read`] with the unit of cpuacct.stat given (for tests).
pub fn read_with(cg: &ContainerCgroups, user_hz: u64) -> (CgroupStats, Vec<StatWarning>) {
    let budget = Budget::new(0);
    let mut all = sources(|_| true, &budget, user_hz);
    let parts = [crate::model::container::Part::new(
        crate::model::container::Origin::Placed { member: 0 },
        cg.clone(),
    )];
    let t = Target {
        key: 0,
        members: &[],
        parts: &parts,
        kernel: None,
    };
    let mut out = Fresh::new(&t);
    let mut warnings: Vec<StatWarning> = Vec::new();
    for s in &mut all {
        s.begin();
        for w in s.read(&t, &mut out).warnings {
            if let Ok(w) = w.downcast::<StatWarning>() {
                push_once(&mut warnings, *w);
            }
        }
    }
    let stats = out.parts.pop().map(|p| p.stats).unwrap_or_default();
    (stats, warnings)
}

#[cfg(feature = "testing")]
/// Adds a warning unless the same one (file and problem) is there already:
/// several families look at the same directory.
pub(crate) fn push_once(warnings: &mut Vec<StatWarning>, w: StatWarning) {
    let same = |o: &StatWarning| o.path == w.path && o.problem.to_string() == w.problem.to_string();
    if !warnings.iter().any(same) {
        warnings.push(w);
    }
}

mod v1_hz {
    use std::sync::OnceLock;

    /// The unit of cpuacct.stat (USER_HZ), from sysconf(_SC_CLK_TCK).
    pub fn user_hz() -> u64 {
        static HZ: OnceLock<u64> = OnceLock::new();
        *HZ.get_or_init(|| {
            // SAFETY: sysconf takes an integer and touches no memory of ours.
            let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            // USER_HZ is 100 on every Linux ABI; sysconf failing is theoretical.
            u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(100)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        d
    }

    /// What a container's own cgroups lack is read from its processes:
    /// everything where it has none, memory where a pure v2 cgroup has no
    /// memory controller, memory where a Slurm job's v1 memory cgroup is
    /// not its own.
    #[test]
    fn the_families_a_containers_own_cgroups_lack() {
        let all = |_| true;
        assert_eq!(
            lacking(&ContainerCgroups::default(), all),
            FromProcesses::ALL
        );
        // Pure v2 beside a login shell: cpu.stat and nothing else.
        let bare = dir_with(&["cpu.stat", "cgroup.threads"]);
        let v2 = ContainerCgroups {
            v2: Some(bare.path().to_path_buf()),
            ..ContainerCgroups::default()
        };
        assert_eq!(
            lacking(&v2, all),
            FromProcesses {
                cpu: false,
                ..FromProcesses::ALL
            }
        );
        // The same with every controller enabled.
        let full = dir_with(&["cpu.stat", "memory.current", "pids.current", "io.stat"]);
        let v2 = ContainerCgroups {
            v2: Some(full.path().to_path_buf()),
            ..ContainerCgroups::default()
        };
        assert!(!lacking(&v2, all).any());
        // Hybrid, in a Slurm job: no memory cgroup of its own.
        let unified = dir_with(&["cpu.stat"]);
        let hybrid = ContainerCgroups {
            v2: Some(unified.path().to_path_buf()),
            v1: ["cpu", "cpuacct", "pids", "blkio"]
                .into_iter()
                .map(|c| (c, PathBuf::from("/x")))
                .collect(),
        };
        assert_eq!(
            lacking(&hybrid, all),
            FromProcesses {
                memory: true,
                ..FromProcesses::default()
            }
        );
        // A family switched off is read from nowhere.
        assert!(!lacking(&hybrid, |s| s != Which::Memory).any());
    }
}
