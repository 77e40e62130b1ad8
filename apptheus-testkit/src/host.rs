//! Small things the agent's tests and benchmarks share: time limits that
//! stretch on slow machines, the lock that keeps agents apart, names,
//! commands, and trusted starters in root-owned directories.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

/// How many times slower than a real machine this one runs: 1, unless
/// APPTHEUS_TEST_TIME_SCALE says otherwise (the VMs of `cargo xtask
/// vm-test` run under software emulation, about ten times slower). Time
/// limits are multiplied by it; nothing the tests measure is.
pub fn time_scale() -> f64 {
    std::env::var("APPTHEUS_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 1.0)
        .unwrap_or(1.0)
}

/// A time limit, stretched by [`time_scale`].
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// Held by a test that runs an agent: two agents would adopt each other's
/// cgroups, in this process or in another test binary run at the same
/// time (a lock on [`SERIAL_LOCK_FILE`], besides one within the process).
pub struct Serial {
    _file: Option<nix::fcntl::Flock<std::fs::File>>,
    _guard: MutexGuard<'static, ()>,
}

/// The file whose lock keeps agents of concurrent test processes apart.
pub const SERIAL_LOCK_FILE: &str = "/run/apptheus-tests.lock";

/// Takes the lock that keeps agents apart (waits for it).
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Without root (no /run to write) the tests that need it skip anyway.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(SERIAL_LOCK_FILE)
        .ok()
        .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
    Serial {
        _file: file,
        _guard: guard,
    }
}

/// A TCP port on 127.0.0.1 that is free now (for a server a test starts
/// next; another process may take it meanwhile, which the server's start
/// then reports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port on 127.0.0.1")
        .port()
}

/// A name no other call of this process returns: `<pid>-<n>`.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command to completion, returning its status.
pub fn run(cmd: &mut Command) -> std::process::ExitStatus {
    cmd.stdin(Stdio::null()).status().expect("run command")
}

/// CPU seconds (user and system) of this process's reaped children.
pub fn children_cpu_seconds() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage of the children");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(r.user_time()) + t(r.system_time())
}

/// A root-owned directory (removed on drop) holding trusted starter
/// binaries: the agent trusts a starter only where others can't write.
pub struct TrustDir {
    pub dir: tempfile::TempDir,
}

impl Default for TrustDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TrustDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("apptheus-trust-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// Copies the starter simulator ([`crate::sim::starter_sim`]) in as
    /// `name`.
    pub fn starter(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::copy(crate::sim::starter_sim(), &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Apptainer's layout in this directory: the starter at
    /// `<prefix>/libexec/apptainer/bin/starter` and its command-line tool
    /// at `<prefix>/bin/apptainer`, both the starter simulator (the tool's
    /// `launch` execs the starter as `apptainer exec` does; see
    /// [`launch_workload`]). Returns (tool, starter).
    pub fn apptainer_layout(&self) -> (PathBuf, PathBuf) {
        let prefix = self.dir.path();
        std::fs::create_dir_all(prefix.join("libexec/apptainer/bin")).unwrap();
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        (
            self.starter("bin/apptainer"),
            self.starter("libexec/apptainer/bin/starter"),
        )
    }
}

/// The shell command with which `cli`, of [`TrustDir::apptainer_layout`],
/// runs `starter -- starter workload <args>` 0.05 s after it starts, as
/// `apptainer exec` runs its starter.
pub fn launch_workload(cli: &Path, starter: &Path, args: &str) -> String {
    format!(
        "{} launch --after 0.05 {s} -- {s} workload {args}",
        cli.display(),
        s = starter.display()
    )
}
