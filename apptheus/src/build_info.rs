//! What this binary is: version, git revision, toolchain, target.

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
pub(crate) const REVISION: &str = env!("APPTHEUS_REVISION");
pub(crate) const BRANCH: &str = env!("APPTHEUS_BRANCH");
pub(crate) const RUSTVERSION: &str = env!("APPTHEUS_RUSTVERSION");
pub(crate) const TARGET: &str = env!("APPTHEUS_TARGET");

/// `--version` output.
pub(crate) const VERSION_LONG: &str = concat!(
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
