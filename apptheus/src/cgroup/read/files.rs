//! Reading cgroup interface files, with every problem turned into a
//! warning that names the file instead of an error that loses the other
//! statistics.
//!
//! Which absences are worth a warning: a file the controller always has
//! (memory.stat next to memory.current) is expected, and its absence is
//! reported; a file that only some kernels or configurations have
//! (memory.peak before 5.19, swap accounting, PSI) is optional, and its
//! absence just leaves the statistic out. The caller logs warnings on every
//! sample, so a host's permanent traits must not produce them.
use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::parse::ParseError;

/// cgroup files are small; a list of tasks is the largest (about 8 bytes
/// per thread). Anything beyond this is not a cgroup file.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// Ancestors visited looking for an enclosing limit; real hierarchies are a
/// handful of levels deep.
const MAX_DEPTH: usize = 64;

/// Sub-cgroups visited when counting tasks below a container's cgroup.
const MAX_DIRS: usize = 1024;

/// Something wrong with one file; the rest of the statistics still came
/// through.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct StatWarning {
    pub path: PathBuf,
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("missing")]
    Missing,
    #[error("cannot read: {0}")]
    Io(io::Error),
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("more than {0} devices; the rest are left out")]
    TooManyDevices(usize),
    #[error("more than {MAX_DIRS} cgroups below; counted the first {MAX_DIRS}")]
    TooManyCgroups,
}

/// Reads files and collects the warnings.
#[derive(Debug, Default)]
pub struct Reader {
    pub warnings: Vec<StatWarning>,
}

enum Outcome {
    Text(String),
    /// The file does not exist, or the kernel says the feature is off
    /// (PSI files return EOPNOTSUPP when cgroup.pressure is 0).
    Absent,
}

/// Size of the first read of a file: larger than any cgroup statistics file.
const FIRST_READ: usize = 16 * 1024;

fn read_text(path: &Path) -> Result<Outcome, Problem> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(Outcome::Absent),
        Err(e) => return Err(Problem::Io(e)),
    };
    // One read() returns a whole cgroup file when the buffer is larger
    // than it (seq_file); only a file that fills the buffer is read on to
    // its end. This saves the EOF read on every file of every sample.
    let mut bytes = vec![0u8; FIRST_READ];
    let mut file = file;
    let first = match file.read(&mut bytes) {
        Ok(n) => n,
        Err(e) if is_absent(&e) => return Ok(Outcome::Absent),
        Err(e) => return Err(Problem::Io(e)),
    };
    bytes.truncate(first);
    if first == FIRST_READ {
        match file
            .take(MAX_FILE_BYTES + 1 - FIRST_READ as u64)
            .read_to_end(&mut bytes)
        {
            Ok(_) => {}
            Err(e) if is_absent(&e) => return Ok(Outcome::Absent),
            Err(e) => return Err(Problem::Io(e)),
        }
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Problem::TooLarge);
    }
    String::from_utf8(bytes)
        .map(Outcome::Text)
        .map_err(|_| Problem::NotUtf8)
}

fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

impl Reader {
    pub fn warn(&mut self, path: &Path, problem: Problem) {
        self.warnings.push(StatWarning {
            path: path.to_path_buf(),
            problem,
        });
    }

    /// Whether a container's directory is there; a directory that should
    /// be there and is not is worth a warning (the cgroup was removed).
    pub fn dir(&mut self, dir: &Path) -> bool {
        if dir.is_dir() {
            return true;
        }
        self.warn(dir, Problem::Missing);
        false
    }

    /// The text of a file the controller always has.
    pub fn text(&mut self, path: &Path) -> Option<String> {
        self.read(path, true)
    }

    /// The text of a file only some kernels or configurations have.
    pub fn text_if_present(&mut self, path: &Path) -> Option<String> {
        self.read(path, false)
    }

    fn read(&mut self, path: &Path, required: bool) -> Option<String> {
        match read_text(path) {
            Ok(Outcome::Text(t)) => Some(t),
            Ok(Outcome::Absent) => {
                if required {
                    self.warn(path, Problem::Missing);
                }
                None
            }
            Err(p) => {
                self.warn(path, p);
                None
            }
        }
    }

    /// Keeps a parse result, or records why not.
    pub fn ok<T>(&mut self, path: &Path, r: Result<T, ParseError>) -> Option<T> {
        r.map_err(|e| self.warn(path, e.into())).ok()
    }

    /// A file the controller always has, parsed.
    pub fn required<T>(
        &mut self,
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        let text = self.read(path, true)?;
        self.ok(path, parse(&text))
    }

    /// A file only some kernels or configurations have, parsed; its absence
    /// is no warning.
    pub fn optional<T>(
        &mut self,
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        let text = self.read(path, false)?;
        self.ok(path, parse(&text))
    }

