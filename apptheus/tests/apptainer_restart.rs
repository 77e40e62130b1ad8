//! An agent restarted while the real Apptainer runs an instance with a
//! join takes them over as one container: the instance's, with the join
//! as its member, whatever the order of their process ids.
mod common;

use std::time::Duration;

use apptheus_testkit::{
    apptainer::{As, Session},
    or_skip,
    workload::{Hold, Workload},
};
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn infos(m: &str) -> Vec<String> {
    m.lines()
        .filter(|l| l.starts_with("apptheus_container_info{"))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_instance_and_its_join_are_one_container_after_a_restart() {
    let _serial = serial();
    let Some(s) = or_skip(Session::start()).unwrap() else {
        return;
    };
    let launcher = format!("--trust.launcher={}", s.root().launcher().display());
    let trust = format!("--trust.path={}", s.root().starter().display());
    let mut first = Agent::start(&[&trust, &launcher]);
    let img = s.build_image("restarted").unwrap();
    let name = format!("kept-{}", std::process::id());
    let instance = s.instance_start(As::User, &img, &[], &name).unwrap();
    let mut join = instance
        .exec(&[], &Workload::new().hold(Hold::UntilKilled))
        .unwrap();
    join.done(LIMIT).unwrap();
    let join_pid = join.pid();
    let mut id = None;
    first.wait_for(LIMIT, "the instance and its join", || {
        let m = first.metrics();
        id = container_id(&m, "instance", &name);
        value(&m, "apptheus_instance_joins_total", &[]) == Some(1.0) && id.is_some()
    });
    let id = id.unwrap();
    // The join has cgroups of its own, beneath where it was started.
    assert!(
        our_cgroup_dirs()
            .iter()
            .any(|d| d.file_name().is_some_and(|n| n
                .to_string_lossy()
                .starts_with(&format!("apptheus-{join_pid}-")))),
        "{:?}",
        our_cgroup_dirs()
    );

    // A crash, and a new agent.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Agent::start(&[&trust, &launcher]);
    let m = second.metrics();
    let ours: Vec<String> = infos(&m)
        .into_iter()
        .filter(|l| {
            l.contains(&format!("container_id=\"{id}\""))
                || l.contains(&format!("container_id=\"{join_pid}-"))
        })
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one container, the instance's\n{m}\n{}",
        second.log_text()
    );
    assert!(
        ours[0].contains(&format!("instance=\"{name}\"")) && ours[0].contains("uid=\"1500\""),
        "{}",
        ours[0]
    );
    assert!(
        second
            .log_text()
            .contains("a join of the adopted instance, adopted as its member"),
        "{}",
        second.log_text()
    );
    // The join's tasks count in the instance: when the join ends, the
    // instance runs on; when the instance stops, the container ends and
    // nothing of ours is left.
    drop(join);
    instance.stop().unwrap();
    second.wait_for(LIMIT, "the instance's end, and its cgroups gone", || {
        second
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(&id))
            && !our_cgroup_dirs().iter().any(|d| {
                let n = d
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                n.starts_with(&format!("apptheus-{join_pid}-")) || n == format!("apptheus-{id}")
            })
    });
}
