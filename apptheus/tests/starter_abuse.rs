//! No local user can flood the readers with containers: runs of the
//! trusted starter that never run anything are counted, not exported, and
//! each user's runs are capped (rate and live containers) without hiding
//! another user's. The flood uses the real Apptainer's starter, run by an
//! ordinary user with an argv[0] and an environment of their choosing; the
//! caps use the starter simulator for exact counts.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use apptheus_testkit::{
    apptainer::{As, Session},
    or_skip,
    workload::Workload,
};
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

/// The test user of the Apptainer root, and the tests' ordinary user.
const USER: u32 = 1500;
/// Another ordinary user (setpriv needs no account).
const OTHER: u32 = 1501;

fn counter(m: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(m, name, labels).unwrap_or(0.0)
}

/// Series in an exposition (lines that are not comments).
fn series(m: &str) -> usize {
    m.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// `apptheus_container_info` lines with `uid="<uid>"` (and, when given,
/// `starter`: an agent adopts the containers it finds left by others).
fn infos_of(m: &str, uid: u32, starter: Option<&Path>) -> usize {
    m.lines()
        .filter(|l| l.starts_with("apptheus_container_info{"))
        .filter(|l| l.contains(&format!("uid=\"{uid}\"")))
        .filter(|l| starter.is_none_or(|s| l.contains(&format!("starter=\"{}\"", s.display()))))
        .count()
}

/// 2,000 runs of the real starter by one user, each failing at once with
/// an argv[0] and environment the user chose (forging instances of root,
/// images, Slurm jobs), while root runs a real `apptainer exec`: root's
/// container is there with its CPU, the user's runs are counted as runs
/// that never started, and the agent's series do not grow with them.
#[test]
fn a_flood_of_forged_runs_exports_nothing_and_hides_no_one() {
    let _serial = serial();
    let Some(s) = or_skip(Session::start()).unwrap() else {
        return;
    };
    let agent = Agent::trusting(&s.root().starter(), &[]);
    let img = s.build_image("flooded").unwrap();
    let before = agent.metrics();
    let baseline = series(&before);
    let started = counter(&before, "apptheus_containers_started_total", &[]);

    let starter = "/usr/lib/x86_64-linux-gnu/apptainer/bin/starter";
    let runs = 2000;
    let script = format!(
        "for i in $(seq {half}); do \
           (SLURM_JOB_ID=$i exec -a \"Apptainer instance: root [svc$i]\" {starter}) 2>/dev/null; \
           (APPTAINER_NAME=x$i.sif exec -a \"Apptainer runtime parent: /images/$i.sif\" {starter}) 2>/dev/null; \
         done; echo flooded",
        half = runs / 2
    );
    let flood_started = Instant::now();
    let flood = s.spawn(As::User, &["bash", "-c", &script]).unwrap();

    // Root's real container, during the flood.
    let w = Workload::new().cpu(Duration::from_millis(500));
    let before_cpu = children_cpu_seconds();
    let mut c = s.exec(As::Root, &img, &[], &w).unwrap();
    let done = c.done(LIMIT).unwrap().done.unwrap();
    c.wait(LIMIT).unwrap().success().unwrap();
    let tree = children_cpu_seconds() - before_cpu;
    let mut id = None;
    agent.wait_for(LIMIT, "root's container", || {
        id = container_id(&agent.metrics(), "image", &img.inside);
        id.is_some()
    });
    let id = id.unwrap();
    agent.wait_for(LIMIT, "the end of root's container", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(&id))
    });
    let m = agent.metrics();
    let cpu = of(&m, "apptheus_container_cpu_usage_seconds_total", &id).unwrap();
    let burned = (done.cpu_us + done.children_cpu_us) as f64 / 1e6;
    assert!(
        cpu >= burned * 0.98 && cpu <= tree + 0.05,
        "root's container reports {cpu} s, its workload burned {burned} s, the tree {tree} s"
    );
    let info = m
        .lines()
        .find(|l| l.starts_with("apptheus_container_info{") && l.contains(&id))
        .unwrap()
        .to_string();
    assert!(info.contains("uid=\"0\""), "{info}");

    let out = flood.wait(LIMIT).unwrap();
    assert!(out.stdout.contains("flooded"), "{out:?}");
    eprintln!(
        "{runs} forged runs in {:.1} s",
        flood_started.elapsed().as_secs_f64()
    );
    agent.wait_for(LIMIT, "every forged run to be counted", || {
        counter(
            &agent.metrics(),
            "apptheus_starter_runs_unstarted_total",
            &[],
        ) >= runs as f64
    });
    let m = agent.metrics();
    assert_eq!(
        counter(&m, "apptheus_ebpf_events_lost_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(
        counter(&m, "apptheus_starter_runs_unstarted_total", &[]),
        runs as f64,
        "each forged run counted once"
    );
    assert_eq!(
        counter(&m, "apptheus_containers_started_total", &[]) - started,
        1.0,
        "root's container, and no forged one\n{}",
        agent.log_text()
    );
    assert_eq!(
        infos_of(&m, USER, None),
        0,
        "no forged container exported\n{m}"
    );
    for reason in ["rate", "live"] {
        assert_eq!(
            counter(
                &m,
                "apptheus_starter_runs_refused_total",
                &[("reason", reason)]
            ),
            0.0,
            "the default caps let a flood of 2,000 in"
        );
    }
    // The series: the baseline's, root's container's, and the few a first
    // container adds to the agent's own (each source's outcome); not
    // thousands.
    let root_series = m.lines().filter(|l| l.contains(&id)).count();
    let now = series(&m);
    eprintln!("series: {baseline} before, {now} after ({root_series} of root's container)");
    assert!(
        now <= baseline + root_series + 40,
        "{now} series after the flood, {baseline} before, {root_series} of root's container\n{m}"
    );
}

