//! A container lasts as long as its last task, with the real Apptainer
//! (Debian's, in the root that `scripts/setup.sh --test` caches): work a
//! container leaves running in the background when its main process exits
//! keeps being counted until it ends, with the kernel programs, with them
//! and Apptainer's monitoring socket, and through the socket alone; a run
//! that joined an instance keeps the instance's container after
//! `instance stop`. Its final CPU is what the work burned, and nothing of
//! the agent's is left in the cgroup file system once the last task is
//! gone. Needs root and the cached root; otherwise SKIPPED (a failure
//! under APPTHEUS_REQUIRE_PRIVILEGED=1).
mod common;

use std::time::Duration;

use apptheus_testkit::{
    apptainer::{As, Image, Session},
    cgroupfs::our_cgroup_dirs,
    or_skip, shell_quote,
    workload::{Done, Hold, Workload},
};
use common::{Agent, container_id, scaled, value};

const LIMIT: Duration = Duration::from_secs(90);

/// Waits for the container whose info has `label="want"`; its id.
fn find(agent: &Agent, label: &str, want: &str) -> String {
    let mut id = None;
    agent.wait_for(LIMIT, &format!("a container with {label}={want}"), || {
        id = container_id(&agent.metrics(), label, want);
        id.is_some()
    });
    id.unwrap()
}

fn has_ended(agent: &Agent, id: &str) -> bool {
    agent
        .log_text()
        .lines()
        .any(|l| l.contains("container exited") && l.contains(id))
}

/// The CPU the workload reported, itself and its children, in seconds.
fn workload_cpu(d: &Done) -> f64 {
    (d.cpu_us + d.children_cpu_us) as f64 / 1e6
}

/// Waits for container `id`'s end, then for its final CPU (two reads
/// 0.5 s apart agree), and for its cgroups to be gone.
fn final_cpu(agent: &Agent, id: &str) -> f64 {
    agent.wait_for(LIMIT, &format!("the end of {id}"), || has_ended(agent, id));
    let mut cpu = -1.0;
    agent.wait_for(LIMIT, "the container's final CPU", || {
        std::thread::sleep(scaled(Duration::from_millis(500)));
        let now = value(
            &agent.metrics(),
            "apptheus_container_cpu_usage_seconds_total",
            &[("container_id", id)],
        )
        .unwrap_or(-1.0);
        let settled = now == cpu && now >= 0.0;
        cpu = now;
        settled
    });
    let pid = id.split('-').next().unwrap_or_default();
    agent.wait_for(LIMIT, "no cgroup of the container's left", || {
        !our_cgroup_dirs()
            .iter()
            .any(|d| d.to_string_lossy().contains(&format!("apptheus-{pid}-")))
    });
    cpu
}

/// `apptainer exec img sh -c '<workload> & exit 0'` as the test user: the
/// container's shell exits at once, Apptainer's starter after it, and the
/// workload goes on in the background. While it runs the container is
/// there; it ends when the workload does, with the workload's CPU.
fn background_work_is_counted_to_its_end(s: &Session, agent: &Agent, img: &Image) {
    let w = Workload::new().cpu(Duration::from_millis(1500));
    let script = format!("{} & exit 0", shell_quote(&w.argv()));
    let mut c = s
        .spawn(
            As::User,
            &["apptainer", "exec", &img.inside, "/bin/sh", "-c", &script],
        )
        .unwrap();
    c.started(LIMIT).unwrap();
    let id = find(agent, "image", &img.inside);
    // The starter is gone (its container's shell exited), the work not.
    let deadline = std::time::Instant::now() + LIMIT;
    while c.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "apptainer did not return"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = c.done(LIMIT).unwrap().done.unwrap();
    // Had it ended with its starter, its final CPU would be the starter's.
    let cpu = final_cpu(agent, &id);
    let burned = workload_cpu(&done);
    eprintln!("{id}: final CPU {cpu:.3} s, the background work burned {burned:.3} s");
    assert!(
        cpu >= burned * 0.98 && cpu <= burned + 1.0,
        "{id}: {cpu} s reported; the work left in the background burned {burned} s\n{}",
        agent.log_text()
    );
}

