//! The command line. Flag names follow the original (Go) Apptheus so that
//! Apptainer's admin guide and existing unit files keep working.
use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Parser, ValueEnum};

use crate::duration::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EbpfMode {
    Auto,
    True,
    False,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "apptheus",
    version = crate::build_info::VERSION_LONG,
    about = "Per-container metrics for Apptainer on HPC nodes, attributed in the kernel, for Prometheus",
    long_about = None,
)]
pub struct Args {
    /// Trusted starter binaries, separated by ';' (as in Apptainer's admin
    /// guide) and/or given several times; each must exist. Trusted by the
    /// identity of the file (device and inode), never by path. Default: the
    /// starter and starter-suid of Apptainer and SingularityCE under
    /// /usr/libexec, /usr/local/libexec and /usr/lib/<multiarch> (Debian,
    /// Ubuntu), those that exist, looked for again every few seconds.
    #[arg(long = "trust.path", value_name = "PATHS", action = ArgAction::Append)]
    pub trust_path: Vec<String>,

    /// Apptainer's command-line tools, separated by ';' and/or given several
    /// times: their exec announces a starter (see --cgroup.prewarm), and a
    /// starter they run themselves is an instance or a run of their own.
    /// Trusted by file identity too, but grant nothing. Default:
    /// <prefix>/bin/apptainer and <prefix>/bin/singularity for each starter
    /// under <prefix>/libexec or <prefix>/lib/<multiarch>, those that exist.
    #[arg(long = "trust.launcher", value_name = "PATHS", action = ArgAction::Append)]
    pub trust_launcher: Vec<String>,

