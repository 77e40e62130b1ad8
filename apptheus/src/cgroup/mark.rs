//! The mark apptheus sets on each cgroup directory it creates, so that
//! after a restart it takes over only its own: an extended attribute in
//! the `trusted.` namespace, which only a process with CAP_SYS_ADMIN can
//! set. A directory with apptheus' naming made by a user (in a cgroup
//! subtree delegated to them, such as their systemd `user@UID.service`)
//! has none and cannot be given one; a name or anything a user can write
//! is never trusted. The mark holds what adoption needs: whose container
//! the directory is, which starter run of it (an instance's join is a run
//! of the instance's container) and the user the kernel saw start it.
use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use crate::model::{
    container::{container_id, parse_container_id},
    metadata::Metadata,
};

/// The extended attribute.
pub const XATTR: &str = "trusted.apptheus";

/// Directory name prefix of the cgroups apptheus creates.
pub const DIR_PREFIX: &str = "apptheus-";
/// The value's first word, and its version.
const MAGIC: &str = "apptheus-cgroup-v1";
/// A value longer than this is not ours (four labels of at most a few
/// hundred bytes and a path, escaped).
const MAX_LEN: usize = 16 * 1024;

/// What a container's cgroup directory is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// The container: its key and its starter's pid (its `container_id`).
    pub container: u64,
    pub container_pid: u32,
    /// The starter run the directory's tasks are of: the container's own
    /// (`member == container`) or a join's.
    pub member: u64,
    pub member_pid: u32,
    /// The real uid of the run's starter, as the kernel saw it.
    pub uid: u32,
    /// The container's labels as read at its start (its starter's
    /// environment may be gone, or another process's, by a restart).
    pub starter: String,
    pub meta: Metadata,
}

/// The characters a label keeps as they are; the others are written
/// `%XX`, so that a value holds no space and no control character.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_./:@+,=".contains(&b)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Mark {
    /// The directory name of the run's cgroups: `apptheus-<pid>-<key>`.
    pub fn dir_name(&self) -> String {
        format!(
            "{}{}",
            DIR_PREFIX,
            container_id(self.member_pid, self.member)
        )
    }

    /// The run's id (the container's, for its own run).
    pub fn member_id(&self) -> String {
        container_id(self.member_pid, self.member)
    }

    /// The container's `container_id`.
    pub fn container_id(&self) -> String {
        container_id(self.container_pid, self.container)
    }

    pub fn encode(&self) -> String {
        let opt = |v: &Option<String>| {
            v.as_deref()
                .map_or("-".to_string(), |v| format!("={}", escape(v)))
        };
        format!(
            "{MAGIC} container={} member={} uid={} starter={} image{} instance{} slurm_job_id{}",
            self.container_id(),
            self.member_id(),
            self.uid,
            escape(&self.starter),
            opt(&self.meta.image),
            opt(&self.meta.instance),
            opt(&self.meta.slurm_job_id),
        )
    }

    /// Parses a value [`Mark::encode`] wrote; None for anything else.
    pub fn parse(value: &[u8]) -> Option<Mark> {
        if value.len() > MAX_LEN {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        let mut words = text.split(' ');
        if words.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| words.next()?.strip_prefix(name)?.strip_prefix('=');
        let (container_pid, container) = parse_container_id(field("container")?)?;
        let (member_pid, member) = parse_container_id(field("member")?)?;
        let uid: u32 = field("uid")?.parse().ok()?;
        let starter = unescape(field("starter")?)?;
        let mut label = |name: &str| -> Option<Option<String>> {
            let w = words.next()?.strip_prefix(name)?;
            match w {
                "-" => Some(None),
                _ => Some(Some(unescape(w.strip_prefix('=')?)?)),
            }
        };
        let meta = Metadata {
            image: label("image")?,
            instance: label("instance")?,
            slurm_job_id: label("slurm_job_id")?,
        };
        if words.next().is_some() {
            return None;
        }
        let m = Mark {
            container,
            container_pid,
            member,
            member_pid,
            uid,
            starter,
            meta,
        };
        (m.encode() == text).then_some(m)
    }
}

fn c_path(dir: &Path) -> std::io::Result<CString> {
    CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Sets `mark` on directory `dir` (needs CAP_SYS_ADMIN).
pub fn set(dir: &Path, mark: &Mark) -> std::io::Result<()> {
    let path = c_path(dir)?;
    let name = CString::new(XATTR).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let value = mark.encode();
    // SAFETY: path and name are NUL-terminated C strings, value a buffer
    // of the length given; lsetxattr reads them and keeps nothing.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The mark on directory `dir`: None when it has none (or one that is not
/// ours), an error when it cannot be read.
pub fn get(dir: &Path) -> std::io::Result<Option<Mark>> {
    let path = c_path(dir)?;
    let name = CString::new(XATTR).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0u8; MAX_LEN + 1];
    // SAFETY: path and name are NUL-terminated C strings; buf is writable
    // for the length given, and lgetxattr writes at most that.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ERANGE) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(buf.get(..n as usize).and_then(Mark::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark() -> Mark {
        Mark {
            container: 1_000_000_007,
            container_pid: 4711,
            member: 1_000_500_000,
            member_pid: 99,
            uid: 1500,
            starter: "/usr/libexec/apptainer/bin/starter".into(),
            meta: Metadata {
                image: Some("/home/a b/x%.sif".into()),
                instance: None,
                slurm_job_id: Some("42".into()),
            },
        }
    }

    #[test]
    fn a_mark_round_trips_and_names_the_runs_directory() {
        let m = mark();
        assert_eq!(
            m.encode(),
            "apptheus-cgroup-v1 container=4711-1000000007 member=99-1000500000 uid=1500 \
             starter=/usr/libexec/apptainer/bin/starter image=/home/a%20b/x%25.sif instance- \
             slurm_job_id=42"
        );
        assert_eq!(Mark::parse(m.encode().as_bytes()), Some(m.clone()));
        assert_eq!(m.dir_name(), "apptheus-99-1000500000");
        assert_eq!(m.container_id(), "4711-1000000007");
        let empty = Mark {
            meta: Metadata {
                instance: Some(String::new()),
                ..Metadata::default()
            },
            ..mark()
        };
        assert_eq!(Mark::parse(empty.encode().as_bytes()), Some(empty));
    }

    #[test]
    fn anything_else_is_no_mark() {
        let good = mark().encode();
        for bad in [
            String::new(),
            "apptheus-cgroup-v1".into(),
            good.replace("v1", "v2"),
            good.replace("uid=1500", "uid=01500"),
            good.replace("uid=1500", "uid=-1"),
            format!("{good} "),
            format!("{good} extra=1"),
            good.replace("member=", "member "),
            good.replace("4711-", "4711--"),
            good.replace("%20", "%2"),
            good.replace("%20", " "),
            good.replace("instance-", "instance"),
            "x".repeat(MAX_LEN + 1),
        ] {
            assert_eq!(Mark::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(Mark::parse(&[0xff, 0xfe]), None);
    }

    /// On a real directory (needs CAP_SYS_ADMIN for `trusted.`; the
    /// privileged tests check cgroupfs itself).
    #[test]
    fn set_and_get_on_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(get(dir.path()).unwrap(), None, "no mark yet");
        match set(dir.path(), &mark()) {
            Ok(()) => assert_eq!(get(dir.path()).unwrap(), Some(mark())),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                apptheus_testkit::skip("CAP_SYS_ADMIN (trusted.* extended attributes)")
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => apptheus_testkit::skip(
                "extended attributes on the temporary directory's filesystem",
            ),
            Err(e) => panic!("{e}"),
        }
    }
}
