//! Per-container cgroups on the real kernel (root; any cgroup layout:
//! `cargo xtask vm-test` runs them under v1, hybrid and v2): placement
//! beneath the original cgroup, limits that still hold, statistics against
//! the truth, adoption after a crash, no leaks.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{cgroup::*, *};

/// Runs `starter -- starter workload <args>` from inside `parent` (if any);
/// returns the child, whose pid is the starter's.
fn spawn_in(parent: Option<&ParentCgroup>, starter: &Path, args: &[&str]) -> std::process::Child {
    let workload = format!(
        "{} -- {} workload {}",
        starter.display(),
        starter.display(),
        args.join(" ")
    );
    let script = match parent {
        Some(p) => format!(
            "echo $$ > {}/cgroup.procs && exec {workload}",
            p.0.display()
        ),
        None => format!("exec {workload}"),
    };
    Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn container_lands_beneath_its_original_cgroup_whose_limit_still_holds() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let starter = trust.starter("starter");
    let agent = Agent::trusting(&starter, &[]);
    let parent = ParentCgroup::memory(&mc, Some(64 << 20));

    // Within the limit: runs, and is placed beneath the parent. It runs
    // until the test has looked (an exiting task's v1 cgroup reads "/").
    let gate = Gate::new();
    let until = gate.arg();
    let mut child = spawn_in(Some(&parent), &starter, &["--alloc-mib", "8", &until]);
    // CPU statistics exist in every layout: the container's cgroups have
    // been sampled once it has them.
    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let starter_pid = child.id();
    let parent_rel = format!("/{}", parent.0.file_name().unwrap().to_string_lossy());
    let memory_line = mc.cgroup_of(starter_pid).unwrap();
    assert!(
        memory_line.ends_with(&format!("{parent_rel}/apptheus-{id}")),
        "the container must sit beneath {parent_rel}: {memory_line}"
    );
    let m = agent.metrics();
    let limit = value(
        &m,
        "apptheus_container_memory_limit_bytes",
        &[("container_id", &id)],
    );
    let subtree_control = parent.0.join("cgroup.subtree_control");
    if mc.v2 {
        // Pure v2: placement emptied the starter's cgroup, which then gives
        // the container's cgroup every controller it can; the statistics
        // come from the container's own cgroup.
        let available = std::fs::read_to_string(parent.0.join("cgroup.controllers")).unwrap();
        let own = parent.0.join(format!("apptheus-{id}"));
        for (controller, file) in [
            ("memory", "memory.current"),
            ("pids", "pids.current"),
            ("io", "io.stat"),
        ] {
            if available.split_whitespace().any(|c| c == controller) {
                assert!(
                    own.join(file).exists(),
                    "{controller}: no {file} in {}",
                    own.display()
                );
            }
        }
        assert!(
            value(&m, "apptheus_container_pids", &[("container_id", &id)]).is_some(),
            "{m}"
        );
    }
    gate.open();
    assert!(child.wait().unwrap().success());
    if mc.v2 {
        // ...and takes them back once the container is gone, so that the
        // starter's cgroup can hold processes again.
        agent.wait_for(WAIT, "the starter's cgroup to be as it was", || {
            std::fs::read_to_string(&subtree_control).is_ok_and(|s| s.trim().is_empty())
        });
    }

    // Past the limit: the enclosing cgroup's limit still stops it.
    let mut child = spawn_in(
        Some(&parent),
        &starter,
        &["--alloc-mib", "256", "--sleep", "1"],
    );
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "a 256 MiB allocation under a 64 MiB limit must fail"
    );
    assert_eq!(
        limit,
        Some((64u64 << 20) as f64),
        "the enclosing limit is the one in force (none at all: the container's cgroup \
         has no memory statistics)\n{m}"
    );
}

#[test]
fn cpu_seconds_match_the_workloads_rusage() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);

    let before =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let mut child = spawn_in(None, &starter, &["--spin", "2"]);
    assert!(child.wait().unwrap().success());
    let after =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let secs = |r: &nix::sys::resource::Usage| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(r.user_time()) + t(r.system_time())
    };
    let truth = secs(&after) - secs(&before);

    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let mut reported = 0.0;
    agent.wait_for(WAIT, "the final CPU sample", || {
        let m = agent.metrics();
        reported = value(
            &m,
            "apptheus_container_cpu_usage_seconds_total",
            &[("container_id", &id)],
        )
        .unwrap_or(0.0);
        value(&m, "apptheus_container_tasks", &[("container_id", &id)]) == Some(0.0)
    });
    // What ran before the agent placed the container (for at most its
    // placement latency, which the agent reports, on every CPU) is charged
    // to the cgroup it started in: a millisecond or two on a real machine,
    // far more under the software emulation of `cargo xtask vm-test`.
    let placement = value(
        &agent.metrics(),
        "apptheus_container_placement_seconds_sum",
        &[],
    )
    .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let error = (reported - truth).abs() / truth;
    assert!(
        reported <= truth * 1.02 && reported >= truth * 0.98 - placement * cpus,
        "reported {reported:.3} s, rusage {truth:.3} s: {:.2}% off (placement took {placement:.3} s)",
        error * 100.0
    );
}

