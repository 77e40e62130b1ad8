//! A container as the agent knows it: identity, metadata, the starters
//! whose tasks it is made of, the cgroups its statistics come from, and
//! its life.
use std::{path::PathBuf, time::SystemTime};

use crate::model::{
    cgroups::ContainerCgroups,
    lifecycle::Lifecycle,
    metadata::Metadata,
    processes::{ExitedTotals, KnownProcesses, ProcessStats},
    stats::{CgroupStats, PartStats, combine},
};

/// How a container was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FoundBy {
    /// The kernel saw a trusted starter exec.
    Kernel,
    /// Apptainer's starter connected to the monitoring socket.
    Socket,
    /// Found at start-up, left by an earlier run of the agent.
    Adopted,
    /// Found at start-up among the processes: a run with no cgroup of
    /// apptheus' to be adopted by (a Slurm job's container, or one that
    /// began before the agent first ran).
    Running,
}

impl FoundBy {
    /// Found at start-up, running already: neither a new start nor one a
    /// user's start rate may refuse.
    pub(crate) fn at_start_up(self) -> bool {
        matches!(self, FoundBy::Adopted | FoundBy::Running)
    }
}

/// The kernel programs' counters for a container. The collectors' values
/// are None when the collector is off (the run-queue histogram, 192 bytes,
/// boxed: it is there only with `--collector.runqlat`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub execs: u64,
    pub forks: u64,
    pub threads_created: u64,
    pub process_exits: u64,
    pub live_tasks: u64,
    pub oom_kills: Option<u64>,
    pub network: Option<NetCounters>,
    pub fs: Option<FsCounters>,
    pub runq: Option<Box<apptheus_common::RunqHistogram>>,
    /// What the container's exited tasks used (CPU, storage I/O), for
    /// statistics read from its processes.
    pub exited: Option<ExitedTotals>,
}

impl KernelCounters {
    /// The counters of two starters' tasks together (an instance and a
    /// join).
    pub fn plus(mut self, o: &KernelCounters) -> KernelCounters {
        self.execs += o.execs;
        self.forks += o.forks;
        self.threads_created += o.threads_created;
        self.process_exits += o.process_exits;
        self.live_tasks += o.live_tasks;
        self.oom_kills = match (self.oom_kills, o.oom_kills) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.network = match (self.network, o.network) {
            (Some(a), Some(b)) => Some(NetCounters {
                rx_bytes: a.rx_bytes + b.rx_bytes,
                rx_packets: a.rx_packets + b.rx_packets,
                tx_bytes: a.tx_bytes + b.tx_bytes,
                tx_packets: a.tx_packets + b.tx_packets,
            }),
            (a, b) => a.or(b),
        };
        self.fs = match (self.fs, o.fs) {
            (Some(a), Some(b)) => Some(FsCounters {
                read_bytes: a.read_bytes + b.read_bytes,
                write_bytes: a.write_bytes + b.write_bytes,
            }),
            (a, b) => a.or(b),
        };
        self.runq = match (self.runq, &o.runq) {
            (Some(mut a), Some(b)) => {
                for (x, y) in a.slots.iter_mut().zip(b.slots) {
                    *x += y;
                }
                a.sum_ns += b.sum_ns;
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        };
        self.exited = match (self.exited, o.exited) {
            (Some(a), Some(b)) => Some(a.plus(&b)),
            (a, b) => a.or(b),
        };
        self
    }
}

/// The network collector's counters (IP headers included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// The file I/O collector's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// The latest statistics of a container, as exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// From its cgroups, and for the families they cannot give, from its
    /// processes (see [`crate::model::processes`]).
    pub cgroup: CgroupStats,
    pub kernel: Option<KernelCounters>,
}

