//! Where the starter simulator (`src/bin/apptheus-starter-sim.rs`, a
//! stand-in for Apptainer's starter) is, for tests of any package.
//!
//! A test of another package can't name it with `CARGO_BIN_EXE_*` (cargo
//! sets those only for the package's own binaries), and a dev-dependency
//! on this crate builds its library, not its binaries. So the simulator
//! is found at run time, where cargo puts every binary of a build: in the
//! `target/<profile>/` directory that holds the test executable (tests
//! live in its `deps/` below it). Three cases:
//!
//! - Present and newer than its source: used as it is. The workspace's
//!   `cargo test` (scripts/test.sh's `cargo test --locked
//!   --no-fail-fast`) builds it before any test runs, because this
//!   package's own integration tests make cargo build its binaries; so
//!   does `cargo test --no-run` (what `cargo xtask vm-test` builds).
//! - Missing or older than its source, and run by cargo (which sets
//!   `CARGO` for the tests it runs, e.g. after `cargo test -p apptheus` in
//!   a fresh clone, or an edit of the simulator): once per test process,
//!   `cargo build -p apptheus-testkit --bin apptheus-starter-sim` into that
//!   same target directory and profile. Cargo releases its lock on the
//!   target directory before it runs tests, so this doesn't wait on it.
//!   (Not on every run: a build of this package alone resolves features
//!   apart from the workspace's, and would compile some dependencies a
//!   second time.)
//! - Run without cargo (the test executables copied into the VMs of `cargo
//!   xtask vm-test`, which put the simulator beside them at the same
//!   path): the file there, which must exist.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::SystemTime,
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
            && !up_to_date(&path)
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

/// Whether `binary` exists and is no older than the simulator's source
/// (which need not exist: the VMs have no source tree).
fn up_to_date(binary: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/bin/apptheus-starter-sim.rs"
    ));
    match (modified(binary), modified(source)) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(built), Some(edited)) => built >= edited.min(SystemTime::now()),
    }
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
