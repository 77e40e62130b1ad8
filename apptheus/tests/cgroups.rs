//! Per-container cgroups on the real kernel (root; any cgroup layout:
//! `cargo xtask vm-test` runs them under v1, hybrid and v2): placement
//! beneath the original cgroup, limits that still hold, statistics against
//! the truth, adoption after a crash, no leaks.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const WAIT: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

/// A memory cgroup (v1 or v2) made for a test, removed on drop.
struct ParentCgroup(PathBuf);

impl ParentCgroup {
    fn memory(mc: &MemoryController, limit: Option<u64>) -> Self {
        let dir = mc.root.join(format!("atest-{}", unique()));
        std::fs::create_dir(&dir).expect("create a memory cgroup");
        if let Some(l) = limit {
            std::fs::write(dir.join(mc.limit_file()), l.to_string()).unwrap();
            // No swap to escape to, where the kernel accounts swap.
            let (file, value) = mc.swap_limit(l);
            let _ = std::fs::write(dir.join(file), value);
        }
        Self(dir)
    }
}

/// The memory controller, or the test's skip (a failure in CI).
fn memory_controller() -> Option<MemoryController> {
    let mc = MemoryController::find();
    if mc.is_none() {
        apptheus::testing::skip("a memory controller in this cgroup layout");
    }
    mc
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

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

fn wait_container(agent: &Agent, starter: &Path, metric: &str) -> String {
    let s = starter.display().to_string();
    let mut id = None;
    agent.wait_for(WAIT, &format!("{metric} for a container of {s}"), || {
        let m = agent.metrics();
        id = container_id(&m, "starter", &s)
            .filter(|id| value(&m, metric, &[("container_id", id)]).is_some());
        id.is_some()
    });
    id.unwrap()
}

#[test]
fn container_lands_beneath_its_original_cgroup_whose_limit_still_holds() {
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
    let parent = ParentCgroup::memory(&mc, Some(64 << 20));

    // Within the limit: runs, and is placed beneath the parent.
    let mut child = spawn_in(
        Some(&parent),
        &starter,
        &["--alloc-mib", "8", "--sleep", "2"],
    );
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
    if !privileged() {
        return;
    }
    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);

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
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
    // The starter alone in its cgroup, as under `srun apptainer ...`: on
    // cgroup v2 the container's cgroup then gets the memory controller.
    let parent = ParentCgroup::memory(&mc, None);

    // Memory touched before the agent has placed the container stays
    // charged to the enclosing cgroup (cgroup v1 does not move charges);
    // the delay stands for Apptainer's own set-up time before its workload.
    let mut child = spawn_in(
        Some(&parent),
        &starter,
        &["--delay", "0.3", "--alloc-mib", "200", "--sleep", "3"],
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
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_restarted_agent_adopts_running_containers_and_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
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
    assert_eq!(
        m.matches("apptheus_container_info{").count(),
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
        || our_cgroup_dirs().is_empty() && second.log_text().contains("container exited"),
    );
}

#[test]
fn a_thousand_container_cycles_leave_no_cgroup_behind() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let agent = Agent::start(&[
        &format!("--trust.path={}", starter.display()),
        "--monitor.grace-period=1s",
    ]);
    for _ in 0..1000 {
        assert!(run(Command::new(&starter).args(["--no-namespaces", "--", "/bin/true"])).success());
    }
    agent.wait_for(
        WAIT,
        "1000 containers started and every cgroup removed",
        || {
            value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1000.0)
                && our_cgroup_dirs().is_empty()
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
    let prefix = trust.dir.path();
    std::fs::create_dir_all(prefix.join("libexec/apptainer/bin")).unwrap();
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let starter = trust.starter("libexec/apptainer/bin/starter");
    let cli = trust.starter("bin/apptainer");
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
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
    let agent = Agent::start(&[
        &format!("--trust.path={}", starter.display()),
        "--cgroup.prewarm=false",
    ]);
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

/// Apptainer's layout in a trusted directory: the starter at
/// `<prefix>/libexec/apptainer/bin/starter` and its command-line tool at
/// `<prefix>/bin/apptainer` (both the starter simulator; the tool's
/// `launch` execs the starter as `apptainer exec` does). Returns (tool,
/// starter).
fn apptainer_layout(trust: &TrustDir) -> (PathBuf, PathBuf) {
    let prefix = trust.dir.path();
    std::fs::create_dir_all(prefix.join("libexec/apptainer/bin")).unwrap();
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    (
        trust.starter("bin/apptainer"),
        trust.starter("libexec/apptainer/bin/starter"),
    )
}

/// A Slurm job's cgroups as Slurm's plugins lay them out, in the
/// hierarchy of the memory controller: on cgroup v2
/// `<top>.slice/vm_slurmstepd.scope/<job>/step_batch/user/task_0`, every
/// controller Slurm uses enabled down to `user`; on v1
/// `<top>/slurm_vm/uid_0/<job>/step_batch/task_0`. The job has a memory
/// limit (no swap), and on v2 a pids limit. Removed on drop.
struct SlurmJob {
    /// Top-down, the task's directory last.
    dirs: Vec<PathBuf>,
    /// Index of the job's directory in `dirs`.
    job_at: usize,
}

impl SlurmJob {
    /// `job`: the job's directory, `job_<id>` or a SLUID.
    fn new(mc: &MemoryController, job: &str, memory_limit: u64) -> Self {
        let top = format!("atest-{}", unique());
        let (names, job_at): (Vec<String>, usize) = if mc.v2 {
            (
                vec![
                    format!("{top}.slice"),
                    "vm_slurmstepd.scope".into(),
                    job.into(),
                    "step_batch".into(),
                    "user".into(),
                    "task_0".into(),
                ],
                2,
            )
        } else {
            (
                vec![
                    top,
                    "slurm_vm".into(),
                    "uid_0".into(),
                    job.into(),
                    "step_batch".into(),
                    "task_0".into(),
                ],
                3,
            )
        };
        let mut dirs = Vec::new();
        let mut dir = mc.root.clone();
        for (i, name) in names.iter().enumerate() {
            dir = dir.join(name);
            std::fs::create_dir(&dir).expect("create a Slurm-shaped cgroup");
            if mc.v2 && i + 1 < names.len() {
                let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap();
                for c in ["cpu", "io", "memory", "pids"] {
                    if available.split_whitespace().any(|a| a == c) {
                        std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"))
                            .unwrap();
                    }
                }
            }
            dirs.push(dir.clone());
        }
        let job_dir = &dirs[job_at];
        std::fs::write(job_dir.join(mc.limit_file()), memory_limit.to_string()).unwrap();
        let (file, value) = mc.swap_limit(memory_limit);
        let _ = std::fs::write(job_dir.join(file), value);
        if mc.v2 {
            std::fs::write(job_dir.join("pids.max"), "64").unwrap();
        }
        Self { dirs, job_at }
    }

    fn job(&self) -> &Path {
        &self.dirs[self.job_at]
    }

    fn task(&self) -> &Path {
        self.dirs.last().unwrap()
    }

    /// Runs `script` in a shell that first enters the job's task cgroup,
    /// as slurmstepd starts a batch script.
    fn shell(&self, script: &str) -> std::process::Child {
        Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "echo $$ > {}/cgroup.procs && {script}",
                    self.task().display()
                ),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Removes the tree as Slurm does at the job's end: `rmdir`, from the
    /// leaves up. The first directory that cannot be removed is the error.
    fn remove(&mut self) -> Result<(), String> {
        while let Some(d) = self.dirs.last() {
            let mut result = std::fs::remove_dir(d);
            // A task just reaped may take a moment to leave its cgroup.
            for _ in 0..40 {
                match &result {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(50));
                        result = std::fs::remove_dir(d);
                    }
                    _ => break,
                }
            }
            if let Err(e) = result {
                let children: Vec<String> = std::fs::read_dir(d)
                    .map(|r| {
                        r.flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "rmdir {}: {e} (child cgroups: {children:?})",
                    d.display()
                ));
            }
            self.dirs.pop();
        }
        Ok(())
    }
}

