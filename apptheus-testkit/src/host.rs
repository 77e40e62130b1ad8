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
/// vm-test` measure it at boot with [`calibrated_scale`]: software
/// emulation runs 13 to 22 times slower, more on a loaded host). Time
/// limits are multiplied by it; nothing the tests measure is.
pub fn time_scale() -> f64 {
    std::env::var("APPTHEUS_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 1.0)
        .unwrap_or(1.0)
}

/// Calibration: a fixed piece of CPU work, 20 million rounds of an
/// integer hash (about 0.1 s on this project's machines in a debug build);
/// how long it took here, now. CPU work, not process creation: emulation
/// slows forks and page faults far more than the agent's and the tests'
/// waits, and a loaded host slows both alike.
pub fn calibration_work() -> Duration {
    let started = std::time::Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..20_000_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    std::hint::black_box(x);
    started.elapsed()
}

/// How long 20 forks and execs of /bin/true take here (for the record
/// beside [`calibration_work`]; emulation slows them far more).
pub fn fork_exec_work() -> Duration {
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let _ = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    started.elapsed()
}

/// The fastest of `rounds` runs of [`calibration_work`]: what the machine
/// can do (`cargo xtask vm-test` measures the host's so before it boots
/// the VMs).
pub fn calibration_best(rounds: usize) -> Duration {
    (0..rounds.max(1))
        .map(|_| calibration_work())
        .min()
        .unwrap_or_default()
}

/// The median of `rounds` runs of [`calibration_work`]: what the machine
/// does now, load included.
pub fn calibration_median(rounds: usize) -> Duration {
    let mut v: Vec<Duration> = (0..rounds.max(1)).map(|_| calibration_work()).collect();
    v.sort();
    v[v.len() / 2]
}

/// The time scale the VM tests were tuned with (a fixed `--time-scale 5`
/// until the VMs measured it), in CI's configuration on an otherwise idle
/// host: two VMs at once on two cores (`--jobs 2`).
pub const TUNED_SCALE: f64 = 5.0;
/// How much slower than on the host itself [`calibration_work`] ran under
/// the VMs' software emulation in that configuration on this project's
/// machines (one VM alone: about 13 times; two at once: 17 to 22 times).
pub const IDLE_EMULATION_RATIO: f64 = 20.0;

/// The time scale of a VM that did the calibration work in `here` where
/// its host did it in `reference`: [`TUNED_SCALE`], stretched by as much
/// as the VM is slower than an idle emulated machine ([`IDLE_EMULATION_RATIO`])
/// (a loaded host slows the VMs), never less.
pub fn calibrated_scale(here: Duration, reference: Duration) -> f64 {
    if reference.is_zero() {
        return TUNED_SCALE;
    }
    let ratio = here.as_secs_f64() / reference.as_secs_f64();
    TUNED_SCALE * (ratio / IDLE_EMULATION_RATIO).max(1.0)
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
    launch(cli, "", starter, args)
}

/// [`launch_workload`], whose `cli` writes to `cpu_file` the CPU seconds
/// its process used until it executes the starter (read it with
/// [`cpu_at_exec`]).
pub fn launch_workload_noting_cpu(
    cli: &Path,
    starter: &Path,
    args: &str,
    cpu_file: &Path,
) -> String {
    let note = format!("--cpu-at-exec {} ", cpu_file.display());
    launch(cli, &note, starter, args)
}

/// `cli launch --after 0.05 <options>starter -- starter workload <args>`.
fn launch(cli: &Path, options: &str, starter: &Path, args: &str) -> String {
    format!(
        "{} launch --after 0.05 {options}{s} -- {s} workload {args}",
        cli.display(),
        s = starter.display()
    )
}

/// The CPU seconds written by [`launch_workload_noting_cpu`]'s launcher.
pub fn cpu_at_exec(cpu_file: &Path) -> f64 {
    let text = std::fs::read_to_string(cpu_file)
        .unwrap_or_else(|e| panic!("the launcher's CPU at exec in {}: {e}", cpu_file.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("the launcher's CPU at exec: {text:?}"))
}

/// A workload's end, held by the test: `workload --until <path>` runs until
/// the gate opens: explicitly, or when the test drops it, even in a panic
/// (its directory goes, which ends the wait too), so that nothing is left
/// running for the tests after.
pub struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a directory for a gate"),
        }
    }

    /// The workload's arguments that wait for this gate.
    pub fn arg(&self) -> String {
        format!("--until {}", self.path().display())
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("open")
    }

    /// Lets the workload end.
    pub fn open(&self) {
        std::fs::write(self.path(), "").expect("open a gate");
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_follows_the_measured_slowness() {
        let ms = Duration::from_millis;
        // An idle emulated machine: the scale the tests were tuned with.
        assert_eq!(calibrated_scale(ms(2000), ms(100)), TUNED_SCALE);
        // Twice as slow (a loaded host): twice the time.
        assert_eq!(calibrated_scale(ms(4000), ms(100)), 2.0 * TUNED_SCALE);
        // Never below the tuned scale, whatever the measurement.
        assert_eq!(calibrated_scale(ms(10), ms(100)), TUNED_SCALE);
        assert_eq!(calibrated_scale(ms(10), Duration::ZERO), TUNED_SCALE);
        let t = calibration_work();
        assert!(t > Duration::ZERO && t < Duration::from_secs(60), "{t:?}");
    }
}
