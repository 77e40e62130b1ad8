//! The kernel collectors: per-container statistics that only kernel
//! programs can give, each switchable in node_exporter's style
//! (`--collector.<name>` / `--no-collector.<name>`). The programs of a
//! disabled collector are neither loaded nor attached.
use std::fmt;

/// One kernel collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collector {
    /// OOM kills per container (tp_btf `mark_victim`).
    Oom,
    /// Network bytes and packets per container (cgroup_skb on the cgroup2 root).
    Network,
    /// Bytes read from and written to regular files (raw tracepoint `sys_exit`).
    Fsio,
    /// Run-queue latency histogram (tp_btf `sched_switch`).
    Runqlat,
}

impl Collector {
    pub const ALL: [Collector; 4] = [
        Collector::Oom,
        Collector::Network,
        Collector::Fsio,
        Collector::Runqlat,
    ];

    /// The name in `--collector.<name>`.
    pub const fn name(self) -> &'static str {
        match self {
            Collector::Oom => "oom",
            Collector::Network => "network",
            Collector::Fsio => "fsio",
            Collector::Runqlat => "runqlat",
        }
    }

    /// Whether the collector runs unless `--no-collector.<name>` is given.
    /// The ones off by default cost measurably on hot kernel paths (see
    /// README, "Kernel collectors").
    pub const fn default_enabled(self) -> bool {
        match self {
            Collector::Oom | Collector::Network => true,
            Collector::Fsio | Collector::Runqlat => false,
        }
    }
}

impl fmt::Display for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of collectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collectors(u8);

impl Collectors {
    pub const NONE: Collectors = Collectors(0);

    const fn bit(c: Collector) -> u8 {
        1 << c as u8
    }

    pub fn all() -> Self {
        Collector::ALL.into_iter().collect()
    }

    pub const fn contains(self, c: Collector) -> bool {
        self.0 & Self::bit(c) != 0
    }

    pub fn insert(&mut self, c: Collector) {
        self.0 |= Self::bit(c);
    }

    pub fn remove(&mut self, c: Collector) {
        self.0 &= !Self::bit(c);
    }

    pub fn iter(self) -> impl Iterator<Item = Collector> {
        Collector::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Collector> for Collectors {
    fn from_iter<I: IntoIterator<Item = Collector>>(iter: I) -> Self {
        let mut s = Collectors::NONE;
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl fmt::Display for Collectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Collector::name).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// The flags. Of the two flags of a collector, the last one given wins.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kernel collectors")]
pub struct CollectorArgs {
    /// OOM kills per container, counted by the kernel when it picks the
    /// victim (apptheus_container_memory_oom_kills_total), and logged. [default: on]
    #[arg(long = "collector.oom", overrides_with = "no_oom")]
    oom: bool,
    /// Disable the oom collector.
    #[arg(long = "no-collector.oom", overrides_with = "oom")]
    no_oom: bool,

    /// Network bytes and packets per container (cgroup_skb programs on the
    /// cgroup2 root; needs cgroup2 mounted). [default: on]
    #[arg(long = "collector.network", overrides_with = "no_network")]
    network: bool,
    /// Disable the network collector.
    #[arg(long = "no-collector.network", overrides_with = "network")]
    no_network: bool,

    /// Bytes read from and written to regular files per container, page
    /// cache included (a program at every syscall exit of every task; x86_64).
    /// [default: off]
    #[arg(long = "collector.fsio", overrides_with = "no_fsio")]
    fsio: bool,
    /// Disable the fsio collector.
    #[arg(long = "no-collector.fsio", overrides_with = "fsio")]
    no_fsio: bool,

    /// Run-queue latency histogram per container (a program at every
    /// context switch). [default: off]
    #[arg(long = "collector.runqlat", overrides_with = "no_runqlat")]
    runqlat: bool,
    /// Disable the runqlat collector.
    #[arg(long = "no-collector.runqlat", overrides_with = "runqlat")]
    no_runqlat: bool,

    /// Starter runs the runqlat collector keeps a histogram for at once
    /// (192 bytes per run and CPU); those beyond are not observed, counted in
    /// apptheus_ebpf_map_full_total{map="runq"}.
    #[arg(long = "collector.runqlat.max-containers", value_name = "N",
        default_value_t = apptheus_common::MAX_RUNQ_CONTAINERS,
        value_parser = clap::value_parser!(u32).range(1..i64::from(apptheus_common::RUNQ_SLOT_UNRESOLVED)))]
    pub runqlat_max_containers: u32,
}

impl CollectorArgs {
    fn flags(&self, c: Collector) -> (bool, bool) {
        match c {
            Collector::Oom => (self.oom, self.no_oom),
            Collector::Network => (self.network, self.no_network),
            Collector::Fsio => (self.fsio, self.no_fsio),
            Collector::Runqlat => (self.runqlat, self.no_runqlat),
        }
    }

    /// Whether `c` is asked for.
    pub fn enabled(&self, c: Collector) -> bool {
        let (on, off) = self.flags(c);
        on || (c.default_enabled() && !off)
    }

    /// Every collector asked for.
    pub fn selected(&self) -> Collectors {
        Collector::ALL
            .into_iter()
            .filter(|c| self.enabled(*c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: CollectorArgs,
    }

    fn parse(args: &[&str]) -> Collectors {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .c
            .selected()
    }

    #[test]
    fn defaults_are_the_cheap_ones() {
        let s = parse(&[]);
        assert!(s.contains(Collector::Oom));
        assert!(s.contains(Collector::Network));
        assert!(!s.contains(Collector::Fsio));
        assert!(!s.contains(Collector::Runqlat));
        assert_eq!(s.to_string(), "oom,network");
        let c = Cli::try_parse_from(["x", "--collector.runqlat.max-containers=3"]).unwrap();
        assert_eq!(c.c.runqlat_max_containers, 3);
        assert!(Cli::try_parse_from(["x", "--collector.runqlat.max-containers=65535"]).is_err());
    }

    #[test]
    fn flags_switch_and_the_last_one_wins() {
        let s = parse(&["--collector.runqlat", "--no-collector.network"]);
        assert!(s.contains(Collector::Runqlat));
        assert!(!s.contains(Collector::Network));
        let s = parse(&["--no-collector.fsio", "--collector.fsio"]);
        assert!(s.contains(Collector::Fsio));
        let s = parse(&["--collector.fsio", "--no-collector.fsio"]);
        assert!(!s.contains(Collector::Fsio));
        let s = parse(&["--collector.runqlat", "--no-collector.runqlat"]);
        assert!(!s.contains(Collector::Runqlat));
        let s = parse(&["--no-collector.oom", "--no-collector.network"]);
        assert_eq!(s, Collectors::NONE);
        assert_eq!(s.to_string(), "none");
    }

    #[test]
    fn set_operations() {
        let mut s = Collectors::all();
        assert_eq!(s.iter().count(), 4);
        s.remove(Collector::Fsio);
        assert!(!s.contains(Collector::Fsio));
        assert_eq!(s.to_string(), "oom,network,runqlat");
    }
}
