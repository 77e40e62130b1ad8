//! Shared harness for the privileged integration tests: a real agent
//! process, trusted starters in root-owned directories, scraping. The
//! parts that `cargo xtask` shares live in apptheus-testkit; this module
//! binds them to this package's agent binary.
// Each test binary uses a part of it.
#![allow(dead_code, unused_imports)]

pub mod cgroup;
pub mod tls;

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
};

pub use apptheus_testkit::{
    cgroupfs::{MemoryController, new_cgroup_dirs, our_cgroup_dirs},
    host::{
        Gate, Serial, TrustDir, children_cpu_seconds, cpu_at_exec, free_port, launch_workload,
        launch_workload_noting_cpu, run, scaled, serial, time_scale, unique,
    },
    privileged,
    scrape::{container_id, http_get, value},
    sim::starter_sim,
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_apptheus");

/// How most tests start: `None` (the skip reported) unless
/// [`privileged`]; else the lock that keeps agents apart, and a trusted
/// directory holding the starter simulator as `starter`. Bind them in this
/// order (`let Some((_serial, trust, starter)) = ...`), so that they go in
/// the reverse.
pub fn trusted_starter() -> Option<(Serial, TrustDir, PathBuf)> {
    if !privileged() {
        return None;
    }
    let serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    Some((serial, trust, starter))
}

/// Apptainer's layout in `trust` ([`TrustDir::apptainer_layout`]) and an
/// agent trusting its starter: (tool, starter, agent).
pub fn agent_trusting_apptainer(trust: &TrustDir) -> (PathBuf, PathBuf, Agent) {
    let (cli, starter) = trust.apptainer_layout();
    let agent = Agent::trusting(&starter, &[]);
    (cli, starter, agent)
}

/// The value of `name` for container `id`.
pub fn of(m: &str, name: &str, id: &str) -> Option<f64> {
    value(m, name, &[("container_id", id)])
}

/// The testkit's agent, started from [`AGENT`].
pub struct Agent(apptheus_testkit::agent::Agent);

impl Agent {
    /// Starts the agent with `args` (plus a free port and a private socket
    /// path unless given) and waits until it is ready.
    pub fn start(args: &[&str]) -> Self {
        Self::start_wrapped(&[], args)
    }

    /// [`Agent::start`] with `--trust.path=<starter>` first, then `args`.
    pub fn trusting(starter: &Path, args: &[&str]) -> Self {
        let trust = format!("--trust.path={}", starter.display());
        Self::start(&[&[trust.as_str()], args].concat())
    }

    /// [`Agent::start`], the agent run by the command `wrapper` (which
    /// must exec its last argument with the rest: e.g. `unshare -m ...`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        Self(apptheus_testkit::agent::Agent::start_with(
            Path::new(AGENT),
            wrapper,
            args,
        ))
    }

    /// SIGTERM, and the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.0.stop()
    }
}

impl Deref for Agent {
    type Target = apptheus_testkit::agent::Agent;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The value of `metric` for container `id` once it has ended: read from
/// the first exposition in which the kernel's count of its tasks is 0 (a
/// sample taken after its last task's exit, which banked what the task
/// used). (Two reads that agree prove nothing: a read no scrape schedule
/// explains may be served the same sample twice.)
pub fn final_value(agent: &Agent, id: &str, metric: &str) -> f64 {
    agent.wait_for(cgroup::WAIT, "the container's end", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(id))
    });
    let mut v = -1.0;
    agent.wait_for(
        cgroup::WAIT,
        "a sample of the container after its last task",
        || {
            let m = agent.metrics();
            match (of(&m, "apptheus_container_tasks", id), of(&m, metric, id)) {
                (Some(0.0), Some(now)) => {
                    v = now;
                    true
                }
                _ => false,
            }
        },
    );
    v
}
