//! The agent against the real Apptainer (Debian's, in the root that
//! `scripts/setup.sh --test` caches): `exec`, `run`, `--memory`, instances
//! and their joins, as root and as an ordinary user, with the kernel
//! programs and through the monitoring socket alone. Each figure is checked
//! against a workload whose truth is known (CPU burned, memory touched,
//! processes started). Needs root and the cached root; otherwise SKIPPED
//! (a failure under APPTHEUS_REQUIRE_PRIVILEGED=1).
mod common;

use std::time::Duration;

use apptheus_testkit::{
    apptainer::{As, Image, Session},
    or_skip,
    running::Running,
    workload::{Done, Hold, Workload},
};
use common::{Agent, children_cpu_seconds, container_id, value};

const LIMIT: Duration = Duration::from_secs(60);

/// A session in the Apptainer root and an agent trusting its starter.
fn setup(extra: &[&str]) -> Option<(Session, Agent)> {
    let s = or_skip(Session::start()).unwrap()?;
    eprintln!("apptainer {}", s.root().apptainer_version());
    let agent = Agent::trusting(&s.root().starter(), extra);
    Some((s, agent))
}

fn counter(agent: &Agent, name: &str) -> f64 {
    value(&agent.metrics(), name, &[]).unwrap_or(0.0)
}

/// Waits for the container whose info has `label="want"`; its id.
fn find(agent: &Agent, label: &str, want: &str) -> String {
    let mut id = None;
    agent.wait_for(LIMIT, &format!("a container with {label}={want}"), || {
        id = container_id(&agent.metrics(), label, want);
        id.is_some()
    });
    id.unwrap()
}

/// The value of a container's series, once present.
fn series(agent: &Agent, name: &str, id: &str) -> f64 {
    let mut v = None;
    agent.wait_for(LIMIT, &format!("{name} of {id}"), || {
        v = value(&agent.metrics(), name, &[("container_id", id)]);
        v.is_some()
    });
    v.unwrap()
}

/// A container's series once a sample shows it meeting `want` (a read
/// that no scrape schedule explains may be served a sample taken before
/// what the test just did): its value then.
fn series_when(agent: &Agent, name: &str, id: &str, what: &str, want: impl Fn(f64) -> bool) -> f64 {
    let mut v = None;
    agent.wait_for(LIMIT, &format!("{name} of {id}: {what}"), || {
        v = value(&agent.metrics(), name, &[("container_id", id)]);
        v.is_some_and(&want)
    });
    v.unwrap()
}

/// The labels of a container's info series.
fn info(agent: &Agent, id: &str) -> String {
    agent
        .metrics()
        .lines()
        .find(|l| {
            l.starts_with("apptheus_container_info{")
                && l.contains(&format!("container_id=\"{id}\""))
        })
        .unwrap_or_default()
        .to_string()
}

/// Waits for the end of a container: its final values are served once
/// the agent has seen its last task go.
fn ended(agent: &Agent, id: &str) {
    agent.wait_for(LIMIT, &format!("the end of {id}"), || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(id))
    });
}

/// The CPU the workload reported, itself and its children, in seconds.
fn workload_cpu(d: &Done) -> f64 {
    (d.cpu_us + d.children_cpu_us) as f64 / 1e6
}

/// Runs a container to its end; its workload's report and the CPU the
/// whole process tree used (the test's reaped children).
fn run_to_end(mut c: Running) -> (Done, f64) {
    let before = children_cpu_seconds();
    let done = c.done(LIMIT).unwrap().done.unwrap();
    c.wait(LIMIT).unwrap().success().unwrap();
    (done, children_cpu_seconds() - before)
}

/// CPU the agent reports for a container lies between what its workload
/// burned and what the whole tree (starters, helper runs, the entering of
/// the root) used.
fn assert_cpu(agent: &Agent, id: &str, workload: f64, tree: f64) {
    assert_cpu_within(agent, id, workload, tree, 0.0);
}

