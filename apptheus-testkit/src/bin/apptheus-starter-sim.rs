//! A stand-in for Apptainer's starter, for tests and demonstrations where
//! Apptainer is not installed. It behaves as the real starter does: it
//! forks the container process first, into new namespaces, then the parent
//! becomes the "master" which optionally connects to apptheus' monitoring
//! socket, keeps the connection open, and waits for the container.
//!
//!   apptheus-starter-sim [--socket PATH] [--no-namespaces] [--arg0 NAME] -- CMD [ARGS...]
//!   apptheus-starter-sim launch [--after SECS] [--cpu-at-exec FILE] STARTER [ARGS...]
//!   apptheus-starter-sim calibrate REFERENCE_SECS
//!   apptheus-starter-sim rusage FILE -- CMD [ARGS...]
//!   apptheus-starter-sim write FILE BYTES
//!   apptheus-starter-sim workload [--delay SECS] [--until-placed] [--forks N]
//!       [--threads N] [--execs N] [--alloc-mib N] [--spin SECS] [--sleep SECS]
//!       [--until FILE] [--timings]
//!       [--net-send HOST:PORT:BYTES] [--file-io PATH:BYTES] [--read-file PATH]
//!       [--pingpong N] [--schedstat PATH]
//!
//! `--net-send` sends BYTES over a TCP connection to HOST:PORT; `--file-io`
//! writes a file of BYTES at PATH, reads it back and removes it;
//! `--read-file` reads the file at PATH to its end (a test evicts it from
//! the page cache first, so that it comes from the disk);
//! `--pingpong` passes a byte N times back and forth between two threads
//! through pipes (two wakeups and context switches per round); with
//! `--schedstat`, it then writes to PATH what the kernel accounted to those
//! two threads' waits on the run queue (/proc/thread-self/schedstat):
//! "RUN_DELAY_NS TIMESLICES", summed over both.
//!
//! `--until-placed` starts the work only once the process is in a cgroup
//! of apptheus' (`apptheus-*` in /proc/self/cgroup); `--until FILE` ends it
//! only once FILE exists, or its directory no longer does (after `--sleep`). A test waits for conditions,
//! not for times that a slow machine outlasts: both give up with exit code
//! 3 after ten minutes.
//!
//! `launch` stands in for Apptainer's command-line tool: after SECS of
//! preparation (default 0.03) it execs STARTER in its place, as
//! `apptainer exec` does; with `--cpu-at-exec` it first writes to FILE the
//! CPU seconds its thread used until then (what a test's truth for the
//! container leaves out: the container starts at the starter's exec).
//!
//! `workload` does a known amount of work, so tests can compare what
//! apptheus reports with the truth.
//!
//! `calibrate` does apptheus-testkit's calibration work three times and
//! prints the time scale for this machine against a reference machine that
//! did it in REFERENCE_SECS (the VMs of `cargo xtask vm-test` run it at
//! boot: APPTHEUS_TEST_TIME_SCALE).
//! apptheus reports with the truth. `rusage` runs CMD, waits for it, and
//! writes to FILE the CPU time in seconds its whole tree used (what the
//! kernel's rusage of the reaped children says): the truth for one
//! container among other processes.
use std::{
    ffi::CString,
    os::unix::net::UnixStream,
    process::ExitCode,
    time::{Duration, Instant},
};

use nix::{
    sched::{CloneFlags, unshare},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, execvp, fork},
};

