//! The systemd cell of `cargo xtask vm-test` (`--layout systemd`): a
//! compute node as sites run them today. Debian's unstable suite with
//! systemd as PID 1 on pure cgroup v2, logind and D-Bus, an ordinary user
//! with a lingering user manager, Apptainer with its shipped configuration
//! (`systemd cgroups = yes`), Slurm (cgroup/v2, slurmctld, slurmd and munge
//! as services), booted with Debian's 6.12 cloud kernel whose modules it
//! carries. The agent comes from this build's Debian package (`cargo xtask
//! package`), installed at boot and run by systemd through its unit; the
//! test binaries (`apptheus/tests/systemd_node.rs`) drive it from a
//! oneshot service that starts after multi-user.target (`run.sh`).
//!
//! The root (`root.sh`, about 5 minutes with debootstrap) is cached as a
//! compressed cpio archive in `<cache>/systemd-node/`, with a stamp naming
//! the recipe's hash and the kernel release: rebuilt when either changes
//! or the archive is missing. What changes with every build (the .deb, the
//! test binaries, the static workload, the driver) goes into a second,
//! small archive; the kernel unpacks both, one after the other.
use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{cpio, kernels::Kernel, rootfs::Tree};

/// The kernel (matrix row) the node boots: its modules are in the root.
pub const KERNEL: &str = "6.12";
/// The recipe of the root (a change rebuilds the cached root).
const RECIPE: &str = include_str!("root.sh");
/// The driver inside the VM.
const DRIVER: &str = include_str!("run.sh");
/// The unit that starts the driver.
const UNIT: &str = "\
[Unit]
Description=apptheus tests of the systemd node (cargo xtask vm-test)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/opt/vmtest/run
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
";
/// Bump when the packing below changes what the archive holds.
const PACKING: u32 = 1;
const MIRROR: &str = "http://deb.debian.org/debian";
/// Guest memory: the root unpacked (about 1 GiB) lives in it.
pub const MEMORY_MIB: u32 = 4096;

/// FNV-1a, 64 bits: a hash that is the same on every build of xtask.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The stamp a root built now by this recipe for `kernel` carries.
fn wanted_stamp(kernel: &Kernel, mirror: &str) -> String {
    format!(
        "recipe={:016x}-{PACKING}\nkernel={}\nmirror={mirror}\n",
        fnv1a(RECIPE.as_bytes()),
        kernel.release
    )
}

/// Whether a stamp's recipe, kernel and mirror are the wanted ones (the
/// stamp adds package versions and a build time after them).
fn stamp_matches(stamp: &str, wanted: &str) -> bool {
    stamp.starts_with(wanted)
}

/// The mirror the root is built from (APPTHEUS_DEBIAN_MIRROR, as
/// scripts/apptainer-root.sh reads it).
fn mirror() -> String {
    std::env::var("APPTHEUS_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| MIRROR.to_string())
}

/// The cached root, as a compressed cpio archive.
pub struct Root {
    pub archive: PathBuf,
    /// Its stamp: recipe, kernel, the versions of systemd, Apptainer and
    /// Slurm in it, when it was built.
    pub stamp: String,
}

/// The cached root for `kernel`, built (about 5 minutes) when missing,
/// stale, or `rebuild`. The caller holds the cache's lock.
pub fn root(cache: &Path, kernel: &Kernel, rebuild: bool) -> anyhow::Result<Root> {
    let dir = cache.join("systemd-node");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let archive = dir.join("root.cpio.zst");
    let stamp_file = dir.join("stamp");
    let mirror = mirror();
    let wanted = wanted_stamp(kernel, &mirror);
    if !rebuild
        && archive.is_file()
        && let Ok(stamp) = std::fs::read_to_string(&stamp_file)
        && stamp_matches(&stamp, &wanted)
    {
        return Ok(Root { archive, stamp });
    }
    for tool in ["debootstrap", "zstd"] {
        if !Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            bail!("{tool} is needed to build the systemd node's root: apt-get install {tool}");
        }
    }
    let modules = super::kernels::modules(cache, kernel)?;
    let tree = dir.join("root.partial");
    remove_tree(&tree)?;
    let log = dir.join("build.log");
    let script = dir.join("root.sh");
    std::fs::write(&script, RECIPE)?;
    eprintln!(
        "vm-test: building the systemd node's root (debootstrap of Debian sid, about 5 minutes; log: {})",
        log.display()
    );
    let t = std::time::Instant::now();
    let out = std::fs::File::create(&log)?;
    let status = Command::new("bash")
        .arg(&script)
        .arg(&tree)
        .arg(&mirror)
        .arg(&modules)
        .arg(&kernel.release)
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running bash")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let _ = remove_tree(&tree);
        bail!(
            "building the systemd node's root failed ({status}); the unstable suite changes daily: \
             retry later or set APPTHEUS_DEBIAN_MIRROR. Log {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let versions = versions(&tree)?;
    let partial = archive.with_extension("partial");
    pack(&tree, &partial)?;
    std::fs::rename(&partial, &archive)?;
    let stamp = format!(
        "{wanted}{versions}built={}\n",
        String::from_utf8_lossy(
            &Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()?
                .stdout
        )
        .trim()
    );
    std::fs::write(&stamp_file, &stamp)?;
    remove_tree(&tree)?;
    eprintln!(
        "vm-test: systemd node's root built in {:.0} s ({} MiB)",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&archive)?.len() >> 20
    );
    Ok(Root { archive, stamp })
}

