//! Containers' lives as an administrator sees them: bursts of starts,
//! short-lived containers, series that go after the grace period, trusted
//! binaries replaced by a package upgrade.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use apptheus_testkit::node::{children, cpu_seconds};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn two_hundred_starts_a_second_with_fork_storms_lose_nothing() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--monitor.grace-period=5m"]);

    // 4 threads x 100 containers, each forking 20 processes and creating
    // 20 threads, paced at 200 starts per second overall.
    let per_thread = 100;
    let threads = 4;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let starter = starter.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let due = Duration::from_millis(5 * (i * threads + t) as u64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    Command::new(&starter)
                        .args(["--no-namespaces", "--"])
                        .arg(&starter)
                        .args(["workload", "--forks", "20", "--threads", "20"])
                        .spawn()
                        .expect("start a container")
                        .wait()
                        .expect("wait");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = (per_thread * threads) as f64;
    let ended = format!("starter=\"{}\"", starter.display());
    // Only this test's containers: another agent's running containers may
    // have been adopted at start.
    let ours = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| l.starts_with("apptheus_container_info{") && l.contains(&ended))
            .filter_map(|l| {
                Some(
                    l.split("container_id=\"")
                        .nth(1)?
                        .split('"')
                        .next()?
                        .to_string(),
                )
            })
            .collect()
    };
    // Every container counted its 21 forks (the master's and 20) and its
    // 20 threads: nothing escaped. As a scraper sees it, within a sample's
    // age: the last containers' final samples may be published just after
    // their ends are logged.
    let wrong = |m: &str| -> Vec<(String, Option<f64>)> {
        ours(m)
            .into_iter()
            .map(|id| {
                let forks = value(
                    m,
                    "apptheus_container_forks_total",
                    &[("container_id", &id)],
                );
                (id, forks)
            })
            .filter(|(_, f)| *f != Some(21.0))
            .collect()
    };
    let mut said = Vec::new();
    agent.wait_for(
        WAIT,
        "every container to be seen and sampled at its end, each with its 21 forks",
        || {
            let m = agent.metrics();
            let seen = value(&m, "apptheus_containers_started_total", &[]) == Some(total)
                && ours(&m).len() == per_thread * threads
                && agent.log_text().matches("container exited").count() >= per_thread * threads;
            let wrong = wrong(&m);
            if seen && !wrong.is_empty() && wrong != said {
                eprintln!("containers with wrong fork counts: {wrong:?}");
                said = wrong.clone();
            }
            seen && wrong.is_empty()
        },
    );
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_ebpf_events_lost_total", &[]),
        Some(0.0),
        "{m}"
    );
    assert!(agent.log_text().matches("container exited").count() >= per_thread * threads);
}

/// CPU seconds the short-lived container's workload spins.
const SPIN: f64 = 0.2;

#[test]
fn a_short_lived_container_shows_its_final_values_then_its_series_go() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    // Samples every 5 s: the container lives between two of them.
    let agent = Agent::trusting(
        &starter,
        &["--monitor.interval=5s", "--monitor.grace-period=3s"],
    );
    // Let the first sample pass.
    std::thread::sleep(Duration::from_millis(200));
    // The delay (Apptainer's set-up) lets placement finish before the
    // workload spins; software emulation (vm-test) stretches placement.
    let delay = format!("{}", 0.05 * time_scale());
    let mut child = Command::new(&starter)
        .args(["--no-namespaces", "--"])
        .arg(&starter)
        .args([
            "workload",
            "--delay",
            &delay,
            "--spin",
            &SPIN.to_string(),
            "--alloc-mib",
            "32",
        ])
        .spawn()
        .unwrap();
    let pid = child.id();
    let before = children_cpu_seconds();
    assert!(child.wait().unwrap().success());
    let truth = children_cpu_seconds() - before;
    let id = format!("{pid}-");
    let mut cpu = None;
    // The workload's spin (after placement) is all there; what the
    // starter used before placement and the tasks after leaving the cgroup
    // is not: milliseconds natively, tenths of a second under emulation.
    // Waited for (a row shown while the container ran may be read until
    // its final one is published), its peak memory with it.
    agent.wait_for(
        Duration::from_secs(3),
        &format!(
            "the final sample of the short-lived container: at least {} s of CPU (spin {SPIN} s), \
             a peak of at least 30 MiB",
            SPIN * 0.95
        ),
        || {
            let m = agent.metrics();
            let line = |name: &str| {
                m.lines()
                    .find(|l| l.starts_with(&format!("{name}{{container_id=\"{id}")))
                    .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            };
            cpu = line("apptheus_container_cpu_usage_seconds_total");
            cpu.is_some_and(|c| c >= SPIN * 0.95)
                && line("apptheus_container_memory_max_usage_bytes")
                    .is_some_and(|max| max >= 30.0 * 1024.0 * 1024.0)
        },
    );
    let cpu = cpu.unwrap();
    assert!(
        cpu <= truth * 1.02,
        "final CPU {cpu}, rusage {truth}, spin {SPIN}"
    );

    // Gone after the grace period (plus up to one sampling interval).
    agent.wait_for(Duration::from_secs(12), "the series to go", || {
        !agent.metrics().contains(&format!("container_id=\"{id}"))
    });
}

