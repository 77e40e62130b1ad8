//! Reading cgroup interface files at every sample, cheaply: a file is
//! opened once and kept open (within a budget of descriptors), then re-read
//! in place with `pread` at offset 0, which makes the kernel produce its
//! content afresh. Opening a cgroup file costs several times more than
//! reading it (path walk, kernfs allocations, and the close); keeping it
//! costs a descriptor and about 4.7 KiB of kernel memory (the file's
//! seq_file buffer stays allocated). Files beyond the budget are opened,
//! read and closed each time.
//!
//! Every problem becomes a warning naming the file, instead of an error
//! that would lose the other statistics. Which absences are worth a
//! warning: a file the controller always has (memory.stat next to
//! memory.current) is required, and its absence is reported; a file only
//! some kernels or configurations have (memory.peak before 5.19, swap
//! accounting, PSI) is optional, and its absence just leaves the statistic
//! out. The caller logs warnings at every sample, so a host's permanent
//! traits must not produce them.
use std::{
    fs,
    io::{self, Read as _},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::parse::ParseError;
use crate::model::cgroups::ContainerCgroups;

/// cgroup files are small; a list of tasks is the largest (about 8 bytes
/// per thread). Anything beyond this is not a cgroup file.
pub(super) const MAX_FILE_BYTES: usize = 8 << 20;

/// The first read's size: larger than any cgroup statistics file.
const FIRST_READ: usize = 16 * 1024;

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
    #[error("more than {0} cgroups below; counted the first {0}")]
    TooManyCgroups(usize),
}

/// Descriptors that may be kept open for re-reading, shared by every
/// reader; a kept file gives its descriptor back when dropped.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    left: Arc<AtomicUsize>,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Budget {
            left: Arc::new(AtomicUsize::new(max)),
            max,
        }
    }

    /// Descriptors kept open now.
    pub(crate) fn in_use(&self) -> usize {
        self.max.saturating_sub(self.left.load(Ordering::Relaxed))
    }

    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A descriptor counted against a [`Budget`].
#[derive(Debug)]
struct Kept {
    fd: OwnedFd,
    budget: Arc<AtomicUsize>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.budget.fetch_add(1, Ordering::Relaxed);
    }
}

/// The hierarchy a file is in: the cgroup2 directory, or a v1 controller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hier {
    V2,
    V1(&'static str),
}

impl Hier {
    pub(crate) fn dir(self, cg: &ContainerCgroups) -> Option<&Path> {
        match self {
            Hier::V2 => cg.v2.as_deref(),
            Hier::V1(c) => cg.v1.get(c).map(PathBuf::as_path),
        }
    }
}

/// One interface file of a container's cgroup, read at every sample.
#[derive(Debug)]
pub(crate) struct File {
    pub hier: Hier,
    pub name: &'static str,
    kept: Option<Kept>,
}

/// What reading a file gave.
enum Got {
    /// Its text is in the buffer.
    Text,
    /// The file does not exist, or the kernel says the feature is off
    /// (PSI files return EOPNOTSUPP when cgroup.pressure is 0).
    Absent,
    /// Its cgroup was removed.
    Gone,
}

/// What a sample of one cgroup set shares: its directories, a buffer, the
/// descriptor budget, the warnings, and whether the cgroup turned out to be
/// gone.
pub(crate) struct Ctx<'a> {
    pub cg: &'a ContainerCgroups,
    buf: &'a mut Vec<u8>,
    budget: &'a Budget,
    pub warnings: Vec<StatWarning>,
    /// A directory that was there when the reader was set up is gone: the
    /// cgroup was removed, and nothing read now is complete.
    pub gone: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(cg: &'a ContainerCgroups, buf: &'a mut Vec<u8>, budget: &'a Budget) -> Self {
        Ctx {
            cg,
            buf,
            budget,
            warnings: Vec::new(),
            gone: false,
        }
    }

    pub(crate) fn warn(&mut self, path: PathBuf, problem: Problem) {
        self.warnings.push(StatWarning { path, problem });
    }

    /// Keeps a parse result, or records why not.
    pub(crate) fn ok<T>(&mut self, f: &File, r: Result<T, ParseError>) -> Option<T> {
        r.map_err(|e| {
            let path = f.path(self.cg);
            self.warn(path, e.into());
        })
        .ok()
    }
}

fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// The kernel's answer to reading a file of a removed cgroup.
fn is_gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENODEV)
}

impl File {
    pub(crate) fn new(hier: Hier, name: &'static str) -> Self {
        File {
            hier,
            name,
            kept: None,
        }
    }

    /// Its full path (for warnings and opening).
    pub(crate) fn path(&self, cg: &ContainerCgroups) -> PathBuf {
        self.hier
            .dir(cg)
            .map_or_else(|| PathBuf::from(self.name), |d| d.join(self.name))
    }

