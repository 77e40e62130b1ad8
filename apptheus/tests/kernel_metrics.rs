//! The kernel collectors on the real kernel (root, BTF): OOM kills,
//! network bytes, file I/O bytes, run-queue latency, against workloads of
//! known size run by the starter simulator inside a container; and what
//! the kernel programs drop when their maps are full.
mod common;

use std::{
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;

const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// Runs `starter -- starter workload <args>`, optionally from inside a
/// memory cgroup, and waits for it.
fn run_workload(starter: &Path, memory_parent: Option<&Path>, args: &[&str]) -> bool {
    let workload = format!(
        "{} -- {} workload {}",
        starter.display(),
        starter.display(),
        args.join(" ")
    );
    let script = match memory_parent {
        Some(p) => format!("echo $$ > {}/cgroup.procs && exec {workload}", p.display()),
        None => format!("exec {workload}"),
    };
    Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Waits until the container of `starter` has ended (no task left) and
/// returns its id and the final scrape.
fn final_scrape(agent: &Agent, starter: &Path) -> (String, String) {
    let s = starter.display().to_string();
    let mut out = None;
    agent.wait_for(WAIT, &format!("the container of {s} to end"), || {
        let m = agent.metrics();
        let done = container_id(&m, "starter", &s).filter(|id| {
            value(&m, "apptheus_container_tasks", &[("container_id", id)]) == Some(0.0)
        });
        out = done.map(|id| (id, m));
        out.is_some()
    });
    out.unwrap()
}

fn cgroup2_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(2) == Some("cgroup2")))
}

fn get(m: &str, name: &str, id: &str) -> Option<f64> {
    value(m, name, &[("container_id", id)])
}

/// A memory cgroup with a limit, removed on drop: in the v1 memory
/// hierarchy (hybrid and v1 hosts), or in cgroup2 where its root hands the
/// memory controller down (pure v2 hosts).
struct MemoryLimit(PathBuf);

impl MemoryLimit {
    fn new(bytes: u64) -> Option<Self> {
        let name = format!("akm-{}", unique());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let v2 = Path::new("/sys/fs/cgroup");
        if v1.join("memory.limit_in_bytes").exists() {
            let dir = v1.join(name);
            std::fs::create_dir(&dir).unwrap();
            // Before 5.11 a v1 cgroup's limit holds for the cgroups below
            // it (the container's) only with use_hierarchy, off by default
            // where no init system turned it on. Later kernels ignore this.
            let _ = std::fs::write(dir.join("memory.use_hierarchy"), "1");
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
            return Some(Self(dir));
        }
        let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        // No controller enabled below it: processes may live in it, and
        // its limit holds for the container's cgroup created beneath.
        let dir = v2.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), bytes.to_string()).unwrap();
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Some(Self(dir))
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn oom_kill_is_counted_by_the_kernel_and_logged() {
    if !privileged() {
        return;
    }
    let _serial = serial();
    let Some(limit) = MemoryLimit::new(64 * MIB) else {
        apptheus_testkit::skip("a memory controller (v1 at /sys/fs/cgroup/memory, or cgroup2's)");
        return;
    };
    let trust = TrustDir::new();
    let starter = trust.starter("starter");
    let agent = Agent::trusting(&starter, &[]);

    // 256 MiB under a 64 MiB limit: the OOM killer picks the workload.
    assert!(!run_workload(
        &starter,
        Some(&limit.0),
        &["--delay", "0.3", "--alloc-mib", "256"]
    ));
    let (id, m) = final_scrape(&agent, &starter);
    let family = "apptheus_container_memory_oom_kills_total";
    assert_eq!(get(&m, family, &id), Some(1.0), "{m}");
    // The kernel's count replaces the cgroup's: one series, not two.
    assert_eq!(
        m.matches(&format!("{family}{{container_id=\"{id}\"}}"))
            .count(),
        1,
        "{m}"
    );
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("OOM killer chose"))
        .unwrap_or_else(|| panic!("no OOM log line:\n{log}"));
    assert!(line.contains(&format!("container_id={id}")), "{line}");
    assert!(line.contains("comm=starter"), "{line}");
    assert!(line.contains("pid="), "{line}");
}

