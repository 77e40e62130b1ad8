//! The systemd node of `cargo xtask vm-test --layout systemd`: the agent
//! as a site runs it, installed from its Debian package and run by systemd
//! through its unit (`apptheus.service`), read where Prometheus reads it
//! (`:9091`), its log in the journal. The tests there start no agent of
//! their own: they drive the node (Apptainer, Slurm, systemctl) and read
//! this one.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{host::scaled, scrape::http_get};

/// Where the packaged agent serves (its default `--web.listen-address`).
pub const ADDR: &str = "127.0.0.1:9091";
/// Its unit.
pub const UNIT: &str = "apptheus.service";
/// The package's name.
pub const PACKAGE: &str = "apptheus";
/// Names the .deb the node installed (the driver sets it), for the tests
/// that remove and install the package again.
pub const DEB_ENV: &str = "APPTHEUS_NODE_DEB";

/// Names the file the node's driver reads back into the report's notes of
/// `cargo xtask vm-test` (one line each).
pub const NOTES_ENV: &str = "APPTHEUS_NODE_NOTES";

/// Adds `line` to the notes of the run (see [`NOTES_ENV`]); printed too.
pub fn note(line: &str) {
    eprintln!("note: {line}");
    if let Some(path) = std::env::var_os(NOTES_ENV) {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{}", line.replace('\n', " "));
        }
    }
}

/// Whether this machine is such a node: systemd runs as PID 1 and the
/// driver named the package. The error names what is missing.
pub fn check() -> anyhow::Result<()> {
    if !crate::is_root() {
        return Err(crate::unavailable("root privileges"));
    }
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Err(crate::unavailable(
            "systemd as PID 1 (the systemd node: cargo xtask vm-test --layout systemd)",
        ));
    }
    if std::env::var_os(DEB_ENV).is_none() {
        return Err(crate::unavailable(format!(
            "{DEB_ENV}, the agent's .deb (set by the systemd node's driver)"
        )));
    }
    Ok(())
}

/// Runs `program args` to its end; its stdout, or an error with its
/// output.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl <args>`.
pub fn systemctl(args: &[&str]) -> anyhow::Result<String> {
    run("systemctl", args)
}

/// A property of a unit (`systemctl show -P`).
pub fn unit_property(unit: &str, property: &str) -> anyhow::Result<String> {
    Ok(systemctl(&["show", "-P", property, unit])?
        .trim()
        .to_string())
}

/// The agent systemd runs.
pub struct PackagedAgent {
    /// The journal's cursor when the handle was made: [`Self::log_text`]
    /// reads from there.
    cursor: Option<String>,
}

impl PackagedAgent {
    /// The agent, once its unit is active and it answers a scrape (within
    /// `timeout`, not scaled).
    pub fn running(timeout: Duration) -> anyhow::Result<PackagedAgent> {
        Self::running_after(journal_cursor(), timeout)
    }

