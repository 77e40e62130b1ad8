//! The agent under a real one-node Slurm (Debian's 22.05, cgroup plugin)
//! running the real Apptainer in batch jobs: a container is labelled with
//! the job Slurm put it in (from its cgroup path, not from a variable the
//! job can set), even when it lives a second; the job's --mem still holds,
//! the OOM kill is counted, and Slurm still tells that the job ran out of
//! memory (its OOM accounting and clean-up untouched). Needs
//! root, Slurm and the cached Apptainer root (`scripts/setup.sh --test`);
//! otherwise SKIPPED (a failure under APPTHEUS_REQUIRE_PRIVILEGED=1).
mod common;

use std::time::Duration;

use apptheus_testkit::{
    apptainer::{As, Session},
    or_skip, shell_quote,
    slurm::{Cgroups, Cluster},
    workload::{Report, Workload},
};
use common::{Agent, Serial, container_id, of, value};

const LIMIT: Duration = Duration::from_secs(90);

/// How the tests here start: `None` (the skip reported) without the
/// cached Apptainer root or Slurm; else the lock that keeps agents apart, a
/// session in the Apptainer root, a running one-node cluster and an agent
/// trusting the root's starter. Bind them in this order, so that they go
/// in the reverse.
fn setup() -> Option<(Serial, Session, Cluster, Agent)> {
    let serial = common::serial();
    let s = or_skip(Session::start()).unwrap()?;
    let cluster = or_skip(Cluster::start()).unwrap()?;
    let agent = Agent::trusting(&s.root().starter(), &[]);
    Some((serial, s, cluster, agent))
}

/// A batch script that runs `w` in `image` with `apptainer exec` as the
/// test user, after setting SLURM_JOB_ID to a lie (the job runs as root:
/// entering the Apptainer root mounts file systems).
fn job_script(s: &Session, image: &str, w: &Workload) -> String {
    let exec = s.exec_command(As::User, image, &[], w);
    let argv = s.argv(As::User, &exec).unwrap();
    format!(
        "#!/bin/sh\nexport SLURM_JOB_ID=999999\nexec {}\n",
        shell_quote(&argv)
    )
}

/// A loop the batch script's shell runs in its own process before it runs
/// the container (a second or so of CPU).
const BUSY: &str = "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done";

/// A file in /dev/shm, removed on drop: 150 MiB of shared memory written
/// there by a batch script stay charged to its job's memory cgroup.
struct Shm(String);

impl Shm {
    fn new() -> Self {
        Shm(format!("/dev/shm/apptheus-test-{}", common::unique()))
    }

    /// The script's lines that fill it.
    fn fill(&self) -> String {
        format!(
            "dd if=/dev/zero of={} bs=1048576 count=150 || exit 99",
            self.0
        )
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The container of job `job` once its memory in use reaches `mib` MiB:
/// its id and that value, in MiB.
fn job_container_memory(agent: &Agent, job: u32, mib: f64) -> (String, f64) {
    let mut id = None;
    let mut used = 0.0;
    agent.wait_for(LIMIT, "the job's container and its memory", || {
        let m = agent.metrics();
        id = container_id(&m, "slurm_job_id", &job.to_string());
        used = id
            .as_ref()
            .and_then(|id| {
                value(
                    &m,
                    "apptheus_container_memory_usage_bytes",
                    &[("container_id", id)],
                )
            })
            .unwrap_or(0.0)
            / MIB;
        used >= mib
    });
    (id.unwrap(), used)
}

const MIB: f64 = 1024.0 * 1024.0;

/// The container's final CPU (once its end is seen, two reads agree).
fn final_cpu(agent: &Agent, id: &str) -> f64 {
    agent.wait_for(LIMIT, "the container's end", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(id))
    });
    let mut cpu = -1.0;
    agent.wait_for(LIMIT, "the container's final CPU", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = of(
            &agent.metrics(),
            "apptheus_container_cpu_usage_seconds_total",
            id,
        )
        .unwrap_or(-1.0);
        let settled = now == cpu && now >= 0.0;
        cpu = now;
        settled
    });
    cpu
}

