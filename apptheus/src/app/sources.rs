//! The statistics sources the sampler runs for each container (the kernel
//! programs' counters first, then the cgroup families that `--source.*`
//! selects), each timed; what a sample of every container found is
//! exported as `apptheus_source_success{source}` and
//! `apptheus_source_duration_seconds{source}`.
use std::time::{Duration, Instant};

use crate::{
    attribution::kernel::Kernel,
    cgroup::read::{self, Budget},
    cli::Args,
    export::metrics::AgentMetrics,
    model::{
        container::{Container, KernelCounters},
        stats_source::{CgroupSource, Counters, Fresh, Outcome, StatsSource, Target},
    },
};

/// cgroup files kept open at most by default (about 75 MiB of kernel
/// memory at most; some 1,000 containers on a hybrid host).
const OPEN_FILES: usize = 16_384;

/// Descriptors left to everything else when the default is fitted under
/// the descriptor limit: the monitoring socket's connections (4,096), HTTP
/// connections, kernel maps, and a margin.
const FD_RESERVE: u64 = 6_144;

/// How many cgroup files to keep open: `--cgroup.open-files`, else the
/// default fitted under the descriptor limit.
pub(super) fn open_files(given: Option<usize>, fd_limit: Option<u64>) -> usize {
    given.unwrap_or_else(|| {
        let room = fd_limit.map_or(0, |l| l.saturating_sub(FD_RESERVE));
        usize::try_from(room).unwrap_or(usize::MAX).min(OPEN_FILES)
    })
}

/// The kernel programs' counters of each starter run (one map lookup per
/// run; with `runqlat`, its histogram too).
struct KernelSource;

impl StatsSource for KernelSource {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn read(&mut self, t: &Target<'_>, out: &mut Fresh) -> Outcome {
        let Some(k) = t.kernel else {
            return Outcome::default();
        };
        let mut o = Outcome::default();
        for (m, slot) in t.members.iter().zip(&mut out.counters) {
            if m.ended {
                continue;
            }
            *slot = k.counters(m.key);
            o.found |= slot.is_some();
        }
        o
    }
}

impl Counters for Kernel {
    fn counters(&self, member: u64) -> Option<KernelCounters> {
        Kernel::counters(self, member)
    }
}

/// How one source did over a sample of every container.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    time: Duration,
    failed: bool,
}

pub(crate) struct Sources {
    list: Vec<Box<dyn StatsSource + Send>>,
    tally: Vec<Tally>,
    budget: Budget,
}

impl Sources {
    /// The kernel source and the selected cgroup sources, with at most
    /// `open_files` cgroup files kept open.
    pub(super) fn new(args: &Args, open_files: usize) -> Self {
        let budget = Budget::new(open_files);
        let mut list: Vec<Box<dyn StatsSource + Send>> = vec![Box::new(KernelSource)];
        list.extend(read::sources(
            |s: CgroupSource| args.sources.enabled(s),
            &budget,
            read::user_hz(),
        ));
        let names: Vec<&str> = list.iter().map(|s| s.name()).collect();
        tracing::info!(sources = %names.join(","), open_files, "statistics sources");
        Sources {
            tally: vec![Tally::default(); list.len()],
            list,
            budget,
        }
    }

    /// A sample of every container begins.
    pub(super) fn begin_round(&mut self) {
        self.tally.fill(Tally::default());
        self.begin_one();
    }

    /// A sample of one container begins (outside a sample of every one).
    pub(super) fn begin_one(&mut self) {
        for s in &mut self.list {
            s.begin();
        }
    }

    /// Reads one container: what each source gives goes into its members'
    /// counters and its cgroup sets' latest statistics (a set found gone
    /// keeps what was read before), then into what is exported.
    pub(super) fn sample(&mut self, c: &mut Container, kernel: Option<&Kernel>) {
        let t = Target {
            key: c.key,
            members: &c.members,
            parts: &c.parts,
            kernel: kernel.map(|k| k as &dyn Counters),
        };
        let mut fresh = Fresh::new(&t);
        let mut seen: Vec<String> = Vec::new();
        // Each source's end is the next one's start: one clock read each.
        let mut started = Instant::now();
        for (s, tally) in self.list.iter_mut().zip(&mut self.tally) {
            let o = s.read(&t, &mut fresh);
            let ended = Instant::now();
            tally.time += ended.saturating_duration_since(started);
            started = ended;
            for w in o.warnings {
                tally.failed = true;
                let w = w.to_string();
                if !seen.contains(&w) {
                    tracing::warn!(container_id = %c.id, source = s.name(), warning = %w, "statistics incomplete");
                    seen.push(w);
                }
            }
        }
        for (m, counters) in c.members.iter_mut().zip(fresh.counters) {
            if let Some(k) = counters {
                m.counters = Some(k);
            }
        }
        for (p, f) in c.parts.iter_mut().zip(fresh.parts) {
            if !f.read {
                continue;
            }
            if f.gone {
                // A runtime removes its cgroup once the container's tasks in
                // it are gone: what was read last stays.
                p.gone = true;
            } else {
                p.last = Some(f.stats);
            }
        }
        c.refresh_sample();
    }

    /// Closes what is kept open for container `key` (it ended).
    pub(super) fn forget(&mut self, key: u64) {
        for s in &mut self.list {
            s.forget(key);
        }
    }

    /// What the latest sample of every container found, for scrapes.
    pub(super) fn publish(&self, m: &AgentMetrics) {
        for (s, t) in self.list.iter().zip(&self.tally) {
            m.own
                .source_success
                .with_label_values(&[s.name()])
                .set(i64::from(!t.failed));
            m.own
                .source_duration
                .with_label_values(&[s.name()])
                .set(t.time.as_secs_f64());
        }
        m.own.cgroup_open_files.set(self.budget.in_use() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_fit_under_the_descriptor_limit() {
        assert_eq!(open_files(Some(5), Some(100)), 5, "the flag wins");
        assert_eq!(open_files(None, Some(1 << 20)), OPEN_FILES);
        assert_eq!(open_files(None, Some(20_000)), 20_000 - 6_144);
        assert_eq!(open_files(None, Some(1024)), 0);
        assert_eq!(open_files(None, None), 0);
    }
}