#[test]
fn memory_of_a_200_mib_workload_is_reported_within_5_percent() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let starter = trust.starter("starter");
    let agent = Agent::trusting(&starter, &[]);
    // The starter alone in its cgroup, as under `srun apptainer ...`: on
    // cgroup v2 the container's cgroup then gets the memory controller.
    let parent = ParentCgroup::memory(&mc, None);

    // Memory touched before the agent has placed the container stays
    // charged to the enclosing cgroup (cgroup v1 does not move charges):
    // the workload touches its memory once placed, as Apptainer's own
    // set-up (far longer than a placement) lets it, and holds it until the
    // test has read it.
    let gate = Gate::new();
    let until = gate.arg();
    let mut child = spawn_in(
        Some(&parent),
        &starter,
        &["--until-placed", "--alloc-mib", "200", &until],
    );
    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let m = agent.metrics();
    if value(
        &m,
        "apptheus_container_memory_rss_bytes",
        &[("container_id", &id)],
    )
    .is_none()
    {
        // Leave nothing running for the tests after this one.
        gate.open();
        let _ = child.wait();
        panic!("no memory statistics for the container: its cgroup has no memory controller\n{m}");
    }
    let mut rss = 0.0;
    agent.wait_for(WAIT, "rss to reach the allocation", || {
        rss = value(
            &agent.metrics(),
            "apptheus_container_memory_rss_bytes",
            &[("container_id", &id)],
        )
        .unwrap_or(0.0);
        rss >= 190.0 * MIB
    });
    let m = agent.metrics();
    let usage = value(
        &m,
        "apptheus_container_memory_usage_bytes",
        &[("container_id", &id)],
    )
    .unwrap();
    assert!(
        (rss / (200.0 * MIB) - 1.0).abs() <= 0.05,
        "rss {:.1} MiB\n{m}",
        rss / MIB
    );
    assert!(
        (usage / (200.0 * MIB) - 1.0).abs() <= 0.05,
        "usage {:.1} MiB\n{m}",
        usage / MIB
    );
    gate.open();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_restarted_agent_adopts_running_containers_and_leaves_nothing_behind() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let before = our_cgroup_dirs();
    let flag = format!("--trust.path={}", starter.display());
    let mut first = Agent::start(&[&flag]);
    // Long enough to outlive the restart, however slow the machine.
    let sleep = format!("{}", 4.0 * time_scale());
    let mut child = spawn_in(None, &starter, &["--sleep", &sleep]);
    let id = wait_container(&first, &starter, "apptheus_container_tasks");

    // A crash: no clean-up possible.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        our_cgroup_dirs()
            .iter()
            .any(|d| d.ends_with(format!("apptheus-{id}")))
    );

    let second = Agent::start(&[&flag]);
    let m = second.metrics();
    assert!(
        container_id(&m, "container_id", &id).is_some(),
        "adopted after restart\n{m}"
    );
    // One series for it (another test's container still running may be
    // adopted beside it: the agent adopts every running container it
    // marked).
    assert_eq!(
        m.matches(&format!("apptheus_container_info{{container_id=\"{id}\""))
            .count(),
        1,
        "no duplicate series\n{m}"
    );
    assert!(second.log_text().contains("adopting a running container"));

    assert!(child.wait().unwrap().success());
    // Only the agent ending the adopted container removes its cgroups.
    // The log line comes before the removal, but is read from the
    // agent's stderr by another thread: wait for both.
    second.wait_for(
        WAIT,
        "the adopted container to end and its cgroups to go",
        || new_cgroup_dirs(&before).is_empty() && second.log_text().contains("container exited"),
    );
}