    /// The limit in force on a cgroup: the smallest of its own limit (file
    /// `name` in `dir`) and those of its ancestors, up to the hierarchy's
    /// root, which is where the file stops existing (the root cgroup has no
    /// memory.max or pids.max; above a v1 mount point there is no cgroup
    /// file at all). None when nothing on the way is limited.
    ///
    /// `applies_above(parent)` says whether the parent's limit (and those
    /// above it) holds for its children; v1 memory without use_hierarchy
    /// is the case where it does not.
    pub fn min_limit_upwards(
        &mut self,
        dir: &Path,
        name: &str,
        parse: fn(&str) -> Result<Option<u64>, ParseError>,
        applies_above: impl Fn(&Path) -> bool,
    ) -> Option<u64> {
        let mut min = self.required(&dir.join(name), parse).flatten();
        let mut cur = dir;
        for _ in 0..MAX_DEPTH {
            let Some(parent) = cur.parent() else { break };
            if !applies_above(parent) {
                break;
            }
            // Where the file stops existing is the hierarchy's root.
            let path = parent.join(name);
            let text = match read_text(&path) {
                Ok(Outcome::Text(t)) => t,
                Ok(Outcome::Absent) => break,
                Err(p) => {
                    self.warn(&path, p);
                    break;
                }
            };
            if let Some(v) = self.ok(&path, parse(&text)).flatten() {
                min = Some(min.map_or(v, |m: u64| m.min(v)));
            }
            cur = parent;
        }
        min
    }

    /// Entries of the list file `name` (cgroup.threads, tasks) in `dir` and
    /// in every cgroup below it, the way the hierarchical counters
    /// (pids.current, memory usage) count them too.
    pub fn count_below(&mut self, dir: &Path, name: &str) -> Option<u64> {
        let own = self.required(&dir.join(name), |t| Ok(super::parse::count_lines(t)))?;
        let mut total = own;
        let mut stack = subdirs(dir);
        let mut visited = 0;
        while let Some(d) = stack.pop() {
            if visited == MAX_DIRS {
                self.warn(dir, Problem::TooManyCgroups);
                break;
            }
            visited += 1;
            // A child cgroup removed meanwhile is no error: it had no tasks.
            if let Some(n) = self.optional(&d.join(name), |t| Ok(super::parse::count_lines(t))) {
                total = total.saturating_add(n);
            }
            stack.extend(subdirs(&d));
        }
        Some(total)
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::read::parse;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn required_optional_and_problems() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(d, "good", "42\n");
        write(d, "empty", "");
        fs::write(d.join("binary"), [0xff, 0xfe, 0x00]).unwrap();
        let mut r = Reader::default();
        assert_eq!(r.required(&d.join("good"), parse::single_u64), Some(42));
        assert_eq!(r.optional(&d.join("nope"), parse::single_u64), None);
        assert!(r.warnings.is_empty());
        assert_eq!(r.required(&d.join("nope"), parse::single_u64), None);
        assert_eq!(r.optional(&d.join("empty"), parse::single_u64), None);
        assert_eq!(r.required(&d.join("binary"), parse::single_u64), None);
        // A directory where a file should be: a read error, not a panic.
        assert_eq!(r.required(d, parse::single_u64), None);
        let w: Vec<String> = r.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].ends_with("nope: missing"), "{w:?}");
        assert!(w[1].ends_with("empty: file is empty"), "{w:?}");
        assert!(w[2].ends_with("binary: not UTF-8 text"), "{w:?}");
        assert!(w[3].contains("cannot read"), "{w:?}");
    }

    #[test]
    fn limits_walk_up_until_the_file_stops() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let job = root.join("job");
        let ctr = job.join("ctr");
        fs::create_dir_all(&ctr).unwrap();
        // The root has no limit file: the walk stops there.
        write(&job, "pids.max", "100\n");
        write(&ctr, "pids.max", "max\n");
        let mut r = Reader::default();
        assert_eq!(
            r.min_limit_upwards(&ctr, "pids.max", parse::limit, |_| true),
            Some(100)
        );
        // Unlimited all the way up.
        write(&job, "pids.max", "max\n");
        assert_eq!(
            r.min_limit_upwards(&ctr, "pids.max", parse::limit, |_| true),
            None
        );
        write(&root, "pids.max", "7\n");
        assert_eq!(
            r.min_limit_upwards(&ctr, "pids.max", parse::limit, |_| true),
            Some(7)
        );
        assert_eq!(
            r.min_limit_upwards(&ctr, "pids.max", parse::limit, |p| p != root.as_path()),
            None
        );
        write(&job, "pids.max", "garbage\n");
        assert_eq!(
            r.min_limit_upwards(&ctr, "pids.max", parse::limit, |_| true),
            Some(7)
        );
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn counts_tasks_below() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        write(d, "tasks", "1\n2\n");
        write(&d.join("a"), "tasks", "");
        write(&d.join("a/b"), "tasks", "3\n4\n5\n");
        let mut r = Reader::default();
        assert_eq!(r.count_below(d, "tasks"), Some(5));
        assert_eq!(r.count_below(&d.join("x"), "tasks"), None);
        assert_eq!(r.warnings.len(), 1);
    }
}
