//! The HTTP endpoint under hostile load, with the real agent binary
//! (root: the agent checks its capabilities; no kernel programs needed).
//!
//! One loopback address holds thousands of connections, half idle and half
//! sending a request's headers (or, with TLS, a handshake) a byte at a
//! time, and reopens each one the agent closes; meanwhile a scraper on
//! another loopback address scrapes every 0.5 s. Every scrape must be
//! answered within 1 s, the agent's resident memory must grow by at most
//! 32 MiB, and 15 s after the abuse its descriptors must be back to where
//! they were. The figures are printed (`--nocapture`) for BENCHMARKS.md.
//!
//! Scale it with APPTHEUS_ABUSE_CONNECTIONS (default 4000),
//! APPTHEUS_ABUSE_ADDRESSES (attacking addresses 127.0.1.x, default 1) and
//! APPTHEUS_ABUSE_SECONDS (default 20).
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{tls::Tls, *};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
};

const SCRAPE_EVERY: Duration = Duration::from_millis(500);
const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
const RSS_GROWTH_LIMIT: u64 = 32 << 20;
const FD_RECOVERY: Duration = Duration::from_secs(15);
/// An attacker reopens a connection the agent closed after this pause.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// The slow half sends one byte this often.
const DRIP_EVERY: Duration = Duration::from_millis(500);
const SCRAPER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        apptheus_testkit::skip("root (the agent checks its capabilities)");
        return false;
    }
    true
}

/// A file-descriptor and memory reading of the agent.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time of every thread of the agent so far.
fn cpu(pid: u32) -> Duration {
    let ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The agent's descriptors, the fewest of a few readings (sampling may
/// hold a file open for a moment).
fn settled_fds(pid: u32) -> usize {
    (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(40));
            fds(pid)
        })
        .min()
        .unwrap_or(0)
}

/// What the attacker sends a byte at a time.
#[derive(Clone, Copy)]
enum Drip {
    /// A request's headers, never finished.
    Headers,
    /// The start of a TLS ClientHello, never finished.
    Handshake,
}

