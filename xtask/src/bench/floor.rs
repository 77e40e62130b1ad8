//! What the kernel's own read path costs, the floor under any agent's
//! sample: the very cgroup files an agent keeps open (read from its
//! /proc/<pid>/fd), each opened once here and read in place with `pread`
//! at offset 0, nothing parsed or kept: this thread's CPU time per
//! container and pass. Read as the agent reads them (container after
//! container, a pass every 250 ms), and, by file name, each name's files
//! in a tight loop (caches warm: the least each read can cost).
use std::{collections::BTreeMap, os::unix::fs::FileExt as _, path::PathBuf, time::Duration};

use anyhow::bail;

/// The floor of one container's sample.
pub struct Floor {
    pub files: usize,
    /// CPU per container and pass, microseconds, read as the agent reads.
    pub us: f64,
    /// The same, each file name's files read in a tight loop, summed.
    pub warm_us: f64,
    /// By file name: (files, CPU per container and pass).
    pub by_name: Vec<(String, usize, f64)>,
}

/// The cgroup files process `pid` holds open.
pub fn open_cgroup_files(pid: u32) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(e?.path()) else {
            continue;
        };
        if target.starts_with("/sys/fs/cgroup") && !target.is_dir() {
            out.push(target);
        }
    }
    Ok(out)
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `ru`, which we own.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Reads `paths` (the files of `containers` containers) `passes` times.
pub fn measure(paths: &[PathBuf], containers: usize, passes: usize) -> anyhow::Result<Floor> {
    if paths.is_empty() || containers == 0 {
        bail!("no cgroup files to read");
    }
    // By file name, and by the directory's name (a container's cgroups
    // have one name in every hierarchy), in the agent's order.
    let mut by_name: BTreeMap<String, Vec<std::fs::File>> = BTreeMap::new();
    let mut by_dir: BTreeMap<String, Vec<std::fs::File>> = BTreeMap::new();
    let name_of = |p: Option<&std::path::Path>| {
        p.and_then(|p| p.file_name())
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    for p in paths {
        let (Ok(a), Ok(b)) = (std::fs::File::open(p), std::fs::File::open(p)) else {
            continue;
        };
        by_name.entry(name_of(Some(p))).or_default().push(a);
        by_dir.entry(name_of(p.parent())).or_default().push(b);
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = |files: &[std::fs::File]| {
        // As the agent reads: once, unless the buffer came back full.
        for f in files {
            let mut at = 0u64;
            while let Ok(n) = f.read_at(&mut buf, at) {
                if n < buf.len() {
                    break;
                }
                at += n as u64;
            }
        }
    };
    let per = |d: Duration| d.as_secs_f64() * 1e6 / passes as f64 / containers as f64;
    let mut cpu = Duration::ZERO;
    for _ in 0..passes {
        let t = thread_cpu();
        for files in by_dir.values() {
            read(files);
        }
        cpu += thread_cpu() - t;
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut rows = Vec::new();
    let mut warm = 0.0;
    let mut files = 0;
    for (name, fs) in &by_name {
        let t = thread_cpu();
        for _ in 0..passes {
            read(fs);
        }
        let us = per(thread_cpu() - t);
        warm += us;
        files += fs.len();
        rows.push((name.clone(), fs.len(), us));
    }
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(Floor {
        files,
        us: per(cpu),
        warm_us: warm,
        by_name: rows,
    })
}
