//! A real Prometheus server (Debian's `prometheus`, which
//! `scripts/setup.sh --test` installs) scraping the agent: its own data
//! directory and port, its configuration rewritable (a reload changes
//! its scrape interval), and instant queries through its HTTP API.
//! Killed on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::scrape::http_get_within;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    child: Child,
    /// Where its HTTP API answers.
    pub addr: String,
    dir: tempfile::TempDir,
    replica: String,
    targets: Vec<String>,
}

impl Prometheus {
    /// Whether the binary is there.
    pub fn available() -> bool {
        Path::new(PROMETHEUS).exists()
    }

    /// Starts a server that scrapes `targets` (host:port) every `interval`
    /// (timeout: a second less, at most 10 s), labelled `replica`: two
    /// servers with different replicas scrape at different phases, as an
    /// HA pair does. Waits until it is ready.
    pub fn start(replica: &str, targets: &[String], interval: Duration) -> anyhow::Result<Self> {
        if !Self::available() {
            return Err(crate::unavailable(format!(
                "{PROMETHEUS}: scripts/setup.sh --test installs it"
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("apptheus-prometheus-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("prometheus.yml");
        write_config(&config, replica, targets, interval)?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {PROMETHEUS}"))?;
        let mut p = Prometheus {
            child,
            addr,
            dir,
            replica: replica.to_string(),
            targets: targets.to_vec(),
        };
        let deadline = Instant::now() + crate::host::scaled(Duration::from_secs(60));
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("Prometheus exited ({status}):\n{}", p.log());
            }
            if http_get_within(&p.addr, "/-/ready", &[], Duration::from_secs(2))
                .is_ok_and(|(s, _)| s == 200)
            {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("Prometheus was not ready in time:\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    /// Scrapes every `interval` from now on (the configuration rewritten
    /// and reloaded).
    pub fn set_interval(&self, interval: Duration) -> anyhow::Result<()> {
        write_config(&self.config(), &self.replica, &self.targets, interval)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        Ok(())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the sum of the values of the series it gives
    /// (None when it gives none).
    pub fn query(&self, q: &str) -> anyhow::Result<Option<f64>> {
        let path = format!("/api/v1/query?query={}", percent_encode(q));
        let (status, body) = http_get_within(&self.addr, &path, &[], Duration::from_secs(10))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("{status}: {body}"))?;
        if v["status"] != "success" {
            bail!("{q}: {status}: {body}");
        }
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        if result.is_empty() {
            return Ok(None);
        }
        let mut sum = 0.0;
        for s in result {
            let value = s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("{q}: a value that is not a number: {s}"))?;
            sum += value;
        }
        Ok(Some(sum))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration that scrapes `targets` every `interval` (whole
/// seconds, at least 2), its timeout a second less (at most 10 s).
fn write_config(
    path: &Path,
    replica: &str,
    targets: &[String],
    interval: Duration,
) -> anyhow::Result<()> {
    let secs = interval.as_secs().max(2);
    let timeout = (secs - 1).min(10);
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    std::fs::write(
        path,
        format!(
            "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {timeout}s\n  external_labels:\n    replica: {replica}\nscrape_configs:\n  - job_name: apptheus\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )?;
    Ok(())
}

/// `s` with every byte but the unreserved ones percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            super::percent_encode("sum(x{a=\"b c\"})"),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29"
        );
    }
}
