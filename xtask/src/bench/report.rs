//! The benchmarks' results, as the Markdown section of BENCHMARKS.md.
use std::{path::Path, process::Command};

use super::{floor, readers, runqlat, scale};

#[derive(Default)]
pub struct Report {
    pub overhead: Vec<(String, f64, f64, f64, &'static str)>,
    pub program_costs: Vec<(String, f64, u64)>,
    /// (variant, containers, p50 ms, p99 ms)
    pub placement: Vec<(String, usize, f64, f64)>,
    pub scale: Vec<scale::ScaleRow>,
    pub sample_cost: Vec<scale::SampleCost>,
    /// The kernel's own read path over the same files.
    pub floor: Option<floor::Floor>,
    pub peer: Vec<scale::PeerRow>,
    pub readers: Vec<readers::ReadersRow>,
    pub readers_containers: usize,
    pub runqlat: Option<runqlat::Runqlat>,
    pub idle_rss_mb: f64,
    pub accuracy: Vec<(String, f64, f64, f64, &'static str)>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
    /// /proc/loadavg's three averages when the run began.
    pub load_before: String,
    pub scrape_every_s: u64,
    pub cpu_window_s: u64,
    pub scrapes: usize,
    pub peer_warmup_s: u64,
}

impl Report {
    pub fn markdown(&self, smoke: bool, profile: &str) -> String {
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
            "\n### Scale: the agent alone at its defaults, scraped every {} s as Prometheus scrapes\n\nReal containers: processes of a trusted copy of /bin/sleep, each with its own cgroups. Scrapes with Prometheus 2.42's headers (OpenMetrics, gzip, its User-Agent and `X-Prometheus-Scrape-Timeout-Seconds`), every {} s on a fixed clock: two for the agent to learn the schedule, then CPU, samples and the scrapes that waited over {} s. Then {} of those scrapes back to back, and a third as many plain ones (no Accept header, no gzip), for the latency. Idle agent resident memory: {:.1} MiB (target <= 12 MB).\n\n| containers | agent CPU | samples in the window | scrapes on schedule that waited (slowest) | scrape p50 / p99, as Prometheus asks | plain scrape p50 / p99 | agent RSS | cgroup files kept open | kernel slab held by the agent |\n|---|---|---|---|---|---|---|---|---|\n",
            self.scrape_every_s, self.scrape_every_s, self.cpu_window_s, self.scrapes, self.idle_rss_mb
        ));
            for r in &self.scale {
                o.push_str(&format!(
                "| {} | {:.3} % of a core | {:.0} | {:.0} ({:.1} ms) | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} MiB | {:.0} | {:.1} MiB |\n",
                r.n, r.cpu_pct, r.samples, r.scheduled_waited, r.scheduled_max_ms, r.p50_ms, r.p99_ms, r.plain_p50_ms, r.plain_p99_ms, r.rss_mib, r.open_files, r.slab_mib
            ));
            }
        }
        if !self.readers.is_empty() {
            o.push_str(&format!(
                "\n### Readers (issue 25): {} containers, the agent at its defaults\n\nReal Prometheus 2.42 servers unless the note says otherwise (an HA pair's second server through a forwarder whose connections come from 127.0.0.2; or both from 127.0.0.1, told apart by timing alone). Each window starts once the agent follows the arrangement's schedules (after each scraper's first reads), and its counts are the agent's own, as the first scraper read them. \"At most\": one sample per scrape interval per schedule, and what the arrangement may add.\n\n| arrangement | window | scrapes on schedule (waited) | other reads (waited) | samples: ahead + for other reads | at most | agent CPU | | note |\n|---|---|---|---|---|---|---|---|---|\n",
                self.readers_containers
            ));
            for r in &self.readers {
                o.push_str(&format!(
                    "| {} | {:.0} s | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.0} + {:.0} | {:.0} | {:.3} % | {} | {} |\n",
                    r.arrangement,
                    r.window_s,
                    r.scheduled,
                    r.scheduled_waited,
                    r.other,
                    r.other_waited,
                    r.ahead,
                    r.for_reads,
                    r.most,
                    r.cpu_pct,
                    if r.met() { "met" } else { "missed" },
                    r.note
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
        if let Some(f) = &self.floor {
            o.push_str(&format!(
                "\n### The kernel's own read path: the floor under one container's sample\n\nThe {} cgroup files the agent kept open above, opened by the benchmark and read in place with `pread` at offset 0 as the agent reads them (container after container, a pass every 250 ms), nothing parsed: {:.1} us of CPU per container and pass ({:.1} us with each file read in a tight loop, caches warm). The agent's {:.1} us is {:.0} % above it. By file, in a tight loop:\n\n| file | files | CPU per container |\n|---|---|---|\n",
                f.files,
                f.us,
                f.warm_us,
                self.sample_cost.first().map_or(f64::NAN, |c| c.cpu_us),
                self.sample_cost
                    .first()
                    .map_or(f64::NAN, |c| (c.cpu_us / f.us - 1.0) * 100.0)
            ));
            for (name, files, us) in &f.by_name {
                o.push_str(&format!("| {name} | {files} | {us:.2} us |\n"));
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
pub fn layout() -> &'static str {
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
pub fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
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
