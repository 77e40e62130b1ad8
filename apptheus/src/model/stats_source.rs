//! A source of per-container statistics, in node_exporter's manner: each
//! is one module (the kernel programs' counters; cgroup CPU, memory, pids,
//! block I/O, pressure), switched with `--source.<name>`, timed by the
//! sampler, which exports `apptheus_source_success{source}` and
//! `apptheus_source_duration_seconds{source}`. A source that finds nothing
//! to read for a container (no memory controller, no PSI) says so: that is
//! not a failure.
use crate::model::{
    container::{KernelCounters, Member, Part},
    stats::CgroupStats,
};

/// The kernel programs' counters, as the kernel source reads them.
pub(crate) trait Counters {
    /// The counters of starter run `member`; None when the kernel does not
    /// know it (any more).
    fn counters(&self, member: u64) -> Option<KernelCounters>;
}

/// What a source reads of one container.
pub(crate) struct Target<'a> {
    /// The container's key.
    pub key: u64,
    /// Its starter runs (the kernel's counters are per run).
    pub members: &'a [Member],
    /// Its cgroup sets (apptheus' own, a runtime's).
    pub parts: &'a [Part],
    /// The kernel programs, when they run.
    pub kernel: Option<&'a dyn Counters>,
}

/// Where a source puts what it read: one slot per member and per part,
/// in the target's order.
pub(crate) struct Fresh {
    pub counters: Vec<Option<KernelCounters>>,
    pub parts: Vec<FreshPart>,
}

/// What was read of one cgroup set at this sample.
#[derive(Debug, Default)]
pub(crate) struct FreshPart {
    /// Whether it is read at this sample (not gone already).
    pub read: bool,
    /// Its directories' hash: a source that keeps files open for a set
    /// knows when the set changed.
    pub fingerprint: u64,
    pub stats: CgroupStats,
    /// Its cgroup was removed while being read: what was read before
    /// stays, this partial read is dropped.
    pub gone: bool,
}

impl Fresh {
    pub(crate) fn new(t: &Target<'_>) -> Self {
        Fresh {
            counters: vec![None; t.members.len()],
            parts: t
                .parts
                .iter()
                .map(|p| FreshPart {
                    read: !p.gone,
                    fingerprint: if p.gone { 0 } else { p.fingerprint() },
                    ..FreshPart::default()
                })
                .collect(),
        }
    }
}

/// How a source's read of one container went.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// It found something to read.
    pub found: bool,
    /// What was broken or unreadable (each names its file).
    pub warnings: Vec<Box<dyn std::error::Error + Send + Sync>>,
}

/// A source of per-container statistics.
pub(crate) trait StatsSource {
    /// Its name, in `--source.<name>` and in `source="<name>"`.
    fn name(&self) -> &'static str;

    /// A sample begins (of every container, or of one): values shared by
    /// many containers (an enclosing cgroup's limit) are read afresh.
    fn begin(&mut self) {}

    /// Reads its statistics of one container into `out`.
    fn read(&mut self, t: &Target<'_>, out: &mut Fresh) -> Outcome;

    /// The container ended: what is kept open for it is closed.
    fn forget(&mut self, _key: u64) {}
}

/// The cgroup statistics sources, one per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupSource {
    Cpu,
    Memory,
    Pids,
    Blkio,
    Pressure,
}

impl CgroupSource {
    pub const ALL: [CgroupSource; 5] = [
        CgroupSource::Cpu,
        CgroupSource::Memory,
        CgroupSource::Pids,
        CgroupSource::Blkio,
        CgroupSource::Pressure,
    ];

    /// The name in `--source.<name>` and `source="<name>"`.
    pub const fn name(self) -> &'static str {
        match self {
            CgroupSource::Cpu => "cpu",
            CgroupSource::Memory => "memory",
            CgroupSource::Pids => "pids",
            CgroupSource::Blkio => "blkio",
            CgroupSource::Pressure => "pressure",
        }
    }
}
