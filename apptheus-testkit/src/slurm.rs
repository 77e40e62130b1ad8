//! A private one-node Slurm cluster (Debian's slurmctld, slurmd and munge;
//! scripts/setup.sh --test installs them): its own munged, key, ports,
//! configuration, state and logs in a temporary directory, so a test run
//! clashes with nothing. Jobs run in the node's cgroups (proctrack/cgroup,
//! task/cgroup, ConstrainRAMSpace=yes): on a cgroup v1 or hybrid host in
//! `memory:/slurm_<node>/uid_<uid>/job_<id>/step_<step>/task_<n>`, and
//! their `--mem` holds. No slurmdbd: jobs are read with `scontrol show
//! job`, which keeps finished jobs for 10 minutes (MinJobAge).
use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The programs the cluster needs, and their Debian packages.
const PROGRAMS: [(&str, &str); 6] = [
    ("munged", "munge"),
    ("slurmctld", "slurmctld"),
    ("slurmd", "slurmd"),
    ("sbatch", "slurm-client"),
    ("scontrol", "slurm-client"),
    ("scancel", "slurm-client"),
];
const PARTITION: &str = "apptheus";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Job states after which a job does not change any more.
const FINAL_STATES: [&str; 10] = [
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "TIMEOUT",
];

/// The cgroup plugin the cluster uses: v1 wherever the v1 memory
/// controller is mounted (v1 and hybrid hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    V1,
    /// cgroup/v2 with IgnoreSystemd=yes (no systemd runs here). Not
    /// verified on this project's machines, which are hybrid.
    V2,
}

/// A running one-node cluster. Dropped, it cancels its jobs and stops.
pub struct Cluster {
    dir: tempfile::TempDir,
    node: String,
    conf: PathBuf,
    cgroups: Cgroups,
    /// munged, slurmctld, slurmd: stopped in reverse order.
    daemons: Vec<(&'static str, Child)>,
    scripts: AtomicU32,
}

/// A job as `scontrol show job` tells it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u32,
    /// JobState, e.g. RUNNING, COMPLETED, OUT_OF_MEMORY.
    pub state: String,
    /// ExitCode: `<exit status>:<signal>`.
    pub exit_code: String,
    /// Every field of `scontrol show job -o`.
    pub fields: BTreeMap<String, String>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        FINAL_STATES.contains(&self.state.as_str())
    }

    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// What the batch script wrote to its standard output so far.
    pub fn stdout(&self) -> anyhow::Result<String> {
        let path = self.field("StdOut").context("the job has no StdOut")?;
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Two ports free now (both held while choosing, so they differ).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn short_hostname() -> anyhow::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(h.trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string())
}

fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(1024, |kib| kib / 1024 * 9 / 10)
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Parses `scontrol show job -o` (one line of `Key=Value` words; a word
/// without `=` continues the previous value).
fn parse_job(line: &str) -> Option<Job> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') =>
            {
                fields.insert(k.to_string(), v.to_string());
                last = Some(k.to_string());
            }
            _ => {
                if let Some(v) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                    v.push(' ');
                    v.push_str(word);
                }
            }
        }
    }
    Some(Job {
        id: fields.get("JobId")?.parse().ok()?,
        state: fields.get("JobState")?.clone(),
        exit_code: fields.get("ExitCode").cloned().unwrap_or_default(),
        fields,
    })
}

/// `scontrol show job -o <id>` run by `scontrol` (a prepared command).
fn show_job(mut scontrol: Command, id: u32) -> anyhow::Result<Job> {
    let out = scontrol
        .args(["show", "job", "-o", &id.to_string()])
        .output()
        .context("running scontrol")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "scontrol show job {id} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_job(text.trim()).with_context(|| format!("reading scontrol's job {id}: {text}"))
}

