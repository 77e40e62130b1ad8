//! The cgroup statistics sources' flags: `--source.<name>` and
//! `--no-source.<name>`, all on by default; of the flags of a source, the
//! last one given wins. A source that is off reads no file.
//!
//! Before the kernel collectors and the statistics sources had flags of
//! their own, both were switched with `--collector.<name>`: that spelling
//! of a source's flags (`--collector.cpu`, `--no-collector.memory`, ...)
//! still works, listed in the help as deprecated, and
//! [`SourceArgs::deprecated`] names each one given so that the agent can
//! warn once.
use clap::{Arg, ArgAction, ArgMatches, Command, parser::ValueSource};

use crate::model::stats_source::CgroupSource;

/// The flags of one source: on and off, new and deprecated spelling.
struct Flags {
    source: CgroupSource,
    /// What the source reads, for the help.
    help: &'static str,
    on: &'static str,
    off: &'static str,
    old_on: &'static str,
    old_off: &'static str,
}

const FLAGS: [Flags; 5] = [
    Flags {
        source: CgroupSource::Cpu,
        help: "CPU time and CFS throttling (cpu.stat; v1 cpuacct).",
        on: "source.cpu",
        off: "no-source.cpu",
        old_on: "collector.cpu",
        old_off: "no-collector.cpu",
    },
    Flags {
        source: CgroupSource::Memory,
        help: "Memory use, limit, OOM events and kills, major faults (memory.*).",
        on: "source.memory",
        off: "no-source.memory",
        old_on: "collector.memory",
        old_off: "no-collector.memory",
    },
    Flags {
        source: CgroupSource::Pids,
        help: "Processes and threads: pids.current, pids.max, and the threads of the \
               container's cgroups.",
        on: "source.pids",
        off: "no-source.pids",
        old_on: "collector.pids",
        old_off: "no-collector.pids",
    },
    Flags {
        source: CgroupSource::Blkio,
        help: "Block I/O per device (io.stat; v1 blkio throttle files).",
        on: "source.blkio",
        off: "no-source.blkio",
        old_on: "collector.blkio",
        old_off: "no-collector.blkio",
    },
    Flags {
        source: CgroupSource::Pressure,
        help: "Pressure stall information (cpu/memory/io.pressure).",
        on: "source.pressure",
        off: "no-source.pressure",
        old_on: "collector.pressure",
        old_off: "no-collector.pressure",
    },
];

/// The cgroup sources switched off, and the deprecated flags given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceArgs {
    off: Vec<CgroupSource>,
    deprecated: Vec<Deprecated>,
}

/// A flag given in its deprecated spelling, and the one to use instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecated {
    pub given: &'static str,
    pub instead: &'static str,
}

impl SourceArgs {
    /// Whether source `s` runs.
    pub fn enabled(&self, s: CgroupSource) -> bool {
        !self.off.contains(&s)
    }

    /// The deprecated flags given (`--collector.cpu` for `--source.cpu`),
    /// each once, in the order of [`CgroupSource::ALL`].
    pub fn deprecated(&self) -> &[Deprecated] {
        &self.deprecated
    }
}

