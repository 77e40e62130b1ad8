//! A container's statistics from its processes' /proc files (see
//! [`crate::model::processes`]): per process `statm` (anonymous resident
//! memory)
//! and, when asked, `smaps_rollup` (proportional set size, whose reading
//! walks the process's pages), per thread `schedstat` (CPU time) and `io`
//! (storage I/O). Reading a file and parsing it are apart; the parsers are
//! tested on literal text. A process or thread that is gone meanwhile is
//! simply not counted.
use std::{io::Read as _, path::Path, time::Instant};

use crate::model::processes::{Baseline, ProcReading};

/// Most bytes read from one of these files (each is a few hundred).
const MAX_FILE_BYTES: u64 = 8 << 10;

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Reads processes `tgids` (each counted once) under `procfs`, their
/// proportional set sizes too if `pss`.
pub fn read(procfs: &Path, tgids: &[u32], pss: bool) -> ProcReading {
    let mut r = ProcReading::default();
    let page = page_size();
    let mut pss_sum = 0;
    for &tgid in tgids {
        let dir = procfs.join(tgid.to_string());
        if !read_process(&dir, page, &mut r) || !pss {
            continue;
        }
        let started = Instant::now();
        // A zombie (or a kernel thread) has no memory map: nothing to add.
        if let Some(m) = read_small(&dir.join("smaps_rollup")).and_then(|t| parse_smaps_rollup(&t))
        {
            pss_sum += m.pss_bytes;
        }
        r.pss_cost += started.elapsed();
    }
    r.pss_bytes = pss.then_some(pss_sum);
    r
}

/// What tasks `tids` have used so far (CPU time, storage I/O), for the
/// baseline of a container found with its tasks already running (through
/// the monitoring socket, or after an agent restart): its counters start
/// at zero from then.
pub fn used_by(procfs: &Path, tids: &[u32]) -> Baseline {
    let mut b = Baseline::default();
    for tid in tids {
        let dir = procfs.join(tid.to_string());
        if let Some(ns) = read_small(&dir.join("schedstat")).and_then(|t| parse_schedstat(&t)) {
            b.runtime_ns += ns;
        }
        if let Some((r, w)) = read_small(&dir.join("io")).and_then(|t| parse_io(&t)) {
            b.read_bytes += r;
            b.write_bytes += w;
        }
    }
    b
}

/// The size of a memory page.
fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Adds process `dir` (`/proc/<tgid>`) to `r`, but for its proportional
/// set size; false (nothing added) if it is gone.
fn read_process(dir: &Path, page: u64, r: &mut ProcReading) -> bool {
    let Ok(tasks) = std::fs::read_dir(dir.join("task")) else {
        return false;
    };
    let mut threads = 0;
    for t in tasks.flatten() {
        let tdir = t.path();
        // A thread that is exiting, or has exited and awaits its reaping,
        // is the kernel's totals' (the exit program adds it there); one
        // gone meanwhile has no files left. Neither is live.
        if !read_small(&tdir.join("stat"))
            .and_then(|t| parse_live(&t))
            .unwrap_or(false)
        {
            continue;
        }
        let Some(runtime) = read_small(&tdir.join("schedstat")).and_then(|t| parse_schedstat(&t))
        else {
            continue;
        };
        threads += 1;
        r.runtime_ns += runtime;
        if let Some((read, write)) = read_small(&tdir.join("io")).and_then(|t| parse_io(&t)) {
            r.read_bytes += read;
            r.write_bytes += write;
        }
    }
    if threads == 0 {
        return false;
    }
    r.processes += 1;
    r.threads += threads;
    if let Some((resident, shared)) = read_small(&dir.join("statm")).and_then(|t| parse_statm(&t)) {
        r.rss_bytes += resident.saturating_sub(shared) * page;
    }
    true
}

/// The kernel's flag of a task that has begun to exit (`PF_EXITING`, set
/// at the start of `do_exit`, before the exit tracepoint).
const PF_EXITING: u64 = 0x4;

/// A task's `stat`: whether it is live, neither exiting (`PF_EXITING` in
/// field 9, the flags) nor dead (state `Z` or `X`, field 3). The command
/// name (field 2) may hold spaces and parentheses: fields are counted from
/// the last `)`.
pub fn parse_live(stat: &str) -> Option<bool> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    let flags: u64 = fields.get(6)?.parse().ok()?;
    Some(!matches!(state, "Z" | "X" | "x") && flags & PF_EXITING == 0)
}

/// `statm`: its second and third fields, the resident pages and those of
/// them backed by a file or shared memory (resident minus shared: the
/// process's anonymous memory, what a cgroup calls its rss).
pub fn parse_statm(text: &str) -> Option<(u64, u64)> {
    let mut f = text.split_whitespace().skip(1);
    let resident = f.next()?.parse().ok()?;
    let shared = f.next()?.parse().ok()?;
    Some((resident, shared))
}

/// The thread-group id of task `tid`, from its `status` file.
pub fn tgid_of(procfs: &Path, tid: u32) -> Option<u32> {
    let text = read_small(&procfs.join(tid.to_string()).join("status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Resident and proportional set sizes of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
}

/// `smaps_rollup`: the `Rss:` and `Pss:` lines, in kB. None when either
/// is missing (an empty file: the process has no memory map).
pub fn parse_smaps_rollup(text: &str) -> Option<Memory> {
    let kb = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let mut f = rest.split_whitespace();
            let v: u64 = f.next()?.parse().ok()?;
            (f.next() == Some("kB")).then_some(v * 1024)
        })
    };
    Some(Memory {
        rss_bytes: kb("Rss")?,
        pss_bytes: kb("Pss")?,
    })
}

