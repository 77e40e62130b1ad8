//! The kernels of the matrix: Debian's cloud kernels, fetched as packages
//! with apt-get (a private sources list and state directory per suite, so
//! the system's apt configuration is neither used nor touched) and kept in
//! the cache; and the host's own kernel when /boot has its image.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Held while kernels and busybox are looked up or fetched: the cache is
/// shared by every checkout on the machine (and by concurrent runs).
pub struct CacheLock {
    /// The lock lives as long as the open file.
    _file: std::fs::File,
}

/// Waits for, and takes, the cache's lock (released on drop).
pub fn lock(cache: &Path) -> anyhow::Result<CacheLock> {
    use std::os::fd::AsRawFd as _;
    let path = cache.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(CacheLock { _file: file })
}

/// A bootable kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The matrix row: "5.10", "6.1", "6.12" or "host".
    pub name: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
}

struct Debian {
    name: &'static str,
    suite: &'static str,
    /// The meta package whose dependency is the newest such kernel.
    meta: &'static str,
}

const DEBIAN: [Debian; 3] = [
    Debian {
        name: "5.10",
        suite: "bullseye",
        meta: "linux-image-cloud-amd64",
    },
    Debian {
        name: "6.1",
        suite: "bookworm",
        meta: "linux-image-cloud-amd64",
    },
    Debian {
        name: "6.12",
        suite: "bookworm",
        meta: "linux-image-6.12-cloud-amd64",
    },
];

