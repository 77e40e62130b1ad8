//! The VMs' root filesystem, one initramfs for every kernel and layout:
//! busybox for the init script, the tools the tests run (sh, true, sleep,
//! unshare, python3 with its standard library) with the shared libraries `ldd`
//! names, and the test binaries and the agent at the absolute paths
//! compiled into the tests, with the starter simulator beside them where
//! the tests look for it (apptheus-testkit's `sim`), debug info stripped.
//! Rebuilt only when an input changes (size, mtime or content).
use std::{
    collections::BTreeMap,
    hash::{Hash as _, Hasher as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::cpio;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
enum Source {
    Host(PathBuf),
    /// A host file copied without its debug info.
    Stripped(PathBuf),
    Data(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Node {
    Dir(u32),
    File(Source, u32),
    Symlink(PathBuf),
    CharDevice(u32, u32),
}

/// Busybox applets the init script uses.
const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "mkdir", "rmdir", "cat", "echo", "ln", "ls", "poweroff", "sleep",
    "date", "ip", "dmesg", "grep", "awk", "tail", "head", "uname", "tr", "sed", "stat", "rm",
    "sync", "wc", "find", "ps",
];

/// What the tests run by path, besides python3 (grep the tests for
/// `Command::new` when adding one).
const TOOLS: &[&str] = &["/bin/sh", "/bin/true", "/bin/sleep", "/usr/bin/unshare"];

/// Parts of python's standard library the tests never import.
const PYTHON_SKIP: &[&str] = &[
    "config-",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "idlelib",
    "tkinter",
    "ensurepip",
    "test",
    "site-packages",
    "dist-packages",
    "turtledemo",
    "unittest",
];

#[derive(Default)]
pub struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    fn insert(&mut self, path: &Path, node: Node) {
        self.nodes.entry(path.to_path_buf()).or_insert(node);
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.insert(Path::new(path), Node::Dir(perm));
    }

    pub fn data(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        self.nodes.insert(
            PathBuf::from(path),
            Node::File(Source::Data(data.into()), perm),
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(Path::new(path), Node::Symlink(PathBuf::from(target)));
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.insert(Path::new(path), Node::CharDevice(major, minor));
    }

    /// A host file at `at` in the image, without its debug info.
    pub fn stripped(&mut self, host: &Path, at: &Path) -> anyhow::Result<()> {
        let md = std::fs::metadata(host).with_context(|| format!("{}", host.display()))?;
        self.nodes.insert(
            at.to_path_buf(),
            Node::File(
                Source::Stripped(host.to_path_buf()),
                md.permissions().mode() & 0o7777,
            ),
        );
        Ok(())
    }

    /// Copies a host path in at the same place, recreating every symlink
    /// met on the way (merged-/usr links, python3 -> python3.11, ...).
    pub fn host(&mut self, path: &Path) -> anyhow::Result<()> {
        self.host_inner(path, 0)
    }

    fn host_inner(&mut self, path: &Path, depth: usize) -> anyhow::Result<()> {
        if depth > 40 {
            bail!("too many symlinks resolving {}", path.display());
        }
        let path = normalize(path);
        let mut cur = PathBuf::from("/");
        let parts: Vec<Component> = path.components().skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            cur.push(part);
            let md = std::fs::symlink_metadata(&cur)
                .with_context(|| format!("{} (needed in the VM)", cur.display()))?;
            if md.file_type().is_symlink() {
                let target = std::fs::read_link(&cur)?;
                self.insert(&cur, Node::Symlink(target.clone()));
                let mut resolved = cur.parent().unwrap_or(Path::new("/")).join(target);
                for rest in &parts[i + 1..] {
                    resolved.push(rest);
                }
                return self.host_inner(&resolved, depth + 1);
            }
            let perm = md.permissions().mode() & 0o7777;
            if md.is_dir() {
                self.insert(&cur, Node::Dir(perm));
            } else if i + 1 == parts.len() {
                self.insert(&cur, Node::File(Source::Host(cur.clone()), perm));
            } else {
                bail!("{} is not a directory", cur.display());
            }
        }
        Ok(())
    }

    /// A host directory and everything below it, but names starting with
    /// any of `skip`.
    pub fn host_tree(&mut self, dir: &Path, skip: &[&str]) -> anyhow::Result<()> {
        self.host(dir)?;
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if skip.iter().any(|s| name.starts_with(s)) {
                continue;
            }
            let path = e.path();
            if e.file_type()?.is_dir() {
                self.host_tree(&path, skip)?;
            } else {
                self.host(&path)?;
            }
        }
        Ok(())
    }

    /// An executable or library with the shared libraries it needs.
    pub fn elf(&mut self, path: &Path) -> anyhow::Result<()> {
        self.host(path)?;
        self.libraries(path, true)
    }

    /// The shared libraries `ldd` names for `path`; with `required`, a
    /// library ldd cannot find is an error.
    pub fn libraries(&mut self, path: &Path, required: bool) -> anyhow::Result<()> {
        let out = Command::new("ldd")
            .arg(path)
            .output()
            .context("running ldd")?;
        // A static executable: "not a dynamic executable", exit 1.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if line.contains("not found") {
                if required {
                    bail!("{}: ldd says {line}", path.display());
                }
                continue;
            }
            let lib = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let lib = lib.split_whitespace().next().unwrap_or("");
            if lib.starts_with('/') {
                self.host(Path::new(lib))?;
            }
        }
        Ok(())
    }

    /// Adds a directory for every missing ancestor.
    fn complete(&mut self) {
        let missing: Vec<PathBuf> = self
            .nodes
            .keys()
            .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
            .filter(|a| a != Path::new("/") && !self.nodes.contains_key(a))
            .collect();
        for a in missing {
            self.nodes.entry(a).or_insert(Node::Dir(0o755));
        }
    }

    /// What the image depends on: every path, kind and source (size and
    /// mtime for host files).
    fn fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        for (path, node) in &self.nodes {
            path.hash(&mut h);
            match node {
                Node::Dir(p) => (0u8, p).hash(&mut h),
                Node::Symlink(t) => (1u8, t).hash(&mut h),
                Node::CharDevice(a, b) => (2u8, a, b).hash(&mut h),
                Node::File(src, perm) => {
                    (3u8, perm).hash(&mut h);
                    match src {
                        Source::Data(d) => d.hash(&mut h),
                        Source::Host(p) | Source::Stripped(p) => {
                            p.hash(&mut h);
                            if let Ok(md) = std::fs::metadata(p) {
                                (md.len(), md.mtime(), md.mtime_nsec()).hash(&mut h);
                            }
                        }
                    }
                }
            }
        }
        h.finish()
    }

    /// Writes the initramfs to `out` unless an identical one is there;
    /// `work` holds stripped copies. Returns whether it was (re)built.
    pub fn write(mut self, out: &Path, work: &Path) -> anyhow::Result<bool> {
        self.complete();
        let stamp = out.with_extension("stamp");
        let fp = format!("{:016x}\n", self.fingerprint());
        if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == fp) {
            return Ok(false);
        }
        std::fs::create_dir_all(work)?;
        let tmp = out.with_extension("tmp");
        let file = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
        let mut w = cpio::Writer::new(std::io::BufWriter::with_capacity(1 << 20, file));
        for (i, (path, node)) in self.nodes.iter().enumerate() {
            let name = path.to_string_lossy();
            match node {
                Node::Dir(perm) => w.dir(&name, *perm)?,
                Node::Symlink(t) => w.symlink(&name, &t.to_string_lossy())?,
                Node::CharDevice(a, b) => w.char_device(&name, 0o600, *a, *b)?,
                Node::File(src, perm) => {
                    let data = match src {
                        Source::Data(d) => d.clone(),
                        Source::Host(p) => {
                            std::fs::read(p).with_context(|| format!("{}", p.display()))?
                        }
                        Source::Stripped(p) => strip(p, &work.join(format!("{i}")))?,
                    };
                    w.file(&name, *perm, &data)?;
                }
            }
        }
        w.finish()?;
        std::fs::rename(&tmp, out)?;
        std::fs::write(&stamp, fp)?;
        let _ = std::fs::remove_dir_all(work);
        Ok(true)
    }
}

