//! The real Apptainer, run inside the cached root, as root or as the test
//! user: a [`Session`] is one test's private view of the root.
//!
//! The root itself is mounted read-only; each session brings its own
//! directories, bound over these paths inside the root:
//!
//! | inside | what |
//! |---|---|
//! | `/work` | images and files of the test ([`Session::work`]) |
//! | `/tmp` | Apptainer's temporary sandboxes (`/tmp/rootfs-*`), the container's /tmp |
//! | `/root`, `/home/<user>` | homes: Apptainer keeps its instances' state there |
//! | `/etc/apptainer/apptainer.conf` | only after [`Session::set_config`] |
//!
//! plus the binds a test adds ([`Session::bind`], e.g. the agent's socket
//! directory at `/run/apptheus`, where the root's apptainer.conf expects
//! `gateway.sock`). Every command of a session sees the same directories, so
//! an instance started by one command is found by the next.
//!
//! Where the machine itself has Apptainer installed (the systemd node of
//! `cargo xtask vm-test`), [`Session::native`] runs it as it is: no root
//! entered, the real /tmp and homes, root with every privilege (no
//! `--no-privs`), the test user in a login session of its own (see
//! [`enter::native_argv`]); images and files go to a private directory,
//! whose paths are the same inside and out.
use std::{
    os::unix::fs::{PermissionsExt as _, chown, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{
    enter::{self, Bind, Who},
    root::{Root, TestUser},
    running::{Finished, Running},
    workload::{self, Workload},
};

/// Who runs Apptainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// root; in the cached root the helpers add `--no-privs` (root here
    /// lacks CAP_SYS_RESOURCE in its bounding set, and Apptainer asks for
    /// it otherwise); natively root runs with every privilege.
    Root,
    /// The test user: Apptainer runs in user-namespace mode and, without
    /// squashfuse, unpacks a SIF into /tmp/rootfs-* first (with a nested,
    /// short-lived `apptainer exec ... unsquashfs`).
    User,
}

/// Time limit for Apptainer's own commands (build, instance start/stop),
/// stretched by [`crate::host::scaled`] where it is used.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// An image built in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its path inside the root (what `apptainer` is given).
    pub inside: String,
    /// The same file, seen from the host.
    pub host: PathBuf,
}

impl Image {
    /// Its file name (Apptainer's APPTAINER_NAME, and the starter's argv:
    /// `Apptainer runtime parent: <name>`).
    pub fn file_name(&self) -> &str {
        self.inside.rsplit('/').next().unwrap_or(&self.inside)
    }
}

/// One test's private directories in the Apptainer root.
pub struct Session {
    root: Root,
    user: TestUser,
    dir: tempfile::TempDir,
    binds: Vec<Bind>,
    config: Option<PathBuf>,
}

impl Session {
    /// A session in the cached root ([`Root::locate`]). The error names
    /// what is missing (root privileges, the cached root, the test user).
    pub fn start() -> anyhow::Result<Session> {
        Session::new(&Root::locate()?)
    }

    /// A session on this machine's own Apptainer ([`Root::native`]).
    pub fn native() -> anyhow::Result<Session> {
        Session::new(&Root::native()?)
    }

    /// A session in `root`.
    pub fn new(root: &Root) -> anyhow::Result<Session> {
        let user = root.test_user()?;
        let dir = tempfile::Builder::new()
            .prefix("apptheus-apptainer-")
            .tempdir()
            .context("creating the session directory")?;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
                .with_context(|| format!("chmod {}", p.display()))
        };
        mode(dir.path(), 0o755)?;
        for (sub, m) in [
            ("work", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("home", 0o700),
        ] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            mode(&p, m)?;
        }
        chown(dir.path().join("home"), Some(user.uid), Some(user.gid))
            .context("giving the test user its home")?;
        Ok(Session {
            root: root.clone(),
            user,
            dir,
            binds: Vec::new(),
            config: None,
        })
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn user(&self) -> &TestUser {
        &self.user
    }

