//! What the agent costs with many containers: alone at its defaults
//! (scale), per container and source at a fixed sampling (sample cost),
//! and beside cAdvisor on the same containers (peer).
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    Agent, Ctx, Report, Sizes, meter,
    peer::{self, Cadvisor},
    percentile, value,
};

/// N real containers: processes of a trusted copy of /bin/sleep, each a
/// container with its own cgroups once an agent placed it. Killed on drop.
pub struct Containers {
    children: Vec<Child>,
}

/// Kills the containers, then lets an agent start and stop: one started
/// after they ended removes their cgroups (when no agent ran as they
/// ended, nothing else would).
pub fn clean_up(ctx: &Ctx, containers: Containers) {
    drop(containers);
    let _ = Agent::start(ctx, &[]);
}

impl Containers {
    /// Starts them; an agent must be running, to see them start.
    pub fn start(ctx: &Ctx, n: usize) -> anyhow::Result<Self> {
        let mut c = Containers {
            children: Vec::with_capacity(n),
        };
        for i in 0..n {
            c.children.push(
                Command::new(&ctx.sleeper)
                    .arg("3600")
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting container {i}"))?,
            );
        }
        Ok(c)
    }

    /// Starts them with an agent of their own, which places them and
    /// stops: the agents started next adopt them.
    pub fn placed(ctx: &Ctx, n: usize) -> anyhow::Result<Self> {
        let agent = Agent::start(ctx, &[])?;
        let c = Self::start(ctx, n)?;
        tracked(&agent, n)?;
        drop(agent);
        Ok(c)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// Waits until `agent` tracks `n` running containers: from its log (its
/// own count would include those that ended within the grace period, and
/// scraping it at every look would make it sample all along).
pub fn tracked(agent: &Agent, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 10);
    loop {
        let running = agent.log.lock().map_or(0, |l| {
            let count = |m: &str| l.iter().filter(|l| l.contains(m)).count();
            count("message=\"container started\"")
                .saturating_sub(count("message=\"container exited\""))
        });
        // Containers of others (another run's, adopted at start) may be
        // there too.
        if running >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} containers were not all tracked in time ({running} are)");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One scale row.
pub struct ScaleRow {
    pub n: usize,
    /// Scrapes as Prometheus makes them (OpenMetrics, gzip), back to back.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Plain text scrapes (no Accept header, no gzip), back to back.
    pub plain_p50_ms: f64,
    pub plain_p99_ms: f64,
    /// The slowest of the scrapes on schedule, and those that waited for
    /// a sample.
    pub scheduled_max_ms: f64,
    pub scheduled_waited: f64,
    pub rss_mib: f64,
    pub cpu_pct: f64,
    pub samples: f64,
    pub open_files: f64,
    /// Slab memory the agent held (machine's slab with it running less
    /// after it stopped), MiB.
    pub slab_mib: f64,
}

/// The agent alone at its defaults, scraped every 15 s as Prometheus
/// scrapes: CPU and memory; then scrape latency over back-to-back
/// scrapes. A size the machine cannot take is recorded, not fatal.
pub fn scale(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let agent = Agent::start(ctx, &[])?;
    std::thread::sleep(Duration::from_secs(2));
    r.idle_rss_mb = agent.meter.rss_mib();
    drop(agent);
    for &n in &s.scale {
        match scale_one(ctx, s, n) {
            Ok(row) => r.scale.push(row),
            Err(e) => r.notes.push(format!("{n} containers: not measured: {e:#}")),
        }
    }
    Ok(())
}

/// Scheduled scrapes that waited for a sample, as a scrape's body says.
fn scheduled_waits(m: &str) -> f64 {
    value(
        m,
        "apptheus_reads_total",
        &[("reader", "scheduled"), ("answer", "waited")],
    )
    .unwrap_or(0.0)
}

/// Scrapes as Prometheus makes them, every `every` from now on a fixed
/// clock, `n` of them: their latencies (ms), and the last body.
fn on_schedule(agent: &Agent, every: Duration, n: usize) -> anyhow::Result<(Vec<f64>, String)> {
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut last = String::new();
    for k in 0..n {
        let at = t0 + every * u32::try_from(k)?;
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (took, body) = agent.scrape()?;
        lat.push(took.as_secs_f64() * 1e3);
        last = body;
    }
    Ok((lat, last))
}

fn scale_one(ctx: &Ctx, s: &Sizes, n: usize) -> anyhow::Result<ScaleRow> {
    let agent = Agent::start(ctx, &[])?;
    let started = Instant::now();
    let containers = Containers::start(ctx, n)?;
    tracked(&agent, n)?;
    println!(
        "bench: {n} containers tracked {:.1} s after the first start",
        started.elapsed().as_secs_f64()
    );
    // Two scrapes for the agent to learn the schedule, then a window
    // scraped every 15 s as Prometheus scrapes: CPU, samples, waits.
    let (_, m0) = on_schedule(&agent, s.scrape_every, 2)?;
    std::thread::sleep(s.scrape_every.saturating_sub(Duration::from_millis(10)));
    let cpu0 = agent.meter.cpu_seconds();
    let t0 = Instant::now();
    let scrapes = (s.cpu_window.as_secs_f64() / s.scrape_every.as_secs_f64()).round() as usize;
    let (sched, m) = on_schedule(&agent, s.scrape_every, scrapes.max(1))?;
    let cpu = agent.meter.cpu_seconds() - cpu0;
    let window = t0.elapsed().as_secs_f64();
    let samples = samples(&m) - samples(&m0);
    let scheduled_waited = scheduled_waits(&m) - scheduled_waits(&m0);
    let open_files = value(&m, "apptheus_cgroup_open_files", &[]).unwrap_or(0.0);
    let rss = agent.meter.rss_mib();
    let mut lat = Vec::with_capacity(s.scrapes);
    for _ in 0..s.scrapes {
        lat.push(agent.scrape()?.0.as_secs_f64() * 1e3);
    }
    let mut plain = Vec::with_capacity(s.scrapes / 3);
    for _ in 0..(s.scrapes / 3).max(1) {
        let t = Instant::now();
        agent.metrics()?;
        plain.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let slab_with = meter::slab_mib();
    drop(agent);
    std::thread::sleep(Duration::from_millis(500));
    let slab_mib = slab_with - meter::slab_mib();
    clean_up(ctx, containers);
    Ok(ScaleRow {
        n,
        p50_ms: percentile(&mut lat, 0.5),
        p99_ms: percentile(&mut lat, 0.99),
        plain_p50_ms: percentile(&mut plain, 0.5),
        plain_p99_ms: percentile(&mut plain, 0.99),
        scheduled_max_ms: sched.iter().copied().fold(0.0, f64::max),
        scheduled_waited,
        rss_mib: rss,
        cpu_pct: cpu / window * 100.0,
        samples,
        open_files,
        slab_mib,
    })
}

/// Samples taken, every trigger together.
fn samples(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apptheus_samples_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// One sample-cost row: a container's sample, by source.
pub struct SampleCost {
    pub label: String,
    pub n: usize,
    pub open_files: f64,
    /// The agent's CPU per container and sample, all included.
    pub cpu_us: f64,
    /// Each source's time per container and sample (wall time).
    pub sources: Vec<(String, f64)>,
}

/// A container's sample on this host: the agent sampling every 250 ms on
/// a clock, its CPU time per container and sample, and each source's part;
/// with the cgroup files kept open (the default) and reopened at every
/// sample.
pub fn sample_cost(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let n = s.sample_containers;
    let containers = Containers::placed(ctx, n)?;
    for (label, extra) in [
        ("files kept open (default)", None),
        (
            "files opened at every sample",
            Some("--cgroup.open-files=0"),
        ),
    ] {
        let mut args = vec!["--monitor.on-demand=false", "--monitor.interval=250ms"];
        args.extend(extra);
        let agent = Agent::start(ctx, &args)?;
        tracked(&agent, n)?;
        std::thread::sleep(Duration::from_secs(2));
        let m0 = agent.metrics()?;
        let cpu0 = agent.meter.cpu_seconds();
        let t0 = Instant::now();
        let mut sources: Vec<(String, f64)> = Vec::new();
        let mut looks: f64 = 0.0;
        while t0.elapsed() < s.sample_window {
            // Reads cost the agent an encoding each: a few, spread out.
            std::thread::sleep(s.sample_window / 4);
            let m = agent.metrics()?;
            looks += 1.0;
            for l in m
                .lines()
                .filter(|l| l.starts_with("apptheus_source_duration_seconds{"))
            {
                let Some(name) = l
                    .split("source=\"")
                    .nth(1)
                    .and_then(|x| x.split('"').next())
                else {
                    continue;
                };
                let v: f64 = l
                    .rsplit_once(' ')
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0.0);
                match sources.iter_mut().find(|(s, _)| s == name) {
                    Some((_, t)) => *t += v,
                    None => sources.push((name.to_string(), v)),
                }
            }
        }
        let cpu = agent.meter.cpu_seconds() - cpu0;
        let m1 = agent.metrics()?;
        let rounds = samples(&m1) - samples(&m0);
        if rounds < 1.0 {
            bail!("{label}: no sample was taken");
        }
        let per = |secs: f64| secs / (n as f64) * 1e6;
        // The floor: the files this agent keeps open, read by the kernel
        // alone (measured once the agent is gone).
        let floor_files = if extra.is_none() {
            super::floor::open_cgroup_files(agent.pid()).ok()
        } else {
            None
        };
        drop(agent);
        if let Some(files) = floor_files {
            match super::floor::measure(&files, n, s.floor_passes) {
                Ok(f) => r.floor = Some(f),
                Err(e) => r
                    .notes
                    .push(format!("the kernel's read path: not measured: {e:#}")),
            }
        }
        r.sample_cost.push(SampleCost {
            label: label.to_string(),
            n,
            open_files: value(&m1, "apptheus_cgroup_open_files", &[]).unwrap_or(0.0),
            cpu_us: per(cpu / rounds),
            sources: sources
                .into_iter()
                .map(|(name, t)| (name, per(t / looks.max(1.0))))
                .collect(),
        });
    }
    clean_up(ctx, containers);
    Ok(())
}

/// One side-by-side row.
pub struct PeerRow {
    pub n: usize,
    pub mode: &'static str,
    pub window_s: f64,
    pub agent_cpu_pct: f64,
    pub agent_rss_mib: f64,
    pub agent_scrape_ms: f64,
    pub cadvisor_cpu_pct: f64,
    pub cadvisor_rss_mib: f64,
    pub cadvisor_scrape_ms: f64,
    pub cadvisor_cgroups: usize,
}

/// Both at their defaults, then both sampling every second; both scraped
/// every 15 s, side by side, on the same containers.
pub fn peer(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let bin = match peer::binary(&super::workspace_root()) {
        Ok(b) => b,
        Err(e) => {
            r.notes.push(format!(
                "cAdvisor could not run, so there is no side-by-side comparison: {e:#}"
            ));
            return Ok(());
        }
    };
    type Mode = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        bool,
    );
    let modes: [Mode; 2] = [
        ("both at their defaults", &[], &[], true),
        (
            "both sampling every 1 s",
            &["--monitor.on-demand=false", "--monitor.interval=1s"],
            &[
                "-housekeeping_interval=1s",
                "-allow_dynamic_housekeeping=false",
            ],
            false,
        ),
    ];
    for &n in &s.peer_sizes {
        let containers = Containers::placed(ctx, n)?;
        for (mode, agent_args, cadvisor_args, defaults) in modes {
            match peer_one(ctx, s, &bin, n, agent_args, cadvisor_args, defaults) {
                Ok(mut row) => {
                    row.mode = mode;
                    println!(
                        "bench: peer {n} {mode}: agent {:.2} %, cAdvisor {:.2} %",
                        row.agent_cpu_pct, row.cadvisor_cpu_pct
                    );
                    r.peer.push(row);
                }
                Err(e) => r.notes.push(format!(
                    "side by side, {n} containers, {mode}: not measured: {e:#}"
                )),
            }
        }
        clean_up(ctx, containers);
    }
    Ok(())
}

fn peer_one(
    ctx: &Ctx,
    s: &Sizes,
    bin: &std::path::Path,
    n: usize,
    agent_args: &[&str],
    cadvisor_args: &[&str],
    defaults: bool,
) -> anyhow::Result<PeerRow> {
    let agent = Agent::start(ctx, agent_args)?;
    tracked(&agent, n)?;
    let cad = Cadvisor::start(bin, cadvisor_args)?;
    // cAdvisor finds the cgroups by itself: wait until it reports them all.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (seen, _) = cad.scrape()?;
        if seen >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("cAdvisor reported {seen} cgroups, fewer than the {n} containers");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // The warm-up: scraped as Prometheus scrapes, so that the agent learns
    // the schedule before the window.
    let warm = (s.peer_warmup.as_secs_f64() / s.scrape_every.as_secs_f64()).round() as usize;
    on_schedule(&agent, s.scrape_every, warm.max(1))?;
    std::thread::sleep(s.scrape_every.saturating_sub(Duration::from_millis(10)));
    let window = if defaults {
        s.peer_window_defaults
    } else {
        s.peer_window_fixed
    };
    let (a0, c0) = (agent.meter.cpu_seconds(), cad.meter.cpu_seconds());
    let t0 = Instant::now();
    let mut agent_scrapes = Vec::new();
    let mut cad_scrapes = Vec::new();
    let mut cgroups = 0;
    let mut k = 0;
    while t0.elapsed() < window {
        let (took, _) = agent.scrape()?;
        agent_scrapes.push(took.as_secs_f64() * 1e3);
        let (seen, took) = cad.scrape()?;
        cgroups = seen;
        cad_scrapes.push(took.as_secs_f64() * 1e3);
        // On a fixed clock, as Prometheus scrapes.
        k += 1;
        let next = t0 + s.scrape_every * k;
        let until = next.min(t0 + window);
        if let Some(d) = until.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (a1, c1) = (agent.meter.cpu_seconds(), cad.meter.cpu_seconds());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(PeerRow {
        n,
        mode: "",
        window_s: secs,
        agent_cpu_pct: (a1 - a0) / secs * 100.0,
        agent_rss_mib: agent.meter.rss_mib(),
        agent_scrape_ms: mean(&agent_scrapes),
        cadvisor_cpu_pct: (c1 - c0) / secs * 100.0,
        cadvisor_rss_mib: cad.meter.rss_mib(),
        cadvisor_scrape_ms: mean(&cad_scrapes),
        cadvisor_cgroups: cgroups,
    })
}
