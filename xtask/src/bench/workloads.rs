//! The agent's cost on hot paths inside an attributed container
//! (overhead), how fast it places a container (placement), and how close
//! it comes to the truth (accuracy).
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use apptheus_testkit::host::children_cpu_seconds;

use super::{Agent, Ctx, Report, Sizes, percentile, value};

/// Storms inside an attributed container, agent loaded vs not, alternating.
pub fn overhead(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let run_storm = || -> anyhow::Result<[f64; 3]> {
        let out = workload(ctx, &["--timings", "--forks", &s.forks.to_string()])
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
            &[("program", &prog)],
        )
        .unwrap_or(0.0);
        let runs = value(
            &m,
            "apptheus_ebpf_program_runs_total",
            &[("program", &prog)],
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
pub fn placement(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
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
pub fn accuracy(ctx: &Ctx, s: &Sizes, r: &mut Report) -> anyhow::Result<()> {
    let agent = Agent::start(
        ctx,
        &["--monitor.interval=100ms", "--monitor.grace-period=5m"],
    )?;
    let before = children_cpu_seconds();
    let mut child =
        workload(ctx, &["--delay", "0.3", "--spin", &s.spin_secs.to_string()]).spawn()?;
    let pid = child.id();
    if !child.wait()?.success() {
        bail!("CPU workload failed");
    }
    let truth = children_cpu_seconds() - before;
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

    let mut child = workload(
        ctx,
        &[
            "--delay",
            "0.3",
            "--alloc-mib",
            &s.alloc_mib.to_string(),
            "--sleep",
            "3",
        ],
    )
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

/// `starter --no-namespaces -- starter workload <args>`: the starter
/// simulator's workload in a container of its own.
fn workload(ctx: &Ctx, args: &[&str]) -> Command {
    let mut c = Command::new(&ctx.starter);
    c.args(["--no-namespaces", "--"])
        .arg(&ctx.starter)
        .arg("workload")
        .args(args);
    c
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
