//! Which cgroup hierarchies the host has mounted: pure v2, pure v1, or
//! hybrid (v1 controllers plus a cgroup2 mount, usually at
//! /sys/fs/cgroup/unified). Parsed from /proc/self/mountinfo.
use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

/// The v1 controllers whose statistics apptheus reads.
pub(crate) const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "blkio", "pids"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    V1,
    V2,
    Hybrid,
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutKind::V1 => "v1",
            LayoutKind::V2 => "v2",
            LayoutKind::Hybrid => "hybrid",
        })
    }
}

/// A mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    pub mountpoint: PathBuf,
    /// The controllers (and `name=` of a named hierarchy) it carries.
    pub controllers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Where cgroup2 is mounted, if it is.
    pub v2: Option<PathBuf>,
    /// v1 hierarchies, by controller name.
    pub v1: BTreeMap<String, V1Mount>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup filesystem is mounted (neither cgroup2 nor any v1 controller in {0}); \
         mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    None(PathBuf),
}

impl Layout {
    pub fn kind(&self) -> Option<LayoutKind> {
        match (self.v2.is_some(), self.v1.is_empty()) {
            (true, true) => Some(LayoutKind::V2),
            (true, false) => Some(LayoutKind::Hybrid),
            (false, false) => Some(LayoutKind::V1),
            (false, true) => None,
        }
    }

    /// Reads the layout from a mountinfo file (normally /proc/self/mountinfo).
    pub fn read(mountinfo: &Path) -> Result<Self, LayoutError> {
        let text = std::fs::read_to_string(mountinfo).map_err(|source| LayoutError::Read {
            path: mountinfo.to_path_buf(),
            source,
        })?;
        let layout = Self::parse(&text);
        if layout.kind().is_none() {
            return Err(LayoutError::None(mountinfo.to_path_buf()));
        }
        Ok(layout)
    }

    /// Parses mountinfo text. Lines that don't parse are ignored.
    pub fn parse(mountinfo: &str) -> Self {
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let Some(m) = parse_line(line) else { continue };
            match m.fstype {
                // The first cgroup2 mount wins; bind mounts of it elsewhere
                // (e.g. inside containers) come later.
                "cgroup2" => {
                    if layout.v2.is_none() && m.root == "/" {
                        layout.v2 = Some(PathBuf::from(m.mountpoint));
                    }
                }
                "cgroup" => {
                    if m.root != "/" {
                        continue;
                    }
                    let controllers: Vec<String> = m
                        .super_options
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    for c in controllers.iter().filter(|c| !c.starts_with("name=")) {
                        layout.v1.entry(c.clone()).or_insert_with(|| V1Mount {
                            mountpoint: PathBuf::from(&m.mountpoint),
                            controllers: controllers.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        layout
    }
}

struct MountLine<'a> {
    root: &'a str,
    mountpoint: String,
    fstype: &'a str,
    super_options: &'a str,
}

fn parse_line(line: &str) -> Option<MountLine<'_>> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let _id = l.next()?;
    let _parent = l.next()?;
    let _dev = l.next()?;
    let root = l.next()?;
    let mountpoint = unescape(l.next()?);
    let mut r = right.split(' ');
    let fstype = r.next()?;
    let _source = r.next()?;
    let super_options = r.next().unwrap_or("");
    Some(MountLine {
        root,
        mountpoint,
        fstype,
        super_options,
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo (the octal
/// value of one byte). Anything else, an escape above \377 included, is
/// kept as it is; bytes that are not UTF-8 become U+FFFD.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,blkio
38 30 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
";

    #[test]
    fn mount_points_are_unescaped_byte_by_byte() {
        // Found by fuzzing: \777 overflowed a byte (a panic).
        assert_eq!(unescape("/a\\777b"), "/a\\777b");
        assert_eq!(unescape("/x\\040y\\011z\\134"), "/x y\tz\\");
        // A non-ASCII name, escaped byte by byte or not at all.
        assert_eq!(unescape("/d\\303\\251j\\303\\240"), "/déjà");
        assert_eq!(unescape("/déjà"), "/déjà");
        assert_eq!(unescape("/end\\04"), "/end\\04");
        let l = Layout::parse("1 2 0:1 / /sys/fs/c\\777g rw - cgroup2 cgroup2 rw\n");
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/c\\777g")));
    }

    #[test]
    fn hybrid() {
        let l = Layout::parse(HYBRID);
        assert_eq!(l.kind(), Some(LayoutKind::Hybrid));
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            l.v1["cpu"].mountpoint,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(l.v1["cpuacct"].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(
            l.v1["memory"].mountpoint,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert!(!l.v1.contains_key("name=systemd"));
    }

    #[test]
    fn pure_v2() {
        let l = Layout::parse(
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(l.kind(), Some(LayoutKind::V2));
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn pure_v1_and_none() {
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Layout::parse(&v1).kind(), Some(LayoutKind::V1));
        assert_eq!(Layout::parse("garbage\n\n1 2 3\n").kind(), None);
    }

    #[test]
    fn nested_bind_mounts_are_not_the_hierarchy() {
        let text = "31 30 0:27 /user.slice /mnt/x rw - cgroup2 cgroup2 rw\n\
                    32 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Layout::parse(text).v2,
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn escaped_mountpoints() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trail\04"), r"/trail\04");
    }
}