/// `name=version` lines of the packages that make the node what it is.
fn versions(tree: &Path) -> anyhow::Result<String> {
    let out = Command::new("chroot")
        .arg(tree)
        .args(["dpkg-query", "-W", "-f", "${Package}=${Version}\\n"])
        .args(["systemd", "apptainer", "slurmd", "munge"])
        .output()
        .context("running dpkg-query in the root")?;
    if !out.status.success() {
        bail!(
            "dpkg-query in the root failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes a partial root, never crossing into a file system mounted
/// below it (an interrupted debootstrap leaves proc and sys mounted).
fn remove_tree(tree: &Path) -> anyhow::Result<()> {
    if !tree.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(tree))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in below {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    let status = Command::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(tree)
        .status()?;
    if !status.success() {
        bail!("removing {} failed ({status})", tree.display());
    }
    Ok(())
}

/// Packs `tree` into a zstd-compressed newc cpio archive at `out`, owners
/// and modes kept. /dev, /proc, /sys and /run are left empty (the kernel
/// and systemd mount them) but for /dev/console, which the kernel opens
/// for init before anything is mounted.
fn pack(tree: &Path, out: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut zstd = Command::new("zstd")
        .args(["-q", "-3", "-T0", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running zstd")?;
    let stdin = zstd.stdin.take().context("zstd's stdin")?;
    let mut w = cpio::Writer::new(std::io::BufWriter::with_capacity(1 << 20, stdin));
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries.into_iter().rev() {
            let rel = path.strip_prefix(tree)?;
            let name = rel.to_string_lossy();
            let md = std::fs::symlink_metadata(&path)?;
            let ft = md.file_type();
            let owner = (md.uid(), md.gid());
            if ft.is_dir() {
                w.with_owner(&name, md.mode(), owner, &[])?;
                let empty = ["dev", "proc", "sys", "run"].contains(&name.as_ref());
                if !empty {
                    stack.push(path);
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                w.with_owner(
                    &name,
                    md.mode(),
                    owner,
                    target.as_os_str().as_encoded_bytes(),
                )?;
            } else if ft.is_file() {
                let data =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                w.with_owner(&name, md.mode(), owner, &data)?;
            }
            // Sockets, fifos and device nodes are made at run time.
        }
    }
    w.char_device("dev/console", 0o600, 5, 1)?;
    let mut inner = w.finish()?;
    inner.flush()?;
    drop(inner);
    let status = zstd.wait()?;
    if !status.success() {
        bail!("zstd failed ({status})");
    }
    Ok(())
}

/// What a run puts into the node besides the cached root.
pub struct RunInputs<'a> {
    /// The agent's Debian package.
    pub deb: &'a Path,
    /// The static workload (apptheus-testkit's `workload.c`, compiled).
    pub workload: &'a Path,
    /// The starter simulator: the driver calibrates the time scale with it.
    pub starter_sim: &'a Path,
    /// (name, absolute path) of each test binary.
    pub tests: &'a [(String, PathBuf)],
    /// Arguments for every test binary, already shell-quoted.
    pub test_args: &'a str,
}

/// The per-run archive at `out` (rebuilt when an input changed).
fn run_archive(inputs: &RunInputs, out: &Path) -> anyhow::Result<()> {
    let mut t = Tree::default();
    for d in ["/etc", "/etc/systemd", "/etc/systemd/system", "/opt"] {
        t.dir(d, 0o755);
    }
    t.dir("/tmp", 0o1777);
    t.dir("/etc/systemd/system/multi-user.target.wants", 0o755);
    t.dir("/opt/vmtest", 0o755);
    t.data("/opt/vmtest/run", 0o755, DRIVER);
    t.data("/etc/systemd/system/apptheus-vmtest.service", 0o644, UNIT);
    t.symlink(
        "/etc/systemd/system/multi-user.target.wants/apptheus-vmtest.service",
        "../apptheus-vmtest.service",
    );
    t.data(
        "/opt/vmtest/apptheus.deb",
        0o644,
        std::fs::read(inputs.deb).with_context(|| format!("{}", inputs.deb.display()))?,
    );
    t.data(
        "/opt/vmtest/workload",
        0o755,
        std::fs::read(inputs.workload).with_context(|| format!("{}", inputs.workload.display()))?,
    );
    t.stripped(inputs.starter_sim, Path::new("/opt/vmtest/calibrate"))?;
    // Not at their paths on the host: systemd mounts its own /tmp (and
    // /run) over the initramfs', which would hide a clone's build there.
    t.dir("/opt/vmtest/tests", 0o755);
    let mut plan = String::new();
    for (name, path) in inputs.tests {
        let file = path
            .file_name()
            .with_context(|| format!("test binary {} has no file name", path.display()))?;
        let inside = Path::new("/opt/vmtest/tests").join(file);
        t.stripped(path, &inside)?;
        plan.push_str(&format!("{name} {}\n", inside.display()));
    }
    t.data("/opt/vmtest/plan", 0o644, plan);
    t.data("/opt/vmtest/args", 0o644, inputs.test_args);
    t.write(out, &out.with_extension("strip.d"))?;
    Ok(())
}

/// The node's initramfs at `out`: the cached root's archive, then this
/// run's (the kernel unpacks concatenated archives in order; an
/// uncompressed one must start 4-byte aligned, zero bytes between are
/// skipped).
pub fn initramfs(root: &Root, inputs: &RunInputs, out: &Path) -> anyhow::Result<()> {
    let run = out.with_extension("run.cpio");
    run_archive(inputs, &run)?;
    let tmp = out.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut r = std::fs::File::open(&root.archive)?;
        let n = std::io::copy(&mut r, &mut f)?;
        f.write_all(&[0u8; 3][..((4 - n % 4) % 4) as usize])?;
        std::io::copy(&mut std::fs::File::open(&run)?, &mut f)?;
        f.flush()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(release: &str) -> Kernel {
        Kernel {
            name: KERNEL.into(),
            release: release.into(),
            vmlinuz: PathBuf::from("/nowhere"),
        }
    }

    #[test]
    fn the_stamp_names_recipe_kernel_and_mirror() {
        let wanted = wanted_stamp(&kernel("6.12.1-cloud-amd64"), MIRROR);
        let built = format!("{wanted}systemd=262-1\napptainer=1.4.5-2\nbuilt=2026-12-06\n");
        assert!(stamp_matches(&built, &wanted));
        // Another kernel: its modules are not in the root.
        assert!(!stamp_matches(
            &built,
            &wanted_stamp(&kernel("6.12.2-cloud-amd64"), MIRROR)
        ));
        assert!(!stamp_matches(
            &built,
            &wanted_stamp(&kernel("6.12.1-cloud-amd64"), "http://other/debian")
        ));
        assert!(!stamp_matches("", &wanted));
        assert!(wanted.contains(&format!("{:016x}", fnv1a(RECIPE.as_bytes()))));
    }

    #[test]
    fn fnv1a_is_the_reference_function() {
        // Test vectors of the FNV reference implementation.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn packs_owners_modes_and_links() {
        use std::os::unix::fs::{chown, symlink};
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc/munge")).unwrap();
        std::fs::create_dir_all(root.join("dev/pts")).unwrap();
        std::fs::write(root.join("etc/munge/munge.key"), b"secret").unwrap();
        std::fs::set_permissions(
            root.join("etc/munge/munge.key"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        let owned = apptheus_testkit::is_root();
        if owned {
            chown(root.join("etc/munge/munge.key"), Some(1234), Some(4321)).unwrap();
        }
        let out = d.path().join("a.cpio.zst");
        pack(&root, &out).unwrap();
        let raw = Command::new("zstd")
            .args(["-d", "-c"])
            .arg(&out)
            .output()
            .unwrap()
            .stdout;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("etc/munge/munge.key\0"));
        assert!(text.contains("secret"));
        assert!(text.contains("bin\0"));
        assert!(text.contains("dev/console\0"));
        assert!(!text.contains("dev/pts"), "/dev is left empty");
        // The key's header: mode 0100400, then uid and gid.
        let at = text.find("etc/munge/munge.key\0").unwrap();
        let header = &text[at - 110..at];
        assert_eq!(&header[14..22], format!("{:08x}", 0o100400));
        if owned {
            assert_eq!(&header[22..30], format!("{:08x}", 1234));
            assert_eq!(&header[30..38], format!("{:08x}", 4321));
        }
    }
}