/// A starter run whose tasks belong to the container: the one that started
/// it, and for an instance each `exec`/`run`/`shell instance://` that
/// joined it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The kernel's key for the run (its CONTAINERS entry), or a key of
    /// the agent's own for a run found through the socket alone.
    pub key: u64,
    pub starter_pid: u32,
    /// Its monitoring-socket connection, if it made one.
    pub socket: Option<u64>,
    /// Its kernel counters, latest read (kept once it has ended).
    pub counters: Option<KernelCounters>,
    pub ended: bool,
}

/// Where a cgroup the container's statistics are read from came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// apptheus created it, beneath the cgroup the member's starter ran in,
    /// and placed the member's tasks there.
    Placed { member: u64 },
    /// A runtime moved the container's process `tgid` into it (Apptainer's
    /// limits or instance cgroup, runc, crun); apptheus only reads it.
    Runtime { tgid: u32 },
    /// The cgroup member `member`'s starter ran in, where apptheus must not
    /// create one of its own (a Slurm job's cgroup v1 memory cgroup or its
    /// cgroup v2 task cgroup): read only while nothing but the container
    /// runs in it.
    Shared { member: u64 },
}

/// One set of cgroup directories the container's tasks run in.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub origin: Origin,
    /// Its directories (set through [`Part::set_cgroups`], which keeps
    /// their fingerprint).
    cgroups: ContainerCgroups,
    /// The directories' fingerprint, for the sources that keep files open
    /// (hashed when the directories change, not at every sample).
    fingerprint: u64,
    /// Its statistics, latest read; kept once the cgroup is gone.
    pub last: Option<CgroupStats>,
    /// The cgroup is gone (removed by the runtime, or by apptheus once its
    /// member ended).
    pub gone: bool,
    /// apptheus' own directories whose removal must be retried (tasks not
    /// yet reaped).
    pub removal_pending: Vec<PathBuf>,
}

impl Part {
    pub fn new(origin: Origin, cgroups: ContainerCgroups) -> Self {
        Part {
            origin,
            fingerprint: cgroups.fingerprint(),
            cgroups,
            last: None,
            gone: false,
            removal_pending: Vec::new(),
        }
    }

    /// Its directories.
    pub fn cgroups(&self) -> &ContainerCgroups {
        &self.cgroups
    }

    /// Their fingerprint ([`ContainerCgroups::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The directories found now (a runtime moved the tasks).
    pub fn set_cgroups(&mut self, cgroups: ContainerCgroups) {
        self.fingerprint = cgroups.fingerprint();
        self.cgroups = cgroups;
    }
}

#[derive(Debug, Clone)]
pub struct Container {
    /// The registry's key: the key of the member that started it.
    pub key: u64,
    /// The `container_id` label: "<starter pid>-<key>", unique until reboot.
    pub id: String,
    pub starter_path: PathBuf,
    pub start_time: SystemTime,
    pub uid: u32,
    pub user: String,
    pub meta: Metadata,
    pub life: Lifecycle,
    /// The starter runs whose tasks are the container's; the first started it.
    pub members: Vec<Member>,
    /// The cgroups its statistics come from.
    pub parts: Vec<Part>,
    /// Set when its own cgroups lack families (see
    /// [`crate::model::processes`]): those are read from its processes.
    pub processes: Option<ProcessStats>,
    /// Whether where its statistics come from was decided (once, when its
    /// cgroups were first set up).
    pub sources_decided: bool,
    /// Without the kernel programs: its processes seen so far.
    pub known: KnownProcesses,
    /// What is exported, refreshed by each sample (shared with the
    /// snapshot readers get until the next).
    pub sample: Option<std::sync::Arc<Sample>>,
    /// Exported. A starter run the kernel reported is shown once it runs
    /// something of its own (see `app::admission`); until then it is
    /// followed and placed, but not a container to the readers.
    pub shown: bool,
}

impl Container {
    /// A container started by the starter `starter_pid` (kernel key `key`).
    pub fn new(key: u64, starter_pid: u32, start_time: SystemTime) -> Self {
        Container {
            key,
            id: container_id(starter_pid, key),
            starter_path: PathBuf::new(),
            start_time,
            uid: 0,
            user: String::new(),
            meta: Metadata::default(),
            life: Lifecycle::default(),
            members: vec![Member {
                key,
                starter_pid,
                socket: None,
                counters: None,
                ended: false,
            }],
            parts: Vec::new(),
            processes: None,
            sources_decided: false,
            known: KnownProcesses::default(),
            sample: None,
            shown: true,
        }
    }