#[test]
fn network_bytes_match_a_known_loopback_transfer() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &[]);
    if !cgroup2_mounted() {
        // Pure v1 hosts: the collector says why it is off; the rest runs.
        let log = agent.log_text();
        assert!(log.contains("cgroup2 is not mounted"), "{log}");
        assert!(log.contains("collectors=oom"), "{log}");
        return;
    }
    assert!(
        agent.log_text().contains("collectors=oom,network"),
        "{}",
        agent.log_text()
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf).unwrap() {
                0 => return n,
                k => n += k as u64,
            }
        }
    });
    const N: u64 = 16 * MIB;
    // The delay lets the agent place the container before the socket is
    // created: a socket belongs to the cgroup its creator was in then.
    assert!(run_workload(
        &starter,
        None,
        &["--delay", "0.3", "--net-send", &format!("{addr}:{N}")]
    ));
    assert_eq!(receiver.join().unwrap(), N);
    let (id, m) = final_scrape(&agent, &starter);
    let tx = get(&m, "apptheus_container_network_transmit_bytes_total", &id).unwrap() as u64;
    let tx_packets =
        get(&m, "apptheus_container_network_transmit_packets_total", &id).unwrap() as u64;
    let rx = get(&m, "apptheus_container_network_receive_bytes_total", &id).unwrap() as u64;
    let rx_packets =
        get(&m, "apptheus_container_network_receive_packets_total", &id).unwrap() as u64;
    // Payload plus IP and TCP headers: a few percent at most.
    assert!(
        (N..=N + N / 20).contains(&tx),
        "sent {N}, counted {tx}\n{m}"
    );
    assert!(tx_packets >= 2, "{m}");
    // What came back is the handshake and the ACKs: headers only.
    assert!(rx > 0 && rx < N / 20, "received {rx}\n{m}");
    assert!(rx_packets >= 1, "{m}");
}

#[test]
fn file_bytes_match_a_known_file_workload_and_sockets_are_not_files() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--collector.fsio"]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::io::copy(&mut s, &mut std::io::sink()).unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    const FILE: u64 = 24 * MIB;
    const NET: u64 = 32 * MIB;
    // Socket writes and pipe reads/writes are not file I/O.
    assert!(run_workload(
        &starter,
        None,
        &[
            "--delay",
            "0.3",
            "--file-io",
            &format!("{}:{FILE}", file.display()),
            "--net-send",
            &format!("{addr}:{NET}"),
            "--pingpong",
            "2000",
        ]
    ));
    receiver.join().unwrap();
    let (id, m) = final_scrape(&agent, &starter);
    let written = get(&m, "apptheus_container_fs_write_bytes_total", &id).unwrap() as u64;
    let read = get(&m, "apptheus_container_fs_read_bytes_total", &id).unwrap() as u64;
    assert!(
        (FILE..FILE + MIB).contains(&written),
        "wrote {FILE}, counted {written}\n{m}"
    );
    // The dynamic loader and the C library read a few files of their own.
    assert!(
        (FILE..FILE + MIB).contains(&read),
        "read {FILE}, counted {read}\n{m}"
    );
    // memory.stat's pgmajfault, from the container's memory cgroup.
    if Path::new("/sys/fs/cgroup/memory/memory.stat").exists() {
        assert!(
            get(&m, "apptheus_container_major_page_faults_total", &id).is_some(),
            "{m}"
        );
    }
}

