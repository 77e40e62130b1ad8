//! The exporter side against real Prometheus components (Debian's
//! prometheus, promtool and prometheus-pushgateway): scraping, TLS and
//! basic auth, pushing, remote write, content negotiation and hostile
//! clients, with the real agent binary (root, BTF).
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::{tls::Tls, *};
use rustls::pki_types::ServerName;

const WAIT: Duration = Duration::from_secs(20);
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";

fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A server process (Prometheus, Pushgateway, a container) killed on drop.
struct Proc {
    child: Child,
    addr: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn wait_ready(&mut self, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = http_get(&self.addr, "/-/ready", &[]) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited ({status}) before it was ready");
            }
            assert!(Instant::now() < deadline, "{what} did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A real Prometheus with `scrape` as its scrape_configs (YAML list items,
/// may be empty) and `extra` flags.
fn prometheus(scrape: &str, extra: &[&str]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape}"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let mut p = Proc {
        child,
        addr,
        _dir: Some(dir),
    };
    p.wait_ready("prometheus");
    p
}

fn pushgateway() -> Proc {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(PUSHGATEWAY)
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the pushgateway");
    let mut p = Proc {
        child,
        addr,
        _dir: None,
    };
    p.wait_ready("pushgateway");
    p
}

/// Starts a container through the trusted starter: the workload spins
/// for `spin` seconds, then sleeps for `sleep`.
fn container(starter: &Path, spin: f64, sleep: f64) -> Proc {
    let child = Command::new(starter)
        .args(["--", starter.to_str().unwrap(), "workload", "--spin"])
        .arg(spin.to_string())
        .arg("--sleep")
        .arg(sleep.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("start a container");
    Proc {
        child,
        addr: String::new(),
        _dir: None,
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant PromQL query.
fn query(prom: &Proc, promql: &str) -> Vec<serde_json::Value> {
    let Ok((200, body)) = http_get(
        &prom.addr,
        &format!("/api/v1/query?query={}", urlencode(promql)),
        &[],
    ) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Waits until `promql` returns at least one series; returns the first.
fn wait_series(prom: &Proc, promql: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = query(prom, promql).into_iter().next() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never returned a series for {promql}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits for a container of `starter` to show up and returns its id.
fn wait_container(agent: &Agent, starter: &Path) -> String {
    let starter = starter.display().to_string();
    let mut id = None;
    agent.wait_for(WAIT, "the container to be attributed", || {
        id = container_id(&agent.metrics(), "starter", &starter);
        id.is_some()
    });
    id.unwrap()
}

/// A raw exchange: sends `request`, returns everything read until the
/// server closes (or 10 s pass).
fn raw(addr: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Splits a response into (status, lower-cased head, body bytes).
fn split(resp: &[u8]) -> (u16, String, Vec<u8>) {
    let pos = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..pos]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.get(pos + 4..).unwrap_or_default().to_vec();
    (status, head, body)
}

#[test]
fn prometheus_scrapes_per_container_series_and_promtool_accepts_the_output() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);
    let _containers: Vec<Proc> = (0..3).map(|_| container(&starter, 1.0, 20.0)).collect();
    agent.wait_for(WAIT, "three running containers", || {
        value(&agent.metrics(), "apptheus_containers", &[]) == Some(3.0)
    });
    let id = wait_container(&agent, &starter);

    // promtool lints the exposition as Prometheus' own tooling sees it.
    let text = agent.metrics();
    let mut lint = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{text}",
        out.status
    );

    // A real Prometheus scrapes it (negotiating OpenMetrics) and answers
    // PromQL with the container's series.
    let prom = prometheus(
        &format!(
            "  - job_name: apptheus\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
        &[],
    );
    wait_series(&prom, "up{job=\"apptheus\"} == 1");
    let s = wait_series(
        &prom,
        &format!("apptheus_container_execs_total{{container_id=\"{id}\"}} >= 2"),
    );
    assert_eq!(s["metric"]["job"], "apptheus");
    // CPU time, from the container's cgroup.
    wait_series(
        &prom,
        &format!("apptheus_container_cpu_usage_seconds_total{{container_id=\"{id}\"}} > 0"),
    );
    wait_series(
        &prom,
        &format!("apptheus_container_info{{container_id=\"{id}\"}}"),
    );
}

/// HTTPS requests with the test certificate.
impl Tls {
    /// An HTTPS GET: (status, lower-cased head, body).
    fn get(
        &self,
        addr: &str,
        path: &str,
        auth: Option<(&str, &str)>,
    ) -> std::io::Result<(u16, String, String)> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ClientConnection::new(
            self.client.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if let Some((u, p)) = auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        tls.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify, after the response.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        let (status, head, body) = split(&out);
        Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[test]
fn tls_and_basic_auth_with_a_real_prometheus() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let tls = Tls::new();
    // The agent starts with an empty web config (plain HTTP); TLS and
    // authentication arrive by editing the file, as an admin would.
    let web = tls.path("web.yml");
    std::fs::write(&web, "").unwrap();
    let agent = Agent::trusting(&starter, &[&format!("--web.config.file={}", web.display())]);
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let good = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\n\
         basic_auth_users:\n  prom: '{hash}'\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    );
    std::fs::write(&web, &good).unwrap();
    let auth = Some(("prom", "s3cret"));
    until(WAIT, "the agent to switch to TLS", || {
        tls.get(&agent.addr, "/-/healthy", auth)
            .ok()
            .filter(|r| r.0 == 200)
            .map(|_| String::new())
    });

    // Without credentials, or with wrong ones: 401 and a Basic challenge.
    for creds in [None, Some(("prom", "wrong")), Some(("nobody", "s3cret"))] {
        let (status, head, _) = tls.get(&agent.addr, "/metrics", creds).unwrap();
        assert_eq!(status, 401, "{creds:?}: {head}");
        assert!(head.contains("www-authenticate: basic"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    }
    let (status, _, body) = tls.get(&agent.addr, "/metrics", auth).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("apptheus_build_info{"), "{body}");

    // Plain HTTP to the TLS port is told so and closed; so is a TLS
    // handshake of garbage; the agent goes on serving.
    let (status, _, body) = split(&raw(&agent.addr, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap());
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("HTTPS"));
    let garbage: Vec<u8> = std::iter::once(0x16u8)
        .chain((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8))
        .collect();
    let started = Instant::now();
    let _ = raw(&agent.addr, &garbage);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A broken edit is refused and the TLS + auth configuration stays.
    std::fs::write(&web, "basic_auth_users:\n  prom: not-a-hash\n").unwrap();
    agent.wait_for(WAIT, "the broken edit to be refused", || {
        agent.log_text().contains("web config change not applied")
    });
    assert!(agent.log_text().contains("not a bcrypt hash"));
    assert_eq!(tls.get(&agent.addr, "/metrics", None).unwrap().0, 401);
    assert_eq!(tls.get(&agent.addr, "/metrics", auth).unwrap().0, 200);
    std::fs::write(&web, &good).unwrap();

    // A real Prometheus scrapes over TLS with the credentials.
    let _c = container(&starter, 0.5, 20.0);
    let id = until(WAIT, "the container", || {
        tls.get(&agent.addr, "/metrics", auth)
            .ok()
            .and_then(|(_, _, m)| container_id(&m, "starter", &starter.display().to_string()))
    });
    let prom = prometheus(
        &format!(
            "  - job_name: apptheus\n    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    basic_auth:\n      username: prom\n      password: s3cret\n    static_configs:\n      - targets: ['{}']\n",
            tls.path("server.crt").display(),
            agent.addr
        ),
        &[],
    );
    wait_series(&prom, "up{job=\"apptheus\"} == 1");
    wait_series(
        &prom,
        &format!("apptheus_container_execs_total{{container_id=\"{id}\"}}"),
    );
}

#[test]
fn a_bad_web_config_stops_the_start_with_an_error_naming_the_file() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
    )
    .unwrap();
    let child = Command::new(AGENT)
        .arg(format!("--trust.path={}", starter.display()))
        .arg(format!("--web.config.file={}", web.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg(format!(
            "--socket.path={}",
            dir.path().join("gateway.sock").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let mut agent = Proc {
        child,
        addr: String::new(),
        _dir: None,
    };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent started anyway");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    agent
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("web config file {}", web.display())),
        "{stderr}"
    );
    assert!(stderr.contains("missing.crt"), "{stderr}");
}

#[test]
fn pushgateway_receives_pushes_and_failures_are_counted_with_backoff() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let gw = pushgateway();
    // Nothing listens on this port: every remote write fails.
    let dead = format!("http://127.0.0.1:{}/api/v1/write", free_port());
    let agent = Agent::trusting(
        &starter,
        &[
            &format!("--push.gateway-url=http://{}", gw.addr),
            &format!("--push.remote-write-url={dead}"),
            "--push.interval=200ms",
        ],
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let _c = container(&starter, 0.2, 20.0);
    let id = wait_container(&agent, &starter);
    let pushed = until(WAIT, "the container's series at the pushgateway", || {
        let (_, m) = http_get(&gw.addr, "/metrics", &[]).ok()?;
        m.lines()
            .any(|l| l.starts_with("apptheus_container_execs_total{") && l.contains(&id))
            .then_some(m)
    });
    let build = pushed
        .lines()
        .find(|l| l.starts_with("apptheus_build_info{"))
        .unwrap_or_else(|| panic!("no apptheus_build_info at the pushgateway:\n{pushed}"));
    assert!(build.contains(&format!("instance=\"{host}\"")), "{build}");
    assert!(build.contains("job=\"apptheus\""), "{build}");

    let m = agent.metrics();
    assert!(value(&m, "apptheus_pushes_total", &[("target", "pushgateway")]).unwrap() >= 1.0);
    // Failures count, but back off: far fewer than one per interval.
    std::thread::sleep(Duration::from_secs(3));
    let m = agent.metrics();
    let failed = value(
        &m,
        "apptheus_push_failures_total",
        &[("target", "remote_write")],
    )
    .expect("remote write failures counted");
    assert!((1.0..=10.0).contains(&failed), "{failed} failures\n{m}");
    assert_eq!(
        value(&m, "apptheus_pushes_total", &[("target", "remote_write")]),
        Some(0.0)
    );
    // Sampling goes on regardless.
    assert_eq!(agent.get("/-/ready").unwrap().0, 200);
    assert!(agent.log_text().contains("push failed"));
}

#[test]
fn remote_write_reaches_a_real_prometheus() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let prom = prometheus("", &["--web.enable-remote-write-receiver"]);
    let agent = Agent::trusting(
        &starter,
        &[
            &format!("--push.remote-write-url=http://{}/api/v1/write", prom.addr),
            "--push.interval=300ms",
            "--push.instance=node-under-test",
        ],
    );
    let _c = container(&starter, 0.2, 20.0);
    let id = wait_container(&agent, &starter);
    let s = wait_series(
        &prom,
        "apptheus_build_info{job=\"apptheus\",instance=\"node-under-test\"}",
    );
    assert_eq!(s["value"][1], "1");
    wait_series(
        &prom,
        &format!(
            "apptheus_container_execs_total{{container_id=\"{id}\",instance=\"node-under-test\"}} >= 2"
        ),
    );
    // Histograms arrive as their _bucket/_sum/_count series.
    wait_series(
        &prom,
        "apptheus_container_placement_seconds_bucket{job=\"apptheus\",le=\"+Inf\"}",
    );
    let m = agent.metrics();
    assert!(value(&m, "apptheus_pushes_total", &[("target", "remote_write")]).unwrap() >= 1.0);
    assert_eq!(
        value(
            &m,
            "apptheus_push_failures_total",
            &[("target", "remote_write")]
        ),
        Some(0.0)
    );
}

#[test]
fn gzip_openmetrics_and_hostile_clients_over_a_real_socket() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);
    let addr = agent.addr.clone();

    let (status, head, body) = split(
        &raw(
            &addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        )
        .unwrap(),
    );
    assert_eq!(status, 200);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_string(&mut text)
        .expect("a valid gzip body");
    assert!(text.contains("# TYPE apptheus_build_info gauge"), "{text}");

    let (status, head, body) = split(
        &raw(
            &addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
        )
        .unwrap(),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let body = String::from_utf8(body).unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE apptheus_containers_started counter"));

    // A slow client holds a connection without finishing its headers.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    // Oversized headers: refused, promptly.
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 256 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let started = Instant::now();
    match raw(&addr, &big) {
        Ok(resp) => {
            let (status, _, _) = split(&resp);
            assert!(status == 0 || status == 431 || status == 400, "{status}");
        }
        // The server may close (reset) before reading it all.
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Garbage: a 400 or a closed connection, promptly.
    let started = Instant::now();
    if let Ok(resp) = raw(&addr, b"\x00\xff\x13garbage\r\n\r\n\r\n") {
        let (status, _, _) = split(&resp);
        assert!(status == 0 || status == 400, "{status}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Many idle connections at once, below the per-address limit (32, the
    // slow client and the scrape included): still served.
    let idle: Vec<TcpStream> = (0..24)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    let started = Instant::now();
    assert_eq!(agent.get("/-/healthy").unwrap().0, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);

    // The slow client is cut off by the header timeout (10 s).
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let started = Instant::now();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(agent.get("/-/healthy").unwrap().0, 200);
    assert!(agent.stop().success());
}