    /// Closes it if kept open (a file read now and then does not hold a
    /// descriptor and the kernel's buffer between reads).
    pub(crate) fn close(&mut self) {
        self.kept = None;
    }

    /// Whether it is kept open.
    #[cfg(test)]
    pub(crate) fn is_kept(&self) -> bool {
        self.kept.is_some()
    }

    /// A file the controller always has, parsed.
    pub(crate) fn required<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        self.parse(ctx, true, parse)
    }

    /// A file only some kernels or configurations have, parsed; its
    /// absence is no warning.
    pub(crate) fn optional<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        self.parse(ctx, false, parse)
    }

    fn parse<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        required: bool,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        let problem = match self.fill(ctx) {
            Ok(Got::Text) => match std::str::from_utf8(ctx.buf) {
                Ok(text) => match parse(text) {
                    Ok(v) => return Some(v),
                    Err(e) => Problem::Parse(e),
                },
                Err(_) => Problem::NotUtf8,
            },
            Ok(Got::Absent) if required => Problem::Missing,
            Ok(Got::Absent) => return None,
            Ok(Got::Gone) => {
                ctx.gone = true;
                return None;
            }
            Err(p) => p,
        };
        let path = self.path(ctx.cg);
        ctx.warn(path, problem);
        None
    }

    /// Reads the whole file into the context's buffer.
    fn fill(&mut self, ctx: &mut Ctx<'_>) -> Result<Got, Problem> {
        if let Some(k) = &self.kept {
            match pread_all(&k.fd, ctx.buf) {
                Ok(()) => return Ok(Got::Text),
                Err(e) if is_gone(&e) => {
                    self.kept = None;
                    return Ok(Got::Gone);
                }
                Err(e) if is_absent(&e) => return Ok(Got::Absent),
                Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                    return Err(Problem::TooLarge);
                }
                Err(e) => return Err(Problem::Io(e)),
            }
        }
        let path = self.path(ctx.cg);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if is_absent(&e) => {
                // Missing file, or missing directory: the cgroup was removed.
                let dir_gone = self.hier.dir(ctx.cg).is_none_or(|d| !d.is_dir());
                return Ok(if dir_gone { Got::Gone } else { Got::Absent });
            }
            Err(e) if is_gone(&e) => return Ok(Got::Gone),
            Err(e) => return Err(Problem::Io(e)),
        };
        let fd = OwnedFd::from(file);
        match pread_all(&fd, ctx.buf) {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Ok(Got::Gone),
            Err(e) if is_absent(&e) => return Ok(Got::Absent),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => return Err(Problem::TooLarge),
            Err(e) => return Err(Problem::Io(e)),
        }
        if ctx.budget.take() {
            self.kept = Some(Kept {
                fd,
                budget: ctx.budget.left.clone(),
            });
        }
        Ok(Got::Text)
    }
}

/// A cgroup directory whose number of child cgroups is checked at every
/// sample: kernfs gives a directory 2 + its subdirectories as link count,
/// so an `fstat` of a kept descriptor tells whether there is any.
#[derive(Debug)]
pub(super) struct Dir {
    pub hier: Hier,
    kept: Option<Kept>,
}

impl Dir {
    pub(super) fn new(hier: Hier) -> Self {
        Dir { hier, kept: None }
    }

    /// Whether the directory has child cgroups; None when it is gone.
    pub(super) fn has_children(&mut self, ctx: &mut Ctx<'_>) -> Option<bool> {
        let dir = self.hier.dir(ctx.cg)?;
        if let Some(k) = &self.kept {
            // SAFETY: an all-zero stat is a valid value of this plain C struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes one stat into `st`, which we own; the
            // descriptor is open (we own it).
            if unsafe { libc::fstat(k.fd.as_raw_fd(), &mut st) } == 0 {
                return Some(links_say_children(st.st_nlink));
            }
            self.kept = None;
        }
        let meta = fs::metadata(dir).ok()?;
        if let Ok(f) = fs::File::open(dir)
            && ctx.budget.take()
        {
            self.kept = Some(Kept {
                fd: OwnedFd::from(f),
                budget: ctx.budget.left.clone(),
            });
        }
        use std::os::unix::fs::MetadataExt as _;
        Some(links_say_children(meta.nlink()))
    }
}

/// A directory's link count is 2 + its subdirectories on kernfs (and
/// ext4, tmpfs); file systems that do not count them (btrfs: always 1) may
/// have children.
fn links_say_children(nlink: u64) -> bool {
    nlink != 2
}

