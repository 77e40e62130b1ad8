//! What the kernel programs had to drop, named: a map that was full (and
//! the flag that sizes it), or a program that stopped on a kernel read
//! that failed. The programs count each in the per-CPU `STATS` array
//! ([`apptheus_common::Stat`]); the agent exports the totals and says
//! once, in its log, what each kind costs and how to avoid it.
use std::collections::BTreeMap;

use apptheus_common::Stat;

/// A kernel map whose being full loses something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Map {
    /// Task id -> container: a task not followed.
    Tasks,
    /// Container id -> state: a starter run not attributed.
    Containers,
    /// The run-queue latency collector's histograms: a container's waits
    /// not observed.
    Runq,
}

impl Map {
    pub const ALL: [Map; 3] = [Map::Tasks, Map::Containers, Map::Runq];

    /// The `map` label of `apptheus_ebpf_map_full_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Map::Tasks => "tasks",
            Map::Containers => "containers",
            Map::Runq => "runq",
        }
    }

    /// The flag that sizes the map.
    pub const fn flag(self) -> &'static str {
        match self {
            Map::Tasks => "--ebpf.max-tasks",
            Map::Containers => "--ebpf.max-containers",
            Map::Runq => "--collector.runqlat.max-containers",
        }
    }

    /// What is lost each time it is found full.
    pub const fn loss(self) -> &'static str {
        match self {
            Map::Tasks => {
                "a task of a container was not followed (its use is missing from the container's numbers, and its children are not attributed)"
            }
            Map::Containers => "a starter run was not attributed (its container is missing)",
            Map::Runq => "a container's run-queue waits are not observed",
        }
    }
}

/// One kind of drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drop {
    /// Events that did not fit in the ring buffer (recovered by
    /// reconciling with the kernel's maps; exported on their own).
    EventsLost,
    MapFull(Map),
    /// A program (its `program` label) stopped early.
    ProgramError(&'static str),
}

/// The programs that count their errors, by the `program` label (the
/// kernel object's `apptheus_<program>`), and what a failed run loses.
pub const PROGRAM_ERRORS: [(&str, Stat, &str); 6] = [
    (
        "exec",
        Stat::ExecErrors,
        "an exec's file could not be identified (a starter run may have been missed)",
    ),
    (
        "fork",
        Stat::ForkErrors,
        "a new task of a container could not be read (it is not followed)",
    ),
    (
        "exit",
        Stat::ExitErrors,
        "an exiting task's CPU time or I/O could not be read (missing from its container's totals)",
    ),
    (
        "cgroup_attach",
        Stat::AttachErrors,
        "a task moved to another cgroup could not be read (a runtime's cgroup may be missed)",
    ),
    (
        "oom",
        Stat::OomErrors,
        "an OOM victim could not be read (the kill is not counted)",
    ),
    (
        "fsio",
        Stat::FsioErrors,
        "a file read or write could not be read (its bytes are not counted)",
    ),
];

/// What a counter of the `STATS` array counts.
pub fn of(stat: Stat) -> Drop {
    match stat {
        Stat::EventsLost => Drop::EventsLost,
        Stat::TasksMapFull => Drop::MapFull(Map::Tasks),
        Stat::ContainersMapFull => Drop::MapFull(Map::Containers),
        Stat::RunqMapFull => Drop::MapFull(Map::Runq),
        other => PROGRAM_ERRORS
            .iter()
            .find(|(_, s, _)| *s == other)
            .map_or(Drop::EventsLost, |(name, _, _)| Drop::ProgramError(name)),
    }
}

/// What a program's failed run loses, for the log.
pub fn program_loss(program: &str) -> &'static str {
    PROGRAM_ERRORS
        .iter()
        .find(|(name, _, _)| *name == program)
        .map_or("", |(_, _, loss)| loss)
}

/// New drops since the last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct News {
    pub drop: Drop,
    /// How many more than last reported.
    pub more: u64,
    /// The first of this kind since the agent started: say so in the log.
    pub first: bool,
}

/// The totals as last reported.
#[derive(Debug, Default)]
pub struct Reported {
    totals: BTreeMap<Drop, u64>,
}

impl Reported {
    /// Compares `now` (totals since the programs were loaded, several
    /// counters of one kind summed by the caller or not) with what was
    /// reported; returns what grew, and remembers `now`.
    pub fn update(&mut self, now: &[(Drop, u64)]) -> Vec<News> {
        let mut sums: BTreeMap<Drop, u64> = BTreeMap::new();
        for (d, n) in now {
            *sums.entry(*d).or_default() += n;
        }
        let mut out = Vec::new();
        for (d, n) in sums {
            let before = self.totals.get(&d).copied();
            let was = before.unwrap_or(0);
            // A total never shrinks; should it (a counter read as 0 on a
            // failed read), the next growth is counted from the new value.
            if n > was {
                out.push(News {
                    drop: d,
                    more: n - was,
                    first: was == 0,
                });
            }
            self.totals.insert(d, n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_named() {
        for s in Stat::ALL {
            let d = of(s);
            if s == Stat::EventsLost {
                assert_eq!(d, Drop::EventsLost);
            } else {
                assert_ne!(d, Drop::EventsLost, "{s:?} has no name");
            }
        }
        assert_eq!(of(Stat::TasksMapFull), Drop::MapFull(Map::Tasks));
        assert_eq!(of(Stat::ForkErrors), Drop::ProgramError("fork"));
        assert!(program_loss("exit").contains("CPU"));
        assert_eq!(program_loss("nope"), "");
        for m in Map::ALL {
            assert!(m.flag().starts_with("--"));
        }
    }

    #[test]
    fn growth_is_reported_once_and_the_first_is_marked() {
        let mut r = Reported::default();
        let tasks = Drop::MapFull(Map::Tasks);
        let runq = Drop::MapFull(Map::Runq);
        assert!(r.update(&[(tasks, 0), (runq, 0)]).is_empty());
        assert_eq!(
            r.update(&[(tasks, 3), (runq, 0)]),
            vec![News {
                drop: tasks,
                more: 3,
                first: true
            }]
        );
        assert!(r.update(&[(tasks, 3)]).is_empty(), "nothing new");
        // Two sources of one kind are summed.
        assert_eq!(
            r.update(&[(tasks, 5), (runq, 1), (runq, 2)]),
            vec![
                News {
                    drop: tasks,
                    more: 2,
                    first: false
                },
                News {
                    drop: runq,
                    more: 3,
                    first: true
                }
            ]
        );
    }
}
