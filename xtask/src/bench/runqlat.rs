//! What the run-queue latency collector costs, as a multiple of what any
//! program on its hook costs: stress-ng's context-switch benchmark (a pipe
//! ping-pong between two processes) inside a container, with the agent's
//! runqlat off, with it off and a `sched_switch` program that returns at
//! once attached beside it (examples/switch_baseline.rs), and with runqlat
//! on; the three alternated in each round, medians compared.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

use super::{Agent, Ctx, Report, Sizes};

/// Medians of context switches per CPU second, and what they make.
pub struct Runqlat {
    pub rounds: usize,
    pub off: f64,
    pub hook: f64,
    pub runqlat: f64,
}

impl Runqlat {
    /// Slowdown of `on` against runqlat off, percent.
    pub fn slowdown(&self, on: f64) -> f64 {
        (self.off / on - 1.0) * 100.0
    }

    /// runqlat's cost as a multiple of the empty hook's.
    pub fn multiple(&self) -> f64 {
        self.slowdown(self.runqlat) / self.slowdown(self.hook)
    }
}

/// The baseline program, attached until dropped.
struct Hook(Child);

impl Hook {
    fn attach(bin: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "attached" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not attach", bin.display());
        }
        Ok(Hook(child))
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill has no memory effects; the pid is our child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}

/// Context switches per CPU second (stress-ng's usr+sys column) of
/// `stress-ng --switch 2` in a container.
fn switch_rate(ctx: &Ctx, secs: u64) -> anyhow::Result<f64> {
    let out = Command::new(&ctx.starter)
        .args(["--no-namespaces", "--", "stress-ng", "--switch", "2", "-t"])
        .arg(secs.to_string())
        .arg("--metrics-brief")
        .output()
        .context("running stress-ng in a container")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[3] == "switch" && f[4].parse::<u64>().is_ok())
                .then(|| f[9].parse::<f64>().ok())
                .flatten()
        })
        .ok_or_else(|| anyhow!("no rate in stress-ng's output: {text}"))
}

fn median(v: &mut [f64]) -> f64 {
    super::percentile(v, 0.5)
}

pub fn runqlat(ctx: &Ctx, s: &Sizes, baseline: &Path, r: &mut Report) -> anyhow::Result<()> {
    if Command::new("stress-ng").arg("--version").output().is_err() {
        r.notes.push(
            "runqlat: not measured: stress-ng is missing (scripts/setup.sh --test installs it)"
                .into(),
        );
        return Ok(());
    }
    let (mut off, mut hook, mut on) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for round in 0..s.runqlat_rounds {
        // Rotated, so that none always runs first.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => {
                    let _agent = Agent::start(ctx, &["--no-collector.runqlat"])?;
                    off.push(switch_rate(ctx, s.runqlat_secs)?);
                }
                1 => {
                    let _agent = Agent::start(ctx, &["--no-collector.runqlat"])?;
                    let _hook = Hook::attach(baseline)?;
                    hook.push(switch_rate(ctx, s.runqlat_secs)?);
                }
                _ => {
                    let _agent = Agent::start(ctx, &["--collector.runqlat"])?;
                    on.push(switch_rate(ctx, s.runqlat_secs)?);
                }
            }
        }
    }
    println!(
        "bench: runqlat, {} rounds in {:.0} s",
        s.runqlat_rounds,
        started.elapsed().as_secs_f64()
    );
    r.runqlat = Some(Runqlat {
        rounds: s.runqlat_rounds,
        off: median(&mut off),
        hook: median(&mut hook),
        runqlat: median(&mut on),
    });
    Ok(())
}

/// The baseline example, built with the agent's profile.
pub fn build_baseline(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let mut build = Command::new("cargo");
    build.current_dir(root).args([
        "build",
        "--package",
        "apptheus",
        "--example",
        "switch_baseline",
    ]);
    if release {
        build.arg("--release");
    }
    if !build.status()?.success() {
        bail!("building examples/switch_baseline.rs failed");
    }
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("examples/switch_baseline"))
}