impl Drip {
    fn bytes(self) -> &'static [u8] {
        match self {
            Drip::Headers => {
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: a-very-slow-client/1.0\r\nAccept: */*\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            }
            // A handshake record header announcing 512 bytes, then a
            // ClientHello's first bytes.
            Drip::Handshake => {
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            }
        }
    }
}

#[derive(Default)]
struct AttackStats {
    /// Connections made and held until the agent closed them.
    opened: AtomicU64,
    /// Connections that failed at once: mostly the agent's resets, which
    /// can arrive before the attacker sees its connect complete.
    failed: AtomicU64,
}

impl AttackStats {
    fn attempts(&self) -> u64 {
        self.opened.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// One attacker connection, reopened whenever the agent closes it, until
/// `end`. Idle ones send nothing; the others drip `drip` a byte at a time.
async fn attacker(
    agent: SocketAddr,
    from: IpAddr,
    idle: bool,
    drip: Drip,
    end: tokio::time::Instant,
    stats: Arc<AttackStats>,
) {
    while tokio::time::Instant::now() < end {
        let conn = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            socket.connect(agent).await
        };
        let mut stream = match tokio::time::timeout_at(end, conn).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(REOPEN_AFTER).await;
                continue;
            }
            Err(_) => return,
        };
        stats.opened.fetch_add(1, Ordering::Relaxed);
        let hold = async {
            if idle {
                let mut b = [0u8; 64];
                // Until the agent closes it.
                while matches!(stream.read(&mut b).await, Ok(n) if n > 0) {}
            } else {
                for byte in drip.bytes().iter().cycle() {
                    if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(DRIP_EVERY).await;
                }
            }
        };
        if tokio::time::timeout_at(end, hold).await.is_err() {
            return;
        }
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}

/// One scrape from [`SCRAPER`]: a new connection, `GET /metrics`, the
/// whole answer. The body, or why not.
async fn scrape(agent: SocketAddr, tls: Option<&Tls>) -> Result<String, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(SCRAPER, 0))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(agent).await.map_err(|e| e.to_string())?;
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n";
    let mut raw = Vec::new();
    match tls {
        None => exchange(stream, request, &mut raw).await,
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
            let name = ServerName::try_from("localhost").unwrap();
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            exchange(stream, request, &mut raw).await
        }
    }
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            text.lines().next().unwrap_or("(nothing)")
        ));
    }
    Ok(text.into_owned())
}

async fn exchange<S>(mut s: S, request: &[u8], out: &mut Vec<u8>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request).await?;
    match s.read_to_end(out).await {
        Ok(_) => Ok(()),
        // A TLS peer closing without close_notify, after the whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The agent's web config beside the test certificate: empty until
/// [`Tls::enable`].
impl Tls {
    fn empty_config() -> Self {
        let tls = Tls::new();
        std::fs::write(tls.path("web.yml"), "").unwrap();
        tls
    }

    fn web_config(&self) -> String {
        self.path("web.yml").display().to_string()
    }

    /// Turns TLS on, as an admin editing the file would (the agent starts
    /// in plain HTTP, so that the harness sees it ready).
    fn enable(&self) {
        std::fs::write(
            self.path("web.yml"),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        )
        .unwrap();
    }
}

/// Runs the abuse against a fresh agent and checks the targets.
fn abuse(tls: Option<Tls>) {
    let connections = env_or("APPTHEUS_ABUSE_CONNECTIONS", 4000);
    let addresses = env_or("APPTHEUS_ABUSE_ADDRESSES", 1).clamp(1, 250);
    let seconds = env_or("APPTHEUS_ABUSE_SECONDS", 20);
    let limit = apptheus::testing::raise_fd_limit().expect("raise the descriptor limit");
    assert!(
        limit > connections + 256,
        "the test needs a descriptor limit above {}; the hard limit is {limit}",
        connections + 256
    );

    let _serial = serial();
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let mut args = vec![
        format!("--trust.path={}", starter.display()),
        "--ebpf=false".to_string(),
        "--monitor.interval=1s".to_string(),
    ];
    if let Some(tls) = &tls {
        args.push(format!("--web.config.file={}", tls.web_config()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let pid = agent.child.id();
    let addr: SocketAddr = agent.addr.parse().unwrap();
    let what = if tls.is_some() { "TLS" } else { "plain HTTP" };
    let drip = if tls.is_some() {
        Drip::Handshake
    } else {
        Drip::Headers
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(tls) = &tls {
        tls.enable();
        agent.wait_for(Duration::from_secs(20), "TLS", || {
            rt.block_on(scrape(addr, Some(tls))).is_ok()
        });
    }
    // Warm up, then the baselines.
    for _ in 0..3 {
        rt.block_on(scrape(addr, tls.as_ref()))
            .unwrap_or_else(|e| panic!("{what}: a scrape before the abuse failed: {e}"));
    }
    let fd_base = settled_fds(pid);
    let rss_base = rss(pid);
    let cpu_base = cpu(pid);

    // The attacker: its own thread and runtime (one core at most, like a
    // user's loop), every connection a task.
    let stats = Arc::new(AttackStats::default());
    let started = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let attack = {
        let stats = stats.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..connections {
                    let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % addresses) as u8));
                    tasks.spawn(attacker(addr, from, i % 2 == 0, drip, end, stats.clone()));
                }
                while tasks.join_next().await.is_some() {}
            })
        })
    };

    // The scraper, meanwhile, every 0.5 s; and the agent's memory.
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut rss_max = rss_base;
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let t0 = Instant::now();
        match rt.block_on(async {
            tokio::time::timeout(SCRAPE_LIMIT, scrape(addr, tls.as_ref())).await
        }) {
            Ok(Ok(body)) => {
                assert!(body.contains("apptheus_build_info"), "{body}");
                latencies.push(t0.elapsed());
            }
            Ok(Err(e)) => failures.push(format!("at {:?}: {e}", started.elapsed())),
            Err(_) => failures.push(format!("at {:?}: no answer within 1 s", started.elapsed())),
        }
        rss_max = rss_max.max(rss(pid));
        next += SCRAPE_EVERY;
        while Instant::now() < next {
            rss_max = rss_max.max(rss(pid));
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
        }
    }
    attack.join().expect("the attacker thread");
    let cpu_share = (cpu(pid) - cpu_base).as_secs_f64() / started.elapsed().as_secs_f64();
    let fd_peak_note = fds(pid);
    std::thread::sleep(FD_RECOVERY);
    let fd_after = settled_fds(pid);
    let metrics = rt
        .block_on(scrape(addr, tls.as_ref()))
        .unwrap_or_else(|e| panic!("{what}: a scrape after the abuse failed: {e}"));

    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let p50 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let growth = rss_max.saturating_sub(rss_base);
    let counter = |name: &str, reason: &str| value(&metrics, name, &[("reason", reason)]);
    let rejected: f64 = ["per_address_limit", "total_limit"]
        .iter()
        .filter_map(|r| counter("apptheus_http_connections_rejected_total", r))
        .sum();
    let evicted = counter("apptheus_http_connections_closed_total", "evicted").unwrap_or(0.0);
    let cut: f64 = [
        "evicted",
        "idle_timeout",
        "header_timeout",
        "tls_handshake_timeout",
        "tls_handshake_failed",
        "write_timeout",
        "lifetime_limit",
    ]
    .iter()
    .filter_map(|reason| counter("apptheus_http_connections_closed_total", reason))
    .sum();
    println!(
        "HTTP abuse figures ({what}): {connections} connections from {addresses} address(es) for {seconds} s, \
         {} connection attempts by the attacker ({} reset at once); scrapes {}/{} answered, p50 {:.1} ms, max {:.1} ms; \
         agent CPU {:.0}% of a core, RSS {:.1} MiB before, +{:.1} MiB at most; descriptors {fd_base} before, \
         {fd_peak_note} when the abuse ended, {fd_after} {} s later; refused {rejected}, cut {cut} (evicted {evicted})",
        stats.attempts(),
        stats.failed.load(Ordering::Relaxed),
        latencies.len(),
        latencies.len() + failures.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        cpu_share * 100.0,
        rss_base as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        FD_RECOVERY.as_secs(),
    );

    assert!(
        failures.is_empty(),
        "{what}: {} of {} scrapes failed: {failures:#?}",
        failures.len(),
        latencies.len() + failures.len()
    );
    let expected = (seconds * 1000 / SCRAPE_EVERY.as_millis() as u64) as usize;
    assert!(
        latencies.len() + 1 >= expected,
        "{what}: only {} scrapes in {seconds} s",
        latencies.len()
    );
    assert!(max < SCRAPE_LIMIT, "{what}: slowest scrape {max:?}");
    assert!(
        growth <= RSS_GROWTH_LIMIT,
        "{what}: the agent's memory grew by {growth} bytes"
    );
    assert!(
        fd_after <= fd_base,
        "{what}: {fd_after} descriptors {FD_RECOVERY:?} after the abuse, {fd_base} before"
    );
    // The abuse was real, and the agent says what it did about it.
    assert!(
        stats.attempts() >= connections,
        "the attacker made only {} connection attempts",
        stats.attempts()
    );
    assert!(
        rejected + evicted > 0.0,
        "no refused or evicted connection counted:\n{metrics}"
    );
    assert!(cut > 0.0, "no cut connection counted:\n{metrics}");
    assert_eq!(
        value(&metrics, "apptheus_http_connections", &[]),
        Some(1.0),
        "only the scrape itself is open"
    );
    assert!(agent.stop().success());
}

#[test]
fn scrapes_are_served_while_one_address_holds_thousands_of_idle_and_slow_connections() {
    if !root() {
        return;
    }
    abuse(None);
}

#[test]
fn scrapes_over_tls_are_served_while_one_address_holds_thousands_of_unfinished_handshakes() {
    if !root() {
        return;
    }
    abuse(Some(Tls::empty_config()));
}
