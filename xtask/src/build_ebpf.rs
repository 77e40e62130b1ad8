//! `cargo xtask build-ebpf`: the kernel object, built the way apptheus'
//! build.rs builds it, in target/bpfel-unknown-none/<profile>/apptheus.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The toolchain whose LLVM (22) matches Debian's, for bpf-linker.
pub const TOOLCHAIN: &str = "1.98.0";
const TARGET: &str = "bpfel-unknown-none";

#[derive(clap::Args)]
pub struct Options {
    /// Build without optimisations (the verifier may reject the result).
    #[arg(long)]
    pub debug: bool,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn run(o: &Options) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            "apptheus-ebpf",
            "--bins",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if !o.debug {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("running cargo for the eBPF build (is rustup installed? run scripts/setup.sh)")?;
    if !status.success() {
        bail!(
            "building apptheus-ebpf failed ({status}); if bpf-linker is missing, run `sudo scripts/setup.sh`"
        );
    }
    let object = root
        .join("target")
        .join(TARGET)
        .join(if o.debug { "debug" } else { "release" })
        .join("apptheus");
    let sections = elf_section_names(&object)?;
    for want in [".BTF", "maps", "license"] {
        if !sections.iter().any(|s| s == want) {
            bail!(
                "{} has no {want} section (sections: {sections:?})",
                object.display()
            );
        }
    }
    if !sections.iter().any(|s| s.starts_with("tp_btf/")) {
        bail!("{} holds no tp_btf program", object.display());
    }
    Ok(object)
}

/// Section names of a little-endian ELF64 file.
pub fn elf_section_names(path: &Path) -> anyhow::Result<Vec<String>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    if data.get(..4) != Some(b"\x7fELF".as_slice()) || data.get(4) != Some(&2) {
        bail!("{} is not an ELF64 object", path.display());
    }
    let bad = || anyhow::anyhow!("{} is a truncated ELF file", path.display());
    let shoff = u64_at(0x28).ok_or_else(bad)?;
    let shentsize = u16_at(0x3a).ok_or_else(bad)?;
    let shnum = u16_at(0x3c).ok_or_else(bad)?;
    let shstrndx = u16_at(0x3e).ok_or_else(bad)?;
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18).ok_or_else(bad)?;
    let mut names = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let name_off = u32_at(header(i)).ok_or_else(bad)?;
        let start = strtab + name_off;
        let bytes = data.get(start..).ok_or_else(bad)?;
        let end = bytes.iter().position(|b| *b == 0).ok_or_else(bad)?;
        names.push(String::from_utf8_lossy(&bytes[..end]).into_owned());
    }
    Ok(names)
}
