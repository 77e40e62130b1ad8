//! A started process (in a process group of its own) and its output.
use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::workload::Report;

/// A child process whose stdout and stderr are collected as they come.
/// Dropped before it was waited for, its whole process group is killed.
pub struct Running {
    what: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    reaped: bool,
}

/// A process that ended, with all it printed.
#[derive(Debug)]
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The workload's report in the output.
    pub fn report(&self) -> Option<Report> {
        Report::parse(&self.stdout)
    }

    /// Self if it exited 0, else an error with its output.
    pub fn success(self) -> anyhow::Result<Finished> {
        if !self.status.success() {
            bail!(
                "{} failed ({}); stdout:\n{}\nstderr:\n{}",
                self.what,
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

fn collect(
    mut from: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_str(&text);
        }
    })
}

impl Running {
    /// Spawns `cmd` (stdin from /dev/null, output collected) in a new
    /// process group; `what` names it in errors.
    pub fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Running> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(collect(o, stdout.clone()));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(collect(e, stderr.clone()));
        }
        Ok(Running {
            what: what.to_string(),
            child,
            stdout,
            stderr,
            readers,
            reaped: false,
        })
    }

    /// The process's pid. For a command run in the Apptainer root, every
    /// step execs the next: this is the pid of the command itself (of the
    /// starter, for `apptainer exec`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `f(stdout so far)` gives a value; fails if the process
    /// ends first or `timeout` passes.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(&self.stdout()) {
                return Ok(v);
            }
            let ended = self.child.try_wait()?.is_some();
            if ended || Instant::now() >= deadline {
                // The output may have come just before the end.
                if ended {
                    self.join_readers();
                    if let Some(v) = f(&self.stdout()) {
                        return Ok(v);
                    }
                }
                bail!(
                    "{} {} before {what}; stdout:\n{}\nstderr:\n{}",
                    self.what,
                    if ended { "ended" } else { "timed out" },
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the workload to start (its pid and cgroups).
    pub fn started(&mut self, timeout: Duration) -> anyhow::Result<Report> {
        self.wait_until(timeout, "the workload started", Report::parse)
    }

    /// Waits for the workload's report of what it did (it may then hold).
    pub fn done(&mut self, timeout: Duration) -> anyhow::Result<Report> {
        self.wait_until(timeout, "the workload's report", |out| {
            Report::parse(out).filter(|r| r.done.is_some())
        })
    }

    /// Whether it has ended.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Waits for the end; after `timeout` kills the process group and fails.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} did not end within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.reaped = true;
        // Output pipes may be held open by processes it left behind (an
        // instance's daemon): give the readers a moment, not forever.
        let until = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.readers.iter().all(|r| r.is_finished()) {
            self.join_readers();
        }
        Ok(Finished {
            what: self.what.clone(),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// Sends `signal` to the whole process group.
    pub fn signal_group(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: plain kill(2) of the process group this child leads.
            unsafe {
                libc::kill(-(self.child.id() as i32), signal);
            }
        }
    }

    /// Kills the process group and reaps the process.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}
