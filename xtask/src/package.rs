//! `cargo xtask package`: the Debian package, built with cargo-deb from the
//! `[package.metadata.deb]` table of apptheus/Cargo.toml and the files under
//! packaging/. The release binary and the man page (written from the
//! binary's own --help) are built first, then `cargo deb --no-build` packs
//! them, and the result is checked: what must be in it is, and the starter
//! simulator is not.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::build_ebpf::workspace_root;

mod manpage;

#[derive(clap::Args)]
pub struct Options {
    /// Where to write the .deb (default: <target dir>/debian).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Paths every package must hold (as `dpkg-deb -c` lists them); the pages
/// under docs/ too, see [`docs_pages`].
pub const REQUIRED: [&str; 7] = [
    "./usr/bin/apptheus",
    "./usr/lib/systemd/system/apptheus.service",
    "./etc/default/apptheus",
    "./usr/share/man/man1/apptheus.1.gz",
    "./usr/share/doc/apptheus/README.md",
    "./usr/share/doc/apptheus/BENCHMARKS.md",
    "./usr/share/doc/apptheus/copyright",
];

pub fn run(o: &Options) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target = target_dir(&root)?;

    let deb_version = Command::new("cargo")
        .args(["deb", "--version"])
        .current_dir(&root)
        .output();
    if !deb_version.is_ok_and(|out| out.status.success()) {
        bail!(
            "cargo-deb is not installed: `cargo install cargo-deb --locked` \
             (or `sudo scripts/setup.sh --package`)"
        );
    }

    eprintln!("package: building the release binary");
    let status = Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--locked", "--package", "apptheus"])
        .args(["--bin", "apptheus"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let binary = target.join("release/apptheus");

    eprintln!("package: writing the man page from `apptheus --help`");
    let help = stdout_of(Command::new(&binary).arg("--help"))?;
    let version = stdout_of(Command::new(&binary).arg("--version"))?;
    let version = version.lines().next().unwrap_or("apptheus").trim();
    let page = manpage::render(&manpage::parse(&help)?, version);
    let man_dir = target.join("release/man");
    std::fs::create_dir_all(&man_dir)?;
    write_gzip(&man_dir.join("apptheus.1.gz"), page.as_bytes())?;

    let out_dir = o.out_dir.clone().unwrap_or_else(|| target.join("debian"));
    std::fs::create_dir_all(&out_dir)?;
    eprintln!("package: cargo deb");
    let out = Command::new("cargo")
        .current_dir(&root)
        .args(["deb", "--package", "apptheus", "--no-build", "--output"])
        .arg(&out_dir)
        .output()
        .context("running cargo deb")?;
    std::io::stderr().write_all(&out.stderr)?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not print the package's path")?;
    check_contents(&deb)?;
    Ok(deb)
}

/// The target directory cargo uses here (CARGO_TARGET_DIR, config, or
/// `target`), from `cargo metadata`.
pub fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let meta = stdout_of(Command::new("cargo").current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let v: serde_json::Value = serde_json::from_str(&meta).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// gzip without a name or time stamp, so the same page gives the same bytes.
fn write_gzip(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    gz.write_all(data)?;
    gz.finish()?.sync_all()?;
    Ok(())
}

/// The paths in a .deb, from `dpkg-deb --contents`.
pub fn contents(deb: &Path) -> anyhow::Result<Vec<String>> {
    let listing = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    Ok(listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_end_matches('/').to_string())
        .collect())
}

/// The pages under docs/, where the package puts them (the README leads
/// to every one).
pub fn docs_pages(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("docs");
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("./usr/share/doc/apptheus/docs/{name}"));
        }
    }
    if pages.is_empty() {
        bail!("{} holds no page", dir.display());
    }
    pages.sort();
    Ok(pages)
}

fn check_contents(deb: &Path) -> anyhow::Result<()> {
    let paths = contents(deb)?;
    let docs = docs_pages(&workspace_root())?;
    for want in REQUIRED
        .iter()
        .copied()
        .chain(docs.iter().map(String::as_str))
    {
        if !paths.iter().any(|p| p == want) {
            bail!("{} lacks {want}; it holds {paths:#?}", deb.display());
        }
    }
    if let Some(p) = paths.iter().find(|p| p.contains("starter-sim")) {
        bail!(
            "{} must not ship the starter simulator ({p})",
            deb.display()
        );
    }
    Ok(())
}
