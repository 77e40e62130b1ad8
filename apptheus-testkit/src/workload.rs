//! The workload of the test images: a static C program (`workload.c`) whose
//! resource use the tests know, and the report it prints.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};

/// The C source, compiled at test time.
pub const SOURCE: &str = include_str!("workload.c");
/// Where the images hold it.
pub const IN_IMAGE: &str = "/bin/workload";

/// What the workload does after it starts, in this order: touch memory,
/// fork children (each exits at once), burn CPU, write a file, report,
/// hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    /// CPU time to burn (the process's own, CLOCK_PROCESS_CPUTIME_ID).
    pub cpu: Duration,
    /// MiB allocated and written to, kept until exit.
    pub touch_mib: u64,
    /// Children forked and waited for, one after another.
    pub children: u32,
    /// MiB written to a file (path as the container sees it).
    pub write: Option<(u64, String)>,
    pub hold: Hold,
}

/// How long the workload stays after its report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Hold {
    /// Exits at once.
    #[default]
    No,
    For(Duration),
    /// Until killed.
    UntilKilled,
}

impl Workload {
    pub fn new() -> Workload {
        Workload::default()
    }

    pub fn cpu(mut self, d: Duration) -> Workload {
        self.cpu = d;
        self
    }

    pub fn touch_mib(mut self, mib: u64) -> Workload {
        self.touch_mib = mib;
        self
    }

    pub fn children(mut self, n: u32) -> Workload {
        self.children = n;
        self
    }

    /// Writes `mib` MiB to `path` (inside the container; /tmp is the
    /// session's, on the host's disk).
    pub fn write(mut self, mib: u64, path: &str) -> Workload {
        self.write = Some((mib, path.to_string()));
        self
    }

    pub fn hold(mut self, hold: Hold) -> Workload {
        self.hold = hold;
        self
    }

    /// The program's arguments.
    pub fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.touch_mib > 0 {
            v.extend(["-m".to_string(), self.touch_mib.to_string()]);
        }
        if self.children > 0 {
            v.extend(["-k".to_string(), self.children.to_string()]);
        }
        if !self.cpu.is_zero() {
            v.extend(["-c".to_string(), format!("{:.3}", self.cpu.as_secs_f64())]);
        }
        if let Some((mib, path)) = &self.write {
            v.extend([
                "-w".to_string(),
                mib.to_string(),
                "-f".to_string(),
                path.clone(),
            ]);
        }
        match self.hold {
            Hold::No => {}
            Hold::For(d) => v.extend(["-s".to_string(), format!("{:.3}", d.as_secs_f64())]),
            Hold::UntilKilled => v.extend(["-s".to_string(), "-1".to_string()]),
        }
        v
    }

    /// The command inside the image: [`IN_IMAGE`] and the arguments.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![IN_IMAGE.to_string()];
        v.extend(self.args());
        v
    }
}

/// Names a workload compiled beforehand, used by [`compile`] instead of
/// gcc: the systemd node of `cargo xtask vm-test` has no compiler.
pub const PREBUILT_ENV: &str = "APPTHEUS_TEST_WORKLOAD";