#[test]
fn a_thousand_container_cycles_leave_no_cgroup_behind() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let before = our_cgroup_dirs();
    let agent = Agent::trusting(&starter, &["--monitor.grace-period=1s"]);
    for _ in 0..1000 {
        assert!(run(Command::new(&starter).args(["--no-namespaces", "--", "/bin/true"])).success());
    }
    agent.wait_for(
        WAIT,
        "1000 containers started and every cgroup removed",
        || {
            value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1000.0)
                && new_cgroup_dirs(&before).is_empty()
        },
    );
    agent.wait_for(WAIT, "the series to expire", || {
        value(&agent.metrics(), "apptheus_containers", &[]) == Some(0.0)
    });
}

/// The cgroups of every thread of process `pid`, sorted.
fn thread_cgroups(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("cgroup")).ok())
        .collect();
    out.sort();
    out
}

/// Runs `cli launch --after AFTER starter -- /bin/sleep SECS` (as
/// `apptainer exec` runs the starter) and waits until the agent has placed
/// the container; returns the process, whose pid is the starter's.
fn launch_and_wait_placed(
    agent: &Agent,
    cli: &Path,
    starter: &Path,
    after: &str,
    secs: &str,
) -> std::process::Child {
    let child = Command::new(cli)
        .args(["launch", "--after", after])
        .arg(starter)
        .args(["--no-namespaces", "--", "/bin/sleep", secs])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    agent.wait_for(WAIT, "the container's placement", || {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.contains(apptheus::testing::cgroup::DIR_PREFIX))
    });
    child
}

/// Apptainer's command-line tool execs the starter some time after it
/// starts. The agent recognises the tool (`<prefix>/bin/apptainer`, found
/// from the starter's path) and takes the cgroup migration lock until the
/// starter comes, so that placement finds it warm; doing so moves none of
/// the agent's threads, and stops when the tool exits without a starter.
#[test]
fn a_launch_through_apptainers_cli_is_prepared_and_moves_nothing() {
    if !privileged() {
        return;
    }
    let _g = serial();
    let trust = TrustDir::new();
    let (cli, starter) = trust.apptainer_layout();
    let agent = Agent::trusting(&starter, &[]);
    assert!(
        agent
            .log_text()
            .contains(&format!("launchers=\"{}", cli.display())),
        "the launcher next to the starter is trusted:\n{}",
        agent.log_text()
    );
    let threads_before = thread_cgroups(agent.child.id());
    let counter = |name: &str| value(&agent.metrics(), name, &[]).unwrap_or(-1.0);
    assert_eq!(counter("apptheus_cgroup_prewarm_windows_total"), 0.0);

    // `apptainer exec`: 0.2 s of preparation, then the starter in its place.
    let mut child = launch_and_wait_placed(&agent, &cli, &starter, "0.2", "2");
    assert_eq!(counter("apptheus_cgroup_prewarm_windows_total"), 1.0);
    assert!(
        counter("apptheus_cgroup_prewarm_writes_total") >= 1.0,
        "the lock was taken ahead of the starter"
    );
    // The window closes shortly after the starter's exec (the container
    // still runs): no more lock taking.
    std::thread::sleep(scaled(Duration::from_millis(300)));
    let writes = counter("apptheus_cgroup_prewarm_writes_total");
    std::thread::sleep(scaled(Duration::from_millis(300)));
    assert_eq!(counter("apptheus_cgroup_prewarm_writes_total"), writes);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        thread_cgroups(agent.child.id()),
        threads_before,
        "the warm-up moved none of the agent's threads"
    );

    // `apptainer --version`: a launcher that never execs a starter opens a
    // window that closes when it exits, and starts no container.
    let started = counter("apptheus_containers_started_total");
    let status = Command::new(&cli)
        .args(["launch", "--after", "0.1", "/bin/true"])
        .status()
        .unwrap();
    assert!(status.success());
    agent.wait_for(WAIT, "a second window", || {
        counter("apptheus_cgroup_prewarm_windows_total") == 2.0
    });
    std::thread::sleep(scaled(Duration::from_millis(100)));
    let after_exit = counter("apptheus_cgroup_prewarm_writes_total");
    assert!(after_exit > writes, "the second window took the lock");
    std::thread::sleep(scaled(Duration::from_millis(300)));
    assert_eq!(
        counter("apptheus_cgroup_prewarm_writes_total"),
        after_exit,
        "the window ended with the launcher"
    );
    assert_eq!(counter("apptheus_containers_started_total"), started);
    drop(agent);

    // Switched off: the launcher is ignored, the container still placed.
    let agent = Agent::trusting(&starter, &["--cgroup.prewarm=false"]);
    let mut child = launch_and_wait_placed(&agent, &cli, &starter, "0.05", "0.5");
    assert!(child.wait().unwrap().success());
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_cgroup_prewarm_windows_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "apptheus_cgroup_prewarm_writes_total", &[]),
        Some(0.0)
    );
}

