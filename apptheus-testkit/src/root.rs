//! The cached Debian root that holds the real Apptainer
//! (`scripts/apptainer-root.sh` builds it), and the test user; or, on a
//! machine where Apptainer is installed (the systemd node of `cargo xtask
//! vm-test`), the machine's own root ([`Root::native`]).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Apptainer's starter, relative to the root (Debian's layout; no
/// starter-suid). The agent trusts this file.
pub const STARTER: &str = "usr/lib/x86_64-linux-gnu/apptainer/bin/starter";
/// The `apptainer` command, relative to the root.
pub const LAUNCHER: &str = "usr/bin/apptainer";
/// The stamp `scripts/apptainer-root.sh` writes when the root is complete.
pub const STAMP: &str = ".apptheus-root";
/// The ordinary user the tests run Apptainer as (made by scripts/setup.sh).
pub const TEST_USER: &str = "apptheus-test";

const FIX: &str = "build it with: sudo scripts/setup.sh --test";

/// A complete Apptainer root.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
    apptainer_version: String,
    stamp: String,
    native: bool,
}

impl Root {
    /// The root in the cache (`$APPTHEUS_CACHE_DIR/apptainer-root`), if
    /// this process may use it: it must run as root, and the root must be
    /// complete. The error says what is missing and how to fix it.
    pub fn locate() -> anyhow::Result<Root> {
        if !crate::is_root() {
            return Err(crate::unavailable(
                "root privileges (entering the Apptainer root mounts file systems)",
            ));
        }
        Root::at(&crate::cache_dir().join("apptainer-root"))
    }

    /// The root at `path`, if complete (it has the stamp, the launcher and
    /// the starter).
    pub fn at(path: &Path) -> anyhow::Result<Root> {
        let stamp = std::fs::read_to_string(path.join(STAMP)).map_err(|e| {
            crate::unavailable(format!(
                "the cached Apptainer root {} ({}: {e}); {FIX}",
                path.display(),
                path.join(STAMP).display()
            ))
        })?;
        for f in [LAUNCHER, STARTER] {
            if !path.join(f).is_file() {
                return Err(crate::unavailable(format!(
                    "the Apptainer root {} has no {f}; {FIX} (or scripts/apptainer-root.sh --rebuild)",
                    path.display()
                )));
            }
        }
        let apptainer_version = stamp_value(&stamp, "apptainer")
            .unwrap_or("unknown")
            .to_string();
        Ok(Root {
            path: path.to_path_buf(),
            apptainer_version,
            stamp,
            native: false,
        })
    }

    /// This machine's own root, where Debian's apptainer package is
    /// installed and runs as it would on a compute node: commands are not
    /// entered into anything, the real /tmp and homes are used, root has
    /// every privilege, and the test user runs in a login session of its
    /// own (see [`crate::enter`]). The error says what is missing.
    pub fn native() -> anyhow::Result<Root> {
        if !crate::is_root() {
            return Err(crate::unavailable(
                "root privileges (running Apptainer as root and as the test user)",
            ));
        }
        let path = PathBuf::from("/");
        for f in [LAUNCHER, STARTER] {
            if !path.join(f).is_file() {
                return Err(crate::unavailable(format!(
                    "Debian's apptainer package on this machine (/{f} is missing)"
                )));
            }
        }
        let out = std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "apptainer"])
            .output()
            .context("running dpkg-query")?;
        let apptainer_version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Root {
            path,
            stamp: format!("native\napptainer={apptainer_version}\n"),
            apptainer_version,
            native: true,
        })
    }

    /// Whether this is the machine's own root ([`Root::native`]).
    pub fn is_native(&self) -> bool {
        self.native
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The starter as the host sees it (what the agent is told to trust).
    pub fn starter(&self) -> PathBuf {
        self.path.join(STARTER)
    }

    /// The `apptainer` command as the host sees it.
    pub fn launcher(&self) -> PathBuf {
        self.path.join(LAUNCHER)
    }

    /// The Debian version of the installed apptainer package (e.g. "1.4.5-2").
    pub fn apptainer_version(&self) -> &str {
        &self.apptainer_version
    }

    /// The whole stamp: recipe, suite, apptainer version, mirror, build time.
    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    /// The root's static busybox (copied into the test images).
    pub fn busybox(&self) -> PathBuf {
        self.path.join("bin/busybox")
    }

    /// The test user, checked to be the same in the host's and the root's
    /// /etc/passwd.
    pub fn test_user(&self) -> anyhow::Result<TestUser> {
        let host = TestUser::lookup(Path::new("/etc/passwd"), TEST_USER)?;
        let inside = TestUser::lookup(&self.path.join("etc/passwd"), TEST_USER)?;
        if (host.uid, host.gid) != (inside.uid, inside.gid) {
            bail!(
                "the test user {TEST_USER} is {}:{} on the host but {}:{} in {}; run: sudo scripts/setup.sh --test",
                host.uid,
                host.gid,
                inside.uid,
                inside.gid,
                self.path.display()
            );
        }
        Ok(host)
    }
}

fn stamp_value<'a>(stamp: &'a str, key: &str) -> Option<&'a str> {
    stamp.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(str::trim)
    })
}

/// An ordinary user of the host (and of the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// `name`'s entry in the passwd file `passwd`.
    pub fn lookup(passwd: &Path, name: &str) -> anyhow::Result<TestUser> {
        let text = std::fs::read_to_string(passwd)
            .with_context(|| format!("reading {}", passwd.display()))?;
        text.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name).then(|| {
                    Some(TestUser {
                        name: name.to_string(),
                        uid: f[2].parse().ok()?,
                        gid: f[3].parse().ok()?,
                    })
                })?
            })
            .ok_or_else(|| {
                crate::unavailable(format!(
                    "the test user {name} in {} (create it with: sudo scripts/setup.sh --test)",
                    passwd.display()
                ))
            })
    }

    /// The user's home inside the root.
    pub fn home(&self) -> String {
        format!("/home/{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_and_passwd() {
        let stamp = "recipe=1\nsuite=sid\napptainer=1.4.5-2\n";
        assert_eq!(stamp_value(stamp, "apptainer"), Some("1.4.5-2"));
        assert_eq!(stamp_value(stamp, "app"), None);

        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\napptheus-test:x:1501:1502:t:/home/apptheus-test:/bin/sh\n",
        )
        .unwrap();
        let u = TestUser::lookup(&passwd, "apptheus-test").unwrap();
        assert_eq!((u.uid, u.gid), (1501, 1502));
        assert_eq!(u.home(), "/home/apptheus-test");
        assert!(TestUser::lookup(&passwd, "nobody").is_err());
    }

    #[test]
    fn an_incomplete_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Root::at(dir.path()).unwrap_err().to_string();
        assert!(e.contains("setup.sh --test"), "{e}");
        std::fs::write(dir.path().join(STAMP), "apptainer=1\n").unwrap();
        let e = Root::at(dir.path()).unwrap_err().to_string();
        assert!(e.contains(LAUNCHER), "{e}");
    }
}
