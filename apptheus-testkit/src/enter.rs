//! The command line that runs a command inside the Apptainer root, or
//! on a machine whose own root holds Apptainer ([`native_argv`]).
//!
//! Apptainer refuses a plain chroot ("weak chrooted environment"), so the
//! command runs in a new mount namespace (`unshare -m`, propagation slave:
//! nothing leaks to the host) where the root is bind-mounted on itself
//! read-only (the cache is shared by every test), with /proc, /sys and /dev
//! of the host, a fresh tmpfs on /run, and the binds asked for; then
//! `pivot_root` into it and `chroot .`. Processes, cgroups and file
//! identities stay the host's. Every step execs the next, so the process
//! spawned is, in the end, the command itself (for `apptainer exec` the
//! starter: `Apptainer runtime parent: <image>`).
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::root::TestUser;

/// A bind mount: a host file or directory at a path inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute path inside the root.
    pub inside: String,
    pub read_only: bool,
}

impl Bind {
    pub fn new(host: impl Into<PathBuf>, inside: &str) -> Bind {
        Bind {
            host: host.into(),
            inside: inside.to_string(),
            read_only: false,
        }
    }

    pub fn read_only(mut self) -> Bind {
        self.read_only = true;
        self
    }
}

/// Who runs the command inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// root (Apptainer then needs `--no-privs`: root here lacks
    /// CAP_SYS_RESOURCE in its bounding set).
    Root,
    /// An ordinary user (`setpriv` after entering): Apptainer runs in
    /// user-namespace mode.
    User(TestUser),
}

impl Who {
    /// The home directory inside the root.
    pub fn home(&self) -> String {
        match self {
            Who::Root => "/root".into(),
            Who::User(u) => u.home(),
        }
    }

    pub fn is_root(&self) -> bool {
        matches!(self, Who::Root)
    }
}

/// Runs in the new mount namespace: `sh -c SCRIPT sh ROOT [HOST INSIDE
/// rw|ro]... -- COMMAND...`.
const SCRIPT: &str = r#"set -e
R=$1; shift
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"; mount --make-rslave "$R/sys"
mount --rbind /dev "$R/dev"; mount --make-rslave "$R/dev"
mount -t tmpfs -o mode=0755,size=64m tmpfs "$R/run"
while [ "$1" != -- ]; do
  src=$1; dst=$R$2; mode=$3; shift 3
  if [ ! -e "$dst" ]; then
    if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "${dst%/*}"; : >"$dst"; fi
  fi
  mount --bind "$src" "$dst"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$dst"; fi
done
shift
mkdir "$R/run/.oldroot"
cd "$R"
pivot_root . run/.oldroot
exec chroot . /bin/sh -c 'umount -l /run/.oldroot && rmdir /run/.oldroot && exec "$@"' sh "$@"
"#;

