//! `cargo xtask bench`: what the agent costs and how well it measures, on
//! the real kernel, with the release build, beside cAdvisor (the peer), written
//! to BENCHMARKS.md. `--smoke` runs every benchmark with tiny sizes (part of
//! the test suite, so they don't rot) and writes target/bench-smoke.md
//! instead.
//!
//! Modules: `agent` (the agent as the benchmarks run it), `workloads`
//! (overhead, placement, accuracy), `scale` (many containers, sample cost,
//! beside cAdvisor: `peer`), `readers` (real and hostile readers), `runqlat`,
//! `meter` (what a process costs), `report` and `targets` (BENCHMARKS.md's
//! section).
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::bail;
use apptheus_testkit::{scrape::value, sim::STARTER_SIM};

use crate::build_ebpf::workspace_root;

mod agent;
mod floor;
mod meter;
mod peer;
mod readers;
mod report;
mod runqlat;
mod scale;
mod targets;
mod workloads;

use agent::{Agent, TrustDir};
use report::{Report, write_section};

#[derive(clap::Args)]
pub struct Options {
    /// Tiny sizes, results to target/bench-smoke.md (a check that the
    /// benchmarks still run, not a measurement).
    #[arg(long)]
    pub smoke: bool,
    /// Run only these benchmarks; the results go to
    /// target/bench-partial.md, not BENCHMARKS.md.
    #[arg(long, value_delimiter = ',', value_parser = ["overhead", "placement", "scale", "sample", "peer", "readers", "runqlat", "accuracy"])]
    pub only: Vec<String>,
    /// Containers started one after another by each placement variant
    /// [default: 300, 5 with --smoke]
    #[arg(long)]
    pub placements: Option<usize>,
    /// Container counts of the scale benchmark [default: 10,100,1000,10000;
    /// 5 with --smoke]
    #[arg(long, value_delimiter = ',')]
    pub scale: Vec<usize>,
    /// Use the agent and simulator already built (target/<profile>/)
    /// instead of running cargo: for `cargo xtask vm-bench`, whose VMs have
    /// no toolchain.
    #[arg(long)]
    pub prebuilt: bool,
}

struct Sizes {
    rounds: usize,
    forks: usize,
    execs: usize,
    threads: usize,
    placements: usize,
    scale: Vec<usize>,
    scrapes: usize,
    cpu_window: Duration,
    /// How often Prometheus would scrape.
    scrape_every: Duration,
    sample_containers: usize,
    sample_window: Duration,
    /// Passes over the cgroup files to measure the kernel's read path.
    floor_passes: usize,
    peer_sizes: Vec<usize>,
    peer_warmup: Duration,
    peer_window_defaults: Duration,
    peer_window_fixed: Duration,
    /// The readers benchmark: containers, the agent's flags, Prometheus's
    /// scrape interval, the window measured (longer where the interval
    /// changes: the time at the slow interval), a hostile client's time,
    /// and how often other reads may take a sample at that interval.
    readers_containers: usize,
    readers_agent_args: Vec<&'static str>,
    readers_period: Duration,
    readers_window: Duration,
    readers_slow: Duration,
    readers_hostile: Duration,
    other_every: Duration,
    runqlat_rounds: usize,
    runqlat_secs: u64,
    spin_secs: f64,
    alloc_mib: usize,
}