/// With the kernel programs (and Apptainer's monitoring socket off).
#[test]
fn background_work_is_the_containers_until_it_ends() {
    let _serial = common::serial();
    let Some(s) = or_skip(Session::start()).unwrap() else {
        return;
    };
    let agent = Agent::trusting(&s.root().starter(), &[]);
    let img = s.build_image("background").unwrap();
    background_work_is_counted_to_its_end(&s, &agent, &img);
}

/// Apptainer's `allow monitoring = yes`: the starter's connection closes
/// when its container's shell exits; with the kernel programs (the socket
/// one more witness) and through the socket alone, the container still
/// lasts as long as the work it left behind.
#[test]
fn background_work_is_the_containers_until_it_ends_in_socket_mode() {
    let _serial = common::serial();
    for ebpf in ["--ebpf=auto", "--ebpf=false"] {
        let Some(mut s) = or_skip(Session::start()).unwrap() else {
            return;
        };
        let img = s.build_image("background").unwrap();
        let agent = Agent::trusting(&s.root().starter(), &[ebpf]);
        s.bind_monitoring_socket_dir(agent.sock_dir.path());
        s.allow_monitoring(true).unwrap();
        background_work_is_counted_to_its_end(&s, &agent, &img);
        let accepted = value(
            &agent.metrics(),
            "apptheus_socket_connections_total",
            &[("result", "accepted")],
        );
        assert!(
            accepted >= Some(1.0),
            "{ebpf}: the starter connected\n{}",
            agent.log_text()
        );
        agent.stop();
    }
}

/// A run that joined an instance and is still running when `instance
/// stop` returns keeps the instance's container until its last task is
/// gone; what it burned is the container's. As an ordinary user and as
/// root (whose instance has a cgroup of Apptainer's).
///
/// Apptainer runs an instance in a PID namespace of its own unless
/// `allow pid ns = no`: then a join outlives the instance, and the
/// container lasts until it ends. With the namespace (the default), the
/// join's work dies with the instance's init, and its starter exits after
/// it: the container ends with the join's last task, its CPU counted.
#[test]
fn a_join_still_running_at_instance_stop_keeps_the_container() {
    let _serial = common::serial();
    for pid_ns in [false, true] {
        let Some(mut s) = or_skip(Session::start()).unwrap() else {
            return;
        };
        if !pid_ns {
            s.set_config("allow pid ns", "no").unwrap();
        }
        let agent = Agent::trusting(&s.root().starter(), &[]);
        let img = s.build_image("outlived").unwrap();
        for who in [As::User, As::Root] {
            let case = format!("{who:?}, pid namespace {pid_ns}");
            let name = format!("outlived-{}", format!("{who:?}").to_lowercase());
            let instance = s.instance_start(who, &img, &[], &name).unwrap();
            let id = find(&agent, "instance", &name);
            // The join burns, reports, and holds until killed: by the
            // instance's end, or by the test if it outlives the instance.
            let w = Workload::new()
                .cpu(Duration::from_millis(1500))
                .hold(Hold::UntilKilled);
            let mut join = instance.exec(&[], &w).unwrap();
            let done = join.done(LIMIT).unwrap().done.unwrap();
            instance.stop().unwrap();
            let running = join.try_wait().unwrap().is_none();
            if running {
                // The instance's own run ends; its container lives on
                // with the join.
                agent.wait_for(LIMIT, "the instance's own run to end", || {
                    agent
                        .log_text()
                        .lines()
                        .any(|l| l.contains("own run ended") && l.contains(&id))
                });
                assert!(
                    !has_ended(&agent, &id),
                    "{case}: the container ended while its join runs\n{}",
                    agent.log_text()
                );
                join.kill();
            } else {
                join.wait(LIMIT).unwrap();
            }
            let cpu = final_cpu(&agent, &id);
            let burned = workload_cpu(&done);
            eprintln!(
                "{case}: {id} final CPU {cpu:.3} s, the join burned {burned:.3} s \
                 (running at instance stop: {running})"
            );
            assert!(
                cpu >= burned * 0.98,
                "{case}: the instance's container reports {cpu} s, its join burned {burned} s\n{}",
                agent.log_text()
            );
        }
    }
}
