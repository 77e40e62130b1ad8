//! The starter simulator is found (and built if need be) from another
//! package's test, as the agent's integration tests find it. Needs no root.
use std::process::Command;

use apptheus_testkit::sim::{STARTER_SIM, binary_dir, starter_sim};

#[test]
fn the_simulator_is_beside_the_tests_and_runs() {
    let sim = starter_sim();
    assert_eq!(sim, binary_dir().join(STARTER_SIM));
    let out = Command::new(sim)
        .args(["workload", "--forks", "2", "--timings"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("forks_ns="), "{stdout}");
}
