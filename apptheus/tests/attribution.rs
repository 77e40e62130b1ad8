//! Kernel attribution, end to end on the real kernel (root, BTF): the real
//! agent binary, a starter-like launcher at a trusted path, real workloads.
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the container whose starter is `starter` shows
/// `metric == want` and returns its id.
fn wait_counter(agent: &Agent, starter: &Path, metric: &str, want: f64) -> String {
    let starter = starter.display().to_string();
    let mut id = None;
    agent.wait_for(WAIT, &format!("{metric} == {want} for {starter}"), || {
        let m = agent.metrics();
        id = container_id(&m, "starter", &starter);
        id.as_ref()
            .and_then(|id| value(&m, metric, &[("container_id", id)]))
            .is_some_and(|v| v == want)
    });
    id.unwrap()
}

#[test]
fn every_process_and_thread_of_the_workload_is_attributed_and_counted() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);

    // The master forks the container (1), which enters a PID namespace and
    // forks its init (1), which execs the workload; the workload forks 5
    // children, runs /bin/true 4 times (a fork and an exec each) and
    // creates 3 threads. The workload is the starter binary itself: a
    // nested starter stays part of the outer container.
    let status = run(Command::new(&starter).args([
        "--",
        starter.to_str().unwrap(),
        "workload",
        "--forks",
        "5",
        "--execs",
        "4",
        "--threads",
        "3",
    ]));
    assert!(status.success());
    // Every process has exited: master, namespace intermediate, workload,
    // 5 forks, 4 /bin/true.
    let id = wait_counter(
        &agent,
        &starter,
        "apptheus_container_process_exits_total",
        12.0,
    );
    let m = agent.metrics();
    let get = |name: &str| value(&m, name, &[("container_id", &id)]);
    assert_eq!(
        get("apptheus_container_execs_total"),
        Some(6.0),
        "starter + workload + 4 /bin/true\n{m}"
    );
    assert_eq!(
        get("apptheus_container_forks_total"),
        Some(11.0),
        "1 + 1 + 5 + 4\n{m}"
    );
    assert_eq!(
        get("apptheus_container_threads_created_total"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(get("apptheus_container_tasks"), Some(0.0), "{m}");
    assert_eq!(
        value(&m, "apptheus_containers_started_total", &[]),
        Some(1.0),
        "one container, not two\n{m}"
    );
    assert!(
        agent.log_text().contains("container exited"),
        "{}",
        agent.log_text()
    );
    assert!(agent.stop().success());
}

/// A task of a starter run the agent lets go (here a helper run of
/// Apptainer's tool, which is not a container) is in no container: a
/// starter it runs later is a container of its own, counted from its
/// start.
#[test]
fn a_starter_run_by_a_task_of_a_run_let_go_is_a_container_of_its_own() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let trust = TrustDir::new();
    let (cli, starter, agent) = agent_trusting_apptainer(&trust);
    let flag = tempfile::tempdir().unwrap();
    let go = flag.path().join("go");
    // The helper run's container process waits until the agent has let
    // the run go, then runs the starter.
    let nested = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; \
         exec {s} --no-namespaces -- {s} workload --spin 0.3",
        go = go.display(),
        s = starter.display()
    );
    let mut helper = Command::new(&cli)
        .args([
            "--no-namespaces",
            "--arg0",
            "Apptainer runtime parent: tmp-rootfs-1",
            "--",
        ])
        .arg(&starter)
        .args(["--no-namespaces", "--", "/bin/sh", "-c", &nested])
        .spawn()
        .unwrap();
    agent.wait_for(WAIT, "the helper run to be let go", || {
        value(&agent.metrics(), "apptheus_helper_runs_total", &[]) == Some(1.0)
    });
    std::fs::write(&go, "").unwrap();
    assert!(helper.wait().unwrap().success());
    let id = wait_counter(&agent, &starter, "apptheus_container_execs_total", 2.0);
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_containers_started_total", &[]),
        Some(1.0),
        "{m}"
    );
    agent.wait_for(WAIT, "the container's CPU", || {
        value(
            &agent.metrics(),
            "apptheus_container_cpu_usage_seconds_total",
            &[("container_id", &id)],
        )
        .is_some_and(|c| c >= 0.29)
    });
}

#[test]
fn copies_are_not_trusted_and_symlinks_are() {
    let Some((_serial, trust, starter)) = trusted_starter() else {
        return;
    };
    let copy = trust.starter("copy-of-starter");
    let link = trust.path("link-to-starter");
    std::os::unix::fs::symlink(&starter, &link).unwrap();
    let agent = Agent::trusting(&starter, &[]);

    assert!(run(Command::new(&copy).args(["--", "/bin/true"])).success());
    // Give the agent time to (wrongly) see it.
    std::thread::sleep(Duration::from_millis(500));
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_containers_started_total", &[]),
        Some(0.0),
        "a copy must not be trusted\n{m}"
    );

    assert!(run(Command::new(&link).args(["--", "/bin/true"])).success());
    agent.wait_for(WAIT, "the symlinked starter to be attributed", || {
        value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1.0)
    });
}

