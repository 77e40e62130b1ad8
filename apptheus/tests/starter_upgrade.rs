//! A package upgrade replaces Apptainer's starter (a new file written
//! beside it, then renamed over it, as dpkg does): the containers started
//! right after are attributed, with no signal and no wait. Uses the real
//! Apptainer, whose starter directory is replaced, for this test's
//! session only, by a private copy (the cached root stays as it is).
mod common;

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use apptheus_testkit::{
    apptainer::{As, Session},
    or_skip,
    workload::Workload,
};
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Where Debian's package puts the starter, inside the root.
const STARTER_DIR: &str = "/usr/lib/x86_64-linux-gnu/apptainer/bin";

fn started(agent: &Agent) -> f64 {
    value(&agent.metrics(), "apptheus_containers_started_total", &[]).unwrap_or(0.0)
}

#[test]
fn a_container_started_right_after_the_starter_is_upgraded_is_attributed() {
    let _serial = serial();
    let Some(mut s) = or_skip(Session::start()).unwrap() else {
        return;
    };
    // A private, root-owned copy of the root's starter directory, seen by
    // the session's Apptainer where its starter is.
    let trust = TrustDir::new();
    let starter = trust.path("starter");
    std::fs::copy(s.root().starter(), &starter).unwrap();
    std::fs::set_permissions(&starter, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.bind(trust.dir.path(), STARTER_DIR);
    let launcher = format!("--trust.launcher={}", s.root().launcher().display());
    let agent = Agent::trusting(&starter, &[&launcher]);
    let img = s.build_image("upgraded").unwrap();

    let w = Workload::new().cpu(Duration::from_millis(200));
    for round in 0..2 {
        let before = started(&agent);
        // The upgrade: the new version written beside, renamed over.
        let new = trust.path("starter.dpkg-new");
        std::fs::copy(s.root().starter(), &new).unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, &starter).unwrap();
        // At once: Apptainer's tool execs the new starter some tens of
        // milliseconds after it starts.
        let mut c = s.exec(As::Root, &img, &[], &w).unwrap();
        c.done(LIMIT).unwrap();
        c.wait(LIMIT).unwrap().success().unwrap();
        agent.wait_for(LIMIT, &format!("round {round}: the container"), || {
            started(&agent) == before + 1.0
        });
    }
    let log = agent.log_text();
    assert_eq!(
        log.matches("trusted file changed: trusted starters changed")
            .count(),
        2,
        "each upgrade seen as it happened\n{log}"
    );
    let m = agent.metrics();
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("apptheus_container_info{")
                && l.contains(&format!("image=\"{}\"", img.inside)))
            .count(),
        2,
        "{m}"
    );
}
