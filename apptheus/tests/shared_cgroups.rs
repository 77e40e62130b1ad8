//! Containers whose starter's cgroup others share (root; any cgroup
//! layout: `cargo xtask vm-test` runs them under v1, hybrid and v2): a
//! Slurm job's task cgroup, laid out as Slurm's plugins lay it out (with a
//! batch script's shell beside the container, or the container alone), and
//! a login session with a limit of its own. The agent creates nothing in
//! Slurm's tree, the limits still hold, and each container's statistics
//! are its own alone: what the batch script used before, or what another
//! process of the job uses beside it, is not counted. A real Slurm:
//! slurm_jobs.rs (and slurm.rs with the real Apptainer).
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{cgroup::*, *};

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
        shell_in(self.task(), script)
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

/// Runs `script` in a shell that first enters `cgroup`.
fn shell_in(cgroup: &Path, script: &str) -> std::process::Child {
    Command::new("/bin/sh")
        .args([
            "-c",
            &format!("echo $$ > {}/cgroup.procs && {script}", cgroup.display()),
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Directories named apptheus-* below `dir`.
fn ours_below(dir: &Path) -> Vec<PathBuf> {
    our_cgroup_dirs()
        .into_iter()
        .filter(|d| d.starts_with(dir))
        .collect()
}

/// `sbatch job.sh` where job.sh uses CPU and shared memory itself, then
/// runs `apptainer exec ...` and waits, while another process of the job
/// runs beside: the batch script's shell and that process share the
/// task's cgroup with the container. The agent creates nothing in Slurm's
/// tree (on cgroup v2: nowhere in it; on v1: not in the memory
/// hierarchy), and the container's numbers are its own alone, in the usual
/// families: its memory (its processes' proportional set size) is the
/// 200 MiB it touched, not the job's shared memory or the other process's;
/// its CPU is its own (the rusage of its process tree) within 3 %; its
/// storage I/O its own. The job's limits still hold, and once the
/// container has ended Slurm can remove its tree, leaves first.
#[test]
fn a_batch_scripts_container_counts_only_itself() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let (cli, starter, agent) = agent_trusting_apptainer(&trust);
    let mut job = SlurmJob::new(&mc, "job_4242", 512 << 20);

    // Long enough for a PSS reading of the settled workload: after a read
    // that took t, the next comes t / 1 % later (up to about 20 s for its
    // 200 MiB in the emulated VMs).
    let sleep = format!("{}", 8.0 * time_scale());
    // Storage I/O: 16 MiB written, and 32 MiB read from a file evicted
    // from the page cache, on the temporary directory's file system.
    let io_dir = tempfile::tempdir().unwrap();
    let (written, read) = (16u64 << 20, 32u64 << 20);
    let to_read = io_dir.path().join("r");
    cold_file(&to_read, read);
    let truth = io_dir.path().join("truth");
    let at_exec = io_dir.path().join("cpu-at-exec");
    let shm = ShmFile::new();
    let sim = starter_sim().display().to_string();
    let workload = format!(
        "--delay 0.3 --alloc-mib 200 --spin 0.5 --file-io {w}:{written} --read-file {r} \
         --sleep {sleep}",
        w = io_dir.path().join("w").display(),
        r = to_read.display(),
    );
    let mut shell = job.shell(&format!(
        "{busy}; {sim} write {shm} 67108864 || exit 99; \
         {sim} workload --alloc-mib 32 --spin 0.3 --sleep {sleep} & \
         {sim} rusage {truth} -- {launch}; rc=$?; wait; exit $rc",
        busy = SHELL_BUSY_LOOP,
        shm = shm.0.display(),
        truth = truth.display(),
        launch = launch_workload_noting_cpu(&cli, &starter, &workload, &at_exec),
    ));
    let id = wait_container(&agent, &starter, "apptheus_container_memory_usage_bytes");
    let metric = |name: &str| of(&agent.metrics(), name, &id).unwrap_or(0.0);
    let mut rss = 0.0;
    agent.wait_for(WAIT, "the container's RSS to reach its allocation", || {
        rss = metric("apptheus_container_memory_rss_bytes");
        rss >= 190.0 * MIB
    });
    // The workload may still be touching its last pages: wait until two
    // reads 0.5 s apart agree.
    agent.wait_for(WAIT, "the container's RSS to settle", || {
        std::thread::sleep(scaled(Duration::from_millis(500)));
        let now = metric("apptheus_container_memory_rss_bytes");
        let settled = (now - rss).abs() < 0.5 * MIB;
        rss = now;
        settled
    });
    // Its proportional set size is re-read less often (its cost grows with
    // the memory mapped): wait for a reading of the settled workload.
    let mut usage = 0.0;
    agent.wait_for(WAIT, "a reading of the settled workload", || {
        usage = metric("apptheus_container_memory_usage_bytes");
        usage >= 0.97 * rss
    });
    let m = agent.metrics();
    assert!(
        (usage / (200.0 * MIB) - 1.0).abs() <= 0.05,
        "memory usage {:.1} MiB for 200 MiB touched (the job's 64 MiB of shared memory \
         and the other process's 32 MiB are not the container's)\n{m}",
        usage / MIB
    );
    assert!(
        (rss / (200.0 * MIB) - 1.0).abs() <= 0.05,
        "RSS {:.1} MiB for 200 MiB touched",
        rss / MIB
    );
    eprintln!(
        "measured: memory usage {:.2} MiB, RSS {:.2} MiB for 200 MiB touched",
        usage / MIB,
        rss / MIB
    );
    // Its tasks, as the agent reads them and as the kernel counts them.
    assert_eq!(
        of(&m, "apptheus_container_threads", &id),
        of(&m, "apptheus_container_tasks", &id),
        "{m}"
    );
    let info = m
        .lines()
        .find(|l| {
            l.starts_with("apptheus_container_info{")
                && l.contains(&format!("container_id=\"{id}\""))
        })
        .unwrap_or_default()
        .to_string();
    assert!(
        info.contains("slurm_job_id=\"4242\""),
        "labelled with the job from its cgroup path\n{m}"
    );
    let from = if mc.v2 {
        "cpu,memory,pids,io"
    } else {
        "memory"
    };
    assert!(
        info.contains(&format!("from_processes=\"{from}\"")),
        "the info says what is read from its processes ({from}): {info}"
    );
    let log = agent.log_text();
    assert!(
        log.lines().any(|l| l.contains("level=info")
            && l.contains(&id)
            && l.contains("read from its own processes")),
        "the log says at info level why:\n{log}"
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
    // The tree's rusage, less what its first process used as Apptainer's
    // tool before it executed the starter (not the container's).
    let tree: f64 = std::fs::read_to_string(&truth)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let truth = tree - cpu_at_exec(&at_exec);
    let cpu = final_value(&agent, &id, "apptheus_container_cpu_usage_seconds_total");
    eprintln!("measured: CPU {cpu:.4} s, rusage of the container's tree {truth:.4} s");
    assert!(
        cpu_matches(cpu, truth) && cpu >= 0.5,
        "CPU {cpu:.3} s, rusage of the container's tree {truth:.3} s (the batch script's \
         and the other process's CPU are not the container's)"
    );
    if mc.v2 {
        let m = agent.metrics();
        let io = |name: &str| {
            value(&m, name, &[("container_id", &id), ("device", "")]).expect("device-less bytes")
        };
        let io_read = io("apptheus_container_blkio_read_bytes_total");
        let io_written = io("apptheus_container_blkio_write_bytes_total");
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
    }
    drop(shm);
    job.remove()
        .expect("Slurm removes the job's tree, leaves first, once its processes are gone");
}

/// The job's memory limit holds for the container: 300 MiB in a 256 MiB
/// job is OOM-killed. The job's directory here is named after its SLUID,
/// as Slurm 26.05 names it, and the container is labelled with it.
#[test]
fn a_slurm_jobs_memory_limit_holds_for_a_batch_scripts_container() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let (cli, starter, agent) = agent_trusting_apptainer(&trust);
    let sluid = "sEKNKTV3WPV500";
    let mut job = SlurmJob::new(&mc, sluid, 256 << 20);
    let workload = "--delay 0.3 --alloc-mib 300 --sleep 1";
    let mut shell = job.shell(&format!(
        "{}; exit $?",
        launch_workload(&cli, &starter, workload)
    ));
    let status = shell.wait().unwrap();
    assert!(
        !status.success(),
        "300 MiB in a 256 MiB job must be refused or OOM-killed"
    );
    // As a scraper sees it: within a sample's age.
    let starter_label = starter.display().to_string();
    agent.wait_for(
        WAIT,
        "the OOM-killed container, labelled with the job",
        || {
            let m = agent.metrics();
            container_id(&m, "starter", &starter_label).is_some_and(|id| {
                m.lines().any(|l| {
                    l.starts_with("apptheus_container_info{")
                        && l.contains(&format!("container_id=\"{id}\""))
                        && l.contains(&format!("slurm_job_id=\"{sluid}\""))
                })
            })
        },
    );
    assert!(ours_below(job.job()).is_empty());
    job.remove().expect("the tree goes, leaves first");
}

/// A batch script that uses CPU itself and leaves 64 MiB of shared memory
/// in the job, then `exec`s apptainer (or `srun apptainer exec ...`): the
/// starter alone in its task's cgroup, its process the script's. Nothing
/// is created in Slurm's tree and nothing is enabled in the task's cgroup
/// (Slurm adds processes there); the container's counters start at zero
/// when it starts (the script's CPU before the exec is not the
/// container's), and its memory is its own 100 MiB, not the job's shared
/// memory.
#[test]
fn a_batch_script_that_execs_apptainer_hands_on_none_of_its_own_use() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let (cli, starter, agent) = agent_trusting_apptainer(&trust);
    let mut job = SlurmJob::new(&mc, "job_77", 512 << 20);
    let shm = ShmFile::new();
    let mut filler = job.shell(&format!(
        "{} write {} 67108864",
        starter_sim().display(),
        shm.0.display()
    ));
    assert!(
        filler.wait().unwrap().success(),
        "filling 64 MiB of shared memory in the job"
    );
    let pre = tempfile::NamedTempFile::new().unwrap();
    let at_exec = tempfile::NamedTempFile::new().unwrap();
    let sleep = format!("{}", 3.0 * time_scale());
    let workload = format!("--delay 0.3 --alloc-mib 100 --spin 0.3 --sleep {sleep}");
    let before = children_cpu_seconds();
    let mut shell = job.shell(&format!(
        "{SHELL_BUSY_LOOP}; read s < /proc/$$/schedstat; echo $s > {pre}; exec {launch}",
        pre = pre.path().display(),
        launch = launch_workload_noting_cpu(&cli, &starter, &workload, at_exec.path())
    ));
    let id = wait_container(&agent, &starter, "apptheus_container_memory_usage_bytes");
    let mut usage = 0.0;
    agent.wait_for(
        WAIT,
        "the container's memory to reach the allocation",
        || {
            usage = of(
                &agent.metrics(),
                "apptheus_container_memory_usage_bytes",
                &id,
            )
            .unwrap_or(0.0);
            usage >= 95.0 * MIB
        },
    );
    let m = agent.metrics();
    assert!(
        (usage / (100.0 * MIB) - 1.0).abs() <= 0.05,
        "memory usage {:.1} MiB for 100 MiB touched (the job's 64 MiB of shared memory \
         is not the container's)\n{m}",
        usage / MIB
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
    let total = children_cpu_seconds() - before;
    let script: f64 = std::fs::read_to_string(pre.path())
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the script's schedstat")
        / 1e9;
    // The script's process executes Apptainer's tool, which executes the
    // starter: what it used until then is not the container's.
    let truth = total - cpu_at_exec(at_exec.path());
    let cpu = final_value(&agent, &id, "apptheus_container_cpu_usage_seconds_total");
    eprintln!(
        "measured: CPU {cpu:.4} s; the container's rusage {truth:.4} s \
         (its process's use until the starter's exec left out: the script's own {script:.4} s and the launcher's)"
    );
    assert!(
        script >= 0.05,
        "the script's busy loop used too little CPU ({script:.3} s) to tell"
    );
    assert!(
        cpu_matches(cpu, truth),
        "CPU {cpu:.3} s against the container's {truth:.3} s (the script used {script:.3} s \
         before its exec)"
    );
    drop(shm);
    job.remove().expect("the tree goes, leaves first");
}

/// A login session (or any cgroup other processes share) with a limit of
/// its own: the container's cgroup goes beneath it, so the limit holds.
/// On cgroup v2 that cgroup can have no memory controller (the session's
/// cgroup holds processes): the container's memory, tasks and I/O then
/// come from its processes, in the usual families, and the info metric and
/// the log say so. On v1 (no such rule) the cgroup gives them.
#[test]
fn a_login_sessions_container_keeps_its_limit_and_gets_its_memory() {
    let Some((mc, _serial, trust)) = memory_setup() else {
        return;
    };
    let (cli, starter, agent) = agent_trusting_apptainer(&trust);
    let session = ParentCgroup::memory(&mc, Some(128 << 20));
    let sleep = format!("{}", 3.0 * time_scale());
    let login_shell = |mib: u32| {
        let workload = format!("--delay 0.3 --alloc-mib {mib} --sleep {sleep}");
        shell_in(
            &session.0,
            &format!("{}; exit $?", launch_workload(&cli, &starter, &workload)),
        )
    };
    let mut shell = login_shell(64);
    let id = wait_container(
        &agent,
        &starter,
        "apptheus_container_cpu_usage_seconds_total",
    );
    let memory = "apptheus_container_memory_rss_bytes";
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
    // On v2 its memory and tasks come from its processes, in the usual
    // families, and the info and the log say so; on v1 its cgroup gives
    // them.
    let from = if mc.v2 { "memory,pids,io" } else { "" };
    assert!(
        m.lines().any(|l| l.starts_with("apptheus_container_info{")
            && l.contains(&format!("container_id=\"{id}\""))
            && l.contains(&format!("from_processes=\"{from}\""))),
        "{m}"
    );
    assert!(
        of(&m, "apptheus_container_memory_usage_bytes", &id).is_some(),
        "{m}"
    );
    assert!(of(&m, "apptheus_container_pids", &id).is_some(), "{m}");
    if mc.v2 {
        let log = agent.log_text();
        assert!(
            log.lines().any(|l| l.contains("level=info")
                && l.contains(&id)
                && l.contains("read from its own processes")),
            "the log says at info level why:\n{log}"
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

/// Whether a container's CPU `cpu` is its rusage `truth`: within 3 %, and
/// 10 ms more per unit of the time scale for the exec that starts it. The
/// truth leaves out what the launcher used until its last instant before
/// it executes the starter; the exec's own work (the kernel loading the
/// starter) is in the truth but, by design, not the container's: natively
/// a millisecond, under a VM's emulation tens.
fn cpu_matches(cpu: f64, truth: f64) -> bool {
    (cpu - truth).abs() <= 0.03 * truth + 0.01 * time_scale()
}

/// A loop the batch script's shell runs in its own process (some tenths
/// of a second of CPU), before it runs the container.
const SHELL_BUSY_LOOP: &str = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";

/// A file in /dev/shm (shared memory, charged to the cgroup of the process
/// that writes it), removed on drop.
struct ShmFile(PathBuf);

impl ShmFile {
    fn new() -> Self {
        ShmFile(PathBuf::from(format!(
            "/dev/shm/apptheus-test-{}",
            unique()
        )))
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