/// Every kernel the matrix knows, in order.
pub const NAMES: [&str; 4] = ["5.10", "6.1", "6.12", "host"];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// apt-get and apt-cache with a private configuration for one suite.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(cache: &Path, suite: &str) -> anyhow::Result<Self> {
        if !Path::new(KEYRING).exists() {
            bail!("{KEYRING} is missing: install Debian's debian-archive-keyring package");
        }
        let dir = cache.join("apt").join(suite);
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let sources = [
            ("debian", suite.to_string()),
            ("debian", format!("{suite}-updates")),
            ("debian-security", format!("{suite}-security")),
        ]
        .iter()
        .map(|(archive, dist)| {
            format!("deb [signed-by={KEYRING}] http://deb.debian.org/{archive} {dist} main\n")
        })
        .collect::<String>();
        std::fs::write(dir.join("sources.list"), sources)?;
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = |p: &str| self.dir.join(p).display().to_string();
        vec![
            format!("-oDir::Etc::SourceList={}", d("sources.list")),
            format!("-oDir::Etc::SourceParts={}", d("sources.list.d")),
            format!("-oDir::Etc::PreferencesParts={}", d("preferences.d")),
            format!("-oDir::Etc::Preferences={}", d("preferences")),
            format!("-oDir::State::Lists={}", d("lists")),
            format!("-oDir::Cache={}", d("cache")),
            // The cache is root's; apt's _apt sandbox user could not write it.
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    fn has_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists")).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
    }

    /// Downloads the package lists if they are not there yet (or `refresh`).
    pub fn update(&self, refresh: bool) -> anyhow::Result<()> {
        if self.has_lists() && !refresh {
            return Ok(());
        }
        let status = Command::new("apt-get")
            .args(self.options())
            .args(["-qq", "update"])
            .status()
            .context("running apt-get (Debian's package tool is needed to fetch kernels)")?;
        if !status.success() {
            bail!(
                "apt-get update for {} failed ({status})",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// The package a meta package depends on (the newest kernel of a series).
    pub fn resolve(&self, meta: &str) -> anyhow::Result<String> {
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(["depends", meta])
            .output()
            .context("running apt-cache")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Depends:")
                    .map(|p| p.trim().to_string())
            })
            .filter(|p| !p.is_empty() && !p.starts_with('<'))
            .with_context(|| {
                format!(
                    "apt-cache depends {meta} named no package: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// Downloads `package` into `into` and returns the .deb's path.
    pub fn download(&self, package: &str, into: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        let status = Command::new("apt-get")
            .args(self.options())
            .args(["-qq", "download", package])
            .current_dir(into)
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!("apt-get download {package} failed ({status})");
        }
        let prefix = format!("{package}_");
        let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(into)?
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        debs.sort();
        debs.pop().map(|(_, p)| p).with_context(|| {
            format!(
                "apt-get download left no {prefix}*.deb in {}",
                into.display()
            )
        })
    }
}

/// Unpacks a .deb into `dir` (emptied first).
pub fn extract(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    Ok(())
}

/// The kernel `name` (one of [`NAMES`]): from the cache, or fetched.
/// None for "host" when /boot has no image of the running kernel.
pub fn get(cache: &Path, name: &str, refresh: bool) -> anyhow::Result<Option<Kernel>> {
    if name == "host" {
        return Ok(host());
    }
    let Some(deb) = DEBIAN.iter().find(|d| d.name == name) else {
        bail!("unknown kernel {name:?}; known: {}", NAMES.join(", "));
    };
    let dir = cache.join("kernels").join(name);
    let vmlinuz = dir.join("vmlinuz");
    let release_file = dir.join("release");
    if !refresh
        && vmlinuz.exists()
        && let Ok(release) = std::fs::read_to_string(&release_file)
    {
        return Ok(Some(Kernel {
            name: name.into(),
            release: release.trim().into(),
            vmlinuz,
        }));
    }
    let apt = Apt::new(cache, deb.suite)?;
    apt.update(refresh)?;
    let package = apt.resolve(deb.meta)?;
    eprintln!(
        "vm-test: fetching {package} ({} from {})",
        deb.name, deb.suite
    );
    let file = apt.download(&package, &cache.join("debs"))?;
    let unpacked = cache.join("unpacked").join(name);
    extract(&file, &unpacked)?;
    let boot = unpacked.join("boot");
    let image = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no /boot", file.display()))?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .with_context(|| format!("{} has no vmlinuz", file.display()))?;
    let release = image.file_name().to_string_lossy()["vmlinuz-".len()..].to_string();
    std::fs::create_dir_all(&dir)?;
    // Copied under another name first: an interrupted copy is no kernel.
    let partial = dir.join("vmlinuz.partial");
    std::fs::copy(image.path(), &partial)?;
    std::fs::rename(&partial, &vmlinuz)?;
    // The configuration explains the exceptions (e.g. no v1 memory controller).
    let _ = std::fs::copy(boot.join(format!("config-{release}")), dir.join("config"));
    std::fs::write(&release_file, format!("{release}\n"))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(Some(Kernel {
        name: name.into(),
        release,
        vmlinuz,
    }))
}

/// The modules of Debian kernel `kernel` (its package's
/// `lib/modules/<release>`), unpacked once into the cache beside it:
/// returns the directory holding `<release>/`. The package comes from the
/// cache's downloads, or is fetched again.
pub fn modules(cache: &Path, kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let Some(deb) = DEBIAN.iter().find(|d| d.name == kernel.name) else {
        bail!(
            "kernel {} is not one of Debian's packages: its modules cannot be fetched",
            kernel.name
        );
    };
    let dir = cache.join("kernels").join(&kernel.name).join("modules");
    if dir.join(&kernel.release).join("modules.order").is_file() {
        return Ok(dir);
    }
    let package = format!("linux-image-{}", kernel.release);
    let debs = cache.join("debs");
    let prefix = format!("{package}_");
    let cached = std::fs::read_dir(&debs).ok().and_then(|rd| {
        rd.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                && p.extension().is_some_and(|e| e == "deb")
        })
    });
    let file = match cached {
        Some(f) => f,
        None => {
            let apt = Apt::new(cache, deb.suite)?;
            apt.update(false)?;
            eprintln!("vm-test: fetching {package} for its modules");
            apt.download(&package, &debs)?
        }
    };
    let unpacked = cache
        .join("unpacked")
        .join(format!("{}-modules", kernel.name));
    extract(&file, &unpacked)?;
    let from = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&kernel.release))
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has no lib/modules/{}", file.display(), kernel.release))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(&from, dir.join(&kernel.release))
        .with_context(|| format!("moving {} into {}", from.display(), dir.display()))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(dir)
}

/// The running kernel, when /boot has its image and it can be read.
fn host() -> Option<Kernel> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_string();
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    std::fs::File::open(&vmlinuz).ok()?;
    Some(Kernel {
        name: "host".into(),
        release,
        vmlinuz,
    })
}

/// The release of the running kernel, for messages.
pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// busybox (Debian's static build) for the VMs' init, cached.
pub fn busybox(cache: &Path, refresh: bool) -> anyhow::Result<PathBuf> {
    let path = cache.join("busybox").join("busybox");
    if path.exists() && !refresh {
        return Ok(path);
    }
    let apt = Apt::new(cache, "bookworm")?;
    apt.update(refresh)?;
    let file = apt.download("busybox-static", &cache.join("debs"))?;
    let unpacked = cache.join("unpacked").join("busybox");
    extract(&file, &unpacked)?;
    std::fs::create_dir_all(path.parent().unwrap_or(cache))?;
    let partial = path.with_extension("partial");
    std::fs::copy(unpacked.join("bin/busybox"), &partial)
        .with_context(|| format!("{} has no bin/busybox", file.display()))?;
    std::fs::rename(&partial, &path)?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(path)
}