impl Sizes {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                rounds: 1,
                forks: 20,
                execs: 20,
                threads: 20,
                placements: 5,
                scale: vec![5],
                scrapes: 5,
                cpu_window: Duration::from_secs(2),
                scrape_every: Duration::from_secs(1),
                sample_containers: 5,
                sample_window: Duration::from_secs(2),
                floor_passes: 5,
                peer_sizes: vec![5],
                peer_warmup: Duration::from_secs(1),
                peer_window_defaults: Duration::from_secs(2),
                peer_window_fixed: Duration::from_secs(2),
                readers_containers: 5,
                readers_agent_args: vec!["--monitor.interval=100ms"],
                readers_period: Duration::from_secs(2),
                readers_window: Duration::from_secs(6),
                readers_slow: Duration::from_secs(24),
                readers_hostile: Duration::from_secs(4),
                other_every: Duration::from_secs(1),
                runqlat_rounds: 1,
                runqlat_secs: 1,
                spin_secs: 0.3,
                alloc_mib: 16,
            }
        } else {
            Self {
                rounds: 6,
                forks: 3000,
                execs: 2000,
                threads: 5000,
                placements: 300,
                scale: vec![10, 100, 1000, 10_000],
                scrapes: 300,
                cpu_window: Duration::from_secs(60),
                scrape_every: Duration::from_secs(15),
                sample_containers: 200,
                sample_window: Duration::from_secs(20),
                floor_passes: 50,
                peer_sizes: vec![100, 1000],
                peer_warmup: Duration::from_secs(30),
                peer_window_defaults: Duration::from_secs(60),
                peer_window_fixed: Duration::from_secs(30),
                readers_containers: 1000,
                readers_agent_args: Vec::new(),
                readers_period: Duration::from_secs(15),
                readers_window: Duration::from_secs(120),
                readers_slow: Duration::from_secs(300),
                readers_hostile: Duration::from_secs(60),
                other_every: Duration::from_secs(5),
                runqlat_rounds: 15,
                runqlat_secs: 3,
                spin_secs: 5.0,
                alloc_mib: 512,
            }
        }
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !apptheus_testkit::is_root() {
        let msg =
            "SKIPPED: cargo xtask bench needs root (it loads kernel programs and creates cgroups)";
        if apptheus_testkit::skips_forbidden() {
            bail!(
                "{msg}; {}=1 forbids skipping",
                apptheus_testkit::REQUIRE_ENV
            );
        }
        eprintln!("{msg}");
        return Ok(());
    }
    // Its agents would adopt another test's or benchmark's cgroups, and
    // theirs this one's: one at a time on a host.
    let _serial = apptheus_testkit::host::serial();
    let root = workspace_root();
    let profile = if o.smoke { "debug" } else { "release" };
    if !o.prebuilt {
        let mut build = Command::new("cargo");
        build
            .current_dir(&root)
            .args([
                "build",
                "--package",
                "apptheus",
                "--package",
                "apptheus-testkit",
            ])
            .args(["--bin", "apptheus", "--bin", STARTER_SIM]);
        if !o.smoke {
            build.arg("--release");
        }
        if !build.status()?.success() {
            bail!("building apptheus failed");
        }
    }
    let bin = root.join("target").join(profile);
    let mut sizes = Sizes::new(o.smoke);
    if let Some(n) = o.placements {
        sizes.placements = n.max(1);
    }
    if !o.scale.is_empty() {
        sizes.scale.clone_from(&o.scale);
    }
    let trust = TrustDir::new(&bin.join(STARTER_SIM))?;
    let ctx = Ctx {
        agent: bin.join("apptheus"),
        starter: trust.starter.clone(),
        launcher: trust.launcher.clone(),
        sleeper: trust.sleeper.clone(),
    };

    let mut report = Report {
        scrape_every_s: sizes.scrape_every.as_secs(),
        cpu_window_s: sizes.cpu_window.as_secs(),
        scrapes: sizes.scrapes,
        peer_warmup_s: sizes.peer_warmup.as_secs(),
        load_before: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        ..Report::default()
    };
    let wanted = |name: &str| o.only.is_empty() || o.only.iter().any(|n| n == name);
    if wanted("overhead") {
        workloads::overhead(&ctx, &sizes, &mut report)?;
    }
    if wanted("placement") {
        workloads::placement(&ctx, &sizes, &mut report)?;
    }
    if wanted("scale") {
        scale::scale(&ctx, &sizes, &mut report)?;
    }
    if wanted("sample") {
        scale::sample_cost(&ctx, &sizes, &mut report)?;
    }
    if wanted("peer") {
        scale::peer(&ctx, &sizes, &mut report)?;
    }
    if wanted("readers") {
        readers::readers(&ctx, &sizes, &mut report)?;
    }
    if wanted("runqlat") {
        if o.prebuilt {
            report.notes.push(
                "runqlat: not measured with --prebuilt (needs examples/switch_baseline)".into(),
            );
        } else {
            let baseline = runqlat::build_baseline(&root, !o.smoke)?;
            runqlat::runqlat(&ctx, &sizes, &baseline, &mut report)?;
        }
    }
    if wanted("accuracy") {
        workloads::accuracy(&ctx, &sizes, &mut report)?;
    }

    let text = report.markdown(o.smoke, profile);
    if !o.only.is_empty() {
        let out = root.join("target/bench-partial.md");
        std::fs::write(&out, &text)?;
        println!("{text}\npartial run written to {}", out.display());
    } else if o.smoke {
        let out = root.join("target/bench-smoke.md");
        std::fs::write(&out, &text)?;
        println!(
            "{text}\nbench smoke run: every benchmark ran ({})",
            out.display()
        );
    } else {
        let out = root.join("BENCHMARKS.md");
        write_section(&out, &text)?;
        println!("{text}\nwritten to {}", out.display());
    }
    Ok(())
}

struct Ctx {
    agent: PathBuf,
    starter: PathBuf,
    /// Stands in for Apptainer's command-line tool (`<prefix>/bin/apptainer`,
    /// the simulator's `launch`): execs the starter after a pause.
    launcher: PathBuf,
    /// A trusted copy of /bin/sleep: each exec is a container of one
    /// process (the scale benchmark's containers).
    sleeper: PathBuf,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}
