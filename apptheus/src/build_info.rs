//! What this binary is: version, git revision, toolchain, target.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("APPTHEUS_REVISION");
pub const BRANCH: &str = env!("APPTHEUS_BRANCH");
pub const RUSTVERSION: &str = env!("APPTHEUS_RUSTVERSION");
pub const TARGET: &str = env!("APPTHEUS_TARGET");

/// `--version` output.
pub const VERSION_LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("APPTHEUS_REVISION"),
    ", branch ",
    env!("APPTHEUS_BRANCH"),
    ", rustc ",
    env!("APPTHEUS_RUSTVERSION"),
    ", ",
    env!("APPTHEUS_TARGET"),
    ")"
);
