//! The kernel collectors' flags (`--collector.<name>` /
//! `--no-collector.<name>`), turned into the set of collectors asked for.
use crate::model::collectors::{Collector, Collectors};

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
    use clap::Parser;

    use super::*;

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
}