/// The bytes of `path` without debug info (`strip --strip-debug`, which
/// keeps the symbols for backtraces); the file itself if strip fails.
fn strip(path: &Path, tmp: &Path) -> anyhow::Result<Vec<u8>> {
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    let data = std::fs::read(if ok { tmp } else { path })
        .with_context(|| format!("{}", path.display()))?;
    let _ = std::fs::remove_file(tmp);
    Ok(data)
}

/// Removes `.` and resolves `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// What goes in besides the tests.
pub struct Inputs<'a> {
    pub busybox: &'a Path,
    pub init: &'a str,
    /// (name, absolute path) of each test binary, in running order.
    pub tests: &'a [(String, PathBuf)],
    /// Executables the tests start by absolute path (agent, simulator).
    pub executables: &'a [PathBuf],
    /// Arguments for every test binary, already shell-quoted.
    pub test_args: &'a str,
}

/// Builds (or re-uses) the initramfs at `out`.
pub fn build(inputs: &Inputs, out: &Path) -> anyhow::Result<bool> {
    let mut t = Tree::default();
    for d in ["/proc", "/sys", "/dev", "/run", "/root", "/etc", "/vmtest"] {
        t.dir(d, 0o755);
    }
    t.dir("/tmp", 0o1777);
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    t.char_device("/dev/console", 5, 1);
    t.data("/init", 0o755, inputs.init);
    t.data(
        "/opt/busybox/busybox",
        0o755,
        std::fs::read(inputs.busybox)?,
    );
    for a in APPLETS {
        t.symlink(&format!("/opt/busybox/bin/{a}"), "../busybox");
    }
    t.data(
        "/etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    t.data("/etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n");
    t.data(
        "/etc/nsswitch.conf",
        0o644,
        "passwd: files\ngroup: files\nhosts: files\n",
    );
    // The VM's own name resolves too (Slurm's daemons and munge look it up).
    t.data(
        "/etc/hosts",
        0o644,
        "127.0.0.1 localhost apptheus-vm\n::1 localhost\n",
    );
    t.data("/etc/hostname", 0o644, "apptheus-vm\n");

    for tool in TOOLS {
        t.elf(Path::new(tool))
            .with_context(|| format!("{tool} is needed in the VM"))?;
    }
    python(&mut t)?;
    slurm(&mut t)?;

    let mut plan = String::new();
    for (name, path) in inputs.tests {
        t.stripped(path, path)?;
        t.libraries(path, true)?;
        plan.push_str(&format!("{name} {}\n", path.display()));
    }
    for exe in inputs.executables {
        t.stripped(exe, exe)?;
        t.libraries(exe, true)?;
        if exe
            .file_name()
            .is_some_and(|n| n == apptheus_testkit::sim::STARTER_SIM)
        {
            // The init script calibrates the time scale with it.
            t.symlink("/vmtest/calibrate", &exe.to_string_lossy());
        }
    }
    t.data("/vmtest/plan", 0o644, plan);
    t.data("/vmtest/args", 0o644, inputs.test_args);
    let work = out.with_extension("strip.d");
    t.write(out, &work)
}

/// Slurm's daemons, the client commands the tests run and every plugin,
/// and munge (Debian's slurmctld, slurmd, slurm-client, munge: `scripts/
/// setup.sh --test` installs them), for the tests that start a real
/// one-node Slurm (apptheus-testkit's `slurm::Cluster`). Without them those
/// tests fail, naming the package.
fn slurm(t: &mut Tree) -> anyhow::Result<()> {
    const PROGRAMS: &[&str] = &[
        "/usr/sbin/munged",
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/sbin/slurmstepd",
        "/usr/bin/sbatch",
        "/usr/bin/scontrol",
        "/usr/bin/scancel",
        "/usr/bin/squeue",
    ];
    const PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/slurm-wlm";
    if !PROGRAMS.iter().all(|p| Path::new(p).exists()) || !Path::new(PLUGINS).is_dir() {
        eprintln!(
            "vm-test: Slurm or munge is not installed here (scripts/setup.sh --test): the Slurm tests will fail"
        );
        return Ok(());
    }
    for p in PROGRAMS {
        t.elf(Path::new(p))?;
    }
    t.host_tree(Path::new(PLUGINS), &[])?;
    for e in std::fs::read_dir(PLUGINS)?.flatten() {
        // A plugin whose library is missing is one the tests do not load.
        t.libraries(&e.path(), false)?;
    }
    Ok(())
}

/// python3 and the parts of its standard library the socket tests import.
fn python(t: &mut Tree) -> anyhow::Result<()> {
    let exe = Path::new("/usr/bin/python3");
    if !exe.exists() {
        eprintln!(
            "vm-test: no /usr/bin/python3 here (Debian package python3): the socket tests will fail"
        );
        return Ok(());
    }
    t.elf(exe)?;
    let real = std::fs::canonicalize(exe)?;
    let version = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stdlib = Path::new("/usr/lib").join(&version);
    if !stdlib.is_dir() {
        bail!("python's standard library {} is missing", stdlib.display());
    }
    t.host_tree(&stdlib, PYTHON_SKIP)?;
    // Extension modules: their libraries, where the host has them.
    if let Ok(rd) = std::fs::read_dir(stdlib.join("lib-dynload")) {
        for e in rd.flatten() {
            t.libraries(&e.path(), false)?;
        }
    }
    Ok(())
}
