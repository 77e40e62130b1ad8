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

/// The most common way of using Apptainer on a cluster: job.sh runs
/// `apptainer exec` and goes on, its shell beside the container in the
/// task's cgroup. The task's memory cgroup is not the container's alone, so
/// the container's memory comes from its processes: within 5 % of what the
/// workload touched, the job labelled from its cgroup path, and the job
/// completes as usual.
#[test]
fn a_batch_scripts_apptainer_exec_beside_its_shell_is_read_from_its_processes() {
    let Some((_serial, s, cluster, agent)) = setup() else {
        return;
    };
    let image = s.build_image("beside").unwrap();
    let w = Workload::new()
        .touch_mib(128)
        .hold(apptheus_testkit::workload::Hold::For(Duration::from_secs(
            6,
        )));
    let exec = s.exec_command(As::User, &image.inside, &[], &w);
    let argv = s.argv(As::User, &exec).unwrap();
    let script = format!(
        "#!/bin/sh\n{}\necho apptainer exited: $?\n",
        shell_quote(&argv)
    );
    let job = cluster.submit(&script, &["--mem=512M"]).unwrap();
    let mut id = None;
    let mut rss = 0.0;
    agent.wait_for(LIMIT, "the job's container and its memory", || {
        let m = agent.metrics();
        id = container_id(&m, "slurm_job_id", &job.to_string());
        rss = id
            .as_ref()
            .and_then(|id| {
                value(
                    &m,
                    "apptheus_container_proc_memory_rss_bytes",
                    &[("container_id", id)],
                )
            })
            .unwrap_or(0.0);
        rss >= 128.0 * 1024.0 * 1024.0
    });
    let id = id.unwrap();
    let m = agent.metrics();
    // The container's processes are the workload and Apptainer's starter
    // (a Go program of some 20 MiB resident), as in its cgroups.
    let mib = 1024.0 * 1024.0;
    assert!(
        rss >= 128.0 * mib && rss <= (128.0 + 48.0) * mib,
        "RSS {:.1} MiB for 128 MiB touched\n{m}",
        rss / mib
    );
    eprintln!(
        "measured: RSS {:.1} MiB for 128 MiB touched beside Apptainer's starter",
        rss / mib
    );
    assert_eq!(
        of(&m, "apptheus_container_memory_usage_bytes", &id),
        None,
        "the task's memory cgroup also holds the batch shell\n{m}"
    );
    let ended = cluster.wait(job, LIMIT).unwrap();
    let out = ended.stdout().unwrap_or_default();
    assert_eq!(ended.state, "COMPLETED", "{out}\n{ended:?}");
    assert!(out.contains("apptainer exited: 0"), "{out}");
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
    // Its memory comes from the job's cgroup, which held nothing else.
    let peak = of(&m, "apptheus_container_memory_max_usage_bytes", &id);
    assert!(
        peak.is_some_and(|p| p >= (32u64 << 20) as f64),
        "peak {peak:?} for 32 MiB touched\n{}",
        agent.log_text()
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
