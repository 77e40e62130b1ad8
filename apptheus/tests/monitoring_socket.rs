//! Apptainer's `allow monitoring = yes` path through the real agent: the
//! starter-like launcher connects the way Apptainer's master does.
mod common;

use std::{process::Command, time::Duration};

use common::*;

/// CPU seconds the workload spins.
const SPIN: f64 = 1.0;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn with_ebpf_the_socket_confirms_the_kernels_container_without_a_second_one() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);
    let sock = agent.socket_path();
    let status = run(Command::new(&starter).args([
        "--socket",
        sock.to_str().unwrap(),
        "--",
        starter.to_str().unwrap(),
        "workload",
        "--sleep",
        "0.5",
    ]));
    assert!(status.success());
    agent.wait_for(WAIT, "the container to end", || {
        let m = agent.metrics();
        value(
            &m,
            "apptheus_socket_connections_total",
            &[("result", "accepted")],
        ) == Some(1.0)
            && value(&m, "apptheus_container_tasks", &[]) == Some(0.0)
    });
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_containers_started_total", &[]),
        Some(1.0),
        "one container, not two\n{m}"
    );
}

#[test]
fn without_ebpf_the_whole_tree_is_attributed_through_the_socket() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--ebpf=false"]);
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_attribution_mode", &[("mode", "socket")]),
        Some(1.0),
        "{m}"
    );
    assert!(agent.log_text().contains("mode=socket"));

    let sock = agent.socket_path();
    // The delay stands for Apptainer's set-up before the workload runs: the
    // master connects and is placed meanwhile, even under the software
    // emulation of `cargo xtask vm-test`, where the time from the fork to
    // the connection (which placement_seconds does not cover) was seen to
    // take from 0.1 s to over 0.3 s.
    let mut child = Command::new(&starter)
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--",
            starter.to_str().unwrap(),
            "workload",
            "--delay",
            "1",
            "--spin",
            &SPIN.to_string(),
            "--sleep",
            "1",
        ])
        .spawn()
        .unwrap();
    let master = child.id();
    let before = children_cpu_seconds();
    let mut id = String::new();
    agent.wait_for(WAIT, "the socket-registered container", || {
        let m = agent.metrics();
        match container_id(&m, "starter", &starter.display().to_string()) {
            Some(i) => {
                id = i;
                true
            }
            None => false,
        }
    });
    assert!(
        id.starts_with(&format!("{master}-")),
        "the master ({master}) registers the container: {id}"
    );
    // The workload (forked by the master before it connected) is in the
    // container's cgroup, not only the master.
    let workload =
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap();
    for pid in workload.split_whitespace() {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(
            cg.contains(&format!("apptheus-{id}")),
            "child {pid} not placed: {cg}"
        );
    }
    assert!(child.wait().unwrap().success());
    let truth = children_cpu_seconds() - before;
    // The container ends with the connection, with the workload's CPU
    // counted (its 1 s spin starts after placement), and its cgroups go.
    // What the starter uses before placement and the exiting tasks after
    // leaving the cgroup is not the container's: milliseconds natively,
    // up to a few tenths of a second under emulation (vm-test).
    let mut cpu = None;
    agent.wait_for(
        WAIT,
        "the container's final CPU and its cgroups removed",
        || {
            let m = agent.metrics();
            let seen = value(
                &m,
                "apptheus_container_cpu_usage_seconds_total",
                &[("container_id", &id)],
            );
            if seen != cpu {
                eprintln!("container CPU {seen:?}; rusage {truth}, spin {SPIN}");
            }
            cpu = seen;
            cpu.is_some_and(|v| v >= 0.95 * SPIN && v <= truth * 1.02)
                && !our_cgroup_dirs()
                    .iter()
                    .any(|d| d.ends_with(format!("apptheus-{id}")))
        },
    );
}

#[test]
fn an_untrusted_caller_is_rejected_and_nothing_is_registered() {
    let Some((_serial, trust, starter)) = trusted_starter() else {
        return;
    };
    let other = trust.starter("not-trusted");
    let agent = Agent::trusting(&starter, &["--ebpf=false"]);
    let sock = agent.socket_path();
    assert!(
        // Alive long enough to be verified (a caller gone before that is
        // counted as an error, not a rejection).
        run(Command::new(&other).args([
            "--socket",
            sock.to_str().unwrap(),
            "--",
            "/bin/sleep",
            "1"
        ]))
        .success()
    );
    agent.wait_for(WAIT, "the rejection to be counted", || {
        value(
            &agent.metrics(),
            "apptheus_socket_connections_total",
            &[("result", "rejected")],
        ) == Some(1.0)
    });
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_containers_started_total", &[]),
        Some(0.0),
        "{m}"
    );
}
