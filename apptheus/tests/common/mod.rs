//! Shared harness for the privileged integration tests: a real agent
//! process, trusted starters in root-owned directories, scraping.
#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_apptheus");
pub const STARTER_SIM: &str = env!("CARGO_BIN_EXE_apptheus-starter-sim");

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

/// Tests that run an agent take this lock: two agents would adopt each
/// other's cgroups.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when the test can run; otherwise reports the skip (a failure in CI).
pub fn privileged() -> bool {
    if !nix::unistd::geteuid().is_root() {
        apptheus::testing::skip("root");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        apptheus::testing::skip("kernel BTF");
        return false;
    }
    true
}

/// A root-owned directory holding trusted starter binaries.
pub struct TrustDir {
    pub dir: tempfile::TempDir,
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

    /// Copies the starter simulator in as `name`.
    pub fn starter(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::copy(STARTER_SIM, &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Holds the monitoring socket unless the test chose a path.
    pub sock_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent with `args` (plus a free port and a private socket
    /// path unless given) and waits until it is ready.
    pub fn start(args: &[&str]) -> Self {
        Self::start_wrapped(&[], args)
    }

    /// [`Agent::start`], the agent run by the command `wrapper` (which
    /// must exec its last argument with the rest: e.g. `unshare -m ...`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--web.listen-address")) {
            all.push("--web.listen-address=127.0.0.1:0".into());
        }
        if !args.iter().any(|a| a.starts_with("--monitor.interval")) {
            all.push("--monitor.interval=100ms".into());
        }
        // A root-owned directory: the agent refuses one others can write.
        let sock_dir = tempfile::Builder::new()
            .prefix("apptheus-sock-")
            .tempdir()
            .unwrap();
        if !args.iter().any(|a| a.starts_with("--socket.path")) {
            all.push(format!(
                "--socket.path={}",
                sock_dir.path().join("gateway.sock").display()
            ));
        }
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(AGENT);
                c
            }
            None => Command::new(AGENT),
        };
        let mut child = command
            .args(&all)
            .arg("--log.level=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("APPTHEUS_TEST_ECHO").is_some() {
                    eprintln!("agent: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        let addr = loop {
            if let Some(a) = log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("serving metrics"))
                .and_then(|l| l.split("address=").nth(1))
                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "agent exited ({status}) before serving:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let agent = Agent {
            child,
            addr,
            log,
            sock_dir,
        };
        agent.wait_for(Duration::from_secs(30), "readiness", || {
            agent
                .get("/-/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        agent
    }

    /// A plain HTTP/1.0 GET: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.addr, path, &[])
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("scrape").1
    }

    pub fn socket_path(&self) -> PathBuf {
        self.sock_dir.path().join("gateway.sock")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Polls `f` until true, or fails the test showing the agent's log.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + scaled(timeout);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}\nmetrics:\n{}",
                self.log_text(),
                self.get("/metrics").map(|r| r.1).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(scaled(Duration::from_secs(10))))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the first sample of `name` whose labels contain every
/// `key="value"` of `labels`.
pub fn value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, want)| rest.contains(&format!("{k}=\"{want}\"")))
                .then(|| v.parse().ok())
                .flatten()
        })
}

/// The container_id of the container whose info has `label="value"`.
pub fn container_id(metrics: &str, label: &str, want: &str) -> Option<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("apptheus_container_info{"))
        .find(|l| l.contains(&format!("{label}=\"{want}\"")))
        .and_then(|l| l.split("container_id=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .map(str::to_string)
}

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

/// Directories named apptheus-* anywhere under the cgroup mounts.
pub fn our_cgroup_dirs() -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, depth: usize) {
        if depth > 16 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().starts_with("apptheus-") {
                    out.push(e.path());
                } else {
                    walk(&e.path(), out, depth + 1);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), &mut out, 0);
    out
}

/// Where this host's memory controller is: the v1 `memory` hierarchy
/// (hybrid and pure v1 layouts), or the cgroup2 mount when its root hands
/// `memory` to its children (pure v2). Read from /proc/self/mountinfo, so
/// it works on any layout and any mount point.
pub struct MemoryController {
    pub root: PathBuf,
    pub v2: bool,
}

impl MemoryController {
    /// None when no hierarchy offers the memory controller (e.g. kernels
    /// built without CONFIG_MEMCG_V1 under a v1 or hybrid layout).
    pub fn find() -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mountinfo.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, mountpoint) = (*left.get(3)?, PathBuf::from(left.get(4)?));
            let (fstype, options) = (*right.first()?, *right.get(2)?);
            if root != "/" {
                return None;
            }
            let v1_memory = fstype == "cgroup" && options.split(',').any(|o| o == "memory");
            let v2_memory = fstype == "cgroup2"
                && std::fs::read_to_string(mountpoint.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
            (v1_memory || v2_memory).then_some(Self {
                root: mountpoint,
                v2: v2_memory,
            })
        })
    }

    pub fn limit_file(&self) -> &'static str {
        if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        }
    }

    /// The file that keeps memory from escaping to swap, and its value for
    /// a limit of `limit` bytes.
    pub fn swap_limit(&self, limit: u64) -> (&'static str, String) {
        if self.v2 {
            ("memory.swap.max", "0".into())
        } else {
            ("memory.memsw.limit_in_bytes", limit.to_string())
        }
    }

    /// The cgroup of `pid` in this hierarchy, from /proc/<pid>/cgroup.
    pub fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let ours = if self.v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            ours.then(|| path.to_string())
        })
    }
}

/// CPU seconds (user and system) of the test's reaped children.
pub fn children_cpu_seconds() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(r.user_time()) + t(r.system_time())
}
