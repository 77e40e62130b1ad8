//! The monitoring socket against real processes: a trusted caller (a copy
//! of python3 in a root-owned directory, trusted by identity, that connects
//! and waits as Apptainer's starter does), untrusted callers, pid reuse
//! during verification, and abuse a local user could try.
//!
//! These need root: the daemon verifies callers of every uid through /proc
//! and pidfds, and the pid-reuse test sets /proc/sys/kernel/ns_last_pid.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{
        fd::AsFd,
        unix::{
            fs::PermissionsExt as _,
            net::{UnixListener as StdListener, UnixStream as StdStream},
        },
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use apptheus::testing::socket::{
    self, AgentMetrics, ConnId, ConnectionCaps, SocketEvent, TrustedFile, TrustedSet, file_id,
    verify::{self, PeerCreds},
};
use apptheus_common::FileId;
use tokio::sync::{mpsc, watch};

/// One test at a time: they count the process's descriptors and one
/// lowers its descriptor limit.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How each test here begins: one at a time, as root, with a trusted copy
/// of python3; `None` (the skip reported) when the machine can't.
fn begin() -> Option<(MutexGuard<'static, ()>, Python)> {
    let serial = serial();
    if !nix::unistd::geteuid().is_root() {
        apptheus_testkit::skip("root (to verify callers of other users through /proc and pidfds)");
        return None;
    }
    Some((serial, python()?))
}

/// A python3 interpreter, and a copy of it that the tests trust.
struct Python {
    _dir: tempfile::TempDir,
    trusted: PathBuf,
    untrusted: PathBuf,
    id: FileId,
    set: TrustedSet,
}

