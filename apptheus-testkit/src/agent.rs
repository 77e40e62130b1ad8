//! A running agent process: its log (stderr, line by line), the address
//! it serves on, and the test's handle on it. [`Process`] is the part the
//! integration tests and `cargo xtask bench` share; [`Agent`] is the
//! tests' flavour (time limits stretched by [`scaled`], failures panic).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{host::scaled, scrape::http_get};

/// An agent started by [`Process::spawn`], serving at `addr`.
pub struct Process {
    pub child: Child,
    pub addr: String,
    /// Its stderr so far, one entry a line.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// An agent just spawned by [`Process::spawn`], not yet serving.
pub struct Starting {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Process {
    /// Spawns `command` (an agent with `--log.level=debug` or finer, and a
    /// listen address, port 0 allowed) with stderr captured, line by line,
    /// into the log; with APPTHEUS_TEST_ECHO set, echoed as it comes.
    /// [`Starting::serving`] then waits for its address.
    pub fn spawn(command: &mut Command) -> Result<Starting, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the agent: {e}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("APPTHEUS_TEST_ECHO").is_some() {
                    eprintln!("agent: {line}");
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Ok(Starting { child, log, reader })
    }

    /// Whether /-/ready answers 200, asked with `timeout`.
    pub fn ready(&self, timeout: Duration) -> bool {
        crate::scrape::http_get_within(&self.addr, "/-/ready", &[], timeout)
            .is_ok_and(|(s, _)| s == 200)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Starting {
    /// Waits up to `timeout` until the agent logs the address it serves
    /// metrics on. The error holds the log; the agent is then killed.
    pub fn serving(self, timeout: Duration) -> Result<Process, String> {
        let Starting {
            mut child,
            log,
            reader,
        } = self;
        let deadline = Instant::now() + timeout;
        loop {
            let found = log.lock().ok().and_then(|l| {
                l.iter()
                    .find(|l| l.contains("serving metrics"))
                    .and_then(|l| l.split("address=").nth(1))
                    .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            });
            if let Some(addr) = found {
                return Ok(Process { child, addr, log });
            }
            let failure = match child.try_wait() {
                Ok(Some(status)) => Some(format!("agent exited ({status}) before serving")),
                _ if Instant::now() >= deadline => Some("agent did not start".to_string()),
                _ => None,
            };
            if let Some(failure) = failure {
                let _ = child.kill();
                let _ = child.wait();
                // The last lines, read to the end of stderr (or for a
                // while, should something else hold it open).
                let until = Instant::now() + Duration::from_secs(2);
                while !reader.is_finished() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let text = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                return Err(format!("{failure}:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An agent run by a test: [`Process`] plus a private directory for the
/// monitoring socket. Killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Holds the monitoring socket unless the test chose a path.
    pub sock_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent `binary` with `args` (plus a free port, a 100 ms
    /// monitor interval and a private socket path unless given), run by
    /// the command `wrapper` if not empty (which must exec its last
    /// argument with the rest: e.g. `unshare -m ...`), and waits until it
    /// is ready.
    pub fn start_with(binary: &Path, wrapper: &[&str], args: &[&str]) -> Self {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--web.listen-address")) {
            all.push("--web.listen-address=127.0.0.1:0".into());
        }
        if !args.iter().any(|a| a.starts_with("--monitor.interval")) {
            all.push("--monitor.interval=100ms".into());
        }
        // A root-owned directory: the agent refuses one others can write.
        let sock_dir = tempfile::Builder::new()
            .prefix("apptheus-sock-")
            .tempdir()
            .unwrap();
        if !args.iter().any(|a| a.starts_with("--socket.path")) {
            all.push(format!(
                "--socket.path={}",
                sock_dir.path().join("gateway.sock").display()
            ));
        }
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command.args(&all).arg("--log.level=debug");
        let Process { child, addr, log } = Process::spawn(&mut command)
            .and_then(|s| s.serving(scaled(Duration::from_secs(30))))
            .unwrap_or_else(|e| panic!("{e}"));
        let agent = Agent {
            child,
            addr,
            log,
            sock_dir,
        };
        agent.wait_for(Duration::from_secs(30), "readiness", || {
            agent
                .get("/-/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        agent
    }

    /// A plain HTTP/1.0 GET: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.addr, path, &[])
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("scrape").1
    }

    pub fn socket_path(&self) -> PathBuf {
        self.sock_dir.path().join("gateway.sock")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Polls `f` until true, or fails the test showing the agent's log.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + scaled(timeout);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}\nmetrics:\n{}",
                self.log_text(),
                self.get("/metrics").map(|r| r.1).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn the_address_comes_from_the_log() {
        let mut c = sh("echo 'level=info serving metrics address=127.0.0.1:9 x=1' >&2; sleep 5");
        let mut p = Process::spawn(&mut c)
            .unwrap()
            .serving(Duration::from_secs(5))
            .unwrap();
        assert_eq!(p.addr, "127.0.0.1:9");
        assert!(p.log_text().contains("serving metrics"));
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }

    #[test]
    fn an_agent_that_exits_first_fails_with_its_log() {
        let mut c = sh("echo 'bad flag' >&2; exit 2");
        let e = Process::spawn(&mut c)
            .unwrap()
            .serving(Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(e.starts_with("agent exited"), "{e}");
        assert!(e.contains("bad flag"), "{e}");
    }
}