fn calibrate(args: &[String]) -> ExitCode {
    let Some(reference) = args.first().and_then(|a| a.parse::<f64>().ok()) else {
        eprintln!("usage: apptheus-starter-sim calibrate REFERENCE_SECS");
        return ExitCode::from(2);
    };
    let here = apptheus_testkit::host::calibration_median(3);
    let scale = apptheus_testkit::host::calibrated_scale(here, Duration::from_secs_f64(reference));
    println!("{scale:.1}");
    eprintln!(
        "calibration: {:.3} s here, {reference:.3} s on the reference; 20 forks and execs {:.3} s here",
        here.as_secs_f64(),
        apptheus_testkit::host::fork_exec_work().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("workload") => return workload(&args[1..]),
        Some("launch") => return launch(&args[1..]),
        Some("calibrate") => return calibrate(&args[1..]),
        Some("rusage") => return rusage(&args[1..]),
        Some("write") => return write(&args[1..]),
        _ => {}
    }
    let mut socket = None;
    let mut namespaces = true;
    let mut arg0 = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--socket" => {
                socket = args.get(i + 1).cloned();
                i += 2;
            }
            // The container's CMD is executed with this first argument (as
            // Apptainer's tool names the starter runs it makes).
            "--arg0" => {
                arg0 = args.get(i + 1).cloned();
                i += 2;
            }
            "--no-namespaces" => {
                namespaces = false;
                i += 1;
            }
            "--" => {
                i += 1;
                break;
            }
            _ => break,
        }
    }
    let cmd = &args[i..];
    if cmd.is_empty() {
        eprintln!("usage: apptheus-starter-sim [--socket PATH] [--no-namespaces] -- CMD [ARGS...]");
        return ExitCode::from(2);
    }
    // SAFETY: single-threaded here; the child only calls async-signal-safe
    // functions (unshare, fork, exec, waitpid) before exec or exit.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => container(cmd, namespaces, arg0.as_deref()),
        Ok(ForkResult::Parent { child }) => {
            // The master: connect like Apptainer does, send nothing, keep
            // the connection for the container's life.
            let _conn = socket.and_then(|p| UnixStream::connect(p).ok());
            exit_code(waitpid(child, None))
        }
        Err(e) => {
            eprintln!("fork: {e}");
            ExitCode::FAILURE
        }
    }
}

fn launch(args: &[String]) -> ExitCode {
    let mut after = 0.03;
    let mut cpu_file = None;
    let mut rest = args;
    loop {
        match rest.first().map(String::as_str) {
            Some("--after") => match rest.get(1).and_then(|v| v.parse::<f64>().ok()) {
                Some(v) if v >= 0.0 && v.is_finite() => after = v,
                _ => {
                    eprintln!("launch: --after needs a number of seconds");
                    return ExitCode::from(2);
                }
            },
            Some("--cpu-at-exec") => match rest.get(1) {
                Some(f) => cpu_file = Some(f.clone()),
                None => {
                    eprintln!("launch: --cpu-at-exec needs a file");
                    return ExitCode::from(2);
                }
            },
            _ => break,
        }
        rest = &rest[2..];
    }
    if rest.is_empty() {
        eprintln!(
            "usage: apptheus-starter-sim launch [--after SECS] [--cpu-at-exec FILE] STARTER [ARGS...]"
        );
        return ExitCode::from(2);
    }
    std::thread::sleep(Duration::from_secs_f64(after));
    if let Some(f) = cpu_file {
        let written = std::fs::read_to_string("/proc/thread-self/schedstat").and_then(|t| {
            let ns: u64 = t
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("unexpected schedstat: {t:?}")))?;
            std::fs::write(&f, format!("{}\n", ns as f64 / 1e9))
        });
        if let Err(e) = written {
            eprintln!("launch: --cpu-at-exec {f}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // By path, as Apptainer's tool execs the starter.
    exec(rest, |argv| nix::unistd::execv(&argv[0], argv))
}

fn rusage(args: &[String]) -> ExitCode {
    let (Some(file), Some("--")) = (args.first(), args.get(1).map(String::as_str)) else {
        eprintln!("usage: apptheus-starter-sim rusage FILE -- CMD [ARGS...]");
        return ExitCode::from(2);
    };
    let cmd = &args[2..];
    if cmd.is_empty() {
        eprintln!("rusage: no command");
        return ExitCode::from(2);
    }
    let status = match std::process::Command::new(&cmd[0]).args(&cmd[1..]).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rusage: running {}: {e}", cmd[0]);
            return ExitCode::from(127);
        }
    };
    let Ok(r) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) else {
        eprintln!("rusage: getrusage failed");
        return ExitCode::FAILURE;
    };
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = secs(r.user_time()) + secs(r.system_time());
    if let Err(e) = std::fs::write(file, format!("{cpu}\n")) {
        eprintln!("rusage: writing {file}: {e}");
        return ExitCode::FAILURE;
    }
    match status.code() {
        Some(c) => ExitCode::from(c as u8),
        None => ExitCode::FAILURE,
    }
}

