//! Test-only kit, shared by the agent's integration tests and `cargo xtask`
//! (benchmarks, VM runs): the agent as a process, the starter simulator,
//! and the real Apptainer and a real one-node Slurm (set up by
//! `scripts/setup.sh --test`).
//!
//! - [`agent`]: a running agent, its log and address;
//! - [`scrape`]: GET from the agent, values from its exposition;
//! - [`host`]: stretched time limits, the lock that keeps agents apart,
//!   trusted starters in root-owned directories;
//! - [`cgroupfs`]: the host's cgroup mounts, as the tests look at them;
//! - [`sim`]: where the starter simulator (`apptheus-starter-sim`, this
//!   crate's binary) is, built when need be;
//! - [`root`]: the cached Debian root that holds Apptainer, and the test user;
//! - [`enter`]: the command line that enters that root;
//! - [`apptainer`]: a test's private session in the root: images, `exec`,
//!   `run`, instances, as root or as the test user;
//! - [`workload`]: a static C program with known resource use, built into
//!   the images, and what it reports;
//! - [`slurm`]: a private one-node cluster (munge, slurmctld, slurmd), or
//!   the node's own Slurm ([`slurm::NodeSlurm`]);
//! - [`node`]: the systemd node of `cargo xtask vm-test`: the agent
//!   installed from its package and run by systemd;
//! - [`slurm`]: a private one-node cluster (munge, slurmctld, slurmd);
//! - [`prometheus`]: a real Prometheus server scraping the agent;
//! - [`forward`]: connections forwarded from another address (a scraper
//!   behind NAT or a proxy);
//! - [`running`]: a started process with its output.
//!
//! Apptainer and Slurm need root. A test that can't run reports it through
//! [`skip`], the same convention as the agent's own tests.
pub mod agent;
pub mod apptainer;
pub mod cgroupfs;
pub mod enter;
pub mod forward;
pub mod host;
pub mod node;
pub mod prometheus;
pub mod root;
pub mod running;
pub mod scrape;
pub mod sim;
pub mod slurm;
pub mod workload;

use std::path::PathBuf;

/// Set to `1` (scripts/test.sh does, as root), a test that would skip fails.
pub const REQUIRE_ENV: &str = "APPTHEUS_REQUIRE_PRIVILEGED";

/// Whether [`REQUIRE_ENV`] is `1`: what would skip must fail instead.
pub fn skips_forbidden() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1")
}

/// Reports that a test can't run here: prints `SKIPPED: <reason>`, or
/// panics when skips are forbidden ([`REQUIRE_ENV`]).
pub fn skip(reason: &str) {
    if skips_forbidden() {
        panic!("test needs: {reason}; {REQUIRE_ENV}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {reason}");
}

/// True when this process is root on a kernel with BTF, as a test that
/// runs the agent with its kernel programs needs; otherwise reports the
/// skip (a failure where skips are forbidden).
pub fn privileged() -> bool {
    if !is_root() {
        skip("root");
        return false;
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip("kernel BTF");
        return false;
    }
    true
}

/// Something a test needs is not here (no root, no cached Apptainer root,
/// Slurm not installed, ...): the test skips, see [`or_skip`].
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// An [`Unavailable`] error: `what` names what is missing and the fix.
pub fn unavailable(what: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Unavailable(what.into()))
}

/// Sorts a start-up result: `Ok(Some(value))`; `Ok(None)` after [`skip`]
/// when something the test needs is [`Unavailable`]; any other error is
/// returned (the test fails).
///
/// ```no_run
/// # use apptheus_testkit::{or_skip, apptainer::Session};
/// let Some(session) = or_skip(Session::start()).unwrap() else { return };
/// ```
pub fn or_skip<T>(r: anyhow::Result<T>) -> anyhow::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => match e.downcast_ref::<Unavailable>() {
            Some(u) => {
                skip(&u.0);
                Ok(None)
            }
            None => Err(e),
        },
    }
}

/// The cache outside the clone: `$APPTHEUS_CACHE_DIR`, by default
/// `/var/cache/apptheus` (what scripts/setup.sh fills).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("APPTHEUS_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/apptheus"))
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Quotes `args` for a POSIX shell.
pub fn shell_quote<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| {
            let a = a.as_ref();
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_things_skip() {
        // Under APPTHEUS_REQUIRE_PRIVILEGED=1 a skip panics by design.
        if !skips_forbidden() {
            assert!(or_skip::<()>(Err(unavailable("x"))).unwrap().is_none());
        }
        assert!(or_skip::<()>(Err(anyhow::anyhow!("broken"))).is_err());
        assert_eq!(or_skip(Ok(3)).unwrap(), Some(3));
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote(&["a", "b c", "it's", ""]),
            r"a 'b c' 'it'\''s' ''"
        );
        assert_eq!(shell_quote(&["/x/y=1", "$HOME"]), "/x/y=1 '$HOME'");
    }
}