    /// The session's directory on the host.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `/work` inside the root, seen from the host.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The session's work directory as Apptainer sees it: `/work` inside
    /// the root, natively [`Session::work`] itself.
    pub fn work_inside(&self) -> String {
        if self.root.is_native() {
            self.work().display().to_string()
        } else {
            "/work".into()
        }
    }

    /// `/tmp` inside the root (and in the containers), seen from the host.
    pub fn tmp(&self) -> PathBuf {
        if self.root.is_native() {
            PathBuf::from("/tmp")
        } else {
            self.dir.path().join("tmp")
        }
    }

    /// The host path of `inside` (a path inside the root), when it lies in
    /// one of the session's directories or binds; natively, `inside`.
    pub fn host_path(&self, inside: &str) -> Option<PathBuf> {
        if self.root.is_native() {
            return Some(PathBuf::from(inside));
        }
        self.all_binds().iter().rev().find_map(|b| {
            if inside == b.inside {
                Some(b.host.clone())
            } else {
                let rest = inside.strip_prefix(&b.inside)?.strip_prefix('/')?;
                Some(b.host.join(rest))
            }
        })
    }

    /// Binds the host's `host` at `inside` for every later command.
    /// `inside` must exist in the root or lie below /run, /tmp, /work or
    /// an earlier bind (the root is read-only); checked when a command is
    /// made.
    pub fn bind(&mut self, host: impl Into<PathBuf>, inside: &str) {
        self.binds.push(Bind::new(host, inside));
    }

    /// Binds the host directory holding the agent's monitoring socket at
    /// `/run/apptheus`, where the root's apptainer.conf expects
    /// `gateway.sock` (`apptheus socket path`).
    pub fn bind_monitoring_socket_dir(&mut self, host_dir: impl Into<PathBuf>) {
        self.bind(host_dir, "/run/apptheus");
    }