/// Writes BYTES zero bytes to FILE and keeps it (e.g. shared memory in
/// /dev/shm, charged to the writer's memory cgroup).
fn write(args: &[String]) -> ExitCode {
    let (Some(path), Some(Ok(bytes))) = (args.first(), args.get(1).map(|b| b.parse::<usize>()))
    else {
        eprintln!("usage: apptheus-starter-sim write FILE BYTES");
        return ExitCode::from(2);
    };
    match std::fs::write(path, vec![0u8; bytes]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Replaces this process with `cmd` through `how` (execv or execvp);
/// returns only on failure, with the exit status to use.
fn exec(
    cmd: &[String],
    how: impl Fn(&[CString]) -> nix::Result<std::convert::Infallible>,
) -> ExitCode {
    let Ok(argv) = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        eprintln!("argument with a NUL byte");
        return ExitCode::from(2);
    };
    let e = how(&argv).unwrap_err();
    eprintln!("exec {}: {e}", cmd[0]);
    ExitCode::from(127)
}

fn container(cmd: &[String], namespaces: bool, arg0: Option<&str>) -> ExitCode {
    if namespaces {
        if let Err(e) = unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWPID,
        ) {
            eprintln!("unshare: {e} (namespaces need root; try --no-namespaces)");
            return ExitCode::FAILURE;
        }
        // A new PID namespace takes effect for children: its init is the
        // next fork, as in Apptainer's stage 2.
        // SAFETY: single-threaded child process.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {}
            Ok(ForkResult::Parent { child }) => return exit_code(waitpid(child, None)),
            Err(e) => {
                eprintln!("fork: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match arg0 {
        None => exec(cmd, |argv| execvp(&argv[0], argv)),
        Some(name) => {
            let Ok(path) = CString::new(cmd[0].as_bytes()) else {
                eprintln!("argument with a NUL byte");
                return ExitCode::from(2);
            };
            let mut named = cmd.to_vec();
            named[0] = name.to_string();
            exec(&named, |argv| execvp(&path, argv))
        }
    }
}

fn exit_code(status: nix::Result<WaitStatus>) -> ExitCode {
    match status {
        Ok(WaitStatus::Exited(_, code)) => ExitCode::from(code as u8),
        Ok(WaitStatus::Signaled(_, sig, _)) => ExitCode::from(128 + sig as u8),
        _ => ExitCode::FAILURE,
    }
}

fn workload(args: &[String]) -> ExitCode {
    let get = |name: &str| -> f64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // Apptainer's own set-up (images, namespaces, mounts) takes a while
    // before the workload runs; --delay stands for it.
    let delay = get("--delay");
    if delay > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(delay));
    }
    if args.iter().any(|a| a == "--until-placed") && !wait_until(placed) {
        eprintln!("workload: not placed in a cgroup of apptheus' within {GIVE_UP:?}");
        return ExitCode::from(3);
    }
    let (forks, threads, execs) = (
        get("--forks") as usize,
        get("--threads") as usize,
        get("--execs") as usize,
    );
    let timings = args.iter().any(|a| a == "--timings");
    let t0 = Instant::now();
    for _ in 0..forks {
        // SAFETY: single-threaded at this point; the child exits at once.
        match unsafe { fork() } {
            // SAFETY: _exit is async-signal-safe; nothing else runs in the child.
            Ok(ForkResult::Child) => unsafe { libc::_exit(0) },
            Ok(ForkResult::Parent { child }) => drop(waitpid(child, None)),
            Err(e) => eprintln!("fork: {e}"),
        }
    }
    let t1 = Instant::now();
    for _ in 0..execs {
        match std::process::Command::new("/bin/true").status() {
            Ok(_) => {}
            Err(e) => eprintln!("exec /bin/true: {e}"),
        }
    }
    let t2 = Instant::now();
    for _ in 0..threads {
        // Created and joined one at a time: a thread create/join storm.
        let _ = std::thread::spawn(|| std::hint::black_box(1)).join();
    }
    if timings {
        let t3 = Instant::now();
        println!(
            "forks_ns={} execs_ns={} threads_ns={}",
            (t1 - t0).as_nanos(),
            (t2 - t1).as_nanos(),
            (t3 - t2).as_nanos()
        );
    }
    let mib = get("--alloc-mib") as usize;
    let mut memory: Vec<u8> = Vec::new();
    if mib > 0 {
        memory = vec![0u8; mib << 20];
        // Touch every page so it is really charged.
        for i in (0..memory.len()).step_by(4096) {
            memory[i] = 1;
        }
    }
    let spin = get("--spin");
    if spin > 0.0 {
        // CPU time, not wall time: on a busy machine the spin still burns
        // exactly what the tests expect.
        let cpu = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
                .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
                .unwrap_or_default()
        };
        let until = cpu() + Duration::from_secs_f64(spin);
        let mut x = 0u64;
        while cpu() < until {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    if let Err(e) = kernel_workloads(args) {
        eprintln!("workload: {e}");
        return ExitCode::FAILURE;
    }
    let sleep = get("--sleep");
    if sleep > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(sleep));
    }
    if let Some(i) = args.iter().position(|a| a == "--until") {
        let Some(file) = args.get(i + 1) else {
            eprintln!("workload: --until needs a file");
            return ExitCode::from(2);
        };
        let file = std::path::Path::new(file);
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !wait_until(|| file.exists() || !dir.exists()) {
            eprintln!(
                "workload: {} did not appear within {GIVE_UP:?}",
                file.display()
            );
            return ExitCode::from(3);
        }
    }
    std::hint::black_box(&memory);
    ExitCode::SUCCESS
}

