//! Where the starter simulator (`src/bin/apptheus-starter-sim.rs`, a
//! stand-in for Apptainer's starter) is, for tests of any package.
//!
//! A test of another package can't name it with `CARGO_BIN_EXE_*` (cargo
//! sets those only for the package's own binaries), and a dev-dependency
//! on this crate builds its library, not its binaries. So the simulator
//! is found at run time, where cargo puts every binary of a build: in the
//! `target/<profile>/` directory that holds the test executable (tests
//! live in its `deps/` below it). Two cases:
//!
//! - Run by cargo (`cargo test`, which sets `CARGO` for the tests it runs):
//!   once per test process, `cargo build -p apptheus-testkit --bin
//!   apptheus-starter-sim` into that same target directory and profile.
//!   When the workspace's `cargo test` built it already (it does: this
//!   package's own integration tests make cargo build its binaries before
//!   any test runs), that is a no-op of a fraction of a second; after
//!   `cargo test -p apptheus`, or an edit of the simulator, it builds or
//!   refreshes it. Either way the tests never run a missing or stale copy.
//! - Run without cargo (the test executables copied into the VMs of `cargo
//!   xtask vm-test`, which carry the simulator at the same path): the file
//!   beside the test executable's directory, which must exist.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The simulator's binary name.
pub const STARTER_SIM: &str = "apptheus-starter-sim";

/// The directory of the binaries of the build that made the running
/// executable: `target/<profile>/` for a test (in `deps/` below it) or for
/// a binary (in it).
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The starter simulator, built if need be (see the module's text). Panics
/// (a test failure) when it is neither there nor buildable.
pub fn starter_sim() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = binary_dir();
        let path = dir.join(STARTER_SIM);
        if let Some(cargo) = std::env::var_os("CARGO")
            && let Err(e) = build(Path::new(&cargo), &dir)
        {
            panic!("building {STARTER_SIM} into {}: {e}", dir.display());
        }
        assert!(
            path.is_file(),
            "{} is missing: build it with `cargo build -p apptheus-testkit --bin {STARTER_SIM}`",
            path.display()
        );
        path
    })
}

/// `cargo build` of the simulator into `dir` (`<target dir>/<profile>`).
fn build(cargo: &Path, dir: &Path) -> Result<(), String> {
    let target_dir = dir.parent().ok_or("no target directory")?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err("no profile directory".into()),
    };
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--locked", "--manifest-path", manifest])
        .args(["--package", "apptheus-testkit", "--bin", STARTER_SIM])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("running {}: {e}", cargo.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build failed ({status})"))
    }
}
