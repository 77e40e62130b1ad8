//! The targets of issues 20 and 25, each against what a run measured.
use super::{
    report::{Report, layout},
    scale,
};

impl Report {
    /// The targets of issues 20 and 25, each against what this run
    /// measured.
    pub fn targets(&self) -> String {
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
            cost.map_or("-".into(), |c| {
                format!(
                    "{c:.1} us of CPU{}",
                    self.floor.as_ref().map_or(String::new(), |f| format!(
                        " (the kernel's read path of the same files alone: {:.1} us)",
                        f.us
                    ))
                )
            }),
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
            "scrape p99 at 1,000 / 10,000 containers, as Prometheus scrapes (OpenMetrics, gzip)"
                .into(),
            "<= 10 / <= 100 ms",
            format!(
                "{} / {} (plain text: {} / {})",
                k1.map_or("-".into(), |r| format!("{:.1} ms", r.p99_ms)),
                k10.map_or("-".into(), |r| format!("{:.1} ms", r.p99_ms)),
                k1.map_or("-".into(), |r| format!("{:.1} ms", r.plain_p99_ms)),
                k10.map_or("-".into(), |r| format!("{:.1} ms", r.plain_p99_ms)),
            ),
            verdict(match (k1, k10) {
                (Some(a), Some(b)) => Some(a.p99_ms <= 10.0 && b.p99_ms <= 100.0),
                _ => None,
            }),
        ));
        let waited: f64 = self.scale.iter().map(|r| r.scheduled_waited).sum();
        rows.push((
            "scrapes on schedule that waited for a sample, every size".into(),
            "0",
            if self.scale.is_empty() {
                "-".into()
            } else {
                format!("{waited:.0}")
            },
            verdict((!self.scale.is_empty()).then_some(waited == 0.0)),
        ));
        let missed: Vec<&str> = self
            .readers
            .iter()
            .filter(|r| !r.met())
            .map(|r| r.arrangement.as_str())
            .collect();
        rows.push((
            "every reader arrangement: no scrape on schedule waits (but at an interval change), at most one sample per scrape interval per schedule, other reads at most one sample per 5 s".into(),
            "all met",
            if self.readers.is_empty() {
                "-".into()
            } else if missed.is_empty() {
                format!("{} of {} met", self.readers.len(), self.readers.len())
            } else {
                format!("missed: {}", missed.join("; "))
            },
            verdict((!self.readers.is_empty()).then_some(missed.is_empty())),
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
            "\n### Targets (issues 20 and 25)\n\n| what | target | this run | |\n|---|---|---|---|\n",
        );
        for (what, target, got, v) in rows {
            o.push_str(&format!("| {what} | {target} | {got} | {v} |\n"));
        }
        o
    }
}
