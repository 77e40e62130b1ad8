//! Booting one cell: a kernel with the initramfs and a cgroup layout under
//! qemu's software emulation (TCG; KVM is not usable on the project's
//! machines), the serial console read line by line into a log.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{kernels::Kernel, report::MARK};

pub struct Run {
    pub lines: Vec<String>,
    pub seconds: f64,
    pub timed_out: bool,
}

/// What one VM boots.
pub struct Machine<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    /// The init to run from the initramfs (`rdinit=`).
    pub init: &'a str,
    /// Kernel parameters after the common ones.
    pub params: String,
    pub memory_mib: u32,
    /// How the console lines of this VM are tagged, e.g. "[6.1 v2]".
    pub tag: String,
}

/// Boots `m`, logs the console to `log`, and returns it once the VM powers
/// off (or after `timeout`, killing it).
pub fn boot(m: &Machine, log: &Path, timeout: Duration, echo: bool) -> anyhow::Result<Run> {
    let (kernel, initramfs, tag) = (m.kernel, m.initramfs, &m.tag);
    let append = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 rdinit={} random.trust_cpu=on {}",
        m.init, m.params
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m"])
        .arg(m.memory_mib.to_string())
        .args(["-smp", "2"])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    for (stream, prefix) in [
        (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
        (Box::new(stderr), "qemu: "),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                if tx.send(format!("{prefix}{line}")).is_err() {
                    return;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let mut file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let deadline = start + timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(file, "{line}");
                if echo {
                    println!("{tag} {line}");
                } else if let Some(m) = line.find(MARK).map(|i| &line[i + MARK.len()..])
                    && (m.starts_with("end ") || m.starts_with("error ") || m.starts_with("note "))
                {
                    println!("{tag} {m} ({:.0} s)", start.elapsed().as_secs_f64());
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                let _ = writeln!(file, "vm-test: killed after {} s", timeout.as_secs());
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.wait();
    Ok(Run {
        lines,
        seconds: start.elapsed().as_secs_f64(),
        timed_out,
    })
}
