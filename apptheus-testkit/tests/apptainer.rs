//! The kit against the real Apptainer (no agent): exec, run, instances and
//! the monitoring socket, as root and as the test user. Needs root and the
//! cached root of `scripts/setup.sh --test`; otherwise SKIPPED (a failure
//! under APPTHEUS_REQUIRE_PRIVILEGED=1).
use std::{
    os::unix::net::UnixListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use apptheus_testkit::{
    apptainer::{As, Session},
    or_skip,
    workload::{Hold, Workload},
};

const LIMIT: Duration = Duration::from_secs(60);

fn session() -> Option<Session> {
    let s = or_skip(Session::start()).unwrap()?;
    eprintln!(
        "apptainer {} in {}",
        s.root().apptainer_version(),
        s.root().path().display()
    );
    Some(s)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn exec_reports_the_workload_as_root_and_as_the_test_user() {
    let Some(s) = session() else { return };
    let image = s.build_image("kit").unwrap();
    assert_eq!(image.file_name(), "kit.sif");
    assert!(image.host.is_file());
    for who in [As::Root, As::User] {
        let out = format!("/tmp/written-{who:?}");
        let w = Workload::new()
            .cpu(Duration::from_millis(200))
            .touch_mib(16)
            .children(3)
            .write(4, &out)
            .hold(Hold::For(Duration::from_secs(1)));
        let mut c = s.exec(who, &image, &[], &w).unwrap();
        let report = c.done(LIMIT).unwrap();
        // The process spawned is the starter itself, the container's
        // "master"; the workload runs below it with the host's pids.
        assert_eq!(
            cmdline(c.pid()),
            "Apptainer runtime parent: kit.sif",
            "{who:?}"
        );
        let uid = status_field(report.pid, "Uid:");
        let want = match who {
            As::Root => 0,
            As::User => s.user().uid,
        };
        assert_eq!(
            uid.split_whitespace().next(),
            Some(want.to_string().as_str()),
            "{who:?}"
        );
        let finished = c.wait(LIMIT).unwrap().success().unwrap();
        let done = finished.report().unwrap().done.unwrap();
        assert!(done.cpu_us >= 200_000, "{who:?}: {done:?}");
        assert_eq!(done.children, 3);
        assert_eq!(done.touched_mib, 16);
        assert_eq!(done.written_bytes, 4 << 20);
        assert_eq!(
            std::fs::metadata(s.host_path(&out).unwrap()).unwrap().len(),
            4 << 20,
            "the container's /tmp is the session's"
        );
    }
}

#[test]
fn run_passes_arguments_to_the_workload() {
    let Some(s) = session() else { return };
    let image = s.build_image("runner").unwrap();
    let w = Workload::new().children(2);
    let f = s
        .run(As::User, &image, &[], &w)
        .unwrap()
        .wait(LIMIT)
        .unwrap();
    let done = f.success().unwrap().report().unwrap().done.unwrap();
    assert_eq!(done.children, 2);
}

#[test]
fn memory_limit_moves_the_container_into_an_apptainer_cgroup() {
    let Some(s) = session() else { return };
    if !std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        apptheus_testkit::skip("a cgroup v1 memory hierarchy");
        return;
    }
    let image = s.build_image("limited").unwrap();
    let w = Workload::new().touch_mib(8);
    let f = s
        .exec(As::Root, &image, &["--memory", "64M"], &w)
        .unwrap()
        .wait(LIMIT)
        .unwrap()
        .success()
        .unwrap();
    let report = f.report().unwrap();
    let memory = report.cgroup("memory").unwrap();
    assert!(memory.starts_with("/apptainer/"), "{report:?}");
}

#[test]
fn instances_start_take_a_joining_exec_and_stop() {
    let Some(s) = session() else { return };
    let image = s.build_image("service").unwrap();
    for who in [As::Root, As::User] {
        let name = format!("kit-{}", format!("{who:?}").to_lowercase());
        let instance = s.instance_start(who, &image, &[], &name).unwrap();
        let user = match who {
            As::Root => "root".to_string(),
            As::User => s.user().name.clone(),
        };
        assert_eq!(
            cmdline(instance.master_pid),
            format!("Apptainer instance: {user} [{name}]")
        );
        assert_eq!(cmdline(instance.init_pid), "appinit");

        let w = Workload::new()
            .children(1)
            .hold(Hold::For(Duration::from_millis(300)));
        let mut join = instance.exec(&[], &w).unwrap();
        let report = join.done(LIMIT).unwrap();
        // The joining starter has an empty image name.
        assert_eq!(cmdline(join.pid()), "Apptainer runtime parent:", "{who:?}");
        if who == As::Root && std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            // A root instance has a cgroup of its own; a join is moved into it.
            assert_eq!(
                report.cgroup("memory"),
                Some(format!("/apptainer/{}", instance.init_pid).as_str()),
                "{report:?}"
            );
        }
        join.wait(LIMIT).unwrap().success().unwrap();

        let master = instance.master_pid;
        instance.stop().unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            !std::path::Path::new(&format!("/proc/{master}")).exists() || cmdline(master).is_empty()
        });
        assert!(gone, "the instance's master {master} is still there");
    }
}

/// Connections accepted on a listening socket: the peers' pids.
fn accept_peers(listener: UnixListener) -> Arc<Mutex<Vec<u32>>> {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let sink = peers.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut cred = libc::ucred {
                pid: 0,
                uid: 0,
                gid: 0,
            };
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            // SAFETY: getsockopt(SO_PEERCRED) into a ucred of the right size.
            let rc = unsafe {
                libc::getsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&stream),
                    libc::SOL_SOCKET,
                    libc::SO_PEERCRED,
                    (&mut cred as *mut libc::ucred).cast(),
                    &mut len,
                )
            };
            if rc == 0 {
                sink.lock().unwrap().push(cred.pid as u32);
            }
        }
    });
    peers
}

#[test]
fn allow_monitoring_makes_the_starter_connect_to_the_bound_socket() {
    let Some(mut s) = session() else { return };
    let image = s.build_image("watched").unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(sock_dir.path().join("gateway.sock")).unwrap();
    let peers = accept_peers(listener);
    s.bind_monitoring_socket_dir(sock_dir.path());

    // The root's own configuration says no: nobody connects.
    s.exec(As::Root, &image, &[], &Workload::new())
        .unwrap()
        .wait(LIMIT)
        .unwrap()
        .success()
        .unwrap();
    assert!(peers.lock().unwrap().is_empty());

    s.allow_monitoring(true).unwrap();
    assert!(s.config().unwrap().contains("\nallow monitoring = yes\n"));
    let c = s.exec(As::Root, &image, &[], &Workload::new()).unwrap();
    let starter = c.pid();
    c.wait(LIMIT).unwrap().success().unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = peers.lock().unwrap().clone();
        if seen.contains(&starter) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen.contains(&starter), "starter {starter}, peers {seen:?}");
}