/// The most common way of using Apptainer on a cluster, with a batch
/// script that also works itself: job.sh burns CPU, fills 150 MiB of
/// shared memory, starts a helper process that burns beside, then runs
/// `apptainer exec` and goes on, its shell beside the container in the
/// task's cgroup. The container's numbers are its own: its memory within
/// what the workload touched plus Apptainer's starter (not the job's
/// shared memory), its CPU what the workload burned plus Apptainer's own
/// (not the script's or the helper's); the job is labelled from its cgroup
/// path and completes as usual.
#[test]
fn a_batch_scripts_own_use_beside_its_apptainer_exec_is_not_the_containers() {
    let Some((_serial, s, cluster, agent)) = setup() else {
        return;
    };
    let image = s.build_image("beside").unwrap();
    let touched = 128.0;
    let w = Workload::new()
        .cpu(Duration::from_millis(800))
        .touch_mib(touched as u64)
        .hold(apptheus_testkit::workload::Hold::For(Duration::from_secs(
            6,
        )));
    let exec = s.exec_command(As::User, &image.inside, &[], &w);
    let argv = s.argv(As::User, &exec).unwrap();
    let shm = Shm::new();
    let script = format!(
        "#!/bin/sh\n{BUSY}\n{}\n({BUSY}) &\n{}\necho apptainer exited: $?\nwait\n",
        shm.fill(),
        shell_quote(&argv)
    );
    let job = cluster.submit(&script, &["--mem=768M"]).unwrap();
    let (id, used) = job_container_memory(&agent, job, touched);
    let m = agent.metrics();
    // The container's processes are the workload and Apptainer's starter
    // (a Go program of some 20 MiB resident).
    assert!(
        used <= touched + 48.0,
        "memory usage {used:.1} MiB for {touched} MiB touched (the job's 150 MiB of \
         shared memory are not the container's)\n{m}"
    );
    eprintln!("measured: memory usage {used:.1} MiB for {touched} MiB touched beside the script");
    let ended = cluster.wait(job, LIMIT).unwrap();
    let out = ended.stdout().unwrap_or_default();
    assert_eq!(ended.state, "COMPLETED", "{out}\n{ended:?}");
    assert!(out.contains("apptainer exited: 0"), "{out}");
    let burned = Report::parse(&out)
        .and_then(|r| r.done)
        .map(|d| (d.cpu_us + d.children_cpu_us) as f64 / 1e6)
        .expect("the workload's report");
    let cpu = final_cpu(&agent, &id);
    eprintln!("measured: CPU {cpu:.3} s, the workload burned {burned:.3} s");
    // Apptainer's own CPU (its starter, the image mounted or unpacked)
    // is the container's too; the script's and its helper's (a second or
    // more each) are not.
    assert!(
        cpu >= burned * 0.98 && cpu <= burned + 0.5,
        "CPU {cpu:.3} s, the workload burned {burned:.3} s\n{}",
        agent.log_text()
    );
    cluster.stop().unwrap();
}

/// A batch script that burns CPU and fills 150 MiB of shared memory, then
/// `exec`s apptainer: its process becomes Apptainer's, alone in the task's
/// cgroup with the job's shared memory. The container's memory is its own
/// (not the 150 MiB), its CPU its own (not the script's before the exec).
#[test]
fn a_batch_script_that_execs_apptainer_hands_on_none_of_its_own_use() {
    let Some((_serial, s, cluster, agent)) = setup() else {
        return;
    };
    let image = s.build_image("execd").unwrap();
    let touched = 128.0;
    let w = Workload::new()
        .cpu(Duration::from_millis(500))
        .touch_mib(touched as u64)
        .hold(apptheus_testkit::workload::Hold::For(Duration::from_secs(
            4,
        )));
    let exec = s.exec_command(As::User, &image.inside, &[], &w);
    let argv = s.argv(As::User, &exec).unwrap();
    let shm = Shm::new();
    let script = format!(
        "#!/bin/sh\n{BUSY}\n{}\nexec {}\n",
        shm.fill(),
        shell_quote(&argv)
    );
    let job = cluster.submit(&script, &["--mem=768M"]).unwrap();
    let (id, used) = job_container_memory(&agent, job, touched);
    let m = agent.metrics();
    assert!(
        used <= touched + 48.0,
        "memory usage {used:.1} MiB for {touched} MiB touched (the job's 150 MiB of \
         shared memory are not the container's)\n{m}"
    );
    eprintln!("measured: memory usage {used:.1} MiB for {touched} MiB touched after the script");
    let ended = cluster.wait(job, LIMIT).unwrap();
    let out = ended.stdout().unwrap_or_default();
    assert_eq!(ended.state, "COMPLETED", "{out}\n{ended:?}");
    let burned = Report::parse(&out)
        .and_then(|r| r.done)
        .map(|d| (d.cpu_us + d.children_cpu_us) as f64 / 1e6)
        .expect("the workload's report");
    let cpu = final_cpu(&agent, &id);
    eprintln!("measured: CPU {cpu:.3} s, the workload burned {burned:.3} s");
    assert!(
        cpu >= burned * 0.98 && cpu <= burned + 0.5,
        "CPU {cpu:.3} s, the workload burned {burned:.3} s (the script burned a second \
         or so before its exec)\n{}",
        agent.log_text()
    );
    cluster.stop().unwrap();
}