    /// The pid of the starter that started it.
    pub fn starter_pid(&self) -> u32 {
        self.members[0].starter_pid
    }

    pub fn member(&self, key: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.key == key)
    }

    pub fn member_mut(&mut self, key: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.key == key)
    }

    /// The parts whose cgroups still exist.
    pub fn live_parts(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter().filter(|p| !p.gone)
    }

    /// apptheus' own cgroups for member `key`.
    pub fn placed_part(&self, key: u64) -> Option<&Part> {
        self.parts
            .iter()
            .find(|p| p.origin == Origin::Placed { member: key })
    }

    /// Recomputes what is exported from the parts and members.
    pub fn refresh_sample(&mut self) {
        // A node runs thousands of containers: their vectors are kept
        // tight (a first push leaves room for four).
        if self.parts.capacity() > self.parts.len() {
            self.parts.shrink_to_fit();
        }
        let has_runtime = self
            .live_parts()
            .any(|p| matches!(p.origin, Origin::Runtime { .. }));
        // A cgroup shared with other processes gives the container its
        // limits only: what is used there is not the container's alone.
        let limits_only: Vec<Option<CgroupStats>> = self
            .parts
            .iter()
            .map(|p| match p.origin {
                Origin::Shared { .. } => p.last.as_ref().map(CgroupStats::limits_only),
                _ => None,
            })
            .collect();
        let parts: Vec<PartStats<'_>> = self
            .parts
            .iter()
            .zip(&limits_only)
            .filter_map(|(p, limits)| {
                limits.as_ref().or(p.last.as_ref()).map(|stats| PartStats {
                    stats,
                    live: !p.gone,
                    limits: !has_runtime || matches!(p.origin, Origin::Runtime { .. }),
                })
            })
            .collect();
        let mut cgroup = combine(&parts);
        if let Some(p) = &self.processes {
            p.overlay(&mut cgroup);
        }
        let kernel = self
            .members
            .iter()
            .filter_map(|m| m.counters.clone())
            .reduce(|a, b| a.plus(&b));
        // A cgroup's CPU misses what its tasks used before they were placed
        // and, in a runtime's cgroup removed before its last reading, what
        // they used since the one before: never less than what the kernel
        // banked at the exits of the container's tasks (all of it, once
        // the last has exited).
        if let (Some(cpu), Some(exited)) =
            (cgroup.cpu.as_mut(), kernel.as_ref().and_then(|k| k.exited))
        {
            let banked = exited
                .runtime_ns
                .saturating_sub(exited.before_start.runtime_ns);
            cpu.usage_seconds = cpu.usage_seconds.max(banked as f64 / 1e9);
        }
        self.sample = Some(std::sync::Arc::new(Sample { cgroup, kernel }));
    }
}

/// The `container_id` for a key and starter pid.
pub(crate) fn container_id(starter_pid: u32, key: u64) -> String {
    format!("{starter_pid}-{key}")
}

