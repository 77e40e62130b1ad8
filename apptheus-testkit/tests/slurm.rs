//! The kit's one-node Slurm against the real Apptainer (no agent): a batch
//! job runs `apptainer exec` as the test user, the workload lands in the
//! job's memory cgroup, and the job's --mem holds. Needs root, Slurm and
//! the cached Apptainer root (`scripts/setup.sh --test`); otherwise SKIPPED
//! (a failure under APPTHEUS_REQUIRE_PRIVILEGED=1).
use std::time::{Duration, Instant};

use apptheus_testkit::{
    apptainer::{As, Session},
    or_skip, shell_quote,
    slurm::{Cgroups, Cluster},
    workload::{Report, Workload},
};

const LIMIT: Duration = Duration::from_secs(60);

/// A batch script that runs `w` in `image` with `apptainer exec`, as the
/// test user (the job runs as root: entering the root mounts file systems).
fn job_script(s: &Session, image: &str, w: &Workload) -> String {
    let exec = s.exec_command(As::User, image, &[], w);
    let argv = s.argv(As::User, &exec).unwrap();
    format!("#!/bin/sh\nexec {}\n", shell_quote(&argv))
}

#[test]
fn a_batch_job_runs_apptainer_in_its_cgroup_and_its_mem_holds() {
    let Some(s) = or_skip(Session::start()).unwrap() else {
        return;
    };
    let t = Instant::now();
    let Some(cluster) = or_skip(Cluster::start()).unwrap() else {
        return;
    };
    eprintln!(
        "apptainer {}, Slurm node {} ({:?}) up in {:.1} s",
        s.root().apptainer_version(),
        cluster.node(),
        cluster.cgroups(),
        t.elapsed().as_secs_f64()
    );
    let image = s.build_image("job").unwrap();

    // Both at once: a workload within --mem=64M and one far beyond it.
    let fits = cluster
        .submit(
            &job_script(
                &s,
                &image.inside,
                &Workload::new().touch_mib(16).children(2),
            ),
            &["--mem=64M"],
        )
        .unwrap();
    let too_big = cluster
        .submit(
            &job_script(&s, &image.inside, &Workload::new().touch_mib(256)),
            &["--mem=64M"],
        )
        .unwrap();

    let t = Instant::now();
    let job = cluster.wait(fits, LIMIT).unwrap();
    eprintln!("job {fits} ended in {:.1} s", t.elapsed().as_secs_f64());
    let out = job.stdout().unwrap();
    assert_eq!(job.state, "COMPLETED", "{out}\n{job:?}");
    let report = Report::parse(&out).unwrap();
    let done = report.done.as_ref().unwrap();
    assert_eq!((done.touched_mib, done.children), (16, 2));
    let memory = if cluster.cgroups() == Cgroups::V1 {
        report.cgroup("memory")
    } else {
        report.cgroup("")
    }
    .unwrap();
    let job_cgroup = cluster.job_cgroup(&job, 0);
    assert!(
        memory.starts_with(&format!("{job_cgroup}/step_batch/")),
        "workload in {memory}, job cgroup {job_cgroup}"
    );

    let job = cluster.wait(too_big, LIMIT).unwrap();
    eprintln!("job {too_big} ended in {:.1} s", t.elapsed().as_secs_f64());
    let out = job.stdout().unwrap();
    assert_eq!(job.state, "OUT_OF_MEMORY", "{out}\n{job:?}");
    let report = Report::parse(&out).unwrap();
    assert_eq!(
        report.done, None,
        "the workload got past its 256 MiB: {out}"
    );

    let t = Instant::now();
    cluster.stop().unwrap();
    eprintln!("cluster stopped in {:.1} s", t.elapsed().as_secs_f64());
}
