//! The agent as the benchmarks run it: the release (or smoke: debug)
//! build, trusting copies of the starter simulator in an Apptainer-like
//! prefix, its CPU and memory metered. Starting, the log and scraping are
//! apptheus-testkit's, shared with the integration tests.
use std::{
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use apptheus_testkit::{agent::Process, scrape};

use super::{Ctx, meter::Meter};

/// How long a benchmark waits for a reply (scrapes of many containers
/// included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    scrape::http_get_within(addr, path, &[], HTTP_TIMEOUT)
}

/// What Prometheus 2.42 sends with a scrape (its timeout header says it
/// scrapes on a schedule).
pub const PROMETHEUS_HEADERS: [(&str, &str); 4] = [
    ("User-Agent", "Prometheus/2.42.0"),
    (
        "Accept",
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ),
    ("Accept-Encoding", "gzip"),
    ("X-Prometheus-Scrape-Timeout-Seconds", "10"),
];

/// A GET of /metrics with `headers`, connecting from `from` (None: the
/// kernel's choice): how long until the whole answer was read, and the
/// body (decompressed when it came gzip'd).
pub fn get_metrics(
    addr: &str,
    from: Option<IpAddr>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(Duration, String)> {
    let to: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let t = Instant::now();
    let s = match from {
        Some(f) => apptheus_testkit::forward::connect_from(f, to)?,
        None => std::net::TcpStream::connect(to)?,
    };
    let raw = scrape::http_get_on(s, addr, "/metrics", headers, HTTP_TIMEOUT)?;
    let took = t.elapsed();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
        bail!("answered {}", head.lines().next().unwrap_or(""));
    }
    let body = &raw[split + 4..];
    let text = if head.contains("content-encoding: gzip") {
        let mut out = String::new();
        flate2::read::GzDecoder::new(body).read_to_string(&mut out)?;
        out
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    Ok((took, text))
}

/// A root-owned Apptainer-like prefix: copies of the starter simulator as
/// `libexec/apptainer/bin/starter` and as the launcher `bin/apptainer`
/// (which the agent finds from the starter's path).
pub struct TrustDir {
    dir: PathBuf,
    pub starter: PathBuf,
    pub launcher: PathBuf,
    pub sleeper: PathBuf,
}

impl TrustDir {
    pub fn new(sim: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("apptheus-bench-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("libexec/apptainer/bin"))?;
        std::fs::create_dir_all(dir.join("bin"))?;
        let starter = dir.join("libexec/apptainer/bin/starter");
        std::fs::copy(sim, &starter).with_context(|| format!("copying {}", sim.display()))?;
        let launcher = dir.join("bin/apptainer");
        std::fs::copy(sim, &launcher).with_context(|| format!("copying {}", sim.display()))?;
        let sleeper = dir.join("sleeper");
        std::fs::copy("/bin/sleep", &sleeper).context("copying /bin/sleep")?;
        Ok(Self {
            dir,
            starter,
            launcher,
            sleeper,
        })
    }
}

impl Drop for TrustDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running agent; SIGTERM and reaped on drop.
pub struct Agent {
    process: Process,
    pub log: Arc<Mutex<Vec<String>>>,
    pub meter: Meter,
    _sock: SockDir,
}

/// A private directory for the agent's socket, removed on drop.
struct SockDir(PathBuf);

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Agent {
    /// Starts the agent trusting the starter and the sleeper, with `extra`
    /// arguments, and waits until it is ready.
    pub fn start(ctx: &Ctx, extra: &[&str]) -> anyhow::Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sock =
            std::env::temp_dir().join(format!("apptheus-bench-sock-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&sock)?;
        let sock = SockDir(sock);
        let mut command = Command::new(&ctx.agent);
        command
            .arg(format!(
                "--trust.path={};{}",
                ctx.starter.display(),
                ctx.sleeper.display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!(
                "--socket.path={}",
                sock.0.join("gateway.sock").display()
            ))
            .arg("--log.level=debug")
            .args(extra);
        let starting = Process::spawn(&mut command).map_err(|e| anyhow!(e))?;
        let meter = Meter::attach(starting.child.id(), "agent");
        let process = starting
            .serving(Duration::from_secs(30))
            .map_err(|e| anyhow!(e))?;
        let agent = Self {
            log: process.log.clone(),
            meter,
            process,
            _sock: sock,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.process.ready(HTTP_TIMEOUT) {
            if Instant::now() > deadline {
                bail!("the agent did not become ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Where it serves.
    pub fn addr(&self) -> &str {
        &self.process.addr
    }

    /// A scrape as Prometheus makes it: its latency, and the exposition.
    pub fn scrape(&self) -> anyhow::Result<(Duration, String)> {
        get_metrics(&self.process.addr, None, &PROMETHEUS_HEADERS)
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(&self.process.addr, "/metrics")
            .map_err(|e| anyhow!("scrape: {e}"))?
            .1)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.process.child.id()) {
            // SAFETY: kill has no memory effects; the pid is our child's,
            // not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.process.child.wait();
    }
}