/// PATH inside the root.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The argument vector that runs `command` inside `root` as `who`, with
/// `binds` (mounted in order: a later bind may go inside an earlier one).
/// The caller chooses the environment; as the test user, HOME, USER and
/// LOGNAME are set to the user's.
pub fn argv(
    root: &Path,
    binds: &[Bind],
    who: &Who,
    command: &[String],
) -> anyhow::Result<Vec<String>> {
    check_binds(root, binds)?;
    if command.is_empty() {
        bail!("no command to run in the root");
    }
    let mut v: Vec<String> = [
        "unshare",
        "-m",
        "--propagation",
        "slave",
        "sh",
        "-c",
        SCRIPT,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(root.display().to_string());
    for b in binds {
        v.push(b.host.display().to_string());
        v.push(b.inside.clone());
        v.push(if b.read_only { "ro" } else { "rw" }.into());
    }
    v.push("--".into());
    if let Who::User(u) = who {
        v.extend([
            "setpriv".to_string(),
            format!("--reuid={}", u.uid),
            format!("--regid={}", u.gid),
            "--clear-groups".into(),
            "env".into(),
            format!("HOME={}", u.home()),
            format!("USER={}", u.name),
            format!("LOGNAME={}", u.name),
        ]);
    }
    v.extend(command.iter().cloned());
    Ok(v)
}

/// The argument vector that runs `command` on this machine itself as
/// `who` (a root of [`crate::root::Root::native`]): as root, the command
/// itself; as an ordinary user, in a login session of its own, as an SSH
/// login gives one. `su` opens it through PAM (pam_systemd: a
/// `session-<n>.scope` in the user's slice, the user's manager and bus
/// running; `--session-command` keeps the command in the caller's process
/// group), and the command gets XDG_RUNTIME_DIR and
/// DBUS_SESSION_BUS_ADDRESS, through which Apptainer asks the user's
/// systemd for cgroups.
pub fn native_argv(who: &Who, command: &[String]) -> anyhow::Result<Vec<String>> {
    if command.is_empty() {
        bail!("no command to run");
    }
    let Who::User(u) = who else {
        return Ok(command.to_vec());
    };
    let run = format!("/run/user/{}", u.uid);
    let line = format!(
        "exec env XDG_RUNTIME_DIR={run} DBUS_SESSION_BUS_ADDRESS=unix:path={run}/bus {}",
        crate::shell_quote(command)
    );
    Ok(vec![
        "su".into(),
        "--login".into(),
        "--shell=/bin/sh".into(),
        format!("--session-command={line}"),
        u.name.clone(),
    ])
}

/// The root is mounted read-only: a bind's mount point must exist in it,
/// or lie below /run (a tmpfs) or below an earlier bind of a directory.
fn check_binds(root: &Path, binds: &[Bind]) -> anyhow::Result<()> {
    for (i, b) in binds.iter().enumerate() {
        if !b.inside.starts_with('/') || b.inside.split('/').any(|c| c == "..") {
            bail!(
                "bind target {:?} must be an absolute path without ..",
                b.inside
            );
        }
        if !b.host.exists() {
            bail!("bind source {} does not exist", b.host.display());
        }
        let in_root = root.join(b.inside.trim_start_matches('/'));
        let below = |dir: &str| {
            b.inside
                .starts_with(&format!("{}/", dir.trim_end_matches('/')))
        };
        let writable_parent = below("/run")
            || binds[..i]
                .iter()
                .any(|e| e.host.is_dir() && below(&e.inside));
        if !in_root.exists() && !writable_parent {
            bail!(
                "bind target {} does not exist in the read-only root {}; bind below /run, /tmp or /work instead",
                b.inside,
                root.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_for_the_test_user() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("work")).unwrap();
        let binds = [
            Bind::new(host.path(), "/work"),
            Bind::new(host.path(), "/work/sub/deeper").read_only(),
            Bind::new(host.path(), "/run/apptheus"),
        ];
        let user = Who::User(TestUser {
            name: "t".into(),
            uid: 7,
            gid: 8,
        });
        let v = argv(root.path(), &binds, &user, &["id".to_string()]).unwrap();
        assert_eq!(v[..4], ["unshare", "-m", "--propagation", "slave"]);
        let dashes = v.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            v[dashes - 3..dashes],
            [
                host.path().display().to_string(),
                "/run/apptheus".into(),
                "rw".into()
            ]
        );
        assert_eq!(v[dashes - 4], "ro");
        assert_eq!(
            v[dashes + 1..],
            [
                "setpriv",
                "--reuid=7",
                "--regid=8",
                "--clear-groups",
                "env",
                "HOME=/home/t",
                "USER=t",
                "LOGNAME=t",
                "id"
            ]
        );
    }

    #[test]
    fn natively_the_user_gets_a_login_session() {
        let cmd = ["apptainer".to_string(), "exec".into(), "a b.sif".into()];
        assert_eq!(native_argv(&Who::Root, &cmd).unwrap(), cmd);
        let user = Who::User(TestUser {
            name: "t".into(),
            uid: 7,
            gid: 8,
        });
        assert_eq!(
            native_argv(&user, &cmd).unwrap(),
            [
                "su",
                "--login",
                "--shell=/bin/sh",
                "--session-command=exec env XDG_RUNTIME_DIR=/run/user/7 \
                 DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/7/bus apptainer exec 'a b.sif'",
                "t"
            ]
        );
        assert!(native_argv(&user, &[]).is_err());
    }

    #[test]
    fn refuses_mount_points_the_read_only_root_lacks() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let run = |binds: &[Bind]| argv(root.path(), binds, &Who::Root, &["true".to_string()]);
        assert!(run(&[Bind::new(host.path(), "/nowhere")]).is_err());
        assert!(run(&[Bind::new(host.path(), "relative")]).is_err());
        assert!(run(&[Bind::new(host.path(), "/run/../etc")]).is_err());
        assert!(run(&[Bind::new("/does/not/exist", "/run/x")]).is_err());
        assert!(run(&[Bind::new(host.path(), "/run/x")]).is_ok());
        assert!(run(&[]).is_ok());
        assert!(argv(root.path(), &[], &Who::Root, &[]).is_err());
    }
}