impl clap::Args for SourceArgs {
    fn augment_args(cmd: Command) -> Command {
        let flag = |id: &'static str| Arg::new(id).long(id).action(ArgAction::SetTrue);
        let mut cmd = cmd.next_help_heading("cgroup statistics sources");
        for f in &FLAGS {
            let name = f.source.name();
            cmd = cmd
                .arg(flag(f.on).help(format!("{} [default: on]", f.help)))
                .arg(flag(f.off).help(format!("Disable the {name} source")))
                .arg(flag(f.old_on).help(format!("Deprecated: use --{}", f.on)))
                .arg(flag(f.old_off).help(format!("Deprecated: use --{}", f.off)));
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for SourceArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out = SourceArgs::default();
        out.update_from_arg_matches(m)?;
        Ok(out)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        // Where on the command line a flag was given, if it was.
        let given = |id: &str| {
            (m.value_source(id) == Some(ValueSource::CommandLine))
                .then(|| m.index_of(id))
                .flatten()
        };
        for f in &FLAGS {
            let last = [
                (f.on, true),
                (f.off, false),
                (f.old_on, true),
                (f.old_off, false),
            ]
            .into_iter()
            .filter_map(|(id, on)| given(id).map(|at| (at, on)))
            .max();
            match last {
                Some((_, true)) => self.off.retain(|s| *s != f.source),
                Some((_, false)) if self.enabled(f.source) => self.off.push(f.source),
                _ => {}
            }
            for (old, new) in [(f.old_on, f.on), (f.old_off, f.off)] {
                let d = Deprecated {
                    given: old,
                    instead: new,
                };
                if given(old).is_some() && !self.deprecated.contains(&d) {
                    self.deprecated.push(d);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: SourceArgs,
    }

    fn parse(args: &[&str]) -> SourceArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .s
    }

    fn on(args: &[&str]) -> Vec<&'static str> {
        let s = parse(args);
        CgroupSource::ALL
            .into_iter()
            .filter(|c| s.enabled(*c))
            .map(CgroupSource::name)
            .collect()
    }

    #[test]
    fn every_source_is_on_unless_switched_off_last() {
        assert_eq!(on(&[]), ["cpu", "memory", "pids", "blkio", "pressure"]);
        assert_eq!(
            on(&["--no-source.pressure", "--no-source.blkio"]),
            ["cpu", "memory", "pids"]
        );
        assert_eq!(
            on(&["--no-source.memory", "--source.memory"]),
            ["cpu", "memory", "pids", "blkio", "pressure"]
        );
        assert_eq!(
            on(&["--source.memory", "--no-source.memory"]),
            ["cpu", "pids", "blkio", "pressure"]
        );
        assert!(parse(&["--no-source.cpu"]).deprecated().is_empty());
        // A flag given twice is an error, as any other flag.
        assert!(Cli::try_parse_from(["x", "--no-source.cpu", "--no-source.cpu"]).is_err());
    }

    /// An admin's flags from before `--source.*`: they switch the same
    /// sources, the last flag given wins whatever its spelling, and each
    /// one given is reported once, with the flag to use instead.
    #[test]
    fn the_collector_spelling_of_a_source_still_switches_it() {
        let s = parse(&["--no-collector.pressure", "--no-collector.blkio"]);
        assert_eq!(
            on(&["--no-collector.pressure", "--no-collector.blkio"]),
            ["cpu", "memory", "pids"]
        );
        assert_eq!(
            s.deprecated(),
            [
                Deprecated {
                    given: "no-collector.blkio",
                    instead: "no-source.blkio"
                },
                Deprecated {
                    given: "no-collector.pressure",
                    instead: "no-source.pressure"
                },
            ]
        );
        assert_eq!(
            on(&["--no-collector.memory", "--source.memory"]),
            ["cpu", "memory", "pids", "blkio", "pressure"]
        );
        assert_eq!(
            on(&["--source.memory", "--no-collector.memory"]),
            ["cpu", "pids", "blkio", "pressure"]
        );
        let s = parse(&["--no-source.cpu", "--collector.cpu"]);
        assert!(s.enabled(CgroupSource::Cpu));
        assert_eq!(
            s.deprecated(),
            [Deprecated {
                given: "collector.cpu",
                instead: "source.cpu"
            }]
        );
    }

    /// The help shows the new spelling, and the old one as deprecated,
    /// naming the flag to use instead.
    #[test]
    fn the_help_names_the_source_flags() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("cgroup statistics sources:"), "{help}");
        for f in &FLAGS {
            assert!(help.contains(&format!("--{}", f.on)), "{help}");
            assert!(help.contains(&format!("--{}", f.off)), "{help}");
            for (old, new) in [(f.old_on, f.on), (f.old_off, f.off)] {
                let at = help
                    .find(&format!("--{old}\n"))
                    .unwrap_or_else(|| panic!("--{old} not in {help}"));
                let said = help[at..].lines().nth(1).unwrap_or_default();
                assert_eq!(said.trim(), format!("Deprecated: use --{new}"), "{help}");
            }
        }
    }
}
