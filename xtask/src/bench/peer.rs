//! The peer: cAdvisor 0.38.7 (Debian 11's package, fetched into the cache
//! by scripts/cadvisor.sh, which `scripts/setup.sh --test` runs), watching
//! every cgroup (`-docker_only=false`) beside the agent.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::meter::Meter;

/// cAdvisor's binary: from the cache, fetched by scripts/cadvisor.sh if it
/// is not there yet. An error says why it cannot run.
pub fn binary(root: &Path) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("APPTHEUS_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/apptheus"), PathBuf::from);
    let bin = cache.join("cadvisor/root/usr/bin/cadvisor");
    if !bin.exists() {
        let out = Command::new(root.join("scripts/cadvisor.sh"))
            .output()
            .context("running scripts/cadvisor.sh")?;
        if !out.status.success() {
            bail!(
                "scripts/cadvisor.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --version failed", bin.display());
    }
    Ok(bin)
}

pub struct Cadvisor {
    child: Child,
    pub addr: String,
    pub meter: Meter,
    log: Arc<Mutex<Vec<String>>>,
}

impl Cadvisor {
    /// Starts cAdvisor on a free loopback port, with `extra` flags, and
    /// waits until it answers.
    pub fn start(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(bin)
            .args([
                "-listen_ip=127.0.0.1",
                &format!("-port={port}"),
                "-docker_only=false",
                "-logtostderr",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock()
                    && l.len() < 10_000
                {
                    l.push(line);
                }
            }
        });
        let meter = Meter::attach(child.id(), "cadvisor");
        let addr = format!("127.0.0.1:{port}");
        let c = Cadvisor {
            child,
            addr,
            meter,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !super::agent::http_get(&c.addr, "/healthz").is_ok_and(|(s, _)| s == 200) {
            if Instant::now() > deadline {
                bail!(
                    "cAdvisor did not answer: {:?}",
                    c.log.lock().map(|l| l.join("\n"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// The containers' cgroups cAdvisor reports (distinct `id` labels
    /// naming an `apptheus-` cgroup; on a hybrid host each container's
    /// cgroups sit at different paths in different hierarchies, which
    /// cAdvisor counts as several), and how long the scrape took.
    pub fn scrape(&self) -> anyhow::Result<(usize, Duration)> {
        let t = Instant::now();
        let (status, body) = super::agent::http_get(&self.addr, "/metrics")
            .map_err(|e| anyhow!("cAdvisor scrape: {e}"))?;
        let took = t.elapsed();
        if status != 200 {
            bail!("cAdvisor answered {status}");
        }
        let ids: std::collections::BTreeSet<&str> = body
            .lines()
            .filter(|l| l.starts_with("container_"))
            .filter_map(|l| {
                l.split(",id=\"")
                    .nth(1)
                    .or_else(|| l.split("{id=\"").nth(1))
            })
            .filter_map(|l| l.split('"').next())
            .filter(|id| {
                id.rsplit('/')
                    .next()
                    .is_some_and(|c| c.starts_with("apptheus-"))
            })
            .collect();
        Ok((ids.len(), took))
    }
}

impl Drop for Cadvisor {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the pid is our child's,
            // not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}