    /// Unix socket that Apptainer's starter connects to with `allow monitoring = yes`.
    #[arg(
        long = "socket.path",
        value_name = "PATH",
        default_value = "/run/apptheus/gateway.sock"
    )]
    pub socket_path: PathBuf,

    /// The most time a sample of the containers' statistics served to a
    /// scheduled scrape or a push may be old (e.g. 500ms, 0.5s, 1m).
    /// Samples are taken for the reads that come (just before each read a
    /// scraper's learned schedule predicts, or during a read that finds
    /// none recent enough), not on a clock; other reads are served samples
    /// up to ten intervals old and take at most one sample per ten
    /// intervals; a container's final sample is taken when it ends. A
    /// sample that takes longer than half the interval is served up to
    /// twice its own duration old.
    #[arg(
        long = "monitor.interval",
        alias = "monitor.inverval",
        value_name = "DURATION",
        default_value = "0.5s",
        value_parser = parse_interval,
    )]
    pub monitor_interval: Duration,

    /// Sample only for the reads that come (true), or every
    /// --monitor.interval whether anybody reads or not (false).
    #[arg(long = "monitor.on-demand", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub on_demand: bool,

    /// How long an ended container's series stay, so that scrapes still see its final values.
    #[arg(
        long = "monitor.grace-period",
        value_name = "DURATION",
        default_value = "35s",
        value_parser = parse_duration,
    )]
    pub grace_period: Duration,

    /// Address to serve HTTP on (host:port, :port for every address). May be repeated.
    #[arg(long = "web.listen-address", value_name = "ADDR", action = ArgAction::Append, default_value = ":9091")]
    pub listen_address: Vec<String>,

    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// TLS and basic-auth configuration, in the Prometheus exporter-toolkit format.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Attribute containers with the kernel programs: auto (use them, or fall
    /// back to the monitoring socket alone with a warning if the kernel refuses
    /// them), true (refuse to start without them), false (socket alone).
    #[arg(long = "ebpf", value_name = "MODE", value_enum, default_value = "auto")]
    pub ebpf: EbpfMode,

    /// Export the kernel's run-time statistics of apptheus' programs
    /// (apptheus_ebpf_program_run_seconds_total, apptheus_ebpf_program_runs_total).
    /// The kernel then times every program run, which costs a little.
    #[arg(long = "ebpf.stats", value_name = "BOOL", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ebpf_stats: bool,

    /// Tasks (threads) of containers the kernel programs follow at once,
    /// node-wide (about 100 bytes of kernel memory each). A task beyond is
    /// not followed: counted in apptheus_ebpf_map_full_total{map="tasks"}.
    #[arg(long = "ebpf.max-tasks", value_name = "N", default_value_t = apptheus_common::MAX_TASKS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub ebpf_max_tasks: u32,

    /// Starter runs the kernel programs follow at once, node-wide (about
    /// 250 bytes of kernel memory each). A run beyond is not attributed:
    /// counted in apptheus_ebpf_map_full_total{map="containers"}.
    #[arg(long = "ebpf.max-containers", value_name = "N", default_value_t = apptheus_common::MAX_CONTAINERS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub ebpf_max_containers: u32,

    /// Per user: new starter runs per second let in, sustained (a run
    /// beyond the rate and the burst is not followed, counted in
    /// apptheus_starter_runs_refused_total{reason="rate"}).
    #[arg(long = "limit.user-starts-per-second", value_name = "RATE", default_value_t = crate::model::caps::Limits::default().starts_per_second,
        value_parser = parse_rate)]
    pub limit_starts_per_second: f64,

    /// Per user: new starter runs let in at once above the rate.
    #[arg(long = "limit.user-start-burst", value_name = "N", default_value_t = crate::model::caps::Limits::default().start_burst,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub limit_start_burst: u32,

    /// Per user: live containers (a run beyond is not followed, counted in
    /// apptheus_starter_runs_refused_total{reason="live"}).
    #[arg(long = "limit.user-containers", value_name = "N", default_value_t = crate::model::caps::Limits::default().live,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub limit_containers: u32,

    /// Only log messages at this level or above.
    #[arg(
        long = "log.level",
        value_name = "LEVEL",
        value_enum,
        default_value = "info"
    )]
    pub log_level: LogLevel,

    /// Log line format.
    #[arg(
        long = "log.format",
        value_name = "FORMAT",
        value_enum,
        default_value = "logfmt"
    )]
    pub log_format: LogFormat,

    /// On cgroup v2, once a container's tasks have left its starter's cgroup
    /// and no other process is left there, enable the memory, io, pids and
    /// cpu controllers in that cgroup's cgroup.subtree_control, so that the
    /// container's own cgroup has those statistics (limits on the starter's
    /// cgroup keep holding; apptheus disables them again when the cgroup has
    /// no child left). false: never write a cgroup.subtree_control.
    #[arg(long = "cgroup.enable-controllers", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cgroup_enable_controllers: bool,

    /// When a launcher (--trust.launcher) is executed, take the kernel's
    /// cgroup migration lock every 2 ms until its starter runs (at most 1 s),
    /// so that placing the container does not first wait for an RCU grace
    /// period (10-30 ms on an idle node). Forks and exits on the node are a
    /// little slower inside those windows. false: never.
    #[arg(long = "cgroup.prewarm", value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cgroup_prewarm: bool,

    /// cgroup files kept open between samples and re-read in place (each
    /// costs a descriptor and about 4.7 KiB of kernel memory; a container's
    /// cgroups have about 15 on a hybrid host, 12 on cgroup v2). Files
    /// beyond are opened and closed at every sample, which costs several
    /// times the CPU. Default: 16384, fewer if the descriptor limit needs.
    #[arg(long = "cgroup.open-files", value_name = "N")]
    pub cgroup_open_files: Option<usize>,

    /// procfs mount point.
    #[arg(long = "path.procfs", value_name = "PATH", default_value = "/proc")]
    pub procfs: PathBuf,

    /// sysfs mount point.
    #[arg(long = "path.sysfs", value_name = "PATH", default_value = "/sys")]
    pub sysfs: PathBuf,

    #[command(flatten)]
    pub push: crate::push::PushArgs,

    #[command(flatten)]
    pub collectors: crate::model::collectors::CollectorArgs,

    #[command(flatten)]
    pub sources: crate::model::source::SourceArgs,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "'{s}' is too short: the interval must be at least 10ms"
        ));
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate: give a positive number, e.g. 500 or 0.5"
        )),
    }
}

fn parse_telemetry_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.len() < 2 {
        return Err(format!(
            "'{s}' must start with '/' and not be '/' alone (e.g. /metrics)"
        ));
    }
    Ok(s.to_string())
}