/// Runs `starter --no-namespaces -- <cmd>` as `uid` (setpriv), started.
fn start_as(uid: u32, starter: &Path, cmd: &[&str]) -> std::process::Child {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(starter)
        .args(["--no-namespaces", "--"])
        .args(cmd)
        .stdin(Stdio::null())
        .spawn()
        .expect("start a container")
}

/// A user holds at most `--limit.user-containers` live containers: the
/// runs beyond are refused and counted; another user's container is there
/// all the same; once the user's containers end, the user can start again.
#[test]
fn a_user_over_the_live_cap_is_refused_and_others_are_not() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--limit.user-containers=3"]);
    let hold = format!("{}", 3.0 * time_scale());
    let mut children: Vec<_> = (0..5)
        .map(|_| start_as(USER, &starter, &["sleep", &hold]))
        .collect();
    children.push(start_as(OTHER, &starter, &["sleep", &hold]));
    agent.wait_for(
        LIMIT,
        "3 containers of the user, 2 refused, the other's",
        || {
            let m = agent.metrics();
            counter(
                &m,
                "apptheus_starter_runs_refused_total",
                &[("reason", "live")],
            ) == 2.0
                && infos_of(&m, USER, Some(&starter)) == 3
                && infos_of(&m, OTHER, Some(&starter)) == 1
        },
    );
    assert!(
        agent
            .log_text()
            .contains("raise --limit.user-containers if this is real work"),
        "{}",
        agent.log_text()
    );
    for mut c in children {
        c.wait().unwrap();
    }
    // Their ends free the user's share.
    let m = agent.metrics();
    let ids: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("apptheus_container_info{"))
        .filter(|l| l.contains(&format!("starter=\"{}\"", starter.display())))
        .filter_map(|l| {
            Some(
                l.split("container_id=\"")
                    .nth(1)?
                    .split('"')
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 4, "{m}");
    agent.wait_for(LIMIT, "the containers to end", || {
        let log = agent.log_text();
        ids.iter().all(|id| {
            log.lines()
                .any(|l| l.contains("container exited") && l.contains(id.as_str()))
        })
    });
    let mut again = start_as(USER, &starter, &["true"]);
    assert!(again.wait().unwrap().success());
    agent.wait_for(LIMIT, "the user's next container", || {
        infos_of(&agent.metrics(), USER, Some(&starter)) == 4
    });
    let m = agent.metrics();
    assert_eq!(
        counter(
            &m,
            "apptheus_starter_runs_refused_total",
            &[("reason", "live")]
        ),
        2.0
    );
    assert_eq!(counter(&m, "apptheus_containers_started_total", &[]), 5.0);
}

/// A user's runs beyond `--limit.user-start-burst` at once, and the rate
/// after, are refused and counted; another user's run at the same time is
/// a container.
#[test]
fn a_user_starting_too_fast_is_refused_and_others_are_not() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(
        &starter,
        &[
            "--limit.user-starts-per-second=1",
            "--limit.user-start-burst=5",
        ],
    );
    let runs = 10;
    let t0 = Instant::now();
    for _ in 0..runs {
        assert!(
            start_as(USER, &starter, &["true"])
                .wait()
                .unwrap()
                .success()
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(
        start_as(OTHER, &starter, &["true"])
            .wait()
            .unwrap()
            .success()
    );
    // The burst, and one more run per second since the first.
    let let_in_at_most = (5 + elapsed.ceil() as usize).min(runs);
    let mut refused = 0.0;
    agent.wait_for(LIMIT, "the runs to be counted", || {
        let m = agent.metrics();
        refused = counter(
            &m,
            "apptheus_starter_runs_refused_total",
            &[("reason", "rate")],
        );
        infos_of(&m, OTHER, Some(&starter)) == 1
            && refused >= (runs - let_in_at_most) as f64
            && infos_of(&m, USER, Some(&starter)) as f64 + refused == runs as f64
    });
    eprintln!("{runs} runs in {elapsed:.2} s, {refused} refused");
    assert!(refused <= (runs - 5) as f64, "{refused} refused");
    assert!(
        agent.log_text().contains(
            "raise --limit.user-starts-per-second and --limit.user-start-burst if this is real work"
        ),
        "{}",
        agent.log_text()
    );
}