/// `--cgroup.enable-controllers=false`: the agent leaves every
/// `cgroup.subtree_control` alone. On cgroup v2 the container's cgroup
/// then has no memory controller even when its starter was alone, and its
/// memory comes from its processes; on v1 its cgroup gives it.
#[test]
fn with_controllers_left_alone_a_v2_containers_memory_comes_from_its_processes() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let starter = trust.starter("starter");
    let agent = Agent::trusting(&starter, &["--cgroup.enable-controllers=false"]);
    let parent = ParentCgroup::memory(&mc, None);
    let sleep = format!("{}", 3.0 * time_scale());
    let mut child = spawn_in(
        Some(&parent),
        &starter,
        &["--delay", "0.3", "--alloc-mib", "64", "--sleep", &sleep],
    );
    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let memory = "apptheus_container_memory_rss_bytes";
    agent.wait_for(WAIT, "the container's memory", || {
        of(&agent.metrics(), memory, &id).is_some_and(|v| v >= 60.0 * MIB)
    });
    if mc.v2 {
        let subtree = std::fs::read_to_string(parent.0.join("cgroup.subtree_control")).unwrap();
        assert_eq!(subtree.trim(), "", "nothing enabled");
        assert!(
            agent.log_text().lines().any(|l| l.contains("level=info")
                && l.contains(&id)
                && l.contains("--cgroup.enable-controllers=false")),
            "{}",
            agent.log_text()
        );
    }
    assert!(child.wait().unwrap().success());
}

/// A cgroup delegated to the test user (uid 1500) in the hierarchy of the
/// memory controller, as systemd delegates `user@UID.service`: the
/// directory and its `cgroup.procs` (and on cgroup v2 `cgroup.threads`
/// and `cgroup.subtree_control`) are the user's. Removed on drop, with
/// what the user made in it.
struct Delegated(std::path::PathBuf);