impl Drop for SlurmJob {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Directories named apptheus-* below `dir`.
fn ours_below(dir: &Path) -> Vec<PathBuf> {
    our_cgroup_dirs()
        .into_iter()
        .filter(|d| d.starts_with(dir))
        .collect()
}

/// The value of `name` for container `id`.
fn of(m: &str, name: &str, id: &str) -> Option<f64> {
    value(m, name, &[("container_id", id)])
}

/// `sbatch job.sh` where job.sh runs `apptainer exec ...` and waits: the
/// batch script's shell shares the task's cgroup with the container. The
/// agent creates nothing in Slurm's tree (on cgroup v2: nowhere in it; on
/// v1: not in the memory hierarchy), the cgroup families that would mix
/// the shell's use with the container's are left out, and the
/// container's memory, tasks and CPU come from its own processes:
/// 200 MiB touched reads within 5 %. The job's limits still hold, and
/// once the container has ended Slurm can remove its tree, leaves first.
#[test]
fn a_batch_scripts_container_in_a_slurm_job_is_read_from_its_processes() {
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let (cli, starter) = apptainer_layout(&trust);
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
    let mut job = SlurmJob::new(&mc, "job_4242", 256 << 20);

    let sleep = format!("{}", 3.0 * time_scale());
    // Storage I/O: 16 MiB written, and 32 MiB read from a file evicted
    // from the page cache, on the temporary directory's file system.
    let io_dir = tempfile::tempdir().unwrap();
    let (written, read) = (16u64 << 20, 32u64 << 20);
    let to_read = io_dir.path().join("r");
    cold_file(&to_read, read);
    let before = children_cpu_seconds();
    let mut shell = job.shell(&format!(
        "{} launch --after 0.05 {s} -- {s} workload --delay 0.3 --alloc-mib 200 --spin 0.5 \
         --file-io {w}:{written} --read-file {r} --sleep {sleep}; exit $?",
        cli.display(),
        s = starter.display(),
        w = io_dir.path().join("w").display(),
        r = to_read.display(),
    ));
    let id = wait_container(&agent, &starter, "apptheus_container_proc_memory_pss_bytes");
    let metric = |name: &str| of(&agent.metrics(), name, &id).unwrap_or(0.0);
    let mut rss = 0.0;
    agent.wait_for(WAIT, "the container's RSS to reach its allocation", || {
        rss = metric("apptheus_container_proc_memory_rss_bytes");
        rss >= 190.0 * MIB
    });
    // The workload may still be touching its last pages: wait until two
    // reads 0.5 s apart agree.
    agent.wait_for(WAIT, "the container's RSS to settle", || {
        std::thread::sleep(scaled(Duration::from_millis(500)));
        let now = metric("apptheus_container_proc_memory_rss_bytes");
        let settled = (now - rss).abs() < 0.5 * MIB;
        rss = now;
        settled
    });
    // PSS is re-read less often (its cost grows with the memory mapped):
    // wait for a reading of the settled workload.
    let mut pss = 0.0;
    agent.wait_for(WAIT, "a PSS reading of the settled workload", || {
        pss = metric("apptheus_container_proc_memory_pss_bytes");
        pss >= 0.97 * rss
    });
    let m = agent.metrics();
    assert!(
        (pss / (200.0 * MIB) - 1.0).abs() <= 0.05,
        "PSS {:.1} MiB for 200 MiB touched\n{m}",
        pss / MIB
    );
    assert!(rss >= pss, "RSS {rss} below PSS {pss}");
    assert!(
        (rss / (200.0 * MIB) - 1.0).abs() <= 0.05,
        "RSS {:.1} MiB for 200 MiB touched",
        rss / MIB
    );
    eprintln!(
        "measured: PSS {:.2} MiB, RSS {:.2} MiB for 200 MiB touched",
        pss / MIB,
        rss / MIB
    );
    // Its tasks, as /proc lists them and as the kernel counts them.
    let threads = of(&m, "apptheus_container_proc_threads", &id).unwrap();
    assert!(
        of(&m, "apptheus_container_proc_processes", &id).unwrap() >= 2.0,
        "{m}"
    );
    assert_eq!(
        Some(threads),
        of(&m, "apptheus_container_tasks", &id),
        "{m}"
    );
    // The cgroup families that would count the shell too are left out,
    // not 0.
    assert_eq!(
        of(&m, "apptheus_container_memory_usage_bytes", &id),
        None,
        "{m}"
    );
    assert_eq!(
        of(&m, "apptheus_container_memory_rss_bytes", &id),
        None,
        "{m}"
    );
    if mc.v2 {
        assert_eq!(of(&m, "apptheus_container_pids", &id), None, "{m}");
        assert_eq!(
            of(&m, "apptheus_container_cpu_usage_seconds_total", &id),
            None,
            "{m}"
        );
    }
    assert!(
        m.contains(&format!("container_id=\"{id}\"") as &str)
            && m.lines().any(|l| l.starts_with("apptheus_container_info{")
                && l.contains(&format!("container_id=\"{id}\""))
                && l.contains("slurm_job_id=\"4242\"")),
        "labelled with the job from its cgroup path\n{m}"
    );
    let log = agent.log_text();
    assert!(
        log.lines().any(|l| l.contains("level=info")
            && l.contains(&id)
            && l.contains("left out")
            && l.contains("also runs process")),
        "the log says at info level why the cgroup families are left out:\n{log}"
    );
    assert!(
        ours_below(job.job()).is_empty(),
        "nothing of apptheus' in Slurm's tree: {:?}",
        ours_below(job.job())
    );
    let task_subtree = job.task().join("cgroup.subtree_control");
    if mc.v2 {
        assert_eq!(std::fs::read_to_string(&task_subtree).unwrap().trim(), "");
    }

    assert!(shell.wait().unwrap().success());
    let truth = children_cpu_seconds() - before;
    let mut cpu = 0.0;
    agent.wait_for(WAIT, "the container's end", || {
        let m = agent.metrics();
        cpu = of(&m, "apptheus_container_proc_cpu_seconds_total", &id).unwrap_or(0.0);
        of(&m, "apptheus_container_proc_processes", &id) == Some(0.0)
    });
    eprintln!("measured: CPU {cpu:.4} s, rusage {truth:.4} s");
    // Every task's CPU time is the container's from its starter's exec on
    // (the kernel banks each at its exit); the shell's own is not.
    assert!(
        cpu <= truth * 1.01 && cpu >= truth * 0.9 && cpu >= 0.5,
        "CPU {cpu:.3} s, rusage of the job's processes {truth:.3} s"
    );
    let m = agent.metrics();
    let io_read = of(&m, "apptheus_container_proc_io_read_bytes_total", &id).expect("read bytes");
    let io_written =
        of(&m, "apptheus_container_proc_io_write_bytes_total", &id).expect("written bytes");
    eprintln!(
        "measured: I/O read {:.2} MiB of {} MiB, written {:.2} MiB of {} MiB",
        io_read / MIB,
        read >> 20,
        io_written / MIB,
        written >> 20
    );
    // A file system in memory (the VMs' /tmp) does no storage I/O.
    if on_a_block_device(io_dir.path()) {
        assert!(
            (io_read / read as f64 - 1.0).abs() <= 0.05,
            "read {io_read} bytes of {read}"
        );
        assert!(
            (io_written / written as f64 - 1.0).abs() <= 0.05,
            "wrote {io_written} bytes of {written}"
        );
    }
    job.remove()
        .expect("Slurm removes the job's tree, leaves first, once its processes are gone");
}

/// The job's memory limit holds for the container: 300 MiB in a 256 MiB
/// job is OOM-killed. The job's directory here is named after its SLUID,
/// as Slurm 26.05 names it, and the container is labelled with it.
#[test]
fn a_slurm_jobs_memory_limit_holds_for_a_batch_scripts_container() {
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let (cli, starter) = apptainer_layout(&trust);
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
    let sluid = "sEKNKTV3WPV500";
    let mut job = SlurmJob::new(&mc, sluid, 256 << 20);
    let mut shell = job.shell(&format!(
        "{} launch --after 0.05 {s} -- {s} workload --delay 0.3 --alloc-mib 300 --sleep 1; exit $?",
        cli.display(),
        s = starter.display()
    ));
    let status = shell.wait().unwrap();
    assert!(
        !status.success(),
        "300 MiB in a 256 MiB job must be refused or OOM-killed"
    );
    let m = agent.metrics();
    let id = container_id(&m, "starter", &starter.display().to_string()).expect("the container");
    assert!(
        m.lines().any(|l| l.starts_with("apptheus_container_info{")
            && l.contains(&format!("container_id=\"{id}\""))
            && l.contains(&format!("slurm_job_id=\"{sluid}\""))),
        "{m}"
    );
    assert!(ours_below(job.job()).is_empty());
    job.remove().expect("the tree goes, leaves first");
}

/// `srun apptainer exec ...` (or a batch script that `exec`s apptainer):
/// the starter alone in its task's cgroup. Nothing is created in Slurm's
/// tree and nothing is enabled in the task's cgroup (Slurm adds processes
/// there); the task's cgroup is read as the container's: its memory
/// families are there, the statistics from processes are not needed.
#[test]
fn srun_apptainer_alone_in_its_task_is_read_from_the_tasks_cgroup() {
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let (cli, starter) = apptainer_layout(&trust);
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
    let mut job = SlurmJob::new(&mc, "job_77", 256 << 20);
    let sleep = format!("{}", 3.0 * time_scale());
    let mut shell = job.shell(&format!(
        "exec {} launch --after 0.05 {s} -- {s} workload --delay 0.3 --alloc-mib 100 --sleep {sleep}",
        cli.display(),
        s = starter.display()
    ));
    let id = wait_container(&agent, &starter, "apptheus_container_memory_usage_bytes");
    let mut rss = 0.0;
    agent.wait_for(WAIT, "the task's memory to reach the allocation", || {
        rss = of(&agent.metrics(), "apptheus_container_memory_rss_bytes", &id).unwrap_or(0.0);
        rss >= 95.0 * MIB
    });
    let m = agent.metrics();
    assert!(
        (rss / (100.0 * MIB) - 1.0).abs() <= 0.05,
        "rss {:.1} MiB\n{m}",
        rss / MIB
    );
    assert_eq!(
        of(&m, "apptheus_container_proc_memory_pss_bytes", &id),
        None,
        "{m}"
    );
    if mc.v2 {
        assert!(of(&m, "apptheus_container_pids", &id).is_some(), "{m}");
        assert_eq!(
            std::fs::read_to_string(job.task().join("cgroup.subtree_control"))
                .unwrap()
                .trim(),
            "",
            "nothing enabled in the task's cgroup"
        );
    }
    assert!(ours_below(job.job()).is_empty());
    assert!(shell.wait().unwrap().success());
    job.remove().expect("the tree goes, leaves first");
}

/// A login session (or any cgroup other processes share) with a limit of
/// its own: the container's cgroup goes beneath it, so the limit holds.
/// On cgroup v2 that cgroup can have no memory controller (the session's
/// cgroup holds processes): the cgroup's memory families are left out,
/// never 0, the log says why at info level, and the memory comes from the
/// container's processes. On v1 (no such rule) the cgroup gives it.
#[test]
fn a_login_sessions_container_keeps_its_limit_and_gets_its_memory() {
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let (cli, starter) = apptainer_layout(&trust);
    let agent = Agent::start(&[&format!("--trust.path={}", starter.display())]);
    let session = ParentCgroup::memory(&mc, Some(128 << 20));
    let sleep = format!("{}", 3.0 * time_scale());
    let login_shell = |mib: u32| {
        Command::new("/bin/sh")
            .args([
                "-c",
                &format!(
                    "echo $$ > {}/cgroup.procs && {} launch --after 0.05 {s} -- {s} workload --delay 0.3 --alloc-mib {mib} --sleep {sleep}; exit $?",
                    session.0.display(),
                    cli.display(),
                    s = starter.display()
                ),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut shell = login_shell(64);
    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let memory = if mc.v2 {
        "apptheus_container_proc_memory_rss_bytes"
    } else {
        "apptheus_container_memory_rss_bytes"
    };
    let mut used = 0.0;
    agent.wait_for(WAIT, "the container's memory", || {
        used = of(&agent.metrics(), memory, &id).unwrap_or(0.0);
        used >= 60.0 * MIB
    });
    let m = agent.metrics();
    assert!(
        (used / (64.0 * MIB) - 1.0).abs() <= 0.1,
        "{memory} {:.1} MiB\n{m}",
        used / MIB
    );
    let mine = ours_below(&session.0);
    assert_eq!(
        mine.len(),
        1,
        "the container's cgroup beneath the session's: {mine:?}"
    );
    if mc.v2 {
        assert_eq!(
            of(&m, "apptheus_container_memory_usage_bytes", &id),
            None,
            "{m}"
        );
        assert_eq!(of(&m, "apptheus_container_pids", &id), None, "{m}");
        let log = agent.log_text();
        assert!(
            log.lines().any(|l| l.contains("level=info")
                && l.contains(&id)
                && l.contains("left out")
                && l.contains("still holds")),
            "the log says at info level why:\n{log}"
        );
    } else {
        assert_eq!(
            of(&m, "apptheus_container_proc_memory_pss_bytes", &id),
            None,
            "{m}"
        );
    }
    assert!(shell.wait().unwrap().success());

    // 200 MiB in a 128 MiB session: its limit stops the container.
    let mut shell = login_shell(200);
    assert!(
        !shell.wait().unwrap().success(),
        "200 MiB in a session limited to 128 MiB must fail"
    );
}

/// Writes a file of `bytes` at `path`, flushes it to its disk and drops it
/// from the page cache, so that reading it reads the disk.
fn cold_file(path: &Path, bytes: u64) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// Whether `dir`'s file system keeps its files on a block device (not
/// tmpfs or ramfs, whose pages never reach a disk).
fn on_a_block_device(dir: &Path) -> bool {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // Not in nix: include/uapi/linux/magic.h.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs(dir).is_ok_and(|s| ![TMPFS_MAGIC, RAMFS_MAGIC].contains(&s.filesystem_type()))
}

/// `--cgroup.enable-controllers=false`: the agent leaves every
/// `cgroup.subtree_control` alone. On cgroup v2 the container's cgroup
/// then has no memory controller even when its starter was alone, and its
/// memory comes from its processes; on v1 its cgroup gives it.
#[test]
fn with_controllers_left_alone_a_v2_containers_memory_comes_from_its_processes() {
    if !privileged() {
        return;
    }
    let Some(mc) = memory_controller() else {
        return;
    };
    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let agent = Agent::start(&[
        &format!("--trust.path={}", starter.display()),
        "--cgroup.enable-controllers=false",
    ]);
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
    let memory = if mc.v2 {
        "apptheus_container_proc_memory_rss_bytes"
    } else {
        "apptheus_container_memory_rss_bytes"
    };
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