/// Reads a file from its start into `buf` (replacing its content): one
/// `pread` when the file fits the buffer (seq_file hands a whole cgroup
/// file over in one read when the buffer is larger than it), more only for
/// a file that fills it.
fn pread_all(fd: &OwnedFd, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    let mut len = 0usize;
    loop {
        if buf.capacity() - len < FIRST_READ {
            buf.reserve(FIRST_READ.max(buf.capacity()));
        }
        let room = buf.capacity() - len;
        // SAFETY: the kernel writes at most `room` bytes at buf's spare
        // capacity, which is allocated; the descriptor is open (we own it).
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().add(len).cast(),
                room,
                len as libc::off_t,
            )
        };
        let n = match usize::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
        };
        // SAFETY: the kernel initialised these n bytes.
        unsafe { buf.set_len(len + n) };
        len += n;
        if n == 0 || n < room {
            return Ok(());
        }
        if len > MAX_FILE_BYTES {
            return Err(io::ErrorKind::FileTooLarge.into());
        }
    }
}

/// Reads a small file by path (an ancestor's limit, use_hierarchy), for
/// what is not read at every sample of every container.
pub(super) fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    fs::File::open(path)?
        .take(FIRST_READ as u64)
        .read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::read::parse;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    fn cg(dir: &Path) -> ContainerCgroups {
        ContainerCgroups {
            v2: Some(dir.to_path_buf()),
            ..ContainerCgroups::default()
        }
    }

    #[test]
    fn required_optional_and_problems() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(d, "good", "42\n");
        write(d, "empty", "");
        fs::write(d.join("binary"), [0xff, 0xfe, 0x00]).unwrap();
        fs::create_dir(d.join("adir")).unwrap();
        let cg = cg(d);
        let mut buf = Vec::new();
        let budget = Budget::new(16);
        let mut ctx = Ctx::new(&cg, &mut buf, &budget);
        let f = |name| File::new(Hier::V2, name);
        assert_eq!(f("good").required(&mut ctx, parse::single_u64), Some(42));
        assert_eq!(f("nope").optional(&mut ctx, parse::single_u64), None);
        assert!(ctx.warnings.is_empty());
        assert_eq!(f("nope").required(&mut ctx, parse::single_u64), None);
        assert_eq!(f("empty").optional(&mut ctx, parse::single_u64), None);
        assert_eq!(f("binary").required(&mut ctx, parse::single_u64), None);
        // A directory where a file should be: a read error, not a panic.
        assert_eq!(f("adir").required(&mut ctx, parse::single_u64), None);
        assert!(!ctx.gone);
        let w: Vec<String> = ctx.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].ends_with("nope: missing"), "{w:?}");
        assert!(w[1].ends_with("empty: file is empty"), "{w:?}");
        assert!(w[2].ends_with("binary: not UTF-8 text"), "{w:?}");
        assert!(w[3].contains("cannot read"), "{w:?}");
    }

    #[test]
    fn kept_files_are_reread_in_place_within_the_budget() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(d, "a", "1\n");
        write(d, "b", "2\n");
        let cg = cg(d);
        let mut buf = Vec::new();
        let budget = Budget::new(1);
        let mut ctx = Ctx::new(&cg, &mut buf, &budget);
        let mut a = File::new(Hier::V2, "a");
        let mut b = File::new(Hier::V2, "b");
        assert_eq!(a.required(&mut ctx, parse::single_u64), Some(1));
        assert_eq!(b.required(&mut ctx, parse::single_u64), Some(2));
        assert!(a.is_kept() && !b.is_kept(), "one descriptor in the budget");
        assert_eq!(budget.in_use(), 1);
        // Rewritten in place (a regular file keeps its inode): the kept
        // descriptor reads the new content from the start.
        write(d, "a", "12345\n");
        write(d, "b", "7\n");
        assert_eq!(a.required(&mut ctx, parse::single_u64), Some(12345));
        assert_eq!(b.required(&mut ctx, parse::single_u64), Some(7));
        drop(a);
        assert_eq!(
            budget.in_use(),
            0,
            "a dropped file gives its descriptor back"
        );
        // A file larger than the first read is read whole.
        let big = "x\n".repeat(20_000);
        write(d, "big", &big);
        let mut f = File::new(Hier::V2, "big");
        assert_eq!(f.required(&mut ctx, |t| Ok(t.len())), Some(big.len()));
        assert_eq!(f.required(&mut ctx, |t| Ok(t.len())), Some(big.len()));
    }

    #[test]
    fn a_removed_directory_is_gone_not_missing() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ctr");
        fs::create_dir(&d).unwrap();
        write(&d, "a", "1\n");
        let cg = cg(&d);
        let mut buf = Vec::new();
        let budget = Budget::new(0);
        let mut ctx = Ctx::new(&cg, &mut buf, &budget);
        let mut a = File::new(Hier::V2, "a");
        assert_eq!(a.required(&mut ctx, parse::single_u64), Some(1));
        fs::remove_dir_all(&d).unwrap();
        assert_eq!(a.required(&mut ctx, parse::single_u64), None);
        assert!(ctx.gone);
        assert!(ctx.warnings.is_empty(), "{:?}", ctx.warnings);
    }
}