/// How long `--until` and `--until-placed` wait before giving up.
const GIVE_UP: Duration = Duration::from_secs(600);

/// Polls `cond` until it holds (true) or [`GIVE_UP`] has passed (false).
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > GIVE_UP {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Whether this process is in a cgroup apptheus made (named apptheus-*)
/// in some hierarchy.
fn placed() -> bool {
    std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|t| {
        t.lines().any(|l| {
            l.rsplit_once(':')
                .is_some_and(|(_, path)| path.split('/').any(|c| c.starts_with("apptheus-")))
        })
    })
}

/// The workloads of the kernel collectors' tests: network, file I/O,
/// context switches.
fn kernel_workloads(args: &[String]) -> std::io::Result<()> {
    use std::io::{Error, Read as _, Write as _};
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let bad = |what: &str| Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let chunk = vec![0x5au8; 64 << 10];
    if let Some(spec) = value("--net-send") {
        let (addr, bytes) = spec
            .rsplit_once(':')
            .ok_or_else(|| bad("HOST:PORT:BYTES"))?;
        let mut left: usize = bytes.parse().map_err(|_| bad("BYTES"))?;
        let mut s = std::net::TcpStream::connect(addr)?;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the peer to close: every byte was received.
        let _ = s.read(&mut [0u8; 1])?;
    }
    if let Some(spec) = value("--file-io") {
        let (path, bytes) = spec.rsplit_once(':').ok_or_else(|| bad("PATH:BYTES"))?;
        let total: usize = bytes.parse().map_err(|_| bad("BYTES"))?;
        let mut f = std::fs::File::create(path)?;
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n])?;
            left -= n;
        }
        drop(f);
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; chunk.len()];
        let mut read = 0;
        loop {
            match f.read(&mut buf)? {
                0 => break,
                n => read += n,
            }
        }
        std::fs::remove_file(path)?;
        if read != total {
            return Err(bad("file read back short"));
        }
    }
    if let Some(path) = value("--read-file") {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; chunk.len()];
        while f.read(&mut buf)? > 0 {}
    }
    if let Some(n) = value("--pingpong") {
        let rounds: usize = n.parse().map_err(|_| bad("N"))?;
        let (ping_r, ping_w) = nix::unistd::pipe().map_err(Error::from)?;
        let (pong_r, pong_w) = nix::unistd::pipe().map_err(Error::from)?;
        let (mut ping_r, mut ping_w) = (std::fs::File::from(ping_r), std::fs::File::from(ping_w));
        let (mut pong_r, mut pong_w) = (std::fs::File::from(pong_r), std::fs::File::from(pong_w));
        let echo = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
            let mut b = [0u8; 1];
            for _ in 0..rounds {
                ping_r.read_exact(&mut b)?;
                pong_w.write_all(&b)?;
            }
            thread_schedstat()
        });
        let mut b = [1u8; 1];
        for _ in 0..rounds {
            ping_w.write_all(&b)?;
            pong_r.read_exact(&mut b)?;
        }
        let (echo_delay, echo_slices) = echo.join().map_err(|_| bad("echo thread panicked"))??;
        if let Some(path) = value("--schedstat") {
            let (delay, slices) = thread_schedstat()?;
            std::fs::write(
                path,
                format!("{} {}\n", delay + echo_delay, slices + echo_slices),
            )?;
        }
    }
    Ok(())
}

/// The calling thread's run-queue delay (ns) and number of time slices,
/// fields 2 and 3 of /proc/thread-self/schedstat.
fn thread_schedstat() -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let mut f = text.split_whitespace().skip(1).map(str::parse::<u64>);
    match (f.next(), f.next()) {
        (Some(Ok(delay)), Some(Ok(slices))) => Ok((delay, slices)),
        _ => Err(std::io::Error::other(format!(
            "unexpected /proc/thread-self/schedstat: {text:?}"
        ))),
    }
}
