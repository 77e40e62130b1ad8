//! Builds the kernel programs (apptheus-ebpf) for bpfel-unknown-none and puts
//! the object in OUT_DIR, where the daemon embeds it: the daemon can never be
//! built against a stale or missing object. Needs the pinned toolchain and
//! bpf-linker (scripts/setup.sh installs both).
use std::process::Command;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

const EBPF_TOOLCHAIN: &str = "1.98.0";

/// Set (to 1) by fuzz builds (scripts/fuzz.sh): the kernel programs are
/// not built and an empty object is embedded, so the agent could only run
/// with `--ebpf=false`. Fuzzing never loads them, and building them costs
/// a minute of CI.
const NO_EBPF_ENV: &str = "APPTHEUS_FUZZ_NO_EBPF";

fn main() -> anyhow::Result<()> {
    build_info();

    println!("cargo:rerun-if-env-changed={NO_EBPF_ENV}");
    if std::env::var_os(NO_EBPF_ENV).is_some_and(|v| v == "1") {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("apptheus"), b"").context("writing the empty object")?;
        return Ok(());
    }

    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker is not installed: the kernel programs can't be built. \
             Run `sudo scripts/setup.sh` (it builds bpf-linker against LLVM 22)"
        );
    }
    // The eBPF crate needs `-Z build-std=core` on a stable toolchain.
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../apptheus-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "apptheus-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the kernel programs (apptheus-ebpf); `cargo xtask build-ebpf` shows the full output")?;
    println!("cargo:rerun-if-changed={root}/../apptheus-common/src");
    Ok(())
}

fn which_bpf_linker() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Revision and branch for apptheus_build_info, when built from a git clone.
fn build_info() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustversion = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=APPTHEUS_REVISION={revision}");
    println!("cargo:rustc-env=APPTHEUS_BRANCH={branch}");
    println!("cargo:rustc-env=APPTHEUS_RUSTVERSION={rustversion}");
    println!(
        "cargo:rustc-env=APPTHEUS_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
}