/// Asks `job` until `f` holds; after `timeout` (stretched by
/// [`crate::host::scaled`]: a job's pace is the machine's) fails, showing
/// the job and `logs`.
fn wait_job(
    job: impl Fn() -> anyhow::Result<Job>,
    id: u32,
    timeout: Duration,
    what: &str,
    f: impl Fn(&Job) -> bool,
    logs: impl Fn() -> String,
) -> anyhow::Result<Job> {
    let timeout = crate::host::scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        let job = job()?;
        if f(&job) {
            return Ok(job);
        }
        if Instant::now() >= deadline {
            bail!(
                "job {id}: timed out after {timeout:?} waiting for {what}; it is {} ({:?})\n{}",
                job.state,
                job.fields,
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The job if it runs, else an error.
fn running(job: Job) -> anyhow::Result<Job> {
    if job.state != "RUNNING" {
        bail!(
            "job {} ended ({}) before it was seen running",
            job.id,
            job.state
        );
    }
    Ok(job)
}

/// The sbatch command line's job id (`--parsable`: `<id>[;<cluster>]`).
fn parsable_id(out: &std::process::Output, args: &[&str]) -> anyhow::Result<u32> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "sbatch {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("sbatch printed no job id: {text}"))
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd on free ports and waits until
    /// the node is idle (about a second). The error names what is missing.
    /// A port taken by someone else between choosing and binding it costs
    /// a new attempt (three in all).
    pub fn start() -> anyhow::Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Cluster::start_once() {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn start_once() -> anyhow::Result<Cluster> {
        if !crate::is_root() {
            return Err(crate::unavailable(
                "root privileges (the Slurm daemons run as root)",
            ));
        }
        for (program, package) in PROGRAMS {
            if which(program).is_none() {
                return Err(crate::unavailable(format!(
                    "Slurm's {program} (Debian package {package}); install it with: sudo scripts/setup.sh --test"
                )));
            }
        }
        let cgroups = if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            Cgroups::V1
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Cgroups::V2
        } else {
            return Err(crate::unavailable(
                "a mounted cgroup memory controller (for Slurm's task/cgroup)",
            ));
        };

        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let node = format!(
            "apptheus-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("apptheus-slurm-")
            .tempdir()
            .context("creating the cluster's directory")?;
        let d = &dir.path().to_path_buf();
        // munged wants its key private and its socket's directory open.
        for (sub, mode) in [
            ("munge", 0o700),
            ("socket", 0o755),
            ("state", 0o700),
            ("spool", 0o755),
            ("log", 0o755),
            ("jobs", 0o1777),
        ] {
            std::fs::create_dir(d.join(sub))?;
            std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        let key = d.join("munge/munge.key");
        let mut bytes = vec![0u8; 128];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
            .context("reading /dev/urandom for the munge key")?;
        std::fs::write(&key, &bytes)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let socket = d.join("socket/munge.socket");

        let host = short_hostname()?;
        let (ctld_port, slurmd_port) = free_ports()?;
        let conf = d.join("slurm.conf");
        std::fs::write(
            &conf,
            slurm_conf(&SlurmConf {
                dir: d,
                host: &host,
                node: &node,
                ctld_port,
                slurmd_port,
                munge_socket: &socket,
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                memory_mib: memory_mib(),
            }),
        )?;
        std::fs::write(d.join("cgroup.conf"), cgroup_conf(cgroups))?;
        std::fs::write(d.join("plugstack.conf"), "")?;

        let mut cluster = Cluster {
            node,
            conf,
            cgroups,
            daemons: Vec::new(),
            scripts: AtomicU32::new(0),
            dir,
        };
        cluster.spawn_daemon(
            "munged",
            Command::new("munged").arg("--foreground").args([
                format!("--socket={}", socket.display()),
                format!("--key-file={}", key.display()),
                format!("--pid-file={}", d.join("munge/munged.pid").display()),
                format!("--seed-file={}", d.join("munge/munged.seed").display()),
                format!("--log-file={}", d.join("log/munged.log").display()),
            ]),
        )?;
        cluster.wait_for(
            crate::host::scaled(START_TIMEOUT),
            "munged's socket",
            |_| Ok(socket.exists()),
        )?;
        cluster.spawn_daemon("slurmctld", Command::new("slurmctld").args(["-D", "-i"]))?;
        let node = cluster.node.clone();
        cluster.spawn_daemon("slurmd", Command::new("slurmd").args(["-D", "-N", &node]))?;
        cluster.wait_for(
            crate::host::scaled(START_TIMEOUT),
            "the node to be idle",
            |c| {
                let out = c
                    .command("scontrol")
                    .args(["show", "node", "-o", &c.node])
                    .output()?;
                Ok(String::from_utf8_lossy(&out.stdout).contains("State=IDLE"))
            },
        )?;
        Ok(cluster)
    }

    fn spawn_daemon(&mut self, name: &'static str, cmd: &mut Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("log/{name}.out")))?;
        let child = cmd
            .env_clear()
            .env("PATH", crate::enter::PATH)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.daemons.push((name, child));
        Ok(())
    }

    /// Polls `f` until true; fails with the daemons' logs if one of them
    /// ended or `timeout` passed.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Cluster) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self)? {
                return Ok(());
            }
            let mut ended = None;
            for (name, child) in &mut self.daemons {
                if let Some(status) = child.try_wait()? {
                    ended = Some(format!("{name} exited ({status})"));
                }
            }
            if ended.is_some() || Instant::now() >= deadline {
                bail!(
                    "Slurm test cluster: {} waiting for {what}\n{}",
                    ended.unwrap_or_else(|| format!("timed out after {timeout:?}")),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tails of the daemons' logs.
    pub fn logs(&self) -> String {
        [
            "munged.log",
            "munged.out",
            "slurmctld.log",
            "slurmctld.out",
            "slurmd.log",
            "slurmd.out",
        ]
        .iter()
        .map(|f| {
            let p = self.dir.path().join("log").join(f);
            format!("--- {}:\n{}", p.display(), tail(&p, 15))
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The node's name (its cgroups are `/slurm_<node>/...`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The slurm.conf (SLURM_CONF for the client commands).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The cluster's directory (configuration, state, logs, job output).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cgroups(&self) -> Cgroups {
        self.cgroups
    }

    /// A Slurm client command (sbatch, scontrol, squeue, scancel, ...) for
    /// this cluster, with a clean environment: PATH, HOME, LANG and
    /// SLURM_CONF (a job gets this environment too).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", crate::enter::PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("SLURM_CONF", &self.conf);
        c
    }

    /// Submits `script` (a whole batch script, `#!` line included) with
    /// `sbatch <args>`; output goes to `<dir>/jobs/slurm-<id>.out` unless
    /// `args` choose. Returns the job id.
    pub fn submit(&self, script: &str, args: &[&str]) -> anyhow::Result<u32> {
        let n = self.scripts.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("jobs/script-{n}.sh"));
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let mut c = self.command("sbatch");
        c.arg("--parsable");
        if !args
            .iter()
            .any(|a| a.starts_with("-o") || a.starts_with("--output"))
        {
            c.arg(format!(
                "--output={}/jobs/slurm-%j.out",
                self.dir.path().display()
            ));
        }
        let out = c.args(args).arg(&path).output().context("running sbatch")?;
        parsable_id(&out, args)
    }

    /// The job as `scontrol show job` tells it now.
    pub fn job(&self, id: u32) -> anyhow::Result<Job> {
        show_job(self.command("scontrol"), id)
    }

    /// Waits until `f(job)`; fails after `timeout`, showing the job.
    pub fn wait_job(
        &self,
        id: u32,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Job) -> bool,
    ) -> anyhow::Result<Job> {
        wait_job(|| self.job(id), id, timeout, what, f, || self.logs())
    }

    /// Waits until the job has ended (any final state).
    pub fn wait(&self, id: u32, timeout: Duration) -> anyhow::Result<Job> {
        self.wait_job(id, timeout, "its end", Job::is_final)
    }

    /// Waits until the job runs (fails if it ended first).
    pub fn wait_running(&self, id: u32, timeout: Duration) -> anyhow::Result<Job> {
        running(self.wait_job(id, timeout, "it to run", |j| {
            j.state == "RUNNING" || j.is_final()
        })?)
    }

    /// Submits `script` and waits for its end.
    pub fn run(&self, script: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Job> {
        let id = self.submit(script, args)?;
        self.wait(id, timeout)
    }

    /// The job's cgroup in the v1 hierarchies (below it: `step_<step>/task_<n>`).
    pub fn job_cgroup(&self, job: &Job, uid: u32) -> String {
        format!("/slurm_{}/uid_{uid}/job_{}", self.node, job.id)
    }

    /// Cancels the jobs, stops the daemons (SIGTERM, then SIGKILL after
    /// 10 s) and removes the node's cgroups.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> anyhow::Result<()> {
        if self.daemons.is_empty() {
            return Ok(());
        }
        let controller_runs = self.daemons.iter_mut().any(|(name, child)| {
            *name == "slurmctld" && child.try_wait().is_ok_and(|s| s.is_none())
        });
        if controller_runs {
            self.cancel_jobs();
        }
        let killed = self.stop_daemons();
        if self.cgroups == Cgroups::V1 {
            remove_cgroups(&format!("slurm_{}", self.node));
        }
        if !killed.is_empty() {
            bail!(
                "{} did not stop on SIGTERM and were killed",
                killed.join(", ")
            );
        }
        Ok(())
    }

    /// Cancels every job of the partition and waits (a while) until none
    /// is left.
    fn cancel_jobs(&self) {
        let _ = self
            .command("scancel")
            .args(["--partition", PARTITION])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + crate::host::scaled(STOP_TIMEOUT);
        while Instant::now() < deadline {
            match self
                .command("squeue")
                .args(["-h", "-p", PARTITION, "-o", "%i"])
                .output()
            {
                Ok(o) if o.status.success() && !o.stdout.iter().all(u8::is_ascii_whitespace) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => return,
            }
        }
    }

    /// Stops the daemons, the last started first: SIGTERM, then SIGKILL
    /// after a while. Returns those that had to be killed.
    fn stop_daemons(&mut self) -> Vec<&'static str> {
        let mut killed = Vec::new();
        while let Some((name, mut child)) = self.daemons.pop() {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + crate::host::scaled(STOP_TIMEOUT);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    killed.push(name);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
        killed
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("Slurm test cluster: {e:#}");
        }
    }
}

/// Removes the (empty) cgroup `name` and everything below it from every
/// v1 hierarchy, deepest first.
fn remove_cgroups(name: &str) {
    fn remove_tree(dir: &Path) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            let p = h.path().join(name);
            if p.is_dir() {
                remove_tree(&p);
            }
        }
    }
}

struct SlurmConf<'a> {
    dir: &'a Path,
    host: &'a str,
    node: &'a str,
    ctld_port: u16,
    slurmd_port: u16,
    munge_socket: &'a Path,
    cpus: usize,
    memory_mib: u64,
}

fn slurm_conf(c: &SlurmConf) -> String {
    let d = c.dir.display();
    format!(
        "# A private one-node cluster for the apptheus tests.
ClusterName=apptheus
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={d}/plugstack.conf
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
",
        host = c.host,
        ctld = c.ctld_port,
        slurmd = c.slurmd_port,
        socket = c.munge_socket.display(),
        node = c.node,
        cpus = c.cpus,
        mem = c.memory_mib,
    )
}

fn cgroup_conf(cgroups: Cgroups) -> String {
    let plugin = match cgroups {
        Cgroups::V1 => "CgroupPlugin=cgroup/v1\n",
        Cgroups::V2 => "CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\n",
    };
    format!(
        "{plugin}CgroupMountpoint=/sys/fs/cgroup\nConstrainRAMSpace=yes\nConstrainSwapSpace=yes\n"
    )
}

/// The machine's own Slurm, as a compute node runs it (the systemd node of
/// `cargo xtask vm-test`): slurmctld, slurmd and munge are systemd services
/// with the system's configuration, and jobs are submitted by an ordinary
/// user. Scripts and their output go to a directory of that user's.
pub struct NodeSlurm {
    dir: tempfile::TempDir,
    user: crate::root::TestUser,
    scripts: AtomicU32,
    /// Jobs submitted: cancelled when dropped (a failed test's job may
    /// hold forever).
    submitted: std::sync::Mutex<Vec<u32>>,
}

impl Drop for NodeSlurm {
    fn drop(&mut self) {
        let ids = self.submitted.lock().map(|v| v.clone()).unwrap_or_default();
        for id in ids {
            let _ = self.command("scancel").arg(id.to_string()).status();
        }
    }
}

impl NodeSlurm {
    /// The node's Slurm, once its node is idle (slurmd registered, within
    /// `timeout` stretched by [`crate::host::scaled`]), for jobs of `user`.
    pub fn new(user: &crate::root::TestUser, timeout: Duration) -> anyhow::Result<NodeSlurm> {
        let timeout = crate::host::scaled(timeout);
        for (program, package) in PROGRAMS {
            if which(program).is_none() {
                return Err(crate::unavailable(format!(
                    "{program} (Debian package {package}) on this node"
                )));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("apptheus-slurm-")
            .tempdir()
            .context("creating the jobs' directory")?;
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let s = NodeSlurm {
            dir,
            user: user.clone(),
            scripts: AtomicU32::new(0),
            submitted: std::sync::Mutex::new(Vec::new()),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let out = s
                .command("sinfo")
                .args(["--noheader", "--Node", "--format=%t"])
                .output()
                .context("running sinfo")?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && (state == "idle" || state == "mix" || state == "alloc") {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the node's Slurm did not get ready within {timeout:?} (sinfo: {state:?} {})\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    s.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Where scripts and their output go (the user's).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A Slurm client command run by root, with a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", crate::enter::PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Submits `script` (a whole batch script) as the user with `sbatch
    /// <args>` (the job gets the user's plain environment); output goes to
    /// `<dir>/slurm-<id>.out` unless `args` choose. Returns the job id.
    pub fn submit(&self, script: &str, args: &[&str]) -> anyhow::Result<u32> {
        let n = self.scripts.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("script-{n}.sh"));
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let u = &self.user;
        let home = u.home();
        let mut c = Command::new("runuser");
        c.env_clear()
            .env("PATH", crate::enter::PATH)
            .env("HOME", &home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("LANG", "C.UTF-8")
            .current_dir(self.dir.path())
            .args(["-u", &u.name, "--", "sbatch", "--parsable"]);
        if !args
            .iter()
            .any(|a| a.starts_with("-o") || a.starts_with("--output"))
        {
            c.arg(format!(
                "--output={}/slurm-%j.out",
                self.dir.path().display()
            ));
        }
        let out = c.args(args).arg(&path).output().context("running sbatch")?;
        let id = parsable_id(&out, args)?;
        if let Ok(mut v) = self.submitted.lock() {
            v.push(id);
        }
        Ok(id)
    }

    /// The job as `scontrol show job` tells it now.
    pub fn job(&self, id: u32) -> anyhow::Result<Job> {
        show_job(self.command("scontrol"), id)
    }

    /// Waits until `f(job)`; fails after `timeout`, showing the job.
    pub fn wait_job(
        &self,
        id: u32,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Job) -> bool,
    ) -> anyhow::Result<Job> {
        wait_job(|| self.job(id), id, timeout, what, f, || self.logs())
    }

    /// Waits until the job has ended (any final state).
    pub fn wait(&self, id: u32, timeout: Duration) -> anyhow::Result<Job> {
        self.wait_job(id, timeout, "its end", Job::is_final)
    }

    /// Waits until the job runs (fails if it ended first).
    pub fn wait_running(&self, id: u32, timeout: Duration) -> anyhow::Result<Job> {
        running(self.wait_job(id, timeout, "it to run", |j| {
            j.state == "RUNNING" || j.is_final()
        })?)
    }

    /// The last lines of the daemons' logs and of their journal.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> = ["/var/log/slurm/slurmctld.log", "/var/log/slurm/slurmd.log"]
            .iter()
            .map(|p| format!("--- {p}:\n{}", tail(Path::new(p), 20)))
            .collect();
        if let Ok(j) = Command::new("journalctl")
            .args([
                "--no-pager",
                "-n",
                "30",
                "-u",
                "slurmd",
                "-u",
                "slurmctld",
                "-u",
                "munge",
            ])
            .output()
        {
            out.push(format!(
                "--- journal:\n{}",
                String::from_utf8_lossy(&j.stdout)
            ));
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scontrol_show_job() {
        let line = "JobId=3 JobName=script-0.sh UserId=root(0) GroupId=root(0) JobState=OUT_OF_MEMORY Reason=OutOfMemory \
                    ExitCode=0:125 Command=/tmp/a b/script.sh WorkDir=/ StdOut=/tmp/x/slurm-3.out TRES=cpu=1,mem=64M,node=1";
        let j = parse_job(line).unwrap();
        assert_eq!(j.id, 3);
        assert_eq!(j.state, "OUT_OF_MEMORY");
        assert_eq!(j.exit_code, "0:125");
        assert!(j.is_final());
        assert_eq!(j.field("Command"), Some("/tmp/a b/script.sh"));
        assert_eq!(j.field("TRES"), Some("cpu=1,mem=64M,node=1"));
        assert_eq!(j.field("StdOut"), Some("/tmp/x/slurm-3.out"));
        assert!(parse_job("No such job").is_none());
    }

    #[test]
    fn configuration() {
        let conf = slurm_conf(&SlurmConf {
            dir: Path::new("/d"),
            host: "h",
            node: "n1",
            ctld_port: 1,
            slurmd_port: 2,
            munge_socket: Path::new("/d/socket/munge.socket"),
            cpus: 2,
            memory_mib: 1000,
        });
        assert!(conf.contains("SlurmctldHost=h(127.0.0.1)\nSlurmctldPort=1\nSlurmdPort=2\n"));
        assert!(conf.contains("AuthInfo=socket=/d/socket/munge.socket\n"));
        assert!(
            conf.contains("NodeName=n1 NodeHostname=h NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 ")
        );
        assert!(cgroup_conf(Cgroups::V1).starts_with("CgroupPlugin=cgroup/v1\n"));
        assert!(cgroup_conf(Cgroups::V1).contains("ConstrainRAMSpace=yes\n"));
    }
}
