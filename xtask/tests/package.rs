//! The Debian package, for real: `cargo xtask package` builds it; dpkg
//! installs it into a clean Debian 12 root (debootstrap's minbase, cached
//! as a tarball in /var/cache/apptheus/package-test); the agent runs in
//! that root from the unit's own ExecStart line, with the defaults file's
//! arguments, the unit's capability bounding set and no_new_privs; it
//! attributes and places a container; then dpkg removes and purges the
//! package, and the root must hold exactly the files it held before.
//!
//! Needs root, kernel BTF, debootstrap and network to a Debian mirror
//! (APPTHEUS_DEBIAN_MIRROR, default http://deb.debian.org/debian) the first
//! time. Mounts (/proc, /sys for the agent) live in a private mount
//! namespace that dies with the agent, so nothing stays mounted whatever
//! happens to the test.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const SUITE: &str = "bookworm";
/// Beyond minbase, what a compute node has: systemd (to verify the unit
/// with the root's own systemd-analyze; /bin/kill of ExecReload comes with
/// procps) and man-db (the unit's Documentation=man:apptheus(1)).
const INCLUDE: &str = "systemd,procps,man-db";
const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn privileged() -> bool {
    if !apptheus_testkit::privileged() {
        return false;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        apptheus_testkit::skip("debootstrap (scripts/setup.sh --test installs it)");
        return false;
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A minimal Debian root as a tarball, made once with debootstrap and kept
/// in the download cache outside the clone (`$APPTHEUS_CACHE_DIR`, by
/// default /var/cache/apptheus), since CI starts from a fresh clone.
fn cached_rootfs() -> PathBuf {
    let cache = std::env::var_os("APPTHEUS_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/apptheus"));
    let dir = cache.join("package-test");
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating {} (set APPTHEUS_CACHE_DIR): {e}", dir.display()));
    let tarball = dir.join(format!(
        "debian-{SUITE}-minbase-{}.tar",
        INCLUDE.replace(',', "-")
    ));
    if tarball.exists() {
        return tarball;
    }
    let mirror = std::env::var("APPTHEUS_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let build = dir.join(format!("build-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(build.clone());
    eprintln!("debootstrap {SUITE} from {mirror} (once; about 1-2 minutes)");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&build)
        .arg(&mirror));
    let partial = dir.join(format!("rootfs-{}.tar.partial", std::process::id()));
    run(Command::new("tar")
        .arg("-C")
        .arg(&build)
        .args(["--numeric-owner", "-cf"])
        .arg(&partial)
        .arg("."));
    fs::rename(&partial, &tarball).unwrap();
    tarball
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Every path under `root` (symlinks not followed) with its type, mode,
/// owner and, for a symlink, its target.
fn listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else {
                let kind = if ft.is_dir() { "dir" } else { "file" };
                format!("{kind} {:o} {}:{}", m.mode(), m.uid(), m.gid())
            };
            out.insert(rel, what);
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The agent, run in the chroot from a private mount namespace. Stopped
/// (SIGTERM, then SIGKILL) on drop; its namespace and mounts go with it.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill on the pid of a child we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the agent did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in stop().
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(1));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process killed on drop (the test's "container").
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of the first sample of `name` whose line contains `filter`.
fn sample(metrics: &str, name: &str, filter: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .find(|l| l.contains(filter))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A unit file's value of `key` (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .trim()
        .to_string()
}

/// `KEY="value"` from an EnvironmentFile (quotes removed, as systemd does).
fn env_value(file: &str, key: &str) -> String {
    let v = file
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the defaults file"))
        .trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

/// ExecStart with `$VAR` replaced as systemd does for an unbraced
/// variable: its value split at whitespace into separate words.
fn exec_start(unit: &str, env: &str) -> Vec<String> {
    let line = unit_value(unit, "ExecStart");
    let mut words = Vec::new();
    for w in line.split_whitespace() {
        if let Some(var) = w.strip_prefix('$') {
            words.extend(env_value(env, var).split_whitespace().map(str::to_string));
        } else {
            words.push(w.to_string());
        }
    }
    words
}

/// The cgroup directories the agent made for the container started by `pid`.
fn container_cgroups(pid: u32) -> Vec<String> {
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-type", "d", "-name"])
        .arg(format!("apptheus-{pid}-*"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn chroot(root: &Path, args: &[&str]) -> String {
    run(Command::new("chroot")
        .arg(root)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
}

/// Capability numbers (linux/capability.h) of the names a unit may list.
fn cap_bit(name: &str) -> u32 {
    match name {
        "chown" => 0,
        "dac_override" => 1,
        "dac_read_search" => 2,
        "fowner" => 3,
        "kill" => 5,
        "net_admin" => 12,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("add CAP_{} to cap_bit()", other.to_uppercase()),
    }
}

/// The root booted with its own systemd (systemd-nspawn: a private network,
/// and a volatile overlay, so that booting writes nothing into the root).
/// Halted on drop.
struct Booted {
    nspawn: Child,
    init: u32,
    /// Whether nspawn's state directory on the host predates the test.
    had_state: bool,
}

const NSPAWN_STATE: &str = "/run/systemd/nspawn";

impl Booted {
    /// A command run inside, in every namespace of the container.
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg("--target")
            .arg(self.init.to_string())
            .arg("--all")
            .arg("--")
            .args(args)
            .output()
            .unwrap()
    }

    fn out(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// GET from inside the container's network namespace.
    fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let ns = format!("/proc/{}/ns/net", self.init);
        let path = path.to_string();
        std::thread::spawn(move || {
            let f = fs::File::open(ns).ok()?;
            // SAFETY: setns on this thread only, with a descriptor we own.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0
            {
                return None;
            }
            http_get("127.0.0.1:9091", &path)
        })
        .join()
        .ok()
        .flatten()
    }

    fn journal(&self) -> String {
        self.out(&["journalctl", "--no-pager", "-u", "apptheus"])
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SAFETY: kill on our own unreaped child. nspawn halts the
        // container on SIGTERM.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        if !self.had_state {
            // nspawn's own state on the host, made by this test.
            let _ = fs::remove_dir_all(NSPAWN_STATE);
        }
    }
}

/// The child process of `parent` (the container's init).
fn child_of(parent: u32) -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// The installed package under the root's own systemd, as on a node: the
/// unit enabled by the package starts at boot with its hardening, with an
/// Apptainer starter at its default place (a root-owned copy of sleep bound
/// in), serves metrics, attributes a container, reloads and stops. (Cgroup
/// placement cannot be checked here: the agent runs in the container's PID
/// namespace and the v1 hierarchies are read-only; the chroot run above
/// checked it with the unit's capabilities.)
fn under_systemd(root: &Path, work: &Path, caps: &[String]) {
    if !Path::new("/usr/bin/systemd-nspawn").exists() {
        apptheus_testkit::skip("systemd-nspawn (systemd-container: scripts/setup.sh --test)");
        return;
    }
    let starter = work.join("starter");
    fs::copy("/usr/bin/sleep", &starter).unwrap();
    let had_state = Path::new(NSPAWN_STATE).exists();
    let machine = format!("apptheus-pkg-{}", std::process::id());
    let log = fs::File::create(work.join("nspawn.log")).unwrap();
    let nspawn = Command::new("systemd-nspawn")
        .arg("--directory")
        .arg(root)
        .args(["--machine", &machine, "--keep-unit", "--register=no"])
        .args([
            "--capability=all",
            "--system-call-filter=bpf perf_event_open",
        ])
        .args(["--private-network", "--volatile=overlay"])
        .arg(format!(
            "--bind-ro={}:/usr/libexec/apptainer/bin/starter",
            starter.display()
        ))
        .args(["--boot", "--console=passive"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let nspawn_pid = nspawn.id();
    let mut booted = Booted {
        nspawn,
        init: 0,
        had_state,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    booted.init = loop {
        if let Some(pid) = child_of(nspawn_pid) {
            break pid;
        }
        assert!(
            booted.nspawn.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "systemd-nspawn did not start: {}",
            fs::read_to_string(work.join("nspawn.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Until systemd answers and the boot is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = booted.exec(&["systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if state == "running" || state == "degraded" {
            eprintln!("booted: {state}");
            break;
        }
        assert!(Instant::now() < deadline, "boot did not finish: {state}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        booted.out(&["systemctl", "is-enabled", "apptheus"]),
        "enabled"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while booted
        .exec(&["systemctl", "is-active", "--quiet", "apptheus"])
        .status
        .code()
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "apptheus is not active: {}\n{}",
            booted.out(&["systemctl", "status", "--no-pager", "apptheus"]),
            booted.journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The unit's hardening is in force on the running agent.
    let main = booted.out(&[
        "systemctl",
        "show",
        "--property=MainPID",
        "--value",
        "apptheus",
    ]);
    let status = booted.out(&["cat", &format!("/proc/{main}/status")]);
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mask: u64 = caps
        .iter()
        .map(|c| 1u64 << cap_bit(c.trim_start_matches('+')))
        .sum();
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapBnd:"), format!("{mask:016x}"), "{status}");
    assert_eq!(field("CapEff:"), format!("{mask:016x}"), "{status}");
    let mounts = booted.out(&["cat", &format!("/proc/{main}/mountinfo")]);
    // The last mount on / is the one the agent sees.
    let root_opts = mounts
        .lines()
        .rev()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[4] == "/")
        .map(|f| f[5].to_string())
        .unwrap_or_default();
    assert!(
        root_opts.starts_with("ro"),
        "ProtectSystem=strict: / is {root_opts}"
    );

    // Metrics, the kernel programs, and a container of the default starter.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, m)) = booted.http_get("/metrics")
            && sample(&m, "apptheus_attribution_mode", "mode=\"ebpf\"") == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics:\n{}",
            booted.journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // RuntimeDirectory= made /run/apptheus, writable under ProtectSystem.
    booted.out(&["test", "-S", "/run/apptheus/gateway.sock"]);
    booted.out(&[
        "systemd-run",
        "--unit=apptheus-test-container",
        "/usr/libexec/apptainer/bin/starter",
        "30",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = booted.http_get("/metrics").unwrap_or_default();
        if m.contains("starter=\"/usr/libexec/apptainer/bin/starter\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no container:\n{m}\n{}",
            booted.journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Reload (ExecReload: /bin/kill -HUP) and stop (RuntimeDirectory goes).
    booted.out(&["systemctl", "reload", "apptheus"]);
    booted.out(&["systemctl", "stop", "apptheus"]);
    let journal = booted.journal();
    assert!(
        journal.contains("SIGHUP: trusted starters unchanged"),
        "{journal}"
    );
    assert!(journal.contains("message=stopped"), "{journal}");
    assert!(booted.exec(&["test", "-e", "/run/apptheus"]).status.code() == Some(1));
}

#[test]
fn package_installs_runs_and_purges_cleanly() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("package-test-")
        .tempdir_in(TMP)
        .unwrap();

    // The package, built as a developer builds it.
    let out = run(Command::new(XTASK)
        .args(["package", "--out-dir"])
        .arg(work.path()));
    let deb = PathBuf::from(out.lines().last().unwrap().trim());
    assert!(deb.exists(), "no package at {}", deb.display());
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(!contents.contains("starter-sim"), "{contents}");
    eprintln!("package built: {:?}", started.elapsed());

    // A fresh root.
    let rootfs = cached_rootfs();
    let root = work.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-xpf"])
        .arg(&rootfs));
    let before = listing(&root);
    eprintln!("root ready: {:?}", started.elapsed());

    // Install with the root's own dpkg.
    fs::copy(&deb, root.join("tmp/apptheus.deb")).unwrap();
    chroot(&root, &["dpkg", "--install", "/tmp/apptheus.deb"]);
    let status = chroot(&root, &["dpkg-query", "-W", "-f=${Status}", "apptheus"]);
    assert_eq!(status, "install ok installed");
    let conffiles = chroot(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "apptheus"]);
    assert!(conffiles.contains("/etc/default/apptheus"), "{conffiles}");
    for f in [
        "usr/bin/apptheus",
        "usr/lib/systemd/system/apptheus.service",
        "etc/default/apptheus",
        "usr/share/man/man1/apptheus.1.gz",
        "usr/share/doc/apptheus/copyright",
        "usr/share/doc/apptheus/README.md",
    ] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    let mode = fs::metadata(root.join("usr/bin/apptheus")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755);
    // Enabled (deb-systemd-helper), though not started: no systemd runs here.
    let wants = root.join("etc/systemd/system/multi-user.target.wants/apptheus.service");
    assert!(
        fs::symlink_metadata(&wants).is_ok(),
        "the unit is not enabled"
    );
    // The man page documents the binary's real flags.
    let man = run(Command::new("zcat").arg(root.join("usr/share/man/man1/apptheus.1.gz")));
    for flag in [
        "trust.path",
        "web.listen\\-address",
        "push.remote\\-write\\-url",
    ] {
        assert!(man.contains(flag), "the man page lacks {flag}");
    }
    // The root's systemd accepts the unit: syntax, ExecStart/ExecReload
    // binaries, dependencies, and its man page resolves.
    let verify = Command::new("chroot")
        .arg(&root)
        .args(["systemd-analyze", "verify", "apptheus.service"])
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    chroot(&root, &["man", "-w", "apptheus"]);
    let security = Command::new("chroot")
        .arg(&root)
        .args([
            "systemd-analyze",
            "security",
            "--offline=yes",
            "apptheus.service",
        ])
        .output()
        .unwrap();
    let security = String::from_utf8_lossy(&security.stdout);
    eprintln!(
        "{}",
        security
            .lines()
            .last()
            .unwrap_or("no systemd-analyze security verdict")
    );
    // Reinstalling (what an upgrade runs) works too.
    chroot(&root, &["dpkg", "--install", "/tmp/apptheus.deb"]);
    fs::remove_file(root.join("tmp/apptheus.deb")).unwrap();
    eprintln!("installed: {:?}", started.elapsed());

    // The agent, started as the unit starts it.
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/apptheus.service")).unwrap();
    let env_file = unit_value(&unit, "EnvironmentFile");
    let env_file = env_file.trim_start_matches('-');
    assert_eq!(env_file, "/etc/default/apptheus");
    let defaults = fs::read_to_string(root.join(env_file.trim_start_matches('/'))).unwrap();
    let mut argv = exec_start(&unit, &defaults);
    assert_eq!(argv[0], "/usr/bin/apptheus");
    let port = apptheus_testkit::host::free_port();
    let addr = format!("127.0.0.1:{port}");
    // The "starter": the root's own sleep, a root-owned file in root-owned
    // directories; the test runs it as the container.
    argv.push("--trust.path=/usr/bin/sleep".into());
    argv.push(format!("--web.listen-address={addr}"));
    argv.push("--monitor.interval=100ms".into());
    let caps: Vec<String> = unit_value(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    let log = work.path().join("agent.log");
    let log_file = fs::File::create(&log).unwrap();
    let mut agent = Agent {
        child: Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-euc"])
            .arg(
                r#"R=$1; shift
                   mount --rbind /proc "$R/proc"
                   mount --rbind /sys "$R/sys"
                   exec chroot "$R" "$@""#,
            )
            .arg("sh")
            .arg(&root)
            .args(["setpriv", "--no-new-privs", "--inh-caps=-all"])
            .arg(format!("--bounding-set=-all,{}", caps.join(",")))
            .arg("--")
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = http_get(&addr, "/-/ready") {
            break;
        }
        if let Some(s) = agent.child.try_wait().unwrap() {
            panic!("the agent exited ({s}):\n{}", agent.log());
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(metrics.contains("apptheus_build_info{"), "{metrics}");
    // The unit's capabilities are enough for the kernel programs...
    assert_eq!(
        sample(&metrics, "apptheus_attribution_mode", "mode=\"ebpf\""),
        Some(1.0),
        "kernel programs not loaded with the unit's capabilities:\n{}",
        agent.log()
    );
    assert!(root.join("run/apptheus/gateway.sock").exists());

    // ... and for attributing and placing a container.
    let container = Killed(
        Command::new(root.join("usr/bin/sleep"))
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let pid = container.0.id();
    let placed = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (_, m) = http_get(&addr, "/metrics").unwrap();
        let found = m.contains(&format!("container_id=\"{pid}-"))
            && sample(&m, "apptheus_container_placement_seconds_count", "").unwrap_or(0.0) >= 1.0;
        if found {
            break m;
        }
        assert!(
            Instant::now() < placed,
            "container {pid} not attributed and placed:\n{m}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("apptheus_container_cpu_usage_seconds_total{"),
        "{metrics}"
    );
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains("/apptheus-"), "not placed: {cgroup}");
    drop(container);
    // The agent removes the container's cgroups once it has ended.
    let gone = Instant::now() + Duration::from_secs(20);
    while !container_cgroups(pid).is_empty() {
        assert!(
            Instant::now() < gone,
            "cgroups left: {:?}\n{}",
            container_cgroups(pid),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let status = agent.stop();
    assert!(status.success(), "agent: {status}\n{}", agent.log());
    drop(agent);
    eprintln!("agent ran and stopped: {:?}", started.elapsed());

    under_systemd(&root, work.path(), &caps);
    eprintln!("ran under the root's systemd: {:?}", started.elapsed());

    // Remove: the conffile stays, the rest goes.
    chroot(&root, &["dpkg", "--remove", "apptheus"]);
    assert!(root.join("etc/default/apptheus").exists());
    assert!(!root.join("usr/bin/apptheus").exists());
    assert!(
        !root.join("run/apptheus").exists(),
        "postrm left /run/apptheus"
    );
    // Purge: nothing of apptheus is left.
    chroot(&root, &["dpkg", "--purge", "apptheus"]);
    // dpkg has forgotten the package.
    let out = Command::new("chroot")
        .arg(&root)
        .args(["dpkg-query", "-W", "apptheus"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no packages found"),
        "dpkg still knows apptheus: {out:?}"
    );
    let after = listing(&root);
    // What other packages' tools keep may change: dpkg's journal and the
    // backups of its database, man-db's cache (its trigger ran at install,
    // systemd-analyze formatted the page), systemd-analyze's runtime file.
    // No such path may name apptheus; nothing else may appear, vanish or
    // change type, mode or owner.
    let others_bookkeeping = |p: &str| {
        p.starts_with("/var/lib/dpkg/")
            && (p.ends_with("-old") || p.starts_with("/var/lib/dpkg/updates/"))
            || p == "/var/log/dpkg.log"
            || p.starts_with("/var/cache/man/")
            || p.starts_with("/run/systemd/")
    };
    let mut diff = Vec::new();
    for (p, what) in &after {
        if others_bookkeeping(p) && !p.contains("apptheus") {
            continue;
        }
        match before.get(p) {
            None => diff.push(format!("left behind: {p} ({what})")),
            Some(old) if old != what => diff.push(format!("changed: {p}: {old} -> {what}")),
            Some(_) => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        if !others_bookkeeping(p) {
            diff.push(format!("removed: {p}"));
        }
    }
    assert!(
        diff.is_empty(),
        "purge did not restore the root:\n{diff:#?}"
    );
    assert!(!after.keys().any(|p| p.contains("apptheus")));
    eprintln!("purged, root as before: {:?}", started.elapsed());
}