/// Parses a `container_id` back into (starter pid, key).
pub(crate) fn parse_container_id(id: &str) -> Option<(u32, u64)> {
    let (pid, key) = id.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    let key: u64 = key.parse().ok()?;
    (container_id(pid, key) == id).then_some((pid, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stats::CpuStats;

    #[test]
    fn a_parts_fingerprint_follows_its_directories() {
        let cg = |d: &str| ContainerCgroups {
            v2: Some(d.into()),
            v1: Default::default(),
        };
        let mut p = Part::new(Origin::Placed { member: 1 }, cg("/a"));
        assert_eq!(p.fingerprint(), cg("/a").fingerprint());
        p.set_cgroups(cg("/b"));
        assert_eq!(p.cgroups(), &cg("/b"));
        assert_eq!(p.fingerprint(), cg("/b").fingerprint());
        assert_ne!(p.fingerprint(), cg("/a").fingerprint());
    }

    #[test]
    fn ids_round_trip_and_reject_junk() {
        assert_eq!(container_id(42, 123456789), "42-123456789");
        assert_eq!(parse_container_id("42-123456789"), Some((42, 123456789)));
        for bad in ["", "42", "-1", "a-b", "042-1", "1-2-3"] {
            assert_eq!(parse_container_id(bad), None, "{bad}");
        }
    }

    fn cpu(s: f64) -> CgroupStats {
        CgroupStats {
            cpu: Some(CpuStats {
                usage_seconds: s,
                ..CpuStats::default()
            }),
            ..CgroupStats::default()
        }
    }

    /// A runtime removed its cgroup before it was read again (an instance
    /// stopped with its join): the CPU the kernel banked at the tasks'
    /// exits stands; what the starter's process used before its exec does
    /// not count.
    #[test]
    fn cpu_is_never_less_than_the_kernel_banked_at_the_exits() {
        let mut c = Container::new(1, 10, SystemTime::UNIX_EPOCH);
        let mut own = Part::new(Origin::Placed { member: 1 }, ContainerCgroups::default());
        own.last = Some(cpu(0.1));
        c.parts = vec![own];
        c.members[0].counters = Some(KernelCounters {
            exited: Some(ExitedTotals {
                runtime_ns: 2_000_000_000,
                io: None,
                before_start: crate::model::processes::Baseline {
                    runtime_ns: 500_000_000,
                    ..Default::default()
                },
            }),
            ..KernelCounters::default()
        });
        c.refresh_sample();
        let got = c
            .sample
            .as_ref()
            .unwrap()
            .cgroup
            .cpu
            .as_ref()
            .unwrap()
            .usage_seconds;
        assert!((got - 1.5).abs() < 1e-9, "{got}");
        // More in the cgroups (live tasks): the cgroups' figure.
        c.parts[0].last = Some(cpu(3.0));
        c.refresh_sample();
        let got = c
            .sample
            .as_ref()
            .unwrap()
            .cgroup
            .cpu
            .as_ref()
            .unwrap()
            .usage_seconds;
        assert!((got - 3.0).abs() < 1e-9, "{got}");
    }

    /// An instance with one join: the join's tasks and cgroup count in the
    /// instance's totals, also once the join has ended.
    #[test]
    fn a_join_counts_in_its_instance() {
        let mut c = Container::new(1, 10, SystemTime::UNIX_EPOCH);
        c.members[0].counters = Some(KernelCounters {
            execs: 2,
            live_tasks: 2,
            ..KernelCounters::default()
        });
        c.members.push(Member {
            key: 2,
            starter_pid: 20,
            socket: None,
            counters: Some(KernelCounters {
                execs: 3,
                forks: 1,
                live_tasks: 0,
                ..KernelCounters::default()
            }),
            ended: true,
        });
        let mut own = Part::new(Origin::Placed { member: 1 }, ContainerCgroups::default());
        own.last = Some(cpu(0.5));
        let mut join = Part::new(Origin::Placed { member: 2 }, ContainerCgroups::default());
        join.last = Some(cpu(1.0));
        join.gone = true;
        c.parts = vec![own, join];
        c.refresh_sample();
        let s = c.sample.as_ref().unwrap();
        assert_eq!(s.kernel.as_ref().unwrap().execs, 5);
        assert_eq!(s.kernel.as_ref().unwrap().forks, 1);
        assert_eq!(s.kernel.as_ref().unwrap().live_tasks, 2);
        assert!((s.cgroup.cpu.as_ref().unwrap().usage_seconds - 1.5).abs() < 1e-9);
        assert_eq!(c.placed_part(2).map(|p| p.gone), Some(true));
        assert_eq!(c.live_parts().count(), 1);
    }
}