/// Paths given as `a;b` and/or repeated, blanks dropped.
fn split_paths(given: &[String]) -> Vec<PathBuf> {
    given
        .iter()
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

impl Args {
    /// The per-user caps (`--limit.*`).
    pub fn limits(&self) -> crate::model::caps::Limits {
        crate::model::caps::Limits {
            starts_per_second: self.limit_starts_per_second,
            start_burst: self.limit_start_burst,
            live: self.limit_containers,
        }
    }

    /// The trusted paths as given: every `--trust.path`, split on ';',
    /// blanks dropped. Empty when none was given.
    pub fn trusted_paths(&self) -> Vec<PathBuf> {
        split_paths(&self.trust_path)
    }

    /// The launchers as given (`--trust.launcher`), like [`Self::trusted_paths`].
    pub fn launcher_paths(&self) -> Vec<PathBuf> {
        split_paths(&self.trust_launcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("apptheus").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.socket_path, PathBuf::from("/run/apptheus/gateway.sock"));
        assert_eq!(a.monitor_interval, Duration::from_millis(500));
        assert_eq!(a.listen_address, vec![":9091".to_string()]);
        assert_eq!(a.telemetry_path, "/metrics");
        assert_eq!(a.ebpf, EbpfMode::Auto);
        assert_eq!(parse(&["--ebpf=false"]).unwrap().ebpf, EbpfMode::False);
        assert!(a.trusted_paths().is_empty());
        assert!(a.launcher_paths().is_empty());
        assert!(a.cgroup_prewarm);
        assert!(!parse(&["--cgroup.prewarm=false"]).unwrap().cgroup_prewarm);
        assert!(a.on_demand);
        assert!(!parse(&["--monitor.on-demand=false"]).unwrap().on_demand);
        // Pushes every 15 s unless told, whatever --monitor.interval is.
        let a2 = parse(&["--monitor.interval=2s"]).unwrap();
        assert_eq!(a2.push.interval, Duration::from_secs(15));
        assert_eq!(a.cgroup_open_files, None);
        assert_eq!(a.ebpf_max_tasks, 262_144);
        assert_eq!(a.ebpf_max_containers, 16_384);
        let small = parse(&["--ebpf.max-tasks=8", "--ebpf.max-containers=2"]).unwrap();
        assert_eq!((small.ebpf_max_tasks, small.ebpf_max_containers), (8, 2));
        let e = parse(&["--ebpf.max-tasks=0"]).unwrap_err().to_string();
        assert!(e.contains("--ebpf.max-tasks"), "{e}");
        assert_eq!(a.limits(), crate::model::caps::Limits::default());
        let l = parse(&[
            "--limit.user-starts-per-second=0.5",
            "--limit.user-start-burst=3",
            "--limit.user-containers=2",
        ])
        .unwrap()
        .limits();
        assert_eq!((l.starts_per_second, l.start_burst, l.live), (0.5, 3, 2));
        for bad in ["0", "-1", "NaN", "inf", "fast"] {
            let e = parse(&[&format!("--limit.user-starts-per-second={bad}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--limit.user-starts-per-second"), "{bad}: {e}");
        }
    }

    #[test]
    fn trust_path_splits_on_semicolons_and_repeats() {
        let a = parse(&[
            "--trust.path=/a/starter;/b/starter-suid;",
            "--trust.path",
            "/c/starter",
        ])
        .unwrap();
        assert_eq!(
            a.trusted_paths(),
            vec![
                PathBuf::from("/a/starter"),
                PathBuf::from("/b/starter-suid"),
                PathBuf::from("/c/starter")
            ]
        );
    }

    #[test]
    fn misspelt_interval_of_the_original_is_accepted() {
        let a = parse(&["--monitor.inverval=2s"]).unwrap();
        assert_eq!(a.monitor_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_are_errors_naming_the_flag() {
        let e = parse(&["--monitor.interval=fast"]).unwrap_err().to_string();
        assert!(e.contains("--monitor.interval"), "{e}");
        let e = parse(&["--monitor.interval=1ms"]).unwrap_err().to_string();
        assert!(e.contains("at least 10ms"), "{e}");
        let e = parse(&["--web.telemetry-path=metrics"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with '/'"), "{e}");
        let e = parse(&["--log.format=xml"]).unwrap_err().to_string();
        assert!(e.contains("logfmt"), "{e}");
    }

    #[test]
    fn listen_address_repeats() {
        let a = parse(&[
            "--web.listen-address=127.0.0.1:1",
            "--web.listen-address=:2",
        ])
        .unwrap();
        assert_eq!(a.listen_address, vec!["127.0.0.1:1", ":2"]);
    }
}