    /// The apptainer.conf the session's commands see.
    pub fn config(&self) -> anyhow::Result<String> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| self.root.path().join("etc/apptainer/apptainer.conf"));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Sets `key = value` in the session's apptainer.conf (a copy of the
    /// root's, bound over /etc/apptainer/apptainer.conf from then on). The
    /// nested commands Apptainer starts read it too, which `--config` would
    /// not give.
    pub fn set_config(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        if self.root.is_native() {
            bail!("a native session runs the machine's own apptainer.conf, unchanged");
        }
        let text = set_key(&self.config()?, key, value);
        let path = self.dir.path().join("apptainer.conf");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        self.config = Some(path);
        Ok(())
    }

    /// `allow monitoring = yes|no`: with yes, Apptainer's starter connects
    /// to the monitoring socket (see [`Session::bind_monitoring_socket_dir`]).
    pub fn allow_monitoring(&mut self, allow: bool) -> anyhow::Result<()> {
        self.set_config("allow monitoring", if allow { "yes" } else { "no" })
    }

    fn all_binds(&self) -> Vec<Bind> {
        let d = self.dir.path();
        let mut v = vec![
            Bind::new(d.join("tmp"), "/tmp"),
            Bind::new(d.join("root"), "/root"),
            Bind::new(d.join("home"), &self.user.home()),
            Bind::new(d.join("work"), "/work"),
        ];
        v.extend(self.binds.iter().cloned());
        if let Some(c) = &self.config {
            v.push(Bind::new(c, "/etc/apptainer/apptainer.conf").read_only());
        }
        v
    }

    fn who(&self, who: As) -> Who {
        match who {
            As::Root => Who::Root,
            As::User => Who::User(self.user.clone()),
        }
    }

    /// The argument vector that runs `command` in the root as `who` (for
    /// scripts, e.g. a Slurm job: quote it with [`crate::shell_quote`]).
    pub fn argv<S: AsRef<str>>(&self, who: As, command: &[S]) -> anyhow::Result<Vec<String>> {
        let command: Vec<String> = command.iter().map(|s| s.as_ref().to_string()).collect();
        if self.root.is_native() {
            if !self.binds.is_empty() {
                bail!("a native session has no binds: its paths are the machine's");
            }
            return enter::native_argv(&self.who(who), &command);
        }
        enter::argv(
            self.root.path(),
            &self.all_binds(),
            &self.who(who),
            &command,
        )
    }

    /// [`Session::argv`] as a command, with a clean environment (PATH,
    /// HOME, USER, LOGNAME, LANG; add more with `Command::env`).
    pub fn command<S: AsRef<str>>(&self, who: As, command: &[S]) -> anyhow::Result<Command> {
        let argv = self.argv(who, command)?;
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .env_clear()
            .env("PATH", enter::PATH)
            .env("LANG", "C.UTF-8");
        let w = self.who(who);
        let name = match &w {
            Who::Root => "root".to_string(),
            Who::User(u) => u.name.clone(),
        };
        c.env("HOME", w.home())
            .env("USER", &name)
            .env("LOGNAME", &name);
        Ok(c)
    }

    /// Starts `command` in the root; its output is collected.
    pub fn spawn<S: AsRef<str>>(&self, who: As, command: &[S]) -> anyhow::Result<Running> {
        let what = format!(
            "`{}` in the Apptainer root as {who:?}",
            crate::shell_quote(command)
        );
        Running::spawn(self.command(who, command)?, &what)
    }

    /// Runs `command` in the root to its end (at most `timeout`); an error
    /// if it fails.
    pub fn run_command<S: AsRef<str>>(
        &self,
        who: As,
        command: &[S],
        timeout: Duration,
    ) -> anyhow::Result<Finished> {
        self.spawn(who, command)?.wait(timeout)?.success()
    }

    /// Builds `/work/<name>.sif` (as root, `apptainer build`): busybox (sh
    /// and its applets), the workload at /bin/workload, minimal /etc/passwd
    /// and /etc/group, and a runscript that execs the workload with the
    /// arguments of `apptainer run`.
    pub fn build_image(&self, name: &str) -> anyhow::Result<Image> {
        if name.is_empty() || name.contains('/') {
            bail!("image name {name:?} must be a plain file name");
        }
        let tree = self.image_tree()?;
        let work = self.work_inside();
        let inside = format!("{work}/{name}.sif");
        let tree_inside = format!(
            "{work}/{}/",
            tree.file_name().and_then(|n| n.to_str()).unwrap_or("image")
        );
        self.run_command(
            As::Root,
            &["apptainer", "-s", "build", "--force", &inside, &tree_inside],
            crate::host::scaled(crate::host::scaled(COMMAND_TIMEOUT)),
        )
        .with_context(|| format!("building {inside}"))?;
        Ok(Image {
            host: self.work().join(format!("{name}.sif")),
            inside,
        })
    }

    /// A copy of `image` named `<name>.sif` beside it: the same image under
    /// another file name, so another `image` label (building takes tens of
    /// seconds under emulation, copying none).
    pub fn copy_image(&self, image: &Image, name: &str) -> anyhow::Result<Image> {
        if name.is_empty() || name.contains('/') {
            bail!("image name {name:?} must be a plain file name");
        }
        let host = self.work().join(format!("{name}.sif"));
        std::fs::copy(&image.host, &host)
            .with_context(|| format!("copying {} to {}", image.host.display(), host.display()))?;
        Ok(Image {
            inside: format!("{}/{name}.sif", self.work_inside()),
            host,
        })
    }

    /// The directory the images are built from, made once per session.
    fn image_tree(&self) -> anyhow::Result<PathBuf> {
        let tree = self.work().join("image");
        let exe = tree.join("bin/workload");
        if exe.exists() {
            return Ok(tree);
        }
        for d in ["bin", "etc", ".singularity.d"] {
            std::fs::create_dir_all(tree.join(d))?;
        }
        workload::compile(&exe)?;
        let busybox = tree.join("bin/busybox");
        std::fs::copy(self.root.busybox(), &busybox)
            .with_context(|| format!("copying {}", self.root.busybox().display()))?;
        let list = Command::new(&busybox)
            .arg("--list")
            .output()
            .context("listing busybox's applets")?;
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            let link = tree.join("bin").join(applet);
            if !link.exists() {
                symlink("busybox", &link)?;
            }
        }
        std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(tree.join("etc/group"), "root:x:0:\n")?;
        let runscript = tree.join(".singularity.d/runscript");
        std::fs::write(
            &runscript,
            format!("#!/bin/sh\nexec {} \"$@\"\n", workload::IN_IMAGE),
        )?;
        std::fs::set_permissions(&runscript, std::fs::Permissions::from_mode(0o755))?;
        Ok(tree)
    }

    /// `apptainer <subcommand> [--no-privs as root in the cached root]
    /// <flags> <rest>`.
    fn apptainer_args(
        &self,
        who: As,
        subcommand: &[&str],
        flags: &[&str],
        rest: &[String],
    ) -> Vec<String> {
        apptainer_argv(
            who == As::Root && !self.root.is_native(),
            subcommand,
            flags,
            rest,
        )
    }

    /// The command line `apptainer exec <flags> <target> <workload>` in the
    /// root, as `who` (`target`: an image inside the root, or
    /// `instance://<name>`).
    pub fn exec_command(&self, who: As, target: &str, flags: &[&str], w: &Workload) -> Vec<String> {
        let mut rest = vec![target.to_string()];
        rest.extend(w.argv());
        self.apptainer_args(who, &["exec"], flags, &rest)
    }

    /// Starts `apptainer exec <flags> <image> /bin/workload ...`. The pid
    /// of what it returns is the starter's ("Apptainer runtime parent").
    pub fn exec(
        &self,
        who: As,
        image: &Image,
        flags: &[&str],
        w: &Workload,
    ) -> anyhow::Result<Running> {
        self.spawn(who, &self.exec_command(who, &image.inside, flags, w))
    }

    /// Starts `apptainer run <flags> <image> <workload arguments>` (the
    /// image's runscript execs the workload).
    pub fn run(
        &self,
        who: As,
        image: &Image,
        flags: &[&str],
        w: &Workload,
    ) -> anyhow::Result<Running> {
        let mut rest = vec![image.inside.clone()];
        rest.extend(w.args());
        self.spawn(who, &self.apptainer_args(who, &["run"], flags, &rest))
    }

    /// `apptainer instance start <flags> <image> <name>`; returns once the
    /// instance runs. Its master (`Apptainer instance: <user> [<name>]`)
    /// is not a child of the test: it is stopped by [`Instance::stop`], or
    /// when the [`Instance`] is dropped.
    pub fn instance_start(
        &self,
        who: As,
        image: &Image,
        flags: &[&str],
        name: &str,
    ) -> anyhow::Result<Instance<'_>> {
        let args = self.apptainer_args(
            who,
            &["instance", "start"],
            flags,
            &[image.inside.clone(), name.to_string()],
        );
        self.run_command(who, &args, crate::host::scaled(COMMAND_TIMEOUT))
            .with_context(|| format!("starting instance {name}"))?;
        let mut instance = Instance {
            session: self,
            who,
            name: name.to_string(),
            init_pid: 0,
            master_pid: 0,
            stopped: false,
        };
        let listed = self.run_command(
            who,
            &["apptainer", "instance", "list", "--json", name],
            crate::host::scaled(crate::host::scaled(COMMAND_TIMEOUT)),
        )?;
        instance.init_pid = parse_instance_pid(&listed.stdout, name)?;
        instance.master_pid = parent_pid(instance.init_pid)?;
        Ok(instance)
    }
}