#[test]
fn runqueue_latency_histogram_observes_a_busy_container() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(&starter, &["--collector.runqlat"]);
    const ROUNDS: u64 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("schedstat");
    assert!(run_workload(
        &starter,
        None,
        &[
            "--delay",
            "0.3",
            "--pingpong",
            &ROUNDS.to_string(),
            "--schedstat",
            truth.to_str().unwrap(),
        ]
    ));
    let (id, m) = final_scrape(&agent, &starter);
    // What the kernel itself accounted to the two ping-pong threads
    // (/proc/<tid>/schedstat): their total wait on the run queue, and how
    // many times they were switched in.
    let truth = std::fs::read_to_string(&truth).unwrap();
    let (delay_ns, slices) = truth
        .split_once(' ')
        .map(|(d, s)| (d.parse::<f64>().unwrap(), s.trim().parse::<f64>().unwrap()))
        .unwrap();
    assert!(slices >= ROUNDS as f64 / 2.0, "{truth}");
    let name = "apptheus_container_runqueue_latency_seconds";
    let count = get(&m, &format!("{name}_count"), &id).unwrap();
    let sum = get(&m, &format!("{name}_sum"), &id).unwrap();
    eprintln!(
        "observed {count} waits, {sum} s; the kernel's account of the two threads: \
         {slices} time slices, run_delay {} s",
        delay_ns / 1e9
    );
    // Every switch-in of a queued task of the container is one
    // observation, the two threads' included; the rest of the container
    // (starter, process start and exit) adds a few. A kernel that counts
    // a time slice without a queued time (5.10, a task's very first run)
    // may report a few more slices than waits.
    assert!(
        count >= slices * 0.95,
        "{count} observations, the kernel counted {slices} time slices for the two threads\n{m}"
    );
    assert!(
        count <= slices + 500.0,
        "{count} observations for {slices} time slices of the threads\n{m}"
    );
    // The waits observed are the kernel's own, pieces included (a wait
    // moved to another CPU's queue is accounted in two): the two threads'
    // part of the sum is exactly their run_delay; the rest of the
    // container adds a little.
    let delay = delay_ns / 1e9;
    assert!(
        sum >= delay * 0.99 && sum < delay + 0.5,
        "sum {sum} s, the threads' run_delay {delay} s\n{m}"
    );
    let inf = value(
        &m,
        &format!("{name}_bucket"),
        &[("container_id", &id), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(count), "{m}");
    let mut last = 0.0;
    let mut buckets = 0;
    for line in m
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{container_id=\"{id}\"")))
    {
        let v: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(v >= last, "buckets must be cumulative: {line}\n{m}");
        last = v;
        buckets += 1;
    }
    assert_eq!(buckets, 22, "1 us .. 2^20 us and +Inf\n{m}");
    assert!(m.contains("le=\"0.000001\"") && m.contains("le=\"1.048576\""));
}

#[test]
fn collectors_switched_off_are_not_attached_and_leave_no_family() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(
        &starter,
        &[
            "--no-collector.network",
            "--no-collector.oom",
            "--ebpf.stats",
        ],
    );
    assert!(
        agent.log_text().contains("collectors=none"),
        "{}",
        agent.log_text()
    );
    // --ebpf.stats lists the programs this agent has loaded.
    let m = agent.metrics();
    let loaded = |p: &str| {
        m.contains(&format!(
            "apptheus_ebpf_program_runs_total{{program=\"{p}\"}}"
        ))
    };
    assert!(loaded("apptheus_exec"), "{m}");
    for absent in [
        "apptheus_netin",
        "apptheus_netout",
        "apptheus_fsio",
        "apptheus_oom",
        "apptheus_switch",
        // The benchmark's baseline program is never the agent's.
        "apptheus_switch_baseline",
    ] {
        assert!(!loaded(absent), "{absent} is loaded\n{m}");
    }
    assert!(run_workload(&starter, None, &["--delay", "0.2"]));
    let (_, m) = final_scrape(&agent, &starter);
    for absent in [
        "apptheus_container_network_transmit_bytes_total",
        "apptheus_container_fs_read_bytes_total",
        "apptheus_container_runqueue_latency_seconds",
    ] {
        assert!(!m.contains(absent), "{absent} present\n{m}");
    }
}

