//! Helpers for tests that need root, BTF or other machine features.

/// Environment variable that turns a skipped privileged test into a
/// failure. `.ci/run` (through scripts/test.sh) sets it: CI runs as root with
/// BTF, so a skip there means something is broken.
pub const REQUIRE_ENV: &str = "APPTHEUS_REQUIRE_PRIVILEGED";

/// Reports a skipped test, or fails it when skips are not allowed.
pub fn skip(reason: &str) {
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1") {
        panic!("test needs: {reason}; {REQUIRE_ENV}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {reason}");
}
