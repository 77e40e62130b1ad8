//! `cargo xtask docs`: write the metrics reference of docs/metrics.md from
//! the metric catalogue (apptheus/src/export/catalogue.rs). The writer is
//! the docs test's own (apptheus/tests/docs/reference.rs), run with
//! `APPTHEUS_UPDATE_DOCS` set, so that what is written and what the test
//! checks are one code.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::build_ebpf::workspace_root;

pub fn run() -> anyhow::Result<()> {
    let mut cargo = Command::new("cargo");
    // What `cargo run` told xtask about itself is not the test's: build
    // scripts that watch these (ring's) would run again, and the test
    // build would differ from that of a plain `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo
        .current_dir(workspace_root())
        .env("APPTHEUS_UPDATE_DOCS", "1")
        .args([
            "test",
            "--locked",
            "--package",
            "apptheus",
            "--test",
            "docs",
        ])
        .args(["--", "--exact", "the_metrics_reference_is_the_catalogues"])
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("writing docs/metrics.md failed ({status})");
    }
    Ok(())
}