/// `io`: (`read_bytes`, `write_bytes`).
pub fn parse_io(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((field("read_bytes")?, field("write_bytes")?))
}

/// `schedstat`: its first field, the time spent on a CPU, in nanoseconds.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Linux 6.1 writes it.
    const ROLLUP: &str =
        "55d0c0a1e000-7ffd8b7f9000 ---p 00000000 00:00 0                          [rollup]
Rss:              206132 kB
Pss:              204510 kB
Pss_Anon:         204800 kB
Pss_File:           1326 kB
Pss_Shmem:             0 kB
Shared_Clean:       1620 kB
Shared_Dirty:          0 kB
Private_Clean:       148 kB
Private_Dirty:    204364 kB
Referenced:       206132 kB
Anonymous:        204800 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
";

    #[test]
    fn smaps_rollup_rss_and_pss() {
        assert_eq!(
            parse_smaps_rollup(ROLLUP),
            Some(Memory {
                rss_bytes: 206132 * 1024,
                pss_bytes: 204510 * 1024
            })
        );
        // A zombie's file is empty; Pss_Anon is not Pss.
        assert_eq!(parse_smaps_rollup(""), None);
        assert_eq!(parse_smaps_rollup("Rss: 4 kB\nPss_Anon: 4 kB\n"), None);
        assert_eq!(parse_smaps_rollup("Rss: 4 MB\nPss: 4 kB\n"), None);
    }

    #[test]
    fn io_storage_bytes() {
        let text = "rchar: 1048576\nwchar: 67108864\nsyscr: 10\nsyscw: 64\nread_bytes: 4096\nwrite_bytes: 67108864\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io(text), Some((4096, 67108864)));
        // rchar is not read_bytes.
        assert_eq!(parse_io("rchar: 1\nwchar: 2\n"), None);
    }

    #[test]
    fn live_tasks_are_neither_exiting_nor_dead() {
        // As Linux writes it: a sleeping thread, flags 0x400040 (PF_FORKNOEXEC...).
        let sleeping = "4711 (sh) S 4700 4711 4700 0 -1 4194560 120 0 0 0 1 0 0 0 20 0 1 0 100 2281472 224 18446744073709551615";
        assert_eq!(parse_live(sleeping), Some(true));
        let zombie = "4711 (starter) Z 4700 4711 4700 0 -1 4227084 120 0 0 0 1 0 0 0 20 0 1 0 100 0 0 18446744073709551615";
        assert_eq!(parse_live(zombie), Some(false));
        // Still running, but past the start of do_exit.
        let exiting = "4712 (a b) c) R 4700 4711 4700 0 -1 4194564 120 0 0 0 1 0 0 0 20 0 1 0 100 0 0 18446744073709551615";
        assert_eq!(parse_live(exiting), Some(false));
        assert_eq!(parse_live("garbage"), None);
    }

    #[test]
    fn statm_resident_pages() {
        assert_eq!(
            parse_statm("55350 54623 52895 1 0 2020 0\n"),
            Some((54623, 52895))
        );
        assert_eq!(parse_statm("0 0 0 0 0 0 0\n"), Some((0, 0)));
        assert_eq!(parse_statm("55350 4\n"), None);
    }

    #[test]
    fn schedstat_runtime() {
        assert_eq!(parse_schedstat("2000123456 1234 17\n"), Some(2000123456));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    /// A fixture /proc: two processes, one with two threads; a thread whose
    /// files are gone; a zombie without a memory map; a process gone.
    #[test]
    fn reads_processes_and_their_threads() {
        let root = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("10/smaps_rollup", "Rss: 300 kB\nPss: 200 kB\n");
        put("10/statm", "100 75 10 1 0 50 0\n");
        let live = "1 (x) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0 0\n";
        put("10/task/10/stat", live);
        put("10/task/11/stat", live);
        put("20/task/20/stat", live);
        // An exited thread awaiting its reaping: the kernel's totals'.
        put(
            "10/task/13/stat",
            "13 (x) Z 0 1 1 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0 0\n",
        );
        put("10/task/13/schedstat", "999999 0 0\n");
        put("10/task/13/io", "read_bytes: 9999\nwrite_bytes: 9999\n");
        put("10/task/10/schedstat", "1000 0 0\n");
        put("10/task/10/io", "read_bytes: 1\nwrite_bytes: 2\n");
        put("10/task/11/schedstat", "500 0 0\n");
        put("10/task/11/io", "read_bytes: 10\nwrite_bytes: 20\n");
        std::fs::create_dir_all(root.path().join("10/task/12")).unwrap();
        put("20/smaps_rollup", "");
        put("20/statm", "0 0 0 0 0 0 0\n");
        put("20/task/20/schedstat", "7 0 0\n");
        put("20/status", "Name:\tx\nTgid:\t20\nPid:\t21\n");
        let mut r = read(root.path(), &[10, 20, 30], true);
        r.pss_cost = std::time::Duration::ZERO;
        let page = page_size();
        assert_eq!(
            r,
            ProcReading {
                processes: 2,
                threads: 3,
                pss_bytes: Some(200 * 1024),
                pss_cost: std::time::Duration::ZERO,
                rss_bytes: 65 * page,
                runtime_ns: 1507,
                read_bytes: 11,
                write_bytes: 22,
            }
        );
        let r = read(root.path(), &[10, 20, 30], false);
        assert_eq!((r.pss_bytes, r.rss_bytes, r.threads), (None, 65 * page, 3));
        assert_eq!(tgid_of(root.path(), 20), Some(20));
        assert_eq!(tgid_of(root.path(), 30), None);
    }
}