fn python() -> Option<Python> {
    let found = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .find(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x7fELF")));
    let Some(untrusted) = found else {
        apptheus_testkit::skip("an ELF python3 in /usr/bin (Debian package python3)");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("apptheus-socket-trust-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let trusted = dir.path().join("starter");
    std::fs::copy(&untrusted, &trusted).unwrap();
    std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = file_id(&std::fs::metadata(&trusted).unwrap());
    let set = TrustedSet {
        files: vec![TrustedFile {
            path: trusted.clone(),
            id,
        }],
    };
    Some(Python {
        _dir: dir,
        trusted,
        untrusted,
        id,
        set,
    })
}

/// Connects `count` times to argv[1], prints "connected", then:
/// `hold`: keeps the connections until stdin closes;
/// `closed`: waits for the daemon to close every one, prints "closed";
/// `write`: writes to the first without end for argv[4] seconds, prints
/// "wrote <bytes>" (or "write-error <bytes>" when the daemon hangs up).
/// A `go-` prefix waits for a line on stdin before connecting.
const CLIENT: &str = r#"
import socket, sys, time
path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode.startswith("go-"):
    sys.stdin.readline()
    mode = mode[3:]
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
print("connected", flush=True)
if mode == "closed":
    for s in socks:
        s.settimeout(20)
        try:
            data = s.recv(1)
        except ConnectionResetError:
            data = b""
        if data != b"":
            sys.exit(3)
    print("closed", flush=True)
elif mode == "write":
    total, chunk = 0, b"x" * 65536
    deadline = time.monotonic() + float(sys.argv[4])
    s = socks[0]
    s.settimeout(0.1)
    word = "wrote"
    while time.monotonic() < deadline:
        try:
            total += s.send(chunk)
        except socket.timeout:
            pass
        except OSError:
            word = "write-error"
            break
    print(word, total, flush=True)
sys.stdin.read()
"#;

/// Forks argv[2] children, one after the other, that connect to argv[1]
/// and exit at once; prints how many connected.
const FORK_FLOOD: &str = r#"
import os, socket, sys
path, n, ok = sys.argv[1], int(sys.argv[2]), 0
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            socket.socket(socket.AF_UNIX).connect(path)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    ok += status == 0
print(ok, flush=True)
"#;

/// A python process with its stdout read line by line on a thread.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std_mpsc::Receiver<String>,
}

impl Client {
    fn spawn(exe: &Path, script: &str, args: &[&str]) -> Self {
        let mut child = Command::new(exe)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("client {} printed nothing: {e}", self.pid()))
    }

    fn send_line(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{s}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin, which ends the script, and reaps it.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + long();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "client {} did not exit",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket server on its own runtime, as the agent runs it.
struct Daemon {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    path: PathBuf,
    events: Option<mpsc::Receiver<SocketEvent>>,
    metrics: Arc<AgentMetrics>,
    task: Option<tokio::task::JoinHandle<()>>,
    _trusted: watch::Sender<TrustedSet>,
}

impl Daemon {
    fn start(set: TrustedSet, limits: ConnectionCaps) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/gateway.sock");
        let handle = rt.block_on(socket::bind(&path)).unwrap();
        let (trusted_tx, trusted_rx) = watch::channel(set);
        let (tx, rx) = mpsc::channel(256);
        let metrics = AgentMetrics::new();
        let task = rt.spawn(socket::serve_with(
            handle,
            limits,
            "/proc".into(),
            trusted_rx,
            tx,
            metrics.own.socket_connections.clone(),
        ));
        Self {
            rt,
            _dir: dir,
            path,
            events: Some(rx),
            metrics,
            task: Some(task),
            _trusted: trusted_tx,
        }
    }

    fn sock(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn event(&mut self, within: Duration) -> Option<SocketEvent> {
        let rx = self.events.as_mut().unwrap();
        self.rt
            .block_on(async { tokio::time::timeout(within, rx.recv()).await })
            .ok()
            .flatten()
    }

    fn count(&self, result: &str) -> u64 {
        self.metrics
            .own
            .socket_connections
            .with_label_values(&[result])
            .get()
    }

    fn total(&self) -> u64 {
        ["accepted", "rejected", "error"]
            .iter()
            .map(|r| self.count(r))
            .sum()
    }

    /// Waits until `f` holds, or fails with `what`.
    fn wait_for(&self, within: Duration, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: accepted {} rejected {} error {}",
                self.count("accepted"),
                self.count("rejected"),
                self.count("error")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Drops the event receiver, which ends the server.
    fn stop(&mut self) {
        drop(self.events.take());
        let task = self.task.take().unwrap();
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
            .expect("the server stops when its events are no longer wanted")
            .unwrap();
    }
}

fn connected(ev: Option<SocketEvent>) -> (ConnId, u32, FileId, u64) {
    match ev {
        Some(SocketEvent::Connected {
            conn,
            pid,
            exe,
            start_time,
            ..
        }) => (conn, pid, exe, start_time),
        other => panic!("expected Connected, got {other:?}"),
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn start_time_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_ascii_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

const SHORT: Duration = Duration::from_millis(300);
/// How long a test waits for something that must happen (stretched on a
/// slow machine: apptheus_testkit::host::scaled).
fn long() -> Duration {
    apptheus_testkit::host::scaled(Duration::from_secs(20))
}

#[test]
fn trusted_caller_is_reported_until_it_disconnects() {
    let Some((_serial, py)) = begin() else {
        return;
    };
    let mut d = Daemon::start(py.set.clone(), ConnectionCaps::default());

    let client = Client::spawn(&py.trusted, CLIENT, &[d.sock(), "1", "hold"]);
    assert_eq!(client.line(long()), "connected");
    let ev = d.event(long());
    let (conn, pid, exe, start_time) = connected(ev.clone());
    assert_eq!(pid, client.pid());
    assert_eq!(exe, py.id);
    assert_eq!(start_time, start_time_of(pid));
    let Some(SocketEvent::Connected { uid, gid, .. }) = ev else {
        unreachable!()
    };
    assert_eq!((uid, gid), (0, 0));
    assert_eq!(d.count("accepted"), 1);
    assert_eq!(d.event(SHORT), None, "one event per connection");

    client.finish();
    assert_eq!(d.event(long()), Some(SocketEvent::Disconnected { conn }));
    d.stop();
    assert!(
        !d.path.exists(),
        "socket file removed when the server stops"
    );
}

#[test]
fn untrusted_callers_are_closed_counted_and_not_reported() {
    let Some((_serial, py)) = begin() else {
        return;
    };
    let mut d = Daemon::start(py.set.clone(), ConnectionCaps::default());

    // The genuine interpreter, but not the trusted file: same path name
    // elsewhere or same content does not matter, identity does.
    let client = Client::spawn(&py.untrusted, CLIENT, &[d.sock(), "1", "closed"]);
    assert_eq!(client.line(long()), "connected");
    assert_eq!(client.line(long()), "closed", "the daemon hangs up");
    client.finish();

    // This test process is no starter either.
    let mut own = StdStream::connect(&d.path).unwrap();
    own.set_read_timeout(Some(long())).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut own, &mut buf).unwrap(), 0);

    d.wait_for(long(), "two rejections", |d| d.count("rejected") == 2);
    assert_eq!(d.count("accepted"), 0);
    assert_eq!(d.event(SHORT), None, "rejected callers produce no event");
    d.stop();
}

/// Starts `exe` (a python) with the given pid, by setting ns_last_pid just
/// before forking; other processes forking meanwhile can steal the pid, so
/// it retries. `None` if the kernel does not let us.
fn spawn_with_pid(pid: u32, exe: &Path) -> Option<Child> {
    for _ in 0..200 {
        let last = (pid - 1).to_string();
        if std::fs::write("/proc/sys/kernel/ns_last_pid", last).is_err() {
            return None;
        }
        let mut child = Command::new(exe)
            .args(["-c", "import time; time.sleep(60)"])
            .spawn()
            .ok()?;
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A trusted caller connects and is pinned; between that and the identity
/// check it exits and `successor` takes its pid. Returns the verdict and
/// whether the pid was really reused.
fn verdict_after_pid_reuse(
    py: &Python,
    successor: &Path,
) -> (Result<verify::Identified, verify::VerifyError>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = StdListener::bind(&path).unwrap();
    let mut first = Client::spawn(&py.trusted, CLIENT, &[path.to_str().unwrap(), "1", "hold"]);
    let (stream, _) = listener.accept().unwrap();
    let peer = verify::Peer::from_socket(stream.as_fd()).unwrap();
    assert_eq!(peer.creds().pid, first.pid());

    let mut next: Option<Child> = None;
    let mut hook = |c: &PeerCreds| {
        first.child.kill().unwrap();
        first.child.wait().unwrap();
        next = spawn_with_pid(c.pid, successor);
    };
    let verdict = verify::identify(std::path::Path::new("/proc"), &peer, &py.set, &mut hook);
    let reused = next.is_some();
    if reused {
        // The pid is alive again, in the successor; the pidfd still
        // refers to the caller, and knows it is gone: this alone rejects a
        // successor that started within the same clock tick (same start
        // time).
        assert!(
            !peer.is_alive().unwrap(),
            "the pidfd follows the process, not the pid"
        );
    }
    if let Some(mut c) = next {
        let _ = c.kill();
        let _ = c.wait();
    }
    (verdict, reused)
}

#[test]
fn a_pid_reused_during_verification_is_never_trusted() {
    let Some((_serial, py)) = begin() else {
        return;
    };
    // The successor runs an untrusted binary, then (the case the pidfd and
    // start-time guards exist for) the trusted binary itself, without
    // having connected.
    for (what, successor) in [("untrusted", &py.untrusted), ("trusted", &py.trusted)] {
        let (verdict, reused) = verdict_after_pid_reuse(&py, successor);
        match &verdict {
            Err(e) => assert!(e.is_peer_gone(), "{what} successor: {e}"),
            Ok(id) => panic!("{what} successor was identified: {id:?}"),
        }
        if reused {
            eprintln!("{what} successor took the pid: {verdict:?}");
        } else {
            eprintln!(
                "could not hand the pid to a {what} successor (ns_last_pid unavailable or \
                 contended); asserted only that an exited peer is never trusted"
            );
        }
    }
}

#[test]
fn a_peer_that_exited_is_never_trusted() {
    let Some((_serial, py)) = begin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let listener = StdListener::bind(&path).unwrap();

    // Exits after it is pinned: the pidfd refers to a dead process.
    let mut c = Client::spawn(&py.trusted, CLIENT, &[path.to_str().unwrap(), "1", "hold"]);
    let (stream, _) = listener.accept().unwrap();
    let peer = verify::Peer::from_socket(stream.as_fd()).unwrap();
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    assert!(!peer.is_alive().unwrap());
    let err = verify::identify(
        std::path::Path::new("/proc"),
        &peer,
        &py.set,
        &mut verify::NoHook,
    )
    .unwrap_err();
    assert!(err.is_peer_gone(), "{err}");

    // Exits (and is reaped) before it is even pinned.
    let mut c = Client::spawn(&py.trusted, CLIENT, &[path.to_str().unwrap(), "1", "hold"]);
    let (stream, _) = listener.accept().unwrap();
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    match verify::Peer::from_socket(stream.as_fd()) {
        Err(e) => assert!(e.is_peer_gone(), "{e}"),
        Ok(peer) => {
            let err = verify::identify(
                std::path::Path::new("/proc"),
                &peer,
                &py.set,
                &mut verify::NoHook,
            )
            .unwrap_err();
            assert!(err.is_peer_gone(), "{err}");
        }
    }
}

/// Restores RLIMIT_NOFILE when dropped.
struct NofileLimit(libc::rlimit);

impl NofileLimit {
    fn lower_to(soft: u64) -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `old`, which we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from `new`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        Self(old)
    }
}

impl Drop for NofileLimit {
    fn drop(&mut self) {
        // SAFETY: setrlimit reads one rlimit from `self.0`.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `ru`, which we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Everything a local user can throw at the socket, one after the other
/// against one server; afterwards it still serves a trusted caller and
/// holds no more descriptors than when it started.
#[test]
fn abuse_leaves_the_server_serving_without_leaked_descriptors() {
    let Some((_serial, py)) = begin() else {
        return;
    };
    let started = Instant::now();
    // Every client here runs as root, so one uid: let a burst of 1,100
    // trusted connections through verification (the default of 64 pending
    // per uid is meant for one starter per container), and cap trusted
    // connections per uid at 1,000 to see the cap at work.
    let limits = ConnectionCaps {
        max_pending_per_uid: 2048,
        max_trusted_per_uid: 1000,
        ..ConnectionCaps::default()
    };
    let mut d = Daemon::start(py.set.clone(), limits);
    let base = fd_count();

    // 1. 10,000 connect-then-exit clients: 4,000 forked processes that die
    // before they can be verified, and 6,000 connections from 4 threads
    // here that are closed at once.
    let floods: Vec<Client> = (0..2)
        .map(|_| Client::spawn(&py.untrusted, FORK_FLOOD, &[d.sock(), "2000"]))
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let path = d.path.clone();
            std::thread::spawn(move || {
                (0..1500)
                    .filter(|_| StdStream::connect(&path).is_ok())
                    .count() as u64
            })
        })
        .collect();
    let mut expected: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    for f in floods {
        expected += f.line(Duration::from_secs(40)).parse::<u64>().unwrap();
        f.finish();
    }
    assert!(
        expected > 9_900,
        "only {expected} of 10,000 clients connected"
    );
    d.wait_for(long(), "every flood connection accounted for", |d| {
        d.total() == expected
    });
    assert_eq!(d.count("accepted"), 0);
    assert_eq!(d.event(SHORT), None);
    eprintln!(
        "flood of {expected} handled in {:?}: rejected {} error {}",
        started.elapsed(),
        d.count("rejected"),
        d.count("error")
    );
    d.wait_for(long(), "descriptors back after the flood", |_| {
        fd_count() <= base
    });

    // 2. 1,100 idle trusted connections: 1,000 held, 100 over the per-uid
    // cap closed; then 1,000 idle untrusted ones, all closed at once.
    let rejected_before = d.count("rejected");
    let holder = Client::spawn(&py.trusted, CLIENT, &[d.sock(), "1100", "hold"]);
    assert_eq!(holder.line(long()), "connected");
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let (conn, pid, _, _) = connected(d.event(long()));
        assert_eq!(pid, holder.pid());
        conns.push(conn);
    }
    d.wait_for(long(), "100 over the cap rejected", |d| {
        d.count("rejected") == rejected_before + 100
    });
    assert_eq!(d.count("accepted"), 1000);
    let idle = Client::spawn(&py.untrusted, CLIENT, &[d.sock(), "1000", "closed"]);
    assert_eq!(idle.line(long()), "connected");
    assert_eq!(idle.line(long()), "closed");
    d.wait_for(long(), "the idle untrusted connections counted", |d| {
        d.count("rejected") == rejected_before + 1100
    });
    // The held connections cost one descriptor each; the idle untrusted
    // ones (still open on the client's side) nothing. The clients' pipes
    // are the test's own.
    let held = fd_count();
    assert!(
        (base + 1000..=base + 1010).contains(&held),
        "{held} descriptors open, started with {base}"
    );
    idle.finish();
    holder.finish();
    let mut gone = Vec::new();
    for _ in 0..1000 {
        match d.event(long()) {
            Some(SocketEvent::Disconnected { conn }) => gone.push(conn),
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    conns.sort();
    gone.sort();
    assert_eq!(conns, gone, "every held connection reported closed");

    // 3. A trusted client writing without end for 2 s is read at a bounded
    // rate and does not hold up others; an untrusted one is hung up on.
    let writer = Client::spawn(&py.trusted, CLIENT, &[d.sock(), "1", "write", "2"]);
    assert_eq!(writer.line(long()), "connected");
    let (wconn, wpid, _, _) = connected(d.event(long()));
    assert_eq!(wpid, writer.pid());
    let rude = Client::spawn(&py.untrusted, CLIENT, &[d.sock(), "1", "write", "2"]);
    assert_eq!(rude.line(long()), "connected");
    let polite = Client::spawn(&py.trusted, CLIENT, &[d.sock(), "1", "hold"]);
    assert_eq!(polite.line(long()), "connected");
    let (pconn, ppid, _, _) = connected(d.event(Duration::from_secs(2)));
    assert_eq!(ppid, polite.pid(), "served while another client floods");
    let rude_said = rude.line(long());
    assert!(rude_said.starts_with("write-error"), "{rude_said}");
    let wrote = writer.line(long());
    let bytes: u64 = wrote.strip_prefix("wrote ").unwrap().parse().unwrap();
    assert!(
        bytes < 8 << 20,
        "{bytes} bytes taken from a peer in 2 s: reads are not rate-limited"
    );
    eprintln!("endless writer got {bytes} bytes through in 2 s");
    writer.finish();
    rude.finish();
    polite.finish();
    let mut closed = vec![d.event(long()), d.event(long())];
    closed.sort_by_key(|e| format!("{e:?}"));
    let mut want = vec![
        Some(SocketEvent::Disconnected { conn: wconn }),
        Some(SocketEvent::Disconnected { conn: pconn }),
    ];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(closed, want);

    // 4. Out of descriptors: accept fails with EMFILE while a caller
    // waits; the server backs off instead of spinning, and serves the
    // caller once descriptors are free again.
    let mut waiting = Client::spawn(&py.trusted, CLIENT, &[d.sock(), "1", "go-hold"]);
    let fillers = {
        let limit = NofileLimit::lower_to(fd_count() as u64 + 64);
        let mut fillers = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            fillers.push(f);
        }
        assert!(!fillers.is_empty());
        (limit, fillers)
    };
    let cpu_before = cpu_time();
    waiting.send_line("go");
    assert_eq!(waiting.line(long()), "connected");
    assert_eq!(
        d.event(Duration::from_secs(2)),
        None,
        "nothing can be accepted"
    );
    let spent = cpu_time() - cpu_before;
    drop(fillers);
    assert!(
        spent < Duration::from_millis(500),
        "{spent:?} of CPU in 2 s out of descriptors: the accept loop spins"
    );
    let (econn, epid, _, _) = connected(d.event(Duration::from_secs(5)));
    assert_eq!(epid, waiting.pid(), "served once descriptors are free");
    waiting.finish();
    assert_eq!(
        d.event(long()),
        Some(SocketEvent::Disconnected { conn: econn })
    );

    // 5. Still serving, and no descriptor left behind.
    let last = Client::spawn(&py.trusted, CLIENT, &[d.sock(), "1", "hold"]);
    assert_eq!(last.line(long()), "connected");
    let (lconn, lpid, _, _) = connected(d.event(long()));
    assert_eq!(lpid, last.pid());
    last.finish();
    assert_eq!(
        d.event(long()),
        Some(SocketEvent::Disconnected { conn: lconn })
    );
    d.wait_for(long(), "descriptors back to where they started", |_| {
        fd_count() <= base
    });
    assert_eq!(fd_count(), base);
    eprintln!("abuse test took {:?}", started.elapsed());
    d.stop();
    assert!(!d.path.exists());
}