impl Delegated {
    fn new(mc: &MemoryController, uid: u32) -> Self {
        let dir = mc.root.join(format!("delegated-{}", unique()));
        std::fs::create_dir(&dir).unwrap();
        for f in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
            "tasks",
        ] {
            let p = dir.join(f);
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            }
        }
        Self(dir)
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        for _ in 0..100 {
            let subdirs: Vec<_> = std::fs::read_dir(&self.0)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            for d in subdirs {
                let _ = std::fs::remove_dir(d);
            }
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// After a restart the agent takes over only the cgroups it made: in a
/// cgroup delegated to an ordinary user, directories with apptheus' naming
/// that the user made (one naming a process of root's, one holding the
/// user's own process) are neither adopted nor removed, and the user
/// cannot give them apptheus' mark. A real container in the same agent's
/// care is adopted.
#[test]
fn a_restarted_agent_adopts_only_the_cgroups_it_made() {
    const USER: u32 = 1500;
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let Some(mc) = MemoryController::find() else {
        apptheus_testkit::skip("a memory controller (v1 at /sys/fs/cgroup/memory, or cgroup2's)");
        return;
    };
    let flag = format!("--trust.path={}", starter.display());
    let first = Agent::start(&[&flag]);
    let sleep = format!("{}", 6.0 * time_scale());
    let mut real = Reaped(spawn_in(None, &starter, &["--sleep", &sleep]));
    let real_id = wait_container(&first, &starter, "apptheus_container_tasks");
    // Its cgroups carry apptheus' mark.
    let mark = our_cgroup_dirs()
        .into_iter()
        .find(|d| d.ends_with(format!("apptheus-{real_id}")))
        .map(|d| xattr(&d, "trusted.apptheus"))
        .expect("the real container's cgroup");
    assert!(mark.contains(&format!("container={real_id}")), "{mark}");

    // The user's forgeries, in the cgroup delegated to them: a directory
    // naming a process of root's (the agent's own), and one holding the
    // user's own process.
    let deleg = Delegated::new(&mc, USER);
    let root_pid = first.child.id();
    let d = deleg.0.display();
    let user_script = format!(
        "mkdir {d}/apptheus-{root_pid}-7 && mkdir {d}/apptheus-$$-5 && \
         echo $$ > {d}/apptheus-$$-5/cgroup.procs && echo ready && exec sleep {sleep}"
    );
    let script = format!(
        "echo $$ > {d}/cgroup.procs && exec {}",
        as_user(USER, &["/bin/sh", "-c", &user_script])
    );
    let mut user = Reaped(
        Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(user.0.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready", "the user's forgeries");
    let user_pid = user.0.id();
    let forged_root = deleg.0.join(format!("apptheus-{root_pid}-7"));
    let forged_own = deleg.0.join(format!("apptheus-{user_pid}-5"));
    // The user cannot mark them as apptheus' (trusted.* needs
    // CAP_SYS_ADMIN), not even with a copy of a real mark.
    let forge = "import errno, os, sys\n\
                 try:\n    os.setxattr(sys.argv[1], 'trusted.apptheus', sys.argv[2].encode())\n    print('set')\n\
                 except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))";
    let forged_mark = mark.replace(&real_id, &format!("{user_pid}-5"));
    let tried = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec {}",
            as_user(
                USER,
                &[
                    "python3",
                    "-c",
                    forge,
                    &forged_own.display().to_string(),
                    &forged_mark
                ]
            )
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tried.stdout).trim(),
        "EPERM",
        "the user tried to mark their directory: {tried:?}"
    );

    // A crash, and a new agent.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Agent::start(&[&flag]);
    let m = second.metrics();
    assert!(
        container_id(&m, "container_id", &real_id).is_some(),
        "the real container is adopted\n{m}\n{}",
        second.log_text()
    );
    for forged in [format!("{root_pid}-7"), format!("{user_pid}-5")] {
        assert!(
            !m.contains(&format!("container_id=\"{forged}\"")),
            "{forged} adopted\n{m}"
        );
        assert!(
            !second.log_text().contains(&forged),
            "{forged} touched\n{}",
            second.log_text()
        );
    }
    assert!(
        forged_root.is_dir() && forged_own.is_dir(),
        "the user's directories are left"
    );
    assert_eq!(
        std::fs::read_to_string(forged_own.join("cgroup.procs"))
            .unwrap()
            .trim(),
        user_pid.to_string(),
        "the user's process is left where the user put it"
    );
    user.0.kill().unwrap();
    user.0.wait().unwrap();
    assert!(real.0.wait().unwrap().success());
}

/// A child process killed and reaped when dropped (a test that fails
/// leaves nothing running for the next one to adopt).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A shell command line that runs `argv` as `uid` (its group the same
/// number, no supplementary groups), through python3 (the VMs of `cargo
/// xtask vm-test` have no setpriv).
fn as_user(uid: u32, argv: &[&str]) -> String {
    let uid = uid.to_string();
    let mut all = vec![
        "python3",
        "-c",
        "import os, sys; u = int(sys.argv[1]); os.setgroups([]); os.setgid(u); os.setuid(u); \
         os.execvp(sys.argv[2], sys.argv[2:])",
        &uid,
    ];
    all.extend_from_slice(argv);
    apptheus_testkit::shell_quote(&all)
}

/// The value of extended attribute `name` of `path`, as text.
fn xattr(path: &Path, name: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2]).decode())",
        ])
        .arg(path)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading {name} of {}: {:?}",
        path.display(),
        out
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A cgroup statistics source is switched off with `--no-source.<name>`,
/// and still with an admin's older `--no-collector.<name>`, which the
/// agent warns about once: neither source runs, and the container has
/// none of their families; the other sources go on.
#[test]
fn a_source_switched_off_in_either_spelling_reads_nothing() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--no-source.memory", "--no-collector.pids"]);
    let sleep = format!("{}", 30.0 * time_scale());
    let mut child = spawn_in(None, &starter, &["--sleep", &sleep]);
    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let m = agent.metrics();
    let source = |name: &str| value(&m, "apptheus_source_success", &[("source", name)]);
    for on in ["kernel", "cpu", "blkio", "pressure"] {
        assert_eq!(source(on), Some(1.0), "{on} runs\n{m}");
    }
    for off in ["memory", "pids"] {
        assert_eq!(source(off), None, "{off} is off\n{m}");
    }
    for family in [
        "apptheus_container_memory_usage_bytes",
        "apptheus_container_pids",
    ] {
        assert_eq!(of(&m, family, &id), None, "{family}\n{m}");
    }
    let log = agent.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("deprecated flag"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("flag=--no-collector.pids")
            && warnings[0].contains("instead=--no-source.pids"),
        "{log}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