/// A running instance.
pub struct Instance<'s> {
    session: &'s Session,
    who: As,
    pub name: String,
    /// The instance's init (`appinit`), in the container.
    pub init_pid: u32,
    /// Its parent, the starter's master: `Apptainer instance: <user> [<name>]`.
    pub master_pid: u32,
    stopped: bool,
}

impl Instance<'_> {
    /// `instance://<name>`.
    pub fn target(&self) -> String {
        format!("instance://{}", self.name)
    }

    /// Starts `apptainer exec <flags> instance://<name> /bin/workload ...`
    /// (a starter that joins the instance).
    pub fn exec(&self, flags: &[&str], w: &Workload) -> anyhow::Result<Running> {
        self.session.spawn(
            self.who,
            &self
                .session
                .exec_command(self.who, &self.target(), flags, w),
        )
    }

    /// `apptainer instance stop <name>`.
    pub fn stop(mut self) -> anyhow::Result<Finished> {
        self.stopped = true;
        self.session
            .run_command(
                self.who,
                &["apptainer", "instance", "stop", &self.name],
                crate::host::scaled(crate::host::scaled(COMMAND_TIMEOUT)),
            )
            .with_context(|| format!("stopping instance {}", self.name))
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let _ = self.session.run_command(
            self.who,
            &["apptainer", "instance", "stop", "--force", &self.name],
            crate::host::scaled(crate::host::scaled(COMMAND_TIMEOUT)),
        );
    }
}