    /// [`Self::running`], its log read from the journal's `cursor` on
    /// (taken with [`journal_cursor`] before a `systemctl restart`: what
    /// the new agent logs before it answers is kept).
    pub fn running_after(
        cursor: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<PackagedAgent> {
        check()?;
        let deadline = Instant::now() + timeout;
        loop {
            let active = unit_property(UNIT, "ActiveState").unwrap_or_default();
            if active == "active" && scrape().is_ok() {
                return Ok(PackagedAgent { cursor });
            }
            if Instant::now() >= deadline {
                bail!(
                    "{UNIT} is {active:?} and does not answer on {ADDR} after {timeout:?}:\n{}",
                    journal(None, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET /metrics (empty if it does not answer).
    pub fn metrics(&self) -> String {
        scrape().unwrap_or_default()
    }

    /// The agent's log in the journal since this handle was made.
    pub fn log_text(&self) -> String {
        journal(self.cursor.as_deref(), 0)
    }

    /// Its main process.
    pub fn main_pid(&self) -> Option<u32> {
        unit_property(UNIT, "MainPID")
            .ok()
            .and_then(|p| p.parse().ok())
            .filter(|p| *p != 0)
    }

    /// Waits (up to `timeout`, scaled) until `cond` holds; panics naming
    /// `what`, with the agent's log.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let limit = scaled(timeout);
        let deadline = Instant::now() + limit;
        while !cond() {
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}; the agent's log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One scrape of the agent at [`ADDR`]: the body of a 200.
pub fn scrape() -> anyhow::Result<String> {
    let (status, body) =
        http_get(ADDR, "/metrics", &[]).with_context(|| format!("scraping {ADDR}"))?;
    if status != 200 {
        bail!("{ADDR}/metrics answered {status}");
    }
    Ok(body)
}

/// Where the journal ends now (its last entry's cursor).
pub fn journal_cursor() -> Option<String> {
    let out = run("journalctl", &["-n", "1", "--show-cursor", "--no-pager"]).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .map(str::to_string)
}

/// The agent's journal (messages only) after `cursor`; the last `lines`
/// if not 0.
pub fn journal(cursor: Option<&str>, lines: usize) -> String {
    let mut args = vec!["-u", UNIT, "-o", "cat", "--no-pager"];
    let after;
    if let Some(c) = cursor {
        after = format!("--after-cursor={c}");
        args.push(&after);
    }
    let n = lines.to_string();
    if lines > 0 {
        args.extend(["-n", &n]);
    }
    run("journalctl", &args).unwrap_or_else(|e| format!("(journalctl: {e})"))
}

/// CPU time (user and system, in seconds) process `pid` has used so far,
/// its own and that of the children it has reaped, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: utime, stime, cutime and cstime are
    // fields 14 to 17.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks: u64 = 0;
    for i in 11..15 {
        ticks += f.get(i)?.parse::<u64>().ok()?;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// Proportional set size of process `pid` (`Pss` of smaps_rollup), bytes.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib << 10)
}

/// Anonymous resident memory of process `pid` (`RssAnon` of its status),
/// bytes.
pub fn anon_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib << 10)
}

/// The cgroup v2 path of process `pid` (`0::<path>`).
pub fn cgroup_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// The children of process `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn exe(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// A process seen right after it executed a file.
#[derive(Debug, Clone, Copy)]
pub struct Exec {
    pub pid: u32,
    /// Its CPU time when first seen executing it: what it used before,
    /// as the program it was (e.g. `apptainer` before it executes the
    /// starter), and the first instants after.
    pub cpu_at_exec: f64,
}

/// Whether process `p` executes `file` and was not started by a process
/// executing `file` or `besides`.
fn executes_first(p: u32, file: &std::path::Path, besides: &std::path::Path) -> bool {
    if exe(p).as_deref() != Some(file) {
        return false;
    }
    let parent = std::fs::read_to_string(format!("/proc/{p}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        });
    let parent_exe = parent.and_then(exe);
    parent_exe.as_deref() != Some(file) && parent_exe.as_deref() != Some(besides)
}

/// Watches (every 2 ms, up to `timeout`) for a process executing `file`
/// whose parent does not execute `file` or `besides` (the starter of a
/// run, not a helper run of its tool or a starter's own child): below
/// `root`, or with `root` None anywhere among the processes of `uid`
/// that were not there before the call (a Slurm job's).
pub fn watch_exec(
    root: Option<u32>,
    uid: Option<u32>,
    file: &std::path::Path,
    besides: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<Exec> {
    use std::os::unix::fs::MetadataExt as _;
    let all = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let old: std::collections::BTreeSet<u32> = if root.is_none() {
        all().into_iter().collect()
    } else {
        Default::default()
    };
    let deadline = Instant::now() + timeout;
    loop {
        let candidates: Vec<u32> = match root {
            Some(r) => {
                let (mut out, mut stack) = (Vec::new(), vec![r]);
                while let Some(p) = stack.pop() {
                    out.push(p);
                    stack.extend(children(p));
                }
                out
            }
            None => all()
                .into_iter()
                .filter(|p| !old.contains(p))
                .filter(|p| {
                    uid.is_none_or(|u| {
                        std::fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == u)
                    })
                })
                .collect(),
        };
        for p in candidates {
            if executes_first(p, file, besides)
                && let Some(cpu) = cpu_seconds(p)
            {
                return Ok(Exec {
                    pid: p,
                    cpu_at_exec: cpu,
                });
            }
        }
        if Instant::now() >= deadline {
            bail!("no process executed {} within {timeout:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
