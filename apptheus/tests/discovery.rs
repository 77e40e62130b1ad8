//! The agent installed before Apptainer (a package on a node that has no
//! Apptainer yet, or the README's run command on a fresh machine): with no
//! `--trust.path` it starts, serves its own metrics and says it trusts
//! nothing; a starter installed later in a standard place is trusted within
//! seconds and its containers are attributed. A `--trust.path` that does
//! not exist still stops it (a typo). The agent runs in a private mount
//! namespace whose standard places are empty, so that what this machine
//! has installed does not matter.
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::{AGENT, Agent, starter_sim, value};

const WAIT: Duration = Duration::from_secs(20);

/// Empties every standard place of a starter in a new mount namespace,
/// then execs the rest of its arguments.
const EMPTY_STANDARD_PLACES: &str = "set -e
for d in /usr/libexec /usr/local/libexec /usr/lib/*/apptainer /usr/lib/*/singularity; do
  if [ -d \"$d\" ]; then mount -t tmpfs -o mode=755 tmpfs \"$d\"; fi
done
exec \"$@\"";

fn trusted_starters(agent: &Agent) -> Option<f64> {
    value(
        &agent.metrics(),
        "apptheus_trusted_files",
        &[("role", "starter")],
    )
}

#[test]
fn without_apptainer_it_runs_and_trusts_a_starter_once_installed() {
    if !common::privileged() {
        return;
    }
    let _serial = common::serial();
    let agent = Agent::start_wrapped(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            EMPTY_STANDARD_PLACES,
            "sh",
        ],
        &[],
    );
    assert_eq!(trusted_starters(&agent), Some(0.0), "{}", agent.log_text());
    assert!(
        agent
            .log_text()
            .contains("no Apptainer starter found in the standard places"),
        "{}",
        agent.log_text()
    );

    // Apptainer gets installed: its starter appears in /usr/libexec, as
    // the agent's mount namespace sees it.
    let ns_root = PathBuf::from(format!("/proc/{}/root", agent.child.id()));
    let bin = ns_root.join("usr/libexec/apptainer/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let starter = bin.join("starter");
    std::fs::copy(starter_sim(), &starter).unwrap();
    std::fs::set_permissions(&starter, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent.wait_for(WAIT, "the installed starter to be trusted", || {
        trusted_starters(&agent) == Some(1.0)
    });

    // A container it starts is attributed.
    let status = Command::new("nsenter")
        .arg(format!(
            "--mount={}/ns/mnt",
            ns_root.parent().unwrap().display()
        ))
        .args([
            "/usr/libexec/apptainer/bin/starter",
            "--no-namespaces",
            "--",
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    agent.wait_for(WAIT, "the container to be attributed", || {
        value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1.0)
    });
}

#[test]
fn a_trust_path_that_does_not_exist_stops_it_naming_the_path() {
    let out = Command::new(AGENT)
        .args([
            "--trust.path=/nonexistent/apptheus-test/starter",
            "--web.listen-address=127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("/nonexistent/apptheus-test/starter") && last.contains("--trust.path"),
        "{stderr}"
    );
    assert_eq!(
        last.matches("No such file or directory").count(),
        1,
        "the cause is said once: {last}"
    );
}