#[test]
fn replaced_starter_is_trusted_after_sighup_and_the_old_inode_is_not() {
    let Some((_serial, trust, starter)) = trusted_starter() else {
        return;
    };
    // Keep the old file reachable through a hard link (same inode).
    let old = trust.path("old-inode");
    std::fs::hard_link(&starter, &old).unwrap();
    let agent = Agent::trusting(&starter, &[]);

    // A package upgrade: new file written beside, renamed over the path.
    let new = trust.starter("starter.new");
    std::fs::rename(&new, &starter).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for(WAIT, "the trusted set to change", || {
        agent.log_text().contains("trusted starters changed")
    });

    assert!(run(Command::new(&old).args(["--", "/bin/true"])).success());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        value(&agent.metrics(), "apptheus_containers_started_total", &[]),
        Some(0.0)
    );

    assert!(run(Command::new(&starter).args(["--", "/bin/true"])).success());
    agent.wait_for(WAIT, "the new starter to be attributed", || {
        value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1.0)
    });
}

#[test]
fn unshare_as_a_trusted_launcher() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let unshare = Path::new("/usr/bin/unshare");
    let agent = Agent::trusting(unshare, &[]);
    // unshare forks (1) into the new PID namespace; sh forks /bin/true (1)
    // and runs it (exec 1), after the two execs of unshare and sh.
    let status = run(Command::new(unshare).args([
        "--fork",
        "--pid",
        "--mount-proc",
        "/bin/sh",
        "-c",
        "/bin/true; exit 0",
    ]));
    assert!(status.success());
    let id = wait_counter(&agent, unshare, "apptheus_container_tasks", 0.0);
    let m = agent.metrics();
    assert!(
        value(
            &m,
            "apptheus_container_forks_total",
            &[("container_id", &id)]
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "apptheus_container_execs_total",
            &[("container_id", &id)]
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
}

/// An OCI bundle whose root is an empty directory with the host's `/usr`
/// bind-mounted read-only (and `/bin`, `/lib`... as the host has them:
/// symlinks into usr on merged-usr systems, bind mounts otherwise).
fn oci_bundle(dir: &Path, script: &str) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr")).unwrap();
    std::fs::create_dir_all(rootfs.join("proc")).unwrap();
    let mut mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro", "nosuid", "nodev"]}),
    ];
    for top in ["bin", "sbin", "lib", "lib64", "lib32"] {
        let host = Path::new("/").join(top);
        match std::fs::read_link(&host) {
            Ok(target) => std::os::unix::fs::symlink(target, rootfs.join(top)).unwrap(),
            Err(_) if host.is_dir() => {
                std::fs::create_dir(rootfs.join(top)).unwrap();
                mounts.push(serde_json::json!({"destination": host, "type": "bind",
                    "source": host, "options": ["rbind", "ro", "nosuid", "nodev"]}));
            }
            Err(_) => {}
        }
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "apptheus-test",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// runc, from Debian's package, trusted as a starter: each `runc run` is a
/// container, and everything the workload does inside runc's namespaces is
/// counted. runc's own work (its re-exec, `runc init`, nsexec's clones) is
/// the same in both runs, so the difference between a workload running
/// /bin/true ten times and one running it no times is exactly ten execs
/// and ten forks.
#[test]
fn runc_as_a_trusted_launcher() {
    if !privileged() {
        return;
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(runc) = runc else {
        apptheus_testkit::skip("runc (Debian package runc; scripts/setup.sh --test installs it)");
        return;
    };
    let _serial = serial();
    let mut counts = Vec::new();
    for (n, trues) in [0usize, 10].into_iter().enumerate() {
        // An agent per run: its only container is runc's.
        let agent = Agent::trusting(runc, &[]);
        let bundle = tempfile::Builder::new()
            .prefix("apptheus-oci-")
            .tempdir()
            .unwrap();
        oci_bundle(
            bundle.path(),
            &format!("{}exit 0", "/bin/true; ".repeat(trues)),
        );
        let name = format!("apptheus-test-{}-{n}", std::process::id());
        let status = run(Command::new(runc)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&name));
        assert!(status.success(), "runc run failed");
        let id = wait_counter(&agent, runc, "apptheus_container_tasks", 0.0);
        let m = agent.metrics();
        let get = |metric| {
            value(&m, metric, &[("container_id", &id)])
                .unwrap_or_else(|| panic!("{metric} for {id} in\n{m}"))
        };
        counts.push((
            get("apptheus_container_execs_total"),
            get("apptheus_container_forks_total"),
        ));
    }
    eprintln!("runc containers (execs, forks): {counts:?}");
    let (execs0, forks0) = counts[0];
    let (execs10, forks10) = counts[1];
    assert!(
        execs0 >= 1.0,
        "the workload's sh was not counted: {counts:?}"
    );
    assert_eq!(execs10 - execs0, 10.0, "{counts:?}");
    assert_eq!(forks10 - forks0, 10.0, "{counts:?}");
}
