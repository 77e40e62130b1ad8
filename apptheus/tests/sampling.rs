//! Sampling as an administrator sees it: the agent samples for the reads
//! that come, serves none older than --monitor.interval, and nothing is
//! sampled while nobody reads.
mod common;

use std::{process::Command, time::Duration};

use common::*;

fn samples(m: &str, trigger: &str) -> f64 {
    value(m, "apptheus_samples_total", &[("trigger", trigger)]).unwrap_or(-1.0)
}

#[test]
fn samples_follow_the_reads() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--monitor.interval=1s"]);
    // A container, then nobody reads for a while: nothing is sampled.
    let mut child = Command::new(&starter)
        .args(["--no-namespaces", "--", "/bin/sleep", "8"])
        .spawn()
        .unwrap();
    std::thread::sleep(scaled(Duration::from_secs(3)));
    // The first read finds no sample recent enough and waits for one: its
    // container is there, with its statistics.
    let m = agent.metrics();
    assert_eq!(samples(&m, "scrape"), 1.0, "{m}");
    assert_eq!(samples(&m, "ahead") + samples(&m, "interval"), 0.0, "{m}");
    assert!(
        m.contains("apptheus_container_cpu_usage_seconds_total{"),
        "{m}"
    );
    // Reads every 100 ms for 3 s: served from samples at most 1 s old,
    // about one per second, none of them on a clock.
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        agent.metrics();
    }
    let m = agent.metrics();
    let taken = samples(&m, "scrape") + samples(&m, "ahead");
    assert!((2.0..=8.0).contains(&taken), "{taken} samples\n{m}");
    assert_eq!(samples(&m, "interval"), 0.0, "{m}");
    // Every source read what it found.
    for source in ["kernel", "cpu", "memory", "pids", "blkio", "pressure"] {
        assert_eq!(
            value(&m, "apptheus_source_success", &[("source", source)]),
            Some(1.0),
            "{source}\n{m}"
        );
    }
    // Its end is the kernel's to report, whenever it comes.
    child.wait().unwrap();
    agent.wait_for(Duration::from_secs(10), "the container's end", || {
        agent.log_text().contains("container exited")
    });
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
    std::thread::sleep(scaled(Duration::from_secs(2)));
    let m = agent.metrics();
    assert!(samples(&m, "interval") >= 5.0, "{m}");
    assert_eq!(samples(&m, "scrape") + samples(&m, "ahead"), 0.0, "{m}");
    // A source switched off is not run.
    assert_eq!(
        value(
            &m,
            "apptheus_source_duration_seconds",
            &[("source", "pressure")]
        ),
        None,
        "{m}"
    );
}
