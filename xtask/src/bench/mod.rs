//! `cargo xtask bench`: what the agent costs and how well it measures, on
//! the real kernel, with the release build, beside cAdvisor (the peer), written
//! to BENCHMARKS.md. `--smoke` runs every benchmark with tiny sizes (part of
//! the test suite, so they don't rot) and writes target/bench-smoke.md
//! instead.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::build_ebpf::workspace_root;

mod meter;
mod peer;
mod runqlat;
mod scale;

use meter::Meter;

#[derive(clap::Args)]
pub struct Options {
    /// Tiny sizes, results to target/bench-smoke.md (a check that the
    /// benchmarks still run, not a measurement).
    #[arg(long)]
    pub smoke: bool,
    /// Run only these benchmarks; the results go to
    /// target/bench-partial.md, not BENCHMARKS.md.
    #[arg(long, value_delimiter = ',', value_parser = ["overhead", "placement", "scale", "sample", "peer", "runqlat", "accuracy"])]
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
    peer_sizes: Vec<usize>,
    peer_warmup: Duration,
    peer_window_defaults: Duration,
    peer_window_fixed: Duration,
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
                peer_sizes: vec![5],
                peer_warmup: Duration::from_secs(1),
                peer_window_defaults: Duration::from_secs(2),
                peer_window_fixed: Duration::from_secs(2),
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
                peer_sizes: vec![100, 1000],
                peer_warmup: Duration::from_secs(30),
                peer_window_defaults: Duration::from_secs(60),
                peer_window_fixed: Duration::from_secs(30),
                runqlat_rounds: 15,
                runqlat_secs: 3,
                spin_secs: 5.0,
                alloc_mib: 512,
            }
        }
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    if !is_root() {
        let msg =
            "SKIPPED: cargo xtask bench needs root (it loads kernel programs and creates cgroups)";
        if std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            bail!("{msg}; APPTHEUS_REQUIRE_PRIVILEGED=1 forbids skipping");
        }
        eprintln!("{msg}");
        return Ok(());
    }
    let root = workspace_root();
    let profile = if o.smoke { "debug" } else { "release" };
    if !o.prebuilt {
        let mut build = Command::new("cargo");
        build
            .current_dir(&root)
            .args(["build", "--package", "apptheus", "--bins"]);
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
    let trust = TrustDir::new(&bin.join("apptheus-starter-sim"))?;
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
        overhead(&ctx, &sizes, &mut report)?;
    }
    if wanted("placement") {
        placement(&ctx, &sizes, &mut report)?;
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
        accuracy(&ctx, &sizes, &mut report)?;
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
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

/// A root-owned Apptainer-like prefix: copies of the starter simulator as
/// `libexec/apptainer/bin/starter` and as the launcher `bin/apptainer`
/// (which the agent finds from the starter's path).
struct TrustDir {
    dir: PathBuf,
    starter: PathBuf,
    launcher: PathBuf,
    sleeper: PathBuf,
}

impl TrustDir {
    fn new(sim: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("apptheus-bench-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("libexec/apptainer/bin"))?;
        std::fs::create_dir_all(dir.join("bin"))?;
        let starter = dir.join("libexec/apptainer/bin/starter");
        std::fs::copy(sim, &starter).with_context(|| format!("copying {}", sim.display()))?;
        let launcher = dir.join("bin/apptainer");
        std::fs::copy(sim, &launcher).with_context(|| format!("copying {}", sim.display()))?;
        let sleeper = dir.join("sleeper");
        std::fs::copy("/bin/sleep", &sleeper).context("copying /bin/sleep")?;
        Ok(Self {
            dir,
            starter,
            launcher,
            sleeper,
        })
    }
}

impl Drop for TrustDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Agent {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
    meter: Meter,
    _sock: tempdir::Dir,
}

mod tempdir {
    /// A private directory for the agent's socket, removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Agent {
    fn start(ctx: &Ctx, extra: &[&str]) -> anyhow::Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sock =
            std::env::temp_dir().join(format!("apptheus-bench-sock-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&sock)?;
        let mut child = Command::new(&ctx.agent)
            .arg(format!(
                "--trust.path={};{}",
                ctx.starter.display(),
                ctx.sleeper.display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!(
                "--socket.path={}",
                sock.join("gateway.sock").display()
            ))
            .arg("--log.level=debug")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the agent")?;
        let meter = Meter::attach(child.id(), "agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let found = log.lock().ok().and_then(|l| {
                l.iter()
                    .find(|l| l.contains("serving metrics"))
                    .and_then(|l| l.split("address=").nth(1))
                    .and_then(|s| s.split_whitespace().next())
                    .map(str::to_string)
            });
            if let Some(a) = found {
                break a;
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                bail!(
                    "the agent did not start: {:?}",
                    log.lock().map(|l| l.join("\n"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let agent = Self {
            child,
            addr,
            log,
            meter,
            _sock: tempdir::Dir(sock),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&agent.addr, "/-/ready").map(|(s, _)| s) != Ok(200) {
            if Instant::now() > deadline {
                bail!("the agent did not become ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(&self.addr, "/metrics")
            .map_err(|e| anyhow!("scrape: {e}"))?
            .1)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the pid is our child's,
            // not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn value(metrics: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let n = series.split('{').next()?;
            let ok = n == name
                && label.is_none_or(|(k, want)| series.contains(&format!("{k}=\"{want}\"")));
            if ok { v.parse().ok() } else { None }
        })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[derive(Default)]
struct Report {
    overhead: Vec<(String, f64, f64, f64, &'static str)>,
    program_costs: Vec<(String, f64, u64)>,
    /// (variant, containers, p50 ms, p99 ms)
    placement: Vec<(String, usize, f64, f64)>,
    scale: Vec<scale::ScaleRow>,
    sample_cost: Vec<scale::SampleCost>,
    peer: Vec<scale::PeerRow>,
    runqlat: Option<runqlat::Runqlat>,
    idle_rss_mb: f64,
    accuracy: Vec<(String, f64, f64, f64, &'static str)>,
    /// What could not be measured, and why.
    notes: Vec<String>,
    /// /proc/loadavg's three averages when the run began.
    load_before: String,
    scrape_every_s: u64,
    cpu_window_s: u64,
    scrapes: usize,
    peer_warmup_s: u64,
}

/// Storms inside an attributed container, agent loaded vs not, alternating.
fn overhead(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let run_storm = || -> anyhow::Result<[f64; 3]> {
        let out = Command::new(&ctx.starter)
            .args(["--no-namespaces", "--"])
            .arg(&ctx.starter)
            .args(["workload", "--timings", "--forks", &s.forks.to_string()])
            .args([
                "--execs",
                &s.execs.to_string(),
                "--threads",
                &s.threads.to_string(),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| -> anyhow::Result<f64> {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| anyhow!("no {k} in workload output: {text}"))
        };
        Ok([get("forks_ns=")?, get("execs_ns=")?, get("threads_ns=")?])
    };
    let mut off = [0.0f64; 3];
    let mut on = [0.0f64; 3];
    for round in 0..s.rounds {
        for loaded in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            if loaded {
                let _agent = Agent::start(ctx, &[])?;
                let t = run_storm()?;
                (0..3).for_each(|i| on[i] += t[i]);
            } else {
                let t = run_storm()?;
                (0..3).for_each(|i| off[i] += t[i]);
            }
        }
    }
    for (i, (name, target)) in [
        ("fork storm", 3.0),
        ("exec storm", 1.0),
        ("thread create/join storm", 3.0),
    ]
    .into_iter()
    .enumerate()
    {
        let pct = (on[i] / off[i] - 1.0) * 100.0;
        let per_op =
            |t: f64| t / s.rounds as f64 / [s.forks, s.execs, s.threads][i] as f64 / 1000.0;
        r.overhead.push((
            name.to_string(),
            per_op(off[i]),
            per_op(on[i]),
            pct,
            if pct <= target { "met" } else { "missed" },
        ));
    }
    // Program costs, in a run of their own: the statistics themselves
    // cost a little and must not weigh on the comparison above.
    let agent = Agent::start(ctx, &["--ebpf.stats"])?;
    run_storm()?;
    std::thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics()?;
    let mut programs: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("apptheus_ebpf_program_runs_total{"))
        .filter_map(|l| {
            l.split("program=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect();
    programs.sort();
    for prog in programs {
        let secs = value(
            &m,
            "apptheus_ebpf_program_run_seconds_total",
            Some(("program", &prog)),
        )
        .unwrap_or(0.0);
        let runs = value(
            &m,
            "apptheus_ebpf_program_runs_total",
            Some(("program", &prog)),
        )
        .unwrap_or(0.0) as u64;
        r.program_costs.push((prog, secs, runs));
    }
    Ok(())
}

/// From the starter's exec to every task in the container's cgroups, as
/// the agent measures it (CLOCK_BOOTTIME of the exec, seen by the kernel):
/// starters executed directly, and through a launcher that pauses as
/// Apptainer's command-line tool does before it execs the starter, with
/// and without the agent's cgroup warm-up (--cgroup.prewarm).
fn placement(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let variants: [(&str, bool, &[&str]); 3] = [
        ("starter executed directly", false, &[]),
        (
            "through a launcher (30 ms), --cgroup.prewarm=false",
            true,
            &["--cgroup.prewarm=false"],
        ),
        ("through a launcher (30 ms), --cgroup.prewarm", true, &[]),
    ];
    for (label, via_launcher, extra) in variants {
        let agent = Agent::start(ctx, extra)?;
        for _ in 0..s.placements {
            let mut cmd = if via_launcher {
                let mut c = Command::new(&ctx.launcher);
                c.args(["launch", "--after", "0.03"]).arg(&ctx.starter);
                c
            } else {
                Command::new(&ctx.starter)
            };
            cmd.args(["--no-namespaces", "--", "/bin/sleep", "0.05"])
                .status()?;
            // An idle machine: one container at a time, and more than a
            // grace period between two (the lock goes cold in between).
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut v: Vec<f64> = agent
            .log
            .lock()
            .map_err(|_| anyhow!("log lock"))?
            .iter()
            .filter(|l| l.contains("container placed"))
            .filter_map(|l| {
                l.split("seconds=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if v.is_empty() {
            bail!("{label}: no placement was logged");
        }
        let n = v.len();
        let (p50, p99) = (
            percentile(&mut v, 0.5) * 1e3,
            percentile(&mut v, 0.99) * 1e3,
        );
        println!("placement-result variant=\"{label}\" n={n} p50_ms={p50:.2} p99_ms={p99:.2}");
        r.placement.push((label.to_string(), n, p50, p99));
    }
    Ok(())
}

/// Reported CPU and memory against the workload's own truth.
fn accuracy(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let agent = Agent::start(
        ctx,
        &["--monitor.interval=100ms", "--monitor.grace-period=5m"],
    )?;
    let rusage_children = || -> f64 {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a properly sized struct.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    };
    let before = rusage_children();
    let mut child = Command::new(&ctx.starter)
        .args(["--no-namespaces", "--"])
        .arg(&ctx.starter)
        .args([
            "workload",
            "--delay",
            "0.3",
            "--spin",
            &s.spin_secs.to_string(),
        ])
        .spawn()?;
    let pid = child.id();
    if !child.wait()?.success() {
        bail!("CPU workload failed");
    }
    let truth = rusage_children() - before;
    let cpu = wait_final(&agent, pid, "apptheus_container_cpu_usage_seconds_total")?;
    r.accuracy.push((
        "CPU seconds vs rusage".into(),
        truth,
        cpu,
        (cpu - truth).abs() / truth * 100.0,
        if (cpu - truth).abs() / truth <= 0.01 {
            "met (<= 1%)"
        } else {
            "missed (> 1%)"
        },
    ));

    let mut child = Command::new(&ctx.starter)
        .args(["--no-namespaces", "--"])
        .arg(&ctx.starter)
        .args([
            "workload",
            "--delay",
            "0.3",
            "--alloc-mib",
            &s.alloc_mib.to_string(),
            "--sleep",
            "3",
        ])
        .spawn()?;
    let want = (s.alloc_mib << 20) as f64;
    let prefix = format!("container_id=\"{}-", child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut best = 0.0f64;
    while Instant::now() < deadline && child.try_wait()?.is_none() {
        let m = agent.metrics()?;
        let rss = m
            .lines()
            .filter(|l| {
                l.starts_with("apptheus_container_memory_rss_bytes{") && l.contains(&prefix)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .fold(0.0f64, f64::max);
        best = best.max(rss);
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.wait();
    r.accuracy.push((
        format!("memory (rss) vs {} MiB touched", s.alloc_mib),
        want / 1048576.0,
        best / 1048576.0,
        (best - want).abs() / want * 100.0,
        if (best - want).abs() / want <= 0.03 {
            "met (<= 3%)"
        } else {
            "missed (> 3%)"
        },
    ));
    Ok(())
}

/// The final value of `metric` of the container whose starter was `pid`.
fn wait_final(agent: &Agent, pid: u32, metric: &str) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let prefix = format!("container_id=\"{pid}-");
    loop {
        let m = agent.metrics()?;
        let of = |name: &str| {
            m.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&prefix))
                .find_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        };
        if of("apptheus_container_tasks") == Some(0.0)
            && let Some(v) = of(metric)
        {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("no final {metric}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Report {
    fn markdown(&self, smoke: bool, profile: &str) -> String {
        let mut o = String::new();
        let sh = |c: &str, a: &[&str]| {
            Command::new(c)
                .args(a)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        o.push_str(
            "<!-- bench:begin (written by `cargo xtask bench`) -->\n## Agent benchmarks\n\n",
        );
        o.push_str(&format!(
            "Reproduce: `sudo cargo xtask bench`{}. Machine: {}, {} cores, {} MiB, Linux {}, {} build, {}; load average when the run began: {}; cgroup mounts with `favordynmods`: {}.\n\n",
            if smoke { " --smoke (tiny sizes: not a measurement)" } else { "" },
            cpu,
            sh("nproc", &[]),
            sh("sh", &["-c", "awk '/MemTotal/{print int($2/1024)}' /proc/meminfo"]),
            sh("uname", &["-r"]),
            profile,
            sh("date", &["-u", "+%Y-%m-%d"]),
            self.load_before,
            favordynmods(),
        ));
        o.push_str("### Overhead on workloads inside an attributed container (agent loaded vs not, alternating rounds)\n\n| workload | without agent (us/op) | with agent (us/op) | slower by | target |\n|---|---|---|---|---|\n");
        for (n, a, b, p, t) in &self.overhead {
            o.push_str(&format!("| {n} | {a:.2} | {b:.2} | {p:+.2}% | {t} |\n"));
        }
        o.push_str("\n### Cost of each kernel program per event (kernel BPF statistics, `--ebpf.stats`)\n\n| program | runs | total | per run |\n|---|---|---|---|\n");
        for (p, secs, runs) in &self.program_costs {
            let per = if *runs > 0 {
                secs / *runs as f64 * 1e9
            } else {
                f64::NAN
            };
            o.push_str(&format!(
                "| {p} | {runs} | {:.3} ms | {per:.0} ns |\n",
                secs * 1e3
            ));
        }
        if !self.placement.is_empty() {
            o.push_str("\n### Placement latency: starter exec to all tasks in the container's cgroups (containers one at a time)\n\n| how the starter is executed | containers | p50 | p99 | target p99 <= 5 ms |\n|---|---|---|---|---|\n");
            for (label, n, p50, p99) in &self.placement {
                o.push_str(&format!(
                    "| {label} | {n} | {p50:.2} ms | {p99:.2} ms | {} |\n",
                    if *p99 <= 5.0 { "met" } else { "missed" }
                ));
            }
        }
        o.push_str(&self.targets());
        if !self.scale.is_empty() {
            o.push_str(&format!(
            "\n### Scale: the agent alone at its defaults, scraped every {} s\n\nReal containers: processes of a trusted copy of /bin/sleep, each with its own cgroups. CPU over {} s; then {} scrapes back to back for the latency. Idle agent resident memory: {:.1} MiB (target <= 12 MB).\n\n| containers | agent CPU | samples in the window | scrape p50 | scrape p99 | agent RSS | cgroup files kept open | kernel slab held by the agent |\n|---|---|---|---|---|---|---|---|\n",
            self.scrape_every_s, self.cpu_window_s, self.scrapes, self.idle_rss_mb
        ));
            for r in &self.scale {
                o.push_str(&format!(
                "| {} | {:.3} % of a core | {:.0} | {:.2} ms | {:.2} ms | {:.1} MiB | {:.0} | {:.1} MiB |\n",
                r.n, r.cpu_pct, r.samples, r.p50_ms, r.p99_ms, r.rss_mib, r.open_files, r.slab_mib
            ));
            }
        }
        if !self.sample_cost.is_empty() {
            let mut names: Vec<&str> = Vec::new();
            for c in &self.sample_cost {
                for (n, _) in &c.sources {
                    if !names.contains(&n.as_str()) {
                        names.push(n);
                    }
                }
            }
            o.push_str(&format!(
                "\n### One container's sample ({} host, {} containers, sampled every 250 ms on a clock)\n\nCPU: the agent's CPU time per container and sample, everything included. By source: the wall time each source took per container, from `apptheus_source_duration_seconds`.\n\n| cgroup files | kept open | CPU per container | {} |\n|---|---|---|{}\n",
                layout(),
                self.sample_cost.first().map_or(0, |c| c.n),
                names.join(" | "),
                "---|".repeat(names.len())
            ));
            for c in &self.sample_cost {
                let by: Vec<String> = names
                    .iter()
                    .map(|n| {
                        c.sources
                            .iter()
                            .find(|(s, _)| s == n)
                            .map_or_else(|| "-".to_string(), |(_, us)| format!("{us:.1} us"))
                    })
                    .collect();
                o.push_str(&format!(
                    "| {} | {:.0} | {:.1} us | {} |\n",
                    c.label,
                    c.open_files,
                    c.cpu_us,
                    by.join(" | ")
                ));
            }
        }
        if !self.peer.is_empty() {
            o.push_str(&format!(
                "\n### Side by side with cAdvisor 0.38.7 (Debian 11's package, `-docker_only=false`): same containers, same window, both scraped every {} s\n\nDefaults: the agent samples for the reads that come; cAdvisor housekeeps every 1 s, backing off on idle containers up to 60 s. Every 1 s: `--monitor.on-demand=false --monitor.interval=1s`; `-housekeeping_interval=1s -allow_dynamic_housekeeping=false`. After a {} s warm-up.\n\n| containers | sampling | window | agent CPU | agent RSS | agent scrape | cAdvisor CPU | cAdvisor RSS | cAdvisor scrape (cgroups) | cAdvisor CPU / agent CPU |\n|---|---|---|---|---|---|---|---|---|---|\n",
                self.scrape_every_s, self.peer_warmup_s
            ));
            for r in &self.peer {
                o.push_str(&format!(
                    "| {} | {} | {:.0} s | {:.3} % | {:.1} MiB | {:.1} ms | {:.3} % | {:.1} MiB | {:.1} ms ({}) | {:.1}x |\n",
                    r.n,
                    r.mode,
                    r.window_s,
                    r.agent_cpu_pct,
                    r.agent_rss_mib,
                    r.agent_scrape_ms,
                    r.cadvisor_cpu_pct,
                    r.cadvisor_rss_mib,
                    r.cadvisor_scrape_ms,
                    r.cadvisor_cgroups,
                    r.cadvisor_cpu_pct / r.agent_cpu_pct
                ));
            }
        }
        if let Some(q) = &self.runqlat {
            o.push_str(&format!(
                "\n### runqlat against the empty `sched_switch` hook (stress-ng --switch 2 in a container, {} rounds, the three alternated; medians)\n\n| agent | context switches per CPU second | slower than runqlat off |\n|---|---|---|\n| runqlat off | {:.0} | - |\n| runqlat off, and an empty program on sched_switch | {:.0} | {:.1} % |\n| runqlat on | {:.0} | {:.1} % |\n\nrunqlat costs {:.2}x the empty hook.\n",
                q.rounds,
                q.off,
                q.hook,
                q.slowdown(q.hook),
                q.runqlat,
                q.slowdown(q.runqlat),
                q.multiple()
            ));
        }
        for note in &self.notes {
            o.push_str(&format!("\n- {note}\n"));
        }
        o.push_str("\n### Accuracy\n\n| what | truth | reported | error | target |\n|---|---|---|---|---|\n");
        for (n, t, v, e, ok) in &self.accuracy {
            o.push_str(&format!("| {n} | {t:.3} | {v:.3} | {e:.2}% | {ok} |\n"));
        }
        o.push_str("<!-- bench:end -->\n");
        o
    }
}

/// The host's cgroup layout: v1, hybrid or v2.
fn layout() -> &'static str {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v2 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"));
    let v1 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup"));
    match (v1, v2) {
        (true, true) => "hybrid",
        (true, false) => "v1",
        _ => "v2",
    }
}

impl Report {
    /// The targets of issue 20, each against what this run measured.
    fn targets(&self) -> String {
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        };
        let scale = |n: usize| self.scale.iter().find(|r| r.n == n);
        let peer = |defaults: bool| -> Vec<&scale::PeerRow> {
            self.peer
                .iter()
                .filter(|r| r.mode.contains("defaults") == defaults)
                .collect()
        };
        let mut rows: Vec<(String, &str, String, &str)> = Vec::new();
        for (n, limit) in [(100usize, 0.2f64), (1000, 2.0)] {
            let alone = scale(n).map(|r| r.cpu_pct);
            let beside = peer(true)
                .into_iter()
                .find(|r| r.n == n)
                .map(|r| r.agent_cpu_pct);
            rows.push((
                format!("agent CPU, {n} containers, default settings, scraped every 15 s"),
                if n == 100 { "<= 0.2 %" } else { "<= 2 %" },
                format!(
                    "{} alone; {} beside cAdvisor",
                    alone.map_or("-".into(), |c| format!("{c:.3} %")),
                    beside.map_or("-".into(), |c| format!("{c:.3} %"))
                ),
                verdict(alone.map(|c| c <= limit)),
            ));
        }
        let cost = self.sample_cost.first().map(|c| c.cpu_us);
        rows.push((
            format!("one container's sample, {} host", layout()),
            "<= 50 us",
            cost.map_or("-".into(), |c| format!("{c:.1} us of CPU")),
            verdict(cost.map(|c| c <= 50.0)),
        ));
        for (defaults, what) in [
            (true, "both at their defaults, scraped every 15 s"),
            (false, "both sampling every 1 s"),
        ] {
            let rows_here = peer(defaults);
            let ratios: Vec<String> = rows_here
                .iter()
                .map(|r| format!("{:.1}x at {}", r.cadvisor_cpu_pct / r.agent_cpu_pct, r.n))
                .collect();
            rows.push((
                format!("cAdvisor CPU / agent CPU, same containers, {what}"),
                ">= 10x",
                if ratios.is_empty() {
                    "-".into()
                } else {
                    ratios.join(", ")
                },
                verdict((!rows_here.is_empty()).then(|| {
                    rows_here
                        .iter()
                        .all(|r| r.cadvisor_cpu_pct >= 10.0 * r.agent_cpu_pct)
                })),
            ));
        }
        let big = scale(10_000);
        rows.push((
            "agent RSS at 10,000 containers".into(),
            "<= 64 MiB",
            big.map_or("-".into(), |r| format!("{:.1} MiB", r.rss_mib)),
            verdict(big.map(|r| r.rss_mib <= 64.0)),
        ));
        let (k1, k10) = (scale(1000), scale(10_000));
        rows.push((
            "scrape p99 at 1,000 / 10,000 containers".into(),
            "<= 10 / <= 100 ms",
            format!(
                "{} / {}",
                k1.map_or("-".into(), |r| format!("{:.1} ms", r.p99_ms)),
                k10.map_or("-".into(), |r| format!("{:.1} ms", r.p99_ms))
            ),
            verdict(match (k1, k10) {
                (Some(a), Some(b)) => Some(a.p99_ms <= 10.0 && b.p99_ms <= 100.0),
                _ => None,
            }),
        ));
        let q = self.runqlat.as_ref();
        rows.push((
            "runqlat cost on stress-ng --switch, in a container".into(),
            "<= 1.5x the empty hook's",
            q.map_or("-".into(), |q| {
                format!(
                    "{:.1} % against {:.1} %: {:.2}x",
                    q.slowdown(q.runqlat),
                    q.slowdown(q.hook),
                    q.multiple()
                )
            }),
            verdict(q.map(|q| q.multiple() <= 1.5)),
        ));
        let mut o = String::from(
            "\n### Targets (issue 20)\n\n| what | target | this run | |\n|---|---|---|---|\n",
        );
        for (what, target, got, v) in rows {
            o.push_str(&format!("| {what} | {target} | {got} | {v} |\n"));
        }
        o
    }
}

/// Which cgroup mounts have `favordynmods` (it makes cgroup migrations
/// skip an RCU grace period, and so changes placement latency), or "none".
fn favordynmods() -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let with: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3
                && f[2].starts_with("cgroup")
                && f[3].split(',').any(|o| o == "favordynmods"))
            .then_some(f[1])
        })
        .collect();
    if with.is_empty() {
        "none".into()
    } else {
        with.join(", ")
    }
}

/// Replaces the section between the bench markers, keeping the rest of
/// the file (other sections are written by hand or by other tools).
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let new = match (old.find("<!-- bench:begin"), old.find("<!-- bench:end -->")) {
        (Some(a), Some(b)) if b > a => {
            let end = b + "<!-- bench:end -->\n".len().min(old.len() - b);
            format!("{}{}{}", &old[..a], section, &old[end..])
        }
        _ => format!("{}\n{}", old.trim_end(), "\n".to_string() + section),
    };
    std::fs::write(path, new)?;
    Ok(())
}