/// Compiles the workload, static, to `out` (gcc and libc6-dev's libc.a:
/// scripts/setup.sh installs them); copies it from [`PREBUILT_ENV`]
/// instead when that is set.
pub fn compile(out: &Path) -> anyhow::Result<()> {
    let dir = out.parent().context("workload output has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(prebuilt) = std::env::var_os(PREBUILT_ENV).filter(|v| !v.is_empty()) {
        std::fs::copy(&prebuilt, out).with_context(|| {
            format!(
                "copying the prebuilt workload {} ({PREBUILT_ENV})",
                Path::new(&prebuilt).display()
            )
        })?;
        return Ok(());
    }
    let src = dir.join("workload.c");
    std::fs::write(&src, SOURCE).with_context(|| format!("writing {}", src.display()))?;
    let result = Command::new("gcc")
        .args(["-O2", "-static", "-Wall", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .context("running gcc (install it with: sudo scripts/setup.sh)")?;
    let _ = std::fs::remove_file(&src);
    if !result.status.success() {
        bail!(
            "gcc -static failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(())
}

/// What the workload printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Its pid as the host sees it (no PID namespace unless asked for).
    pub pid: u32,
    pub ppid: u32,
    /// The lines of its /proc/self/cgroup.
    pub cgroups: Vec<String>,
    /// None if it never got to its report (killed, e.g. out of memory).
    pub done: Option<Done>,
}

/// The workload's own account of what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// user + system CPU of the workload itself, in microseconds.
    pub cpu_us: u64,
    /// ... and of its children.
    pub children_cpu_us: u64,
    pub children: u32,
    pub touched_mib: u64,
    pub written_bytes: u64,
    /// Whether the write bypassed the page cache (O_DIRECT).
    pub direct: bool,
    pub maxrss_kib: u64,
}

const PREFIX: &str = "apptheus-workload ";

impl Report {
    /// The report in `output` (the workload's stdout, possibly mixed with
    /// other lines); None if the workload did not start.
    pub fn parse(output: &str) -> Option<Report> {
        // The cgroup lines come first, then "started", then "done".
        let mut cgroups = Vec::new();
        let mut report: Option<Report> = None;
        for line in output.lines() {
            let Some(rest) = line.trim_end().strip_prefix(PREFIX) else {
                continue;
            };
            if let Some(l) = rest.strip_prefix("cgroup ") {
                cgroups.push(l.to_string());
            } else if let Some(kv) = rest.strip_prefix("started ") {
                report = Some(Report {
                    pid: field(kv, "pid")?,
                    ppid: field(kv, "ppid")?,
                    cgroups: std::mem::take(&mut cgroups),
                    done: None,
                });
            } else if let Some(kv) = rest.strip_prefix("done ") {
                report.as_mut()?.done = Some(Done {
                    cpu_us: field(kv, "cpu_us")?,
                    children_cpu_us: field(kv, "children_cpu_us")?,
                    children: field(kv, "children")?,
                    touched_mib: field(kv, "touched_mib")?,
                    written_bytes: field(kv, "written_bytes")?,
                    direct: field::<u8>(kv, "direct")? == 1,
                    maxrss_kib: field(kv, "maxrss_kib")?,
                });
            }
        }
        report
    }

    /// The workload's cgroup in the v1 hierarchy of `controller` (e.g.
    /// "memory"); with "" its cgroup2 path.
    pub fn cgroup(&self, controller: &str) -> Option<&str> {
        self.cgroups.iter().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if controller.is_empty() {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == controller)
            };
            hit.then_some(path)
        })
    }
}

fn field<T: std::str::FromStr>(kv: &str, key: &str) -> Option<T> {
    kv.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let w = Workload::new()
            .cpu(Duration::from_millis(250))
            .touch_mib(16)
            .children(3)
            .write(4, "/tmp/out")
            .hold(Hold::UntilKilled);
        assert_eq!(
            w.argv(),
            [
                "/bin/workload",
                "-m",
                "16",
                "-k",
                "3",
                "-c",
                "0.250",
                "-w",
                "4",
                "-f",
                "/tmp/out",
                "-s",
                "-1"
            ]
        );
        assert_eq!(Workload::new().argv(), ["/bin/workload"]);
        let held = Workload::new().hold(Hold::For(Duration::from_secs(2)));
        assert_eq!(held.args(), ["-s", "2.000"]);
    }

    #[test]
    fn parses_the_report() {
        let out = "noise\n\
            apptheus-workload cgroup 4:memory:/slurm_n/uid_0/job_3/step_batch/task_0\n\
            apptheus-workload cgroup 1:cpu,cpuacct:/\n\
            apptheus-workload cgroup 0::/\n\
            apptheus-workload started pid=42 ppid=7\n\
            apptheus-workload done pid=42 cpu_us=250123 children_cpu_us=80 children=3 touched_mib=16 written_bytes=4194304 direct=1 maxrss_kib=18000\n";
        let r = Report::parse(out).unwrap();
        assert_eq!((r.pid, r.ppid), (42, 7));
        assert_eq!(
            r.cgroup("memory"),
            Some("/slurm_n/uid_0/job_3/step_batch/task_0")
        );
        assert_eq!(r.cgroup("cpuacct"), Some("/"));
        assert_eq!(r.cgroup(""), Some("/"));
        assert_eq!(r.cgroup("pids"), None);
        let d = r.done.unwrap();
        assert_eq!(d.cpu_us, 250123);
        assert_eq!(d.children, 3);
        assert_eq!(d.written_bytes, 4 << 20);
        assert!(d.direct);

        let killed = Report::parse("apptheus-workload started pid=1 ppid=0\n").unwrap();
        assert_eq!(killed.done, None);
        assert_eq!(Report::parse("nothing"), None);
    }

    #[test]
    fn compiles_and_does_what_it_says() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("workload");
        compile(&exe).unwrap();
        let file = dir.path().join("out");
        let w = Workload::new()
            .cpu(Duration::from_millis(100))
            .touch_mib(8)
            .children(2)
            .write(2, file.to_str().unwrap());
        let out = Command::new(&exe).args(w.args()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let r = Report::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let d = r.done.unwrap();
        assert!(d.cpu_us >= 100_000, "{d:?}");
        assert_eq!(
            (d.children, d.touched_mib, d.written_bytes),
            (2, 8, 2 << 20)
        );
        assert!(d.maxrss_kib >= 8 * 1024, "{d:?}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 2 << 20);
        assert!(!r.cgroups.is_empty());
    }
}
