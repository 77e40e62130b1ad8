//! The one reader of /proc, rooted at `--path.procfs`. What it reads
//! belongs to processes of any user: every read is bounded, and a process
//! that is gone is an ordinary answer (an error or None), never a panic.
use std::{
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use apptheus_common::FileId;

/// Most bytes read from a process's environment or command line.
pub const MAX_ENVIRON_BYTES: u64 = 1 << 20;
/// Most bytes read from any other /proc file (status, stat, cgroup).
const MAX_FILE_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Procfs {
    root: PathBuf,
}

impl Procfs {
    pub fn new(root: &Path) -> Self {
        Procfs {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<pid>/<file>`.
    pub fn path(&self, pid: u32, file: &str) -> PathBuf {
        self.root.join(pid.to_string()).join(file)
    }

    fn read(&self, pid: u32, file: &str, max: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        File::open(self.path(pid, file))?
            .take(max)
            .read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn read_text(&self, pid: u32, file: &str) -> io::Result<String> {
        let bytes = self.read(pid, file, MAX_FILE_BYTES)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The process's environment as it started (NUL-separated).
    pub fn environ(&self, pid: u32) -> io::Result<Vec<u8>> {
        self.read(pid, "environ", MAX_ENVIRON_BYTES)
    }

    /// Its first argument.
    pub fn arg0(&self, pid: u32) -> io::Result<String> {
        let bytes = self.read(pid, "cmdline", MAX_ENVIRON_BYTES)?;
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Its working directory.
    pub fn cwd(&self, pid: u32) -> Option<PathBuf> {
        std::fs::read_link(self.path(pid, "cwd")).ok()
    }

    /// The path its executable was started from (for log lines: in another
    /// mount namespace it may mean nothing here).
    pub fn exe_path(&self, pid: u32) -> Option<PathBuf> {
        std::fs::read_link(self.path(pid, "exe")).ok()
    }

    /// The identity of the file it executes.
    pub fn exe_identity(&self, pid: u32) -> io::Result<FileId> {
        std::fs::metadata(self.path(pid, "exe")).map(|m| file_id(&m))
    }

    /// Its `/proc/<pid>/cgroup` text.
    pub fn cgroup(&self, pid: u32) -> io::Result<String> {
        self.read_text(pid, "cgroup")
    }

    /// Its command (`comm`).
    pub fn comm(&self, pid: u32) -> Option<String> {
        self.read_text(pid, "comm")
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Its real uid.
    pub fn uid(&self, pid: u32) -> Option<u32> {
        parse_status_uid(&self.read_text(pid, "status").ok()?)
    }

    /// Its parent's pid.
    pub fn ppid(&self, pid: u32) -> Option<u32> {
        super::proctree::parse_ppid(&self.read_text(pid, "stat").ok()?)
    }

    /// Whether the process has exited (a zombie not yet reaped, or gone).
    pub fn has_exited(&self, pid: u32) -> bool {
        self.read_text(pid, "stat")
            .map(|s| parse_stat_state(&s).is_none_or(|st| matches!(st, 'Z' | 'X')))
            .unwrap_or(true)
    }

    /// When the process started (`stat` field 22, clock ticks since boot):
    /// with its pid, what tells it from a later process given the same id.
    /// None once it has exited.
    pub fn start_time(&self, pid: u32) -> Option<u64> {
        let stat = self.read_text(pid, "stat").ok()?;
        if parse_stat_state(&stat).is_none_or(|st| matches!(st, 'Z' | 'X')) {
            return None;
        }
        parse_stat_start_time(&stat)
    }
}

/// Field 22 of a `stat` text, the start time (fields counted from the last
/// `)`: the command name may hold spaces and parentheses).
fn parse_stat_start_time(stat: &str) -> Option<u64> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A file's identity (device and inode), the device in the kernel's
/// encoding, as the kernel programs see an executed file.
pub fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt as _;
    let dev = meta.dev();
    FileId {
        dev: apptheus_common::kernel_dev(libc::major(dev), libc::minor(dev)),
        ino: meta.ino(),
    }
}

/// The real uid in a `/proc/<pid>/status` text.
fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Field 3 (`state`) of a `/proc/<pid>/stat` line, after the command.
fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_start_time() {
        let stat = "4711 (a b) c) S 4700 4711 4700 0 -1 4194560 120 0 0 0 1 0 0 0 20 0 1 0 98765 2281472 224 18446744073709551615";
        assert_eq!(parse_stat_start_time(stat), Some(98765));
        assert_eq!(parse_stat_start_time("4711 (x) S 1 2"), None);
    }

    #[test]
    fn parses_status() {
        assert_eq!(
            parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
        assert_eq!(parse_stat_state("42 (a) Z) Z 1 2"), Some('Z'));
        assert_eq!(parse_stat_state("42 (sh) S 1 2"), Some('S'));
        assert_eq!(parse_stat_state("42 (x"), None);
    }

    #[test]
    fn reads_this_process_and_tolerates_a_missing_one() {
        let p = Procfs::new(Path::new("/proc"));
        let me = std::process::id();
        assert!(p.environ(me).is_ok());
        assert!(!p.arg0(me).unwrap().is_empty());
        assert!(p.cwd(me).is_some());
        assert!(p.cgroup(me).unwrap().contains("::"));
        assert!(p.uid(me).is_some());
        assert!(p.ppid(me).is_some());
        assert!(p.start_time(me).is_some());
        assert!(!p.has_exited(me));
        assert!(p.has_exited(u32::MAX));
        let gone = u32::MAX;
        assert!(p.environ(gone).is_err());
        assert!(p.arg0(gone).is_err());
        assert_eq!(p.uid(gone), None);
        assert_eq!(p.start_time(gone), None);
    }
}