#[derive(Deserialize)]
struct InstanceList {
    instances: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    instance: String,
    pid: u32,
}

/// `apptainer <subcommand> [--no-privs] <flags> <rest>`.
fn apptainer_argv(
    no_privs: bool,
    subcommand: &[&str],
    flags: &[&str],
    rest: &[String],
) -> Vec<String> {
    let mut v = vec!["apptainer".to_string()];
    v.extend(subcommand.iter().map(|s| s.to_string()));
    if no_privs {
        v.push("--no-privs".into());
    }
    v.extend(flags.iter().map(|s| s.to_string()));
    v.extend(rest.iter().cloned());
    v
}

/// The pid of instance `name` in `apptainer instance list --json`.
fn parse_instance_pid(json: &str, name: &str) -> anyhow::Result<u32> {
    let list: InstanceList = serde_json::from_str(json)
        .with_context(|| format!("reading `apptainer instance list --json`: {json}"))?;
    list.instances
        .iter()
        .find(|i| i.instance == name)
        .map(|i| i.pid)
        .with_context(|| format!("instance {name} is not listed: {json}"))
}

/// The parent of `pid`, from /proc/<pid>/stat.
fn parent_pid(pid: u32) -> anyhow::Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no parent in /proc/{pid}/stat: {stat}"))
}

/// `text` (an apptainer.conf) with `key = value`: the first line setting
/// `key` is replaced, later ones dropped; appended if none.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        let sets = line
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !line.trim_start().starts_with('#'));
        if sets {
            if !done {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !done {
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_a_key_of_the_config() {
        let conf = "# allow monitoring = yes\nallow monitoring = no\nmount proc = yes\n";
        assert_eq!(
            set_key(conf, "allow monitoring", "yes"),
            "# allow monitoring = yes\nallow monitoring = yes\nmount proc = yes\n"
        );
        assert_eq!(set_key("a = 1\n", "b", "2"), "a = 1\nb = 2\n");
    }

    #[test]
    fn reads_the_instance_list() {
        let json = r#"{"instances":[{"instance":"a","pid":10,"img":"/work/x.sif","ip":""},{"instance":"b","pid":20}]}"#;
        assert_eq!(parse_instance_pid(json, "b").unwrap(), 20);
        assert!(parse_instance_pid(json, "c").is_err());
        assert!(parse_instance_pid("", "c").is_err());
        assert_eq!(
            parent_pid(std::process::id()).unwrap(),
            std::os::unix::process::parent_id()
        );
    }

    #[test]
    fn the_apptainer_command_line() {
        let w = Workload::new().children(2);
        assert_eq!(
            apptainer_argv(
                true,
                &["exec"],
                &["--memory", "64M"],
                &["/work/i.sif".into()]
            ),
            [
                "apptainer",
                "exec",
                "--no-privs",
                "--memory",
                "64M",
                "/work/i.sif"
            ]
        );
        let mut rest = vec!["instance://x".to_string()];
        rest.extend(w.argv());
        assert_eq!(
            apptainer_argv(false, &["exec"], &[], &rest),
            [
                "apptainer",
                "exec",
                "instance://x",
                "/bin/workload",
                "-k",
                "2"
            ]
        );
    }
}