#[test]
fn a_job_labels_its_containers_and_its_memory_limit_holds() {
    let Some((_serial, s, cluster, agent)) = setup() else {
        return;
    };
    let image = s.build_image("job").unwrap();

    // A container of a second, and one far beyond the job's --mem.
    let short = cluster
        .submit(
            &job_script(
                &s,
                &image.inside,
                &Workload::new()
                    .cpu(Duration::from_millis(300))
                    .touch_mib(32)
                    .children(1),
            ),
            &["--mem=256M"],
        )
        .unwrap();
    let job = cluster.wait(short, LIMIT).unwrap();
    let out = job.stdout().unwrap();
    assert_eq!(job.state, "COMPLETED", "{out}\n{job:?}");
    let report = Report::parse(&out).unwrap();
    let job_cgroup = cluster.job_cgroup(&job, 0);
    match cluster.cgroups() {
        Cgroups::V1 => {
            // Slurm's memory cgroup, with no child of the agent's below it
            // (Slurm counts OOM kills there); the agent's own in cpuacct.
            let memory = report.cgroup("memory").unwrap();
            assert!(
                memory.starts_with(&format!("{job_cgroup}/")) && !memory.contains("/apptheus-"),
                "the workload ran in memory cgroup {memory}"
            );
            let cpu = report.cgroup("cpuacct").unwrap();
            assert!(
                cpu.contains("/apptheus-"),
                "the workload ran in cpuacct {cpu}"
            );
        }
        _ => {
            let unified = report.cgroup("").unwrap();
            assert!(
                unified.starts_with(&format!("{job_cgroup}/")),
                "the workload ran in {unified}"
            );
        }
    }
    let id = {
        let mut id = None;
        agent.wait_for(LIMIT, "the job's container", || {
            id = container_id(&agent.metrics(), "slurm_job_id", &short.to_string());
            id.is_some()
        });
        id.unwrap()
    };
    let m = agent.metrics();
    let info = m
        .lines()
        .find(|l| l.starts_with("apptheus_container_info{") && l.contains(&id))
        .unwrap();
    assert!(
        info.contains(&format!("image=\"{}\"", image.inside)),
        "{info}"
    );
    assert!(!m.contains("slurm_job_id=\"999999\""), "{m}");
    // Its memory is read from its processes (the job's memory cgroup is
    // Slurm's, shared with whatever the job runs), its CPU from its own
    // cgroup.
    assert!(info.contains("from_processes=\"memory\""), "{info}");
    assert!(
        of(&m, "apptheus_container_cpu_usage_seconds_total", &id).is_some_and(|c| c >= 0.29),
        "{m}"
    );

    let big = cluster
        .submit(
            &job_script(&s, &image.inside, &Workload::new().touch_mib(512)),
            &["--mem=64M"],
        )
        .unwrap();
    let job = cluster.wait(big, LIMIT).unwrap();
    let out = job.stdout().unwrap();
    assert_eq!(
        job.state,
        "OUT_OF_MEMORY",
        "{out}\n{job:?}\n{}\n{}",
        cluster.logs(),
        agent.log_text()
    );
    let mut id = None;
    agent.wait_for(LIMIT, "the second job's container", || {
        id = container_id(&agent.metrics(), "slurm_job_id", &big.to_string());
        id.is_some()
    });
    let id = id.unwrap();
    let mut kills = None;
    agent.wait_for(LIMIT, "its OOM kill", || {
        kills = of(
            &agent.metrics(),
            "apptheus_container_memory_oom_kills_total",
            &id,
        )
        .filter(|k| *k >= 1.0);
        kills.is_some()
    });
    cluster.stop().unwrap();
}
