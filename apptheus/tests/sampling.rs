//! Sampling as an administrator sees it: the agent learns the schedules
//! of real Prometheus servers (an HA pair from two addresses, or behind
//! one) and samples just before each of their scrapes, which then never
//! wait; reads that no schedule explains take at most one sample per 5 s;
//! with --monitor.on-demand=false, a clock.
mod common;

use std::{
    net::IpAddr,
    process::{Child, Command},
    time::{Duration, Instant},
};

use apptheus_testkit::{forward::Forward, or_skip, prometheus::Prometheus};
use common::*;

fn samples(m: &str, trigger: &str) -> f64 {
    value(m, "apptheus_samples_total", &[("trigger", trigger)]).unwrap_or(-1.0)
}

fn reads(m: &str, reader: &str, answer: &str) -> f64 {
    value(
        m,
        "apptheus_reads_total",
        &[("reader", reader), ("answer", answer)],
    )
    .unwrap_or(-1.0)
}

/// A container (the starter simulator running `sleep`, in a process group
/// of its own), killed whole on drop: the starter and its `sleep`.
struct Container(Child);

impl Container {
    fn start(starter: &std::path::Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        Container(
            Command::new(starter)
                .args(["--no-namespaces", "--", "/bin/sleep", "600"])
                .process_group(0)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// A client that reads ten times a second, beside one that forges
/// Prometheus's headers and does the same: at the default interval
/// (0.5 s), together they take at most one sample per 5 s, and are served
/// what there is in between.
#[test]
fn reads_no_schedule_explains_take_at_most_one_sample_per_5_s() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--monitor.interval=500ms"]);
    let _container = Container::start(&starter);
    agent.wait_for(Duration::from_secs(20), "the container", || {
        agent
            .metrics()
            .contains("apptheus_container_cpu_usage_seconds_total{")
    });
    let forged = [
        ("User-Agent", "Prometheus/2.42.0"),
        ("X-Prometheus-Scrape-Timeout-Seconds", "10"),
    ];
    let m0 = agent.metrics();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(16) {
        std::thread::sleep(Duration::from_millis(100));
        let headers: &[(&str, &str)] = if n % 2 == 0 { &[] } else { &forged };
        let (status, body) = http_get(&agent.addr, "/metrics", headers).unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("apptheus_container_cpu_usage_seconds_total{"));
        n += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let m1 = agent.metrics();
    let taken = ["scrape", "ahead", "push", "interval"]
        .iter()
        .map(|t| samples(&m1, t) - samples(&m0, t))
        .sum::<f64>();
    // One sample per 5 s at most, counting from the read before the loop
    // and the one after.
    let most = (elapsed / 5.0).floor() + 2.0;
    assert!(
        (1.0..=most).contains(&taken),
        "{taken} samples for {n} reads in {elapsed:.1} s (at most {most})\n{m1}"
    );
    let at_once = reads(&m1, "unscheduled", "at_once") - reads(&m0, "unscheduled", "at_once");
    assert!(
        at_once >= f64::from(n) - most,
        "{at_once} of {n} reads served at once\n{m1}"
    );
    assert_eq!(value(&m1, "apptheus_scrape_schedules", &[]), Some(0.0));
}

/// Two Prometheus servers scraping every 10 s, at phases of their own:
/// from two addresses (one connects through a forwarder from 127.0.0.2),
/// or both from one. Once each made its first reads, the agent follows
/// two schedules, takes at most one sample per scrape, and no scrape
/// waits.
fn ha_pair(behind_one_address: bool) {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    // A 1 s bound on a served sample's age (schedules then have periods
    // of 10 s or more), so that a scrape this shared machine delays by
    // half a second is still served what was sampled for it.
    let agent = Agent::trusting(&starter, &["--monitor.interval=1s"]);
    let _container = Container::start(&starter);
    let interval = Duration::from_secs(10);
    let forward = if behind_one_address {
        None
    } else {
        let to = agent.addr.parse().unwrap();
        Some(Forward::start(IpAddr::from([127, 0, 0, 2]), to).unwrap())
    };
    let b_target = forward
        .as_ref()
        .map_or(agent.addr.clone(), |f| f.addr.to_string());
    let Some(a) = or_skip(Prometheus::start(
        "a",
        std::slice::from_ref(&agent.addr),
        interval,
    ))
    .unwrap() else {
        return;
    };
    let b = Prometheus::start("b", &[b_target], interval).unwrap();
    // What the agent says, as server A scraped it last.
    let q = |query: &str| -> f64 {
        a.query(query)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", a.log()))
            .unwrap_or(0.0)
    };
    let scheduled = r#"sum(apptheus_reads_total{reader="scheduled"})"#;
    let waited = r#"apptheus_reads_total{reader="scheduled",answer="waited"}"#;
    let ahead = r#"apptheus_samples_total{trigger="ahead"}"#;
    agent.wait_for(
        Duration::from_secs(120),
        "the agent to follow both servers' schedules",
        || q("apptheus_scrape_schedules") == 2.0,
    );
    let (reads0, waited0, ahead0) = (q(scheduled), q(waited), q(ahead));
    agent.wait_for(
        Duration::from_secs(120),
        "four more scrapes of each server",
        || q(scheduled) >= reads0 + 8.0,
    );
    let (reads1, waited1, ahead1) = (q(scheduled), q(waited), q(ahead));
    let what = format!(
        "behind one address: {behind_one_address}; scheduled reads {reads0} -> {reads1}, \
         of which waited {waited0} -> {waited1}; samples ahead {ahead0} -> {ahead1}"
    );
    assert_eq!(waited1, waited0, "a scrape waited: {what}");
    // One sample per scrape at most (and one under way as A scraped).
    assert!(ahead1 - ahead0 <= reads1 - reads0 + 1.0, "{what}");
    assert_eq!(q("apptheus_scrape_schedules"), 2.0, "{what}");
    // Both servers have the container's statistics.
    for p in [&a, &b] {
        assert!(
            p.query("apptheus_container_cpu_usage_seconds_total")
                .unwrap()
                .is_some(),
            "{}",
            p.log()
        );
    }
}

#[test]
fn an_ha_pair_from_two_addresses_never_waits() {
    ha_pair(false);
}

#[test]
fn an_ha_pair_behind_one_address_never_waits() {
    ha_pair(true);
}

#[test]
fn on_a_clock_when_asked() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(
        &starter,
        &[
            "--monitor.interval=200ms",
            "--monitor.on-demand=false",
            "--no-collector.pressure",
        ],
    );
    agent.wait_for(Duration::from_secs(10), "five samples on the clock", || {
        samples(&agent.metrics(), "interval") >= 5.0
    });
    let m = agent.metrics();
    assert_eq!(samples(&m, "scrape") + samples(&m, "ahead"), 0.0, "{m}");
    // Every source read what it found, and one switched off is not run.
    for source in ["kernel", "cpu", "memory", "pids", "blkio"] {
        assert_eq!(
            value(&m, "apptheus_source_success", &[("source", source)]),
            Some(1.0),
            "{source}\n{m}"
        );
    }
    assert_eq!(
        value(
            &m,
            "apptheus_source_duration_seconds",
            &[("source", "pressure")]
        ),
        None,
        "{m}"
    );
    // Reads never wait on a clock.
    assert_eq!(reads(&m, "unscheduled", "waited"), 0.0, "{m}");
}