/// [`assert_cpu`], allowing `early` seconds of the workload to have run
/// before the container was placed (the monitoring socket alone: the
/// starter connects, is verified, then its tree is placed).
fn assert_cpu_within(agent: &Agent, id: &str, workload: f64, tree: f64, early: f64) {
    // As a scraper sees it: within a sample's age.
    let least = workload * 0.98 - early;
    let cpu = series_when(
        agent,
        "apptheus_container_cpu_usage_seconds_total",
        id,
        &format!("at least {least} s (the workload burned {workload} s, the tree {tree} s)"),
        |c| c >= least,
    );
    eprintln!("{id}: cpu {cpu:.3} s, workload {workload:.3} s, tree {tree:.3} s");
    assert!(
        cpu >= workload * 0.98 - early && cpu <= tree + 0.05,
        "{id}: {cpu} s reported, the workload burned {workload} s, the tree {tree} s\n{}",
        agent.log_text()
    );
}

fn image(s: &Session, name: &str) -> Image {
    s.build_image(name).unwrap()
}

/// An ordinary user's `exec` of a SIF: Apptainer first unpacks it with a
/// helper run of its starter; the user sees one container, labelled with
/// the SIF, with the workload's CPU and memory.
#[test]
fn a_users_exec_is_one_container_with_its_sif_cpu_and_memory() {
    let _serial = common::serial();
    let Some((s, agent)) = setup(&[]) else { return };
    let img = image(&s, "users-exec");
    let started = counter(&agent, "apptheus_containers_started_total");
    let helpers = counter(&agent, "apptheus_helper_runs_total");

    let touched = 48u64;
    let w = Workload::new()
        .cpu(Duration::from_millis(800))
        .touch_mib(touched)
        .children(3)
        // Long enough for a sample taken after the touch to be read (a
        // read may be served one about a second old).
        .hold(Hold::For(Duration::from_secs(3)));
    let before = children_cpu_seconds();
    let mut c = s.exec(As::User, &img, &[], &w).unwrap();
    c.done(LIMIT).unwrap();
    let id = find(&agent, "image", &img.inside);
    // While it holds its memory, as a scraper sees it: within a sample's
    // age (the container may have been found in a sample taken before it
    // touched its memory).
    let rss = series_when(
        &agent,
        "apptheus_container_memory_rss_bytes",
        &id,
        &format!("at least 95% of the {touched} MiB touched"),
        |b| b >= touched as f64 * 0.95 * (1 << 20) as f64,
    ) / (1 << 20) as f64;
    eprintln!("{id}: rss {rss:.1} MiB for {touched} MiB touched");
    assert!(
        rss >= touched as f64 * 0.95 && rss <= touched as f64 + 48.0,
        "rss {rss} MiB for {touched} MiB touched"
    );
    let done = c.done(LIMIT).unwrap().done.unwrap();
    c.wait(LIMIT).unwrap().success().unwrap();
    let tree = children_cpu_seconds() - before;
    ended(&agent, &id);
    assert_cpu(&agent, &id, workload_cpu(&done), tree);

    let labels = info(&agent, &id);
    assert!(labels.contains("instance=\"\""), "{labels}");
    assert!(
        labels.contains(&format!("user=\"{}\"", s.user().name)),
        "{labels}"
    );
    let forks = series(&agent, "apptheus_container_forks_total", &id);
    assert!(forks >= f64::from(done.children), "{forks} forks");
    assert!(series(&agent, "apptheus_container_execs_total", &id) >= 2.0);
    assert_eq!(
        counter(&agent, "apptheus_containers_started_total") - started,
        1.0,
        "one container for one exec\n{}",
        agent.log_text()
    );
    assert_eq!(
        counter(&agent, "apptheus_helper_runs_total") - helpers,
        1.0,
        "the unpacking run is a helper\n{}",
        agent.log_text()
    );
}

