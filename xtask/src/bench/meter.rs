//! What a process costs: its CPU time, to the microsecond, from a cgroup2
//! directory of its own (cpu.stat's usage_usec, which every cgroup2
//! directory has, with or without controllers: hybrid hosts too, and
//! counting the threads that exited), else from /proc/<pid>/stat in clock
//! ticks; and its resident memory.
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted, if it is.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

pub struct Meter {
    pid: u32,
    cgroup: Option<PathBuf>,
}

impl Meter {
    /// Measures process `pid` (moved, with its threads, into a cgroup2
    /// directory of its own named after `name`).
    pub fn attach(pid: u32, name: &str) -> Self {
        let cgroup = cgroup2_mount().and_then(|m| {
            let dir = m.join(format!("apptheus-bench-{name}-{pid}"));
            std::fs::create_dir_all(&dir).ok()?;
            match std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                Ok(()) => Some(dir),
                Err(_) => {
                    let _ = std::fs::remove_dir(&dir);
                    None
                }
            }
        });
        Meter { pid, cgroup }
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        if let Some(d) = &self.cgroup
            && let Some(us) = usage_usec(d)
        {
            return us as f64 / 1e6;
        }
        proc_cpu_seconds(self.pid)
    }

    /// Resident memory now, MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(d) = &self.cgroup {
            // Empty once the process is gone; its parent's cgroup gets any
            // task still there (none: the benchmark stops them first).
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

fn usage_usec(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// User + system seconds of `pid` (its exited threads included), in
/// clock ticks (USER_HZ, 100 on Linux).
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Unreclaimable slab memory of the whole machine, MiB (what kept-open
/// cgroup files cost the kernel shows there).
pub fn slab_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}