#[test]
fn a_starter_replaced_on_disk_is_followed_without_a_signal() {
    let Some((_serial, trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);
    let new = trust.starter("starter.dpkg-new");
    std::fs::rename(&new, &starter).unwrap();
    agent.wait_for(WAIT, "the replaced starter to be noticed", || {
        agent
            .log_text()
            .contains("trusted file changed: trusted starters changed")
    });
    assert!(run(Command::new(&starter).args(["--no-namespaces", "--", "/bin/true"])).success());
    agent.wait_for(WAIT, "the new starter to be attributed", || {
        value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1.0)
    });
}

/// A run of the new version of the starter begun before the agent trusted
/// it (between the rename and the re-resolution) is found in /proc and
/// followed from then on: here, one begun before the rename itself.
#[test]
fn a_run_of_a_replaced_starter_begun_before_it_was_trusted_is_followed() {
    let Some((_serial, trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);
    let new = trust.starter("starter.dpkg-new");
    let hold = format!("{}", 5.0 * time_scale());
    let mut run = Command::new(&new)
        .args(["--no-namespaces", "--", "sleep", &hold])
        .spawn()
        .unwrap();
    let pid = run.id();
    // Its exec was of a file not trusted: nothing yet.
    agent.wait_for(WAIT, "the sleep to run", || !children(pid).is_empty());
    assert_eq!(
        value(&agent.metrics(), "apptheus_containers_started_total", &[]),
        Some(0.0)
    );
    std::fs::rename(&new, &starter).unwrap();
    let id = followed_with_two_tasks(&agent, &starter, pid);
    assert!(
        agent
            .log_text()
            .contains("a run of a newly trusted starter began before it was trusted"),
        "{}",
        agent.log_text()
    );
    assert!(run.wait().unwrap().success());
    agent.wait_for(WAIT, "its end", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(&id))
    });
}

/// A container that began before the agent started (the agent installed,
/// upgraded or restarted while jobs run, with no cgroup of apptheus' to
/// adopt the container by) is found among the processes at start-up and
/// followed from then on, under a new id: its tasks are the kernel's, its
/// CPU counts what it used from then (not what its process used before),
/// and its end is seen.
#[test]
fn a_container_running_when_the_agent_starts_is_followed_from_then() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let gate = Gate::new();
    // The container's process first uses CPU as a shell, then, as the
    // workload, waits to be placed (by the agent, once it found it) and
    // spins 0.5 s, and holds until the test lets it go.
    let script = format!(
        "{busy}; exec {sim} workload --until-placed --spin 0.5 {until}",
        busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
        sim = starter.display(),
        until = gate.arg()
    );
    let mut run = Command::new(&starter)
        .args(["--no-namespaces", "--", "/bin/sh", "-c", &script])
        .spawn()
        .unwrap();
    let pid = run.id();
    // The agent starts once the shell's loop is done: the workload runs.
    let deadline = Instant::now() + scaled(WAIT);
    let (workload, before) = loop {
        // The container's process once it executes the workload (before
        // the shell, it ran the starter's file too, as its fork).
        let waiting = children(pid).first().copied().filter(|w| {
            std::fs::read(format!("/proc/{w}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"workload"))
        });
        if let Some(w) = waiting
            && let Some(cpu) = cpu_seconds(w)
        {
            break (w, cpu);
        }
        assert!(Instant::now() < deadline, "the workload never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    let agent = Agent::trusting(&starter, &[]);
    let id = followed_with_two_tasks(&agent, &starter, pid);
    assert!(
        agent
            .log_text()
            .contains("a starter run found running at start-up"),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        value(&agent.metrics(), "apptheus_containers_started_total", &[]),
        Some(0.0),
        "found running, not started under this agent"
    );
    agent.wait_for(WAIT, "the workload's spin to end", || {
        cpu_seconds(workload).is_some_and(|c| c >= before + 0.5)
    });
    gate.open();
    assert!(run.wait().unwrap().success());
    let cpu = final_value(&agent, &id, "apptheus_container_cpu_usage_seconds_total");
    eprintln!("measured: CPU {cpu:.4} s for a 0.5 s spin; {before:.3} s used before");
    assert!(
        before >= 0.05,
        "the shell's loop used too little CPU ({before:.3} s) to tell"
    );
    assert!(
        (0.5..=0.5 * 1.03 + 0.01 * time_scale()).contains(&cpu),
        "CPU {cpu:.3} s for the 0.5 s spun after the agent found the container \
         ({before:.3} s used before it started)"
    );
}

/// Waits until the agent follows the run of `starter` whose starter is
/// `pid`, with its two tasks (the starter and what it runs); its id.
fn followed_with_two_tasks(agent: &Agent, starter: &std::path::Path, pid: u32) -> String {
    let mut id = None;
    agent.wait_for(WAIT, "the run to be followed, with its two tasks", || {
        let m = agent.metrics();
        id = container_id(&m, "starter", &starter.display().to_string())
            .filter(|id| id.starts_with(&format!("{pid}-")));
        id.as_ref().is_some_and(|id| {
            value(&m, "apptheus_container_tasks", &[("container_id", id)]) == Some(2.0)
        })
    });
    id.unwrap()
}