/// `apptainer run` of a SIF, as root and as an ordinary user: one
/// container each, like `exec`.
#[test]
fn a_run_is_a_container() {
    let _serial = common::serial();
    let Some((s, agent)) = setup(&[]) else { return };
    for who in [As::Root, As::User] {
        let img = image(&s, &format!("runs-{}", format!("{who:?}").to_lowercase()));
        let started = counter(&agent, "apptheus_containers_started_total");
        let w = Workload::new().cpu(Duration::from_millis(300)).children(2);
        let (done, tree) = run_to_end(s.run(who, &img, &[], &w).unwrap());
        let id = find(&agent, "image", &img.inside);
        ended(&agent, &id);
        assert_cpu(&agent, &id, workload_cpu(&done), tree);
        assert_eq!(
            counter(&agent, "apptheus_containers_started_total") - started,
            1.0,
            "{who:?}: one run, one container\n{}",
            agent.log_text()
        );
    }
}

/// `exec --memory`: Apptainer moves the workload into a cgroup of its own
/// (`/apptainer/<pid>`) after the agent placed the container. Its
/// statistics come from there, the limit is Apptainer's, and the final
/// values are complete although Apptainer removes that cgroup first.
#[test]
fn a_memory_limit_is_read_from_apptainers_own_cgroup() {
    let _serial = common::serial();
    if !std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        apptheus_testkit::skip("a cgroup v1 memory hierarchy (Apptainer's limits as root)");
        return;
    }
    let Some((s, agent)) = setup(&[]) else { return };
    let img = image(&s, "limited");
    let touched = 32u64;
    let w = Workload::new()
        .cpu(Duration::from_millis(1500))
        .touch_mib(touched)
        // As above: long enough for a sample taken after the touch.
        .hold(Hold::For(Duration::from_secs(3)));
    let before = children_cpu_seconds();
    let mut c = s.exec(As::Root, &img, &["--memory", "128M"], &w).unwrap();
    let report = c.done(LIMIT).unwrap();
    assert!(
        report
            .cgroup("memory")
            .is_some_and(|m| m.starts_with("/apptainer/")),
        "{report:?}"
    );
    let id = find(&agent, "image", &img.inside);
    // As a scraper sees it: within a sample's age (the container may have
    // been found in a sample taken before Apptainer moved it, or before it
    // touched its memory).
    series_when(
        &agent,
        "apptheus_container_memory_limit_bytes",
        &id,
        "Apptainer's limit, 128 MiB",
        |l| l == (128u64 << 20) as f64,
    );
    series_when(
        &agent,
        "apptheus_container_memory_usage_bytes",
        &id,
        &format!("at least the {touched} MiB touched"),
        |b| b >= (touched << 20) as f64,
    );
    let done = report.done.unwrap();
    c.wait(LIMIT).unwrap().success().unwrap();
    let tree = children_cpu_seconds() - before;
    ended(&agent, &id);
    assert_cpu(&agent, &id, workload_cpu(&done), tree);
    assert!(
        agent
            .log_text()
            .contains("tasks into a cgroup of its own; its statistics are read there"),
        "{}",
        agent.log_text()
    );
}

