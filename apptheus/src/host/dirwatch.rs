//! Watching the directories of some files (inotify): a package upgrade
//! replaces a file by writing a new one beside it and renaming it over the
//! old (dpkg, rpm), and whoever trusts the file by identity must know at
//! once.
use std::{collections::BTreeSet, ffi::OsString, path::PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::{Interest, unix::AsyncFd};

/// What changes a file at a path: created, renamed to or from, removed,
/// written, its mode or owner changed; and the directory itself going.
fn flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// The directories to watch for `files`: each one's own, and, for a
/// symbolic link, its target's (what the identity follows).
pub fn dirs_of(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        if let Some(d) = f.parent() {
            out.insert(d.to_path_buf());
        }
        if let Ok(real) = std::fs::canonicalize(f)
            && let Some(d) = real.parent()
        {
            out.insert(d.to_path_buf());
        }
    }
    out
}

/// The names of `files` (and their symbolic links' targets), the only
/// entries whose events matter.
fn names_of(files: &[PathBuf]) -> BTreeSet<OsString> {
    let mut out = BTreeSet::new();
    for f in files {
        if let Some(n) = f.file_name() {
            out.insert(n.to_os_string());
        }
        if let Ok(real) = std::fs::canonicalize(f)
            && let Some(n) = real.file_name()
        {
            out.insert(n.to_os_string());
        }
    }
    out
}

/// An inotify instance, as tokio wants it (a raw descriptor).
struct Fd(Inotify);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches the directories of a set of files.
pub struct DirWatch {
    fd: AsyncFd<Fd>,
    names: BTreeSet<OsString>,
    watched: BTreeSet<PathBuf>,
}

impl DirWatch {
    /// Watches the directories of `files` that exist (a directory that
    /// does not exist yet is not watched: the caller re-checks on a
    /// clock too). Needs a tokio runtime.
    pub fn new(files: &[PathBuf]) -> std::io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut watched = BTreeSet::new();
        for d in dirs_of(files) {
            if inotify.add_watch(&d, flags()).is_ok() {
                watched.insert(d);
            }
        }
        Ok(DirWatch {
            // SAFETY: the Inotify owns its descriptor, which stays open and
            // unchanged until the Inotify (owned by the AsyncFd) is dropped.
            fd: unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?,
            names: names_of(files),
            watched,
        })
    }

    /// The directories watched.
    pub fn watched(&self) -> &BTreeSet<PathBuf> {
        &self.watched
    }

    /// Waits until one of the files may have changed (every event queued
    /// meanwhile is taken at once).
    pub async fn changed(&mut self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut relevant = false;
            loop {
                match guard.get_inner().0.read_events() {
                    Ok(events) => {
                        relevant |= events.iter().any(|e| {
                            // An event on the directory itself (or a lost
                            // queue) has no name: it matters.
                            e.name.as_ref().is_none_or(|n| self.names.contains(n))
                        });
                    }
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if relevant {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_renamed_over_a_watched_one_is_seen_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starter");
        std::fs::write(&file, "old").unwrap();
        let mut w = DirWatch::new(std::slice::from_ref(&file)).unwrap();
        assert!(w.watched().contains(dir.path()));
        // Another file in the directory: nothing.
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), w.changed()).await;
        assert!(quiet.is_err(), "an unrelated file woke the watch");
        // The new version renamed over the old one, as dpkg does.
        let new = dir.path().join("starter.dpkg-new");
        std::fs::write(&new, "new").unwrap();
        std::fs::rename(&new, &file).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.changed())
            .await
            .expect("the rename is seen")
            .unwrap();
    }

    #[test]
    fn a_symlinks_target_directory_is_watched_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/starter-1.4"), "x").unwrap();
        std::os::unix::fs::symlink("real/starter-1.4", dir.path().join("starter")).unwrap();
        let dirs = dirs_of(&[dir.path().join("starter")]);
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert!(dirs.contains(&real.join("real")), "{dirs:?}");
        assert!(dirs.contains(dir.path()), "{dirs:?}");
        let names = names_of(&[dir.path().join("starter")]);
        assert!(names.contains(&OsString::from("starter-1.4")));
        assert!(names.contains(&OsString::from("starter")));
        // A missing file's directory is still named; a missing directory
        // is simply not watched.
        assert_eq!(dirs_of(&[PathBuf::from("/nonexistent/x")]).len(), 1);
    }
}