/// `starter --no-namespaces -- sh -c <script>`, started.
fn sh_container(starter: &std::path::Path, script: &str) -> Child {
    Command::new(starter)
        .args(["--no-namespaces", "--", "/bin/sh", "-c", script])
        .spawn()
        .expect("start a container")
}

fn map_full(m: &str, map: &str) -> f64 {
    value(m, "apptheus_ebpf_map_full_total", &[("map", map)]).unwrap_or(0.0)
}

/// Nothing the kernel programs drop goes unseen: with maps made small by
/// flags, tasks, starter runs and run-queue histograms that do not fit are
/// counted in `apptheus_ebpf_map_full_total{map}`, and the agent says once
/// which flag to raise. Every program's error counter is exported, at 0
/// when nothing failed.
#[test]
fn full_kernel_maps_are_counted_and_name_the_flag_to_raise() {
    let Some((_serial, _trust, starter)) = trusted_starter() else {
        return;
    };
    let agent = Agent::trusting(
        &starter,
        &[
            "--ebpf.max-tasks=16",
            "--ebpf.max-containers=2",
            "--collector.runqlat",
            "--collector.runqlat.max-containers=1",
        ],
    );
    let runqlat = agent
        .log_text()
        .lines()
        .any(|l| l.contains("kernel collectors") && l.contains("runqlat"));
    let m = agent.metrics();
    for map in ["tasks", "containers", "runq"] {
        assert_eq!(
            value(&m, "apptheus_ebpf_map_full_total", &[("map", map)]),
            Some(0.0),
            "{map}\n{m}"
        );
    }

    // The first takes the only run-queue slot; the second takes the
    // second (and last) container entry, finds no run-queue slot left and
    // fills the task map (20 sleeps at once, the shell and the starter:
    // more than 16 tasks with the first's); the third finds the container
    // map full.
    let hold = format!("{}", 3.0 * time_scale());
    let mut children = vec![sh_container(&starter, &format!("exec sleep {hold}"))];
    agent.wait_for(WAIT, "the first container", || {
        value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(1.0)
    });
    children.push(sh_container(
        &starter,
        // (No `seq` in the VMs of `cargo xtask vm-test`.)
        &format!(
            "for i in {}; do sleep {hold} & done; wait",
            (1..=20)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ));
    agent.wait_for(WAIT, "the second container", || {
        value(&agent.metrics(), "apptheus_containers_started_total", &[]) == Some(2.0)
    });
    children.push(sh_container(&starter, "exec true"));
    agent.wait_for(WAIT, "the full maps to be counted", || {
        let m = agent.metrics();
        map_full(&m, "tasks") >= 1.0
            && map_full(&m, "containers") >= 1.0
            && (!runqlat || map_full(&m, "runq") >= 1.0)
    });
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let log = agent.log_text();
    for flag in ["--ebpf.max-tasks", "--ebpf.max-containers"]
        .into_iter()
        .chain(runqlat.then_some("--collector.runqlat.max-containers"))
    {
        let said = log
            .lines()
            .filter(|l| l.contains("a kernel map is full") && l.contains(flag))
            .count();
        assert_eq!(said, 1, "{flag} named once\n{log}");
    }
    // The third run was not attributed: two containers, not three.
    let m = agent.metrics();
    assert_eq!(
        value(&m, "apptheus_containers_started_total", &[]),
        Some(2.0),
        "{m}"
    );
    // No program failed on the way: each has its counter, at 0.
    for program in ["exec", "fork", "exit", "cgroup_attach", "oom", "fsio"] {
        assert_eq!(
            value(
                &m,
                "apptheus_ebpf_program_errors_total",
                &[("program", program)]
            ),
            Some(0.0),
            "{program}\n{m}"
        );
    }
}