/// An instance is one container from `instance start` to `instance stop`,
/// labelled with the instance's name; each `exec instance://` joins it
/// (counted in it, not a container of its own), as root (the instance has
/// a cgroup of its own, the joins are moved there) and as an ordinary user
/// (no cgroup of Apptainer's: the joins run where they were started).
#[test]
fn an_instance_is_one_container_that_its_joins_count_in() {
    let _serial = common::serial();
    let Some((s, agent)) = setup(&[]) else { return };
    let img = image(&s, "service");
    for who in [As::Root, As::User] {
        let name = format!("svc-{}", format!("{who:?}").to_lowercase());
        let started = counter(&agent, "apptheus_containers_started_total");
        let joins = counter(&agent, "apptheus_instance_joins_total");
        let instance = s.instance_start(who, &img, &[], &name).unwrap();
        let id = find(&agent, "instance", &name);
        let labels = info(&agent, &id);
        assert!(
            labels.contains(&format!("image=\"{}\"", img.inside)),
            "{labels}"
        );

        let mut burned = 0.0;
        for _ in 0..2 {
            let w = Workload::new().cpu(Duration::from_millis(400)).children(1);
            let (done, _) = run_to_end(instance.exec(&[], &w).unwrap());
            burned += workload_cpu(&done);
        }
        // As a scraper sees it: within a sample's age (a read that no
        // scrape schedule explains may be served one up to 5 s old).
        agent.wait_for(
            LIMIT,
            &format!("{who:?}: the instance to hold its joins' {burned} s of CPU and 4 execs"),
            || {
                let m = agent.metrics();
                let of = |name| value(&m, name, &[("container_id", id.as_str())]);
                of("apptheus_container_cpu_usage_seconds_total").is_some_and(|c| c >= burned * 0.98)
                    && of("apptheus_container_execs_total").is_some_and(|e| e >= 4.0)
            },
        );
        assert_eq!(
            counter(&agent, "apptheus_instance_joins_total") - joins,
            2.0,
            "{who:?}"
        );
        assert_eq!(
            counter(&agent, "apptheus_containers_started_total") - started,
            1.0,
            "{who:?}: the instance is one container, its joins none\n{}",
            agent.log_text()
        );

        instance.stop().unwrap();
        ended(&agent, &id);
        agent.wait_for(
            LIMIT,
            &format!("{who:?}: the ended instance to hold {burned} s"),
            || {
                value(
                    &agent.metrics(),
                    "apptheus_container_cpu_usage_seconds_total",
                    &[("container_id", id.as_str())],
                )
                .is_some_and(|c| c >= burned * 0.98)
            },
        );
    }
}

/// Apptainer's `allow monitoring = yes`, the kernel programs off: the real
/// starter connects, is verified and counted; an instance's master holds
/// its connection for the instance's whole life.
#[test]
fn the_monitoring_socket_takes_the_real_starter_and_an_instance_holds_it() {
    let _serial = common::serial();
    let Some(mut s) = or_skip(Session::start()).unwrap() else {
        return;
    };
    let agent = Agent::trusting(&s.root().starter(), &["--ebpf=false"]);
    s.bind_monitoring_socket_dir(agent.sock_dir.path());
    s.allow_monitoring(true).unwrap();
    let img = image(&s, "monitored");

    let w = Workload::new().cpu(Duration::from_millis(500));
    let (done, tree) = run_to_end(s.exec(As::Root, &img, &[], &w).unwrap());
    let id = find(&agent, "image", &img.inside);
    ended(&agent, &id);
    assert_cpu_within(&agent, &id, workload_cpu(&done), tree, 0.05);
    let accepted = |a: &Agent| {
        value(
            &a.metrics(),
            "apptheus_socket_connections_total",
            &[("result", "accepted")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(accepted(&agent), 1.0, "{}", agent.log_text());

    // An ordinary user's exec: the tool's helper run (unpacking the SIF)
    // connects too, and is let go; one container.
    let started = counter(&agent, "apptheus_containers_started_total");
    let img_user = image(&s, "monitored-user");
    let w = Workload::new().cpu(Duration::from_millis(300));
    let (done, tree) = run_to_end(s.exec(As::User, &img_user, &[], &w).unwrap());
    let id = find(&agent, "image", &img_user.inside);
    ended(&agent, &id);
    assert_cpu_within(&agent, &id, workload_cpu(&done), tree, 0.05);
    assert_eq!(
        accepted(&agent),
        3.0,
        "the helper's and the container's starter"
    );
    assert_eq!(
        counter(&agent, "apptheus_containers_started_total") - started,
        1.0,
        "{}",
        agent.log_text()
    );
    assert_eq!(counter(&agent, "apptheus_helper_runs_total"), 1.0);

    let instance = s.instance_start(As::Root, &img, &[], "watched").unwrap();
    let id = find(&agent, "instance", "watched");
    assert_eq!(accepted(&agent), 4.0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !agent
            .log_text()
            .lines()
            .any(|l| l.contains("container exited") && l.contains(&id)),
        "the instance ended while running:\n{}",
        agent.log_text()
    );
    instance.stop().unwrap();
    ended(&agent, &id);
}
