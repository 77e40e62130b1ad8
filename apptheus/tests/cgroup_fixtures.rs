//! cgroup statistics read through `stats::read` from checked-in fixture
//! trees (pure v2, pure v1, hybrid, and a v2 tree with broken files), and
//! from a real cgroup on this machine.
use std::{
    fs,
    path::{Path, PathBuf},
};

use apptheus::testing::{
    cgroup::{self as stats, BlkioDevice, CgroupStats, ContainerCgroups, StatWarning},
    export::{Row, Sample, Snapshot, families},
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup")
}

fn cgroups(v2: Option<&str>, v1: &[(&str, &str)]) -> ContainerCgroups {
    let root = fixtures();
    ContainerCgroups {
        v2: v2.map(|p| root.join(p)),
        v1: v1.iter().map(|(c, p)| (*c, root.join(p))).collect(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[track_caller]
fn assert_close(got: Option<f64>, want: f64) {
    match got {
        Some(g) if close(g, want) => {}
        _ => panic!("got {got:?}, want {want}"),
    }
}

fn dev(
    device: &str,
    read_bytes: u64,
    write_bytes: u64,
    read_ops: u64,
    write_ops: u64,
) -> BlkioDevice {
    BlkioDevice {
        device: device.to_string(),
        read_bytes,
        write_bytes,
        read_ops,
        write_ops,
    }
}

#[track_caller]
fn no_warnings(w: &[StatWarning]) {
    assert!(w.is_empty(), "unexpected warnings: {w:#?}");
}

/// The file name and message of each warning, for comparing.
fn described(w: &[StatWarning]) -> Vec<(String, String)> {
    w.iter()
        .map(|w| {
            let name = w
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, w.problem.to_string())
        })
        .collect()
}

#[test]
fn pure_v2_with_controllers() {
    let cg = cgroups(Some("v2/slurm/job_4242/apptheus-ctr"), &[]);
    let (s, w) = stats::read(&cg);
    no_warnings(&w);

    let cpu = s.cpu.expect("cpu");
    assert!(close(cpu.usage_seconds, 123.456789));
    assert_close(cpu.user_seconds, 100.0);
    assert_close(cpu.system_seconds, 23.456789);
    assert_close(cpu.throttled_seconds, 2.5);

    let m = s.memory.expect("memory");
    assert_eq!(m.usage_bytes, 1 << 30);
    // 1 GiB less 128 MiB of inactive page cache.
    assert_eq!(m.working_set_bytes, Some(939_524_096));
    assert_eq!(m.rss_bytes, Some(805_306_368));
    assert_eq!(m.cache_bytes, Some(209_715_200));
    assert_eq!(m.swap_bytes, Some(16 << 20));
    assert_eq!(m.max_usage_bytes, Some(1_610_612_736));
    // The container's own 8 GiB limit sits under the job's 4 GiB one.
    assert_eq!(m.limit_bytes, Some(4 << 30));
    assert_eq!(m.oom_events, Some(3));
    assert_eq!(m.oom_kills, Some(2));
    assert_eq!(m.under_oom, None);

    let p = s.pids.expect("pids");
    assert_eq!(p.current, 42);
    // pids.max is "max" here; the job's 512 holds.
    assert_eq!(p.limit, Some(512));
    // 4 in the container's cgroup, 2 in the cgroup below it.
    assert_eq!(s.threads, Some(6));

    // 7:0 did no I/O and is left out; devices in numeric order.
    assert_eq!(
        s.blkio,
        Some(vec![
            dev("8:0", 1_459_200, 314_773_504, 192, 353),
            dev("259:0", 52_428_800, 0, 800, 0),
        ])
    );

    let psi = s.pressure.expect("pressure");
    assert_close(psi.cpu_some, 1.5);
    assert_close(psi.memory_some, 0.75);
    assert_close(psi.memory_full, 0.25);
    assert_close(psi.io_some, 3.0);
    assert_close(psi.io_full, 1.0);
}

#[test]
fn broken_files_warn_and_the_rest_comes_through() {
    let cg = cgroups(Some("v2-broken/ctr"), &[]);
    let (s, w) = stats::read(&cg);

    let mut got = described(&w);
    got.sort();
    let want = [
        ("cpu.stat", "system_usec: \"lots\" is not a number"),
        ("io.pressure", "key \"some\" is missing"),
        ("memory.events", "missing"),
        ("memory.peak", "file is empty"),
        (
            "memory.stat",
            "line 3: \"kernel_st\" is not in the expected format",
        ),
        ("memory.swap.current", "not UTF-8 text"),
        ("pids.current", "file is empty"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(f, p)| (f.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, want);
    // Each warning says which file, in full, when displayed.
    assert!(
        w.iter().all(|w| w.to_string().contains("v2-broken/ctr/")),
        "{w:#?}"
    );

    let cpu = s.cpu.expect("cpu still read");
    assert!(close(cpu.usage_seconds, 5.0));
    assert_close(cpu.user_seconds, 3.0);
    assert_eq!(cpu.system_seconds, None);
    // No cpu controller data in this cpu.stat: no throttling, and no v1 to ask.
    assert_eq!(cpu.throttled_seconds, None);

    let m = s.memory.expect("memory.current is fine");
    assert_eq!(m.usage_bytes, 524_288_000);
    assert_eq!(m.working_set_bytes, None);
    assert_eq!(m.rss_bytes, None);
    assert_eq!(m.cache_bytes, None);
    assert_eq!(m.max_usage_bytes, None);
    assert_eq!(m.swap_bytes, None);
    assert_eq!(m.limit_bytes, None);
    assert_eq!(m.oom_events, None);
    assert_eq!(m.oom_kills, None);

    assert_eq!(s.pids, None);
    assert_eq!(s.threads, Some(2));
    // An empty io.stat is a cgroup that has not done I/O yet.
    assert_eq!(s.blkio, Some(vec![]));
    let psi = s.pressure.expect("cpu.pressure is fine");
    assert_close(psi.cpu_some, 0.012345);
    assert_eq!(psi.memory_some, None);
    assert_eq!(psi.memory_full, None);
    assert_eq!(psi.io_some, None);
    assert_eq!(psi.io_full, None);
}

fn hybrid() -> ContainerCgroups {
    cgroups(
        Some("hybrid/unified/apptheus/ctr"),
        &[
            ("memory", "hybrid/memory/slurm/uid_1000/job_42/apptheus-ctr"),
            ("pids", "hybrid/pids/slurm/uid_1000/job_42/apptheus-ctr"),
            ("cpu", "hybrid/cpu/apptheus-ctr"),
            ("cpuacct", "hybrid/cpuacct/apptheus-ctr"),
            ("blkio", "hybrid/blkio/apptheus-ctr"),
        ],
    )
}

#[test]
fn hybrid_takes_cpu_and_psi_from_cgroup2_and_the_rest_from_v1() {
    let (s, w) = stats::read(&hybrid());
    no_warnings(&w);

    let cpu = s.cpu.expect("cpu");
    // cgroup2's cpu.stat, not cpuacct.usage (9.999999999 s).
    assert!(close(cpu.usage_seconds, 4.2));
    assert_close(cpu.user_seconds, 3.0);
    assert_close(cpu.system_seconds, 1.2);
    // From the v1 cpu controller's cpu.stat, in nanoseconds.
    assert_close(cpu.throttled_seconds, 1.5);

    let m = s.memory.expect("memory");
    assert_eq!(m.usage_bytes, 300 << 20);
    // usage less total_inactive_file (60 MiB), not the local inactive_file.
    assert_eq!(m.working_set_bytes, Some(240 << 20));
    assert_eq!(m.rss_bytes, Some(200 << 20));
    assert_eq!(m.cache_bytes, Some(90 << 20));
    // memsw less usage.
    assert_eq!(m.swap_bytes, Some(16 << 20));
    assert_eq!(m.max_usage_bytes, Some(400 << 20));
    // Unlimited itself (9223372036854771712), inside a job limited to 2 GiB.
    assert_eq!(m.limit_bytes, Some(2 << 30));
    assert_eq!(m.oom_events, None);
    assert_eq!(m.oom_kills, Some(1));
    assert_eq!(m.under_oom, Some(false));

    let p = s.pids.expect("pids");
    assert_eq!(p.current, 7);
    assert_eq!(p.limit, Some(1000));
    assert_eq!(s.threads, Some(3));

    // The throttle files' _recursive variants, 8:16 (all zero) left out.
    assert_eq!(
        s.blkio,
        Some(vec![
            dev("8:0", 20_971_520, 10_485_760, 640, 160),
            dev("253:0", 4096, 0, 1, 0),
        ])
    );

    let psi = s.pressure.expect("pressure");
    assert_close(psi.cpu_some, 0.042);
    assert_close(psi.memory_some, 0.0);
    assert_close(psi.memory_full, 0.0);
    assert_close(psi.io_some, 6.803189);
    assert_close(psi.io_full, 6.078226);
}

#[test]
fn cgroup2_without_controllers_and_no_v1_gives_cpu_and_psi_only() {
    let cg = cgroups(Some("hybrid/unified/apptheus/ctr"), &[]);
    let (s, w) = stats::read(&cg);
    no_warnings(&w);
    assert!(s.cpu.is_some_and(|c| c.throttled_seconds.is_none()));
    assert!(s.pressure.is_some());
    assert_eq!(s.threads, Some(3));
    // The host cannot provide these: absent, not zero, and no warning.
    assert_eq!(s.memory, None);
    assert_eq!(s.pids, None);
    assert_eq!(s.blkio, None);
}

fn pure_v1() -> ContainerCgroups {
    cgroups(
        None,
        &[
            ("cpu", "v1/cpu,cpuacct/apptheus-ctr"),
            ("cpuacct", "v1/cpu,cpuacct/apptheus-ctr"),
            ("memory", "v1/memory/slurm/job_7/apptheus-ctr"),
            ("blkio", "v1/blkio/apptheus-ctr"),
        ],
    )
}

#[test]
fn pure_v1_older_kernel() {
    let (s, w) = stats::read_with(&pure_v1(), 100);
    no_warnings(&w);

    let cpu = s.cpu.expect("cpu");
    assert!(close(cpu.usage_seconds, 98.7654321));
    // cpuacct.stat ticks at USER_HZ 100.
    assert_close(cpu.user_seconds, 80.0);
    assert_close(cpu.system_seconds, 15.0);
    assert_close(cpu.throttled_seconds, 0.25);

    let m = s.memory.expect("memory");
    assert_eq!(m.usage_bytes, 700 << 20);
    assert_eq!(m.working_set_bytes, Some(600 << 20));
    assert_eq!(m.rss_bytes, Some(500 << 20));
    assert_eq!(m.cache_bytes, Some(200 << 20));
    assert_eq!(m.max_usage_bytes, Some(900 << 20));
    // The job's 8 GiB; slurm's 1 GiB does not hold below it
    // (memory.use_hierarchy 0).
    assert_eq!(m.limit_bytes, Some(8 << 30));
    // No swap accounting (no memsw files), no oom_kill line before 4.13.
    assert_eq!(m.swap_bytes, None);
    assert_eq!(m.oom_kills, None);
    assert_eq!(m.oom_events, None);
    assert_eq!(m.under_oom, Some(false));

    // No pids controller mounted: no pids, not 0.
    assert_eq!(s.pids, None);
    assert_eq!(s.threads, Some(5));
    // Only the non-recursive throttle files exist on this kernel.
    assert_eq!(s.blkio, Some(vec![dev("8:0", 1 << 20, 2 << 20, 256, 512)]));
    // No cgroup2, no PSI.
    assert_eq!(s.pressure, None);
}

#[test]
fn user_hz_comes_from_the_host() {
    let (s, _) = stats::read(&pure_v1());
    let hz = stats::user_hz() as f64;
    assert_close(s.cpu.and_then(|c| c.user_seconds), 8000.0 / hz);
}

#[test]
fn removed_cgroups_warn_once_per_directory() {
    let cg = cgroups(
        Some("v2/gone"),
        &[
            ("cpu", "v1/cpu,cpuacct/gone"),
            ("cpuacct", "v1/cpu,cpuacct/gone"),
            ("memory", "v1/memory/gone"),
        ],
    );
    let (s, w) = stats::read(&cg);
    assert_eq!(s, CgroupStats::default());
    let got = described(&w);
    assert_eq!(got.len(), 3, "{w:#?}");
    assert!(got.iter().all(|(n, p)| n == "gone" && p == "missing"));
}

#[test]
fn working_set_floors_at_zero_and_devices_are_capped() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("ctr");
    fs::create_dir(&d).unwrap();
    let put = |name: &str, text: &str| fs::write(d.join(name), text).unwrap();
    put("memory.current", "1000\n");
    // Can happen transiently: the counters are not read atomically.
    put("memory.stat", "anon 10\nfile 990\ninactive_file 4000\n");
    put("memory.max", "max\n");
    put("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n");
    let mut io = String::new();
    for minor in 0..300 {
        io += &format!("8:{minor} rbytes=1 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n");
    }
    put("io.stat", &io);
    put("cgroup.threads", "");
    let (s, w) = stats::read(&ContainerCgroups {
        v2: Some(d.clone()),
        v1: Default::default(),
    });
    let m = s.memory.expect("memory");
    assert_eq!(m.working_set_bytes, Some(0));
    let devs = s.blkio.expect("blkio");
    assert_eq!(devs.len(), stats::MAX_DEVICES);
    assert_eq!(devs[0].device, "8:0");
    assert_eq!(devs[255].device, "8:255");
    assert_eq!(
        described(&w),
        vec![(
            "io.stat".to_string(),
            "more than 256 devices; the rest are left out".to_string()
        )]
    );
    assert_eq!(s.threads, Some(0));
    assert_eq!(s.cpu, None);
}

#[test]
fn families_leave_out_what_the_host_cannot_provide() {
    let names = |s: &CgroupStats| -> Vec<String> {
        let snap = Snapshot {
            rows: vec![Row {
                id: "c1".into(),
                sample: Some(std::sync::Arc::new(Sample {
                    cgroup: s.clone(),
                    ..Sample::default()
                })),
                ..Row::default()
            }],
            programs: Vec::new(),
        };
        families(&snap)
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    };
    let (v1, _) = stats::read(&pure_v1());
    let n = names(&v1);
    assert!(n.contains(&"apptheus_container_memory_working_set_bytes".into()));
    assert!(n.contains(&"apptheus_container_memory_under_oom".into()));
    assert!(n.contains(&"apptheus_container_blkio_read_bytes_total".into()));
    for present in [
        "apptheus_container_memory_limit_bytes",
        "apptheus_container_cpu_cfs_throttled_seconds_total",
    ] {
        assert!(n.contains(&present.into()), "{present} not in {n:?}");
    }
    for absent in [
        "apptheus_container_pids",
        "apptheus_container_memory_swap_bytes",
        "apptheus_container_memory_oom_kills_total",
        "apptheus_container_memory_oom_events_total",
        "apptheus_container_pressure_cpu_waiting_seconds_total",
    ] {
        assert!(!n.contains(&absent.into()), "{absent} in {n:?}");
    }
}

mod live {
    //! A real cgroup on this machine: a child cgroup in every hierarchy,
    //! a process that touches 64 MiB in it, read through `stats::read`.
    use super::*;
    use std::{
        collections::BTreeSet,
        process::{Child, Command, Stdio},
        thread::sleep,
        time::{Duration, Instant},
    };

    use apptheus::testing::cgroup::Layout;
    use apptheus_testkit::skip;
    use nix::{
        sys::signal::{Signal, kill},
        unistd::Pid,
    };

    const TOUCHED: u64 = 64 << 20;
    const LIMIT_BYTES: u64 = 1 << 30;
    const LIMIT_PIDS: u64 = 100;

    /// Removes the test's cgroups, killing what is left in them first,
    /// whether the test passed or not.
    struct Guard {
        dirs: Vec<PathBuf>,
        child: Option<Child>,
    }

    impl Guard {
        fn procs(&self) -> Vec<i32> {
            self.dirs
                .iter()
                .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
                .flat_map(|t| {
                    t.lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect()
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            // Everything in these fresh cgroups was started by this test.
            // The shell's children go first, so that the shell reaps them
            // and ends by itself instead of leaving orphans to init.
            let shell = self.child.as_ref().map(|c| c.id() as i32);
            for pid in self.procs().into_iter().filter(|p| Some(*p) != shell) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(c) = &mut self.child {
                let deadline = Instant::now() + Duration::from_secs(2);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            for d in self.dirs.iter().rev() {
                while fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
                    sleep(Duration::from_millis(50));
                }
                if d.exists() {
                    eprintln!("could not remove {}", d.display());
                }
            }
        }
    }

    /// This process's cgroup path in the v1 hierarchy carrying `controller`.
    fn own_v1_path(controller: &str) -> Option<String> {
        let text = fs::read_to_string("/proc/self/cgroup").ok()?;
        text.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
    }

    /// The cgroup mounts, when this test may create cgroups (root);
    /// otherwise the skip is reported.
    fn layout_as_root() -> Option<Layout> {
        if !nix::unistd::geteuid().is_root() {
            skip("root, to create cgroups");
            return None;
        }
        let layout = Layout::read(Path::new("/proc/self/mountinfo")).ok();
        if layout.is_none() {
            skip("a mounted cgroup filesystem");
        }
        layout
    }

    #[test]
    fn reads_a_real_cgroup() {
        let Some(layout) = layout_as_root() else {
            return;
        };
        let name = format!("apptheus-stats-test-{}", std::process::id());
        let mut guard = Guard {
            dirs: Vec::new(),
            child: None,
        };
        let mut cg = ContainerCgroups::default();
        // cgroup2: beneath the root, where controllers (on a pure v2 host)
        // are enabled for children; on a hybrid host this is where sessions
        // are anyway.
        if let Some(root) = &layout.v2 {
            let d = root.join(&name);
            fs::create_dir(&d).expect("create the cgroup2 child");
            guard.dirs.push(d.clone());
            cg.v2 = Some(d);
        }
        // v1: beneath our own cgroup, so that whatever limits this session
        // runs under still hold (as apptheus does for containers).
        let mut made: BTreeSet<PathBuf> = BTreeSet::new();
        for c in ["memory", "pids", "cpu", "cpuacct", "blkio"] {
            let Some(m) = layout.v1.get(c) else { continue };
            let own = own_v1_path(c).unwrap_or_else(|| "/".into());
            let parent = m.mountpoint.join(own.trim_start_matches('/'));
            let d = parent.join(&name);
            // Co-mounted controllers (cpu,cpuacct) share one directory.
            if made.insert(d.clone()) {
                fs::create_dir(&d).expect("create a v1 child");
                guard.dirs.push(d.clone());
            }
            cg.v1.insert(c, d);
        }
        if cg.v2.is_none() && !cg.v1.contains_key("memory") {
            skip("a memory controller");
            return;
        }
        // Limits of our own, which the reader must find (or smaller ones
        // this session already runs under).
        let limits = [
            ("memory.max", LIMIT_BYTES),
            ("memory.limit_in_bytes", LIMIT_BYTES),
            ("pids.max", LIMIT_PIDS),
        ];
        for d in &guard.dirs {
            for (file, v) in limits {
                if d.join(file).exists() {
                    fs::write(d.join(file), v.to_string()).expect("set a limit");
                }
            }
        }
        let procs: Vec<PathBuf> = guard.dirs.iter().map(|d| d.join("cgroup.procs")).collect();

        // The shell moves itself into the cgroups, then dd reads 64 MiB of
        // zeros into one buffer (touching every page) and blocks writing it
        // into a pipe nobody reads, holding the buffer until sleep exits.
        // Its own overhead is well under a MiB, unlike stress-ng's ~9 MiB.
        let script = "for f in \"$@\"; do echo $$ > \"$f\" || exit 1; done; \
                      dd if=/dev/zero bs=64M count=1 status=none | sleep 4";
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&procs)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh");
        guard.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(3);
        let (s, w) = loop {
            let (s, w) = stats::read(&cg);
            let rss = s.memory.as_ref().and_then(|m| m.rss_bytes).unwrap_or(0);
            if rss >= TOUCHED || Instant::now() > deadline {
                break (s, w);
            }
            sleep(Duration::from_millis(100));
        };
        eprintln!("{s:#?}");
        no_warnings(&w);
        let m = s.memory.expect("memory");
        let within = |v: u64| v.abs_diff(TOUCHED) <= TOUCHED / 10;
        assert!(
            within(m.usage_bytes),
            "usage {} vs {TOUCHED}",
            m.usage_bytes
        );
        let ws = m.working_set_bytes.expect("working set");
        assert!(within(ws), "working set {ws} vs {TOUCHED}");
        assert!(
            m.limit_bytes.is_some_and(|l| l <= LIMIT_BYTES),
            "{:?}",
            m.limit_bytes
        );
        if let Some(p) = &s.pids {
            assert!(p.current >= 3, "{p:?}");
            assert!(p.limit.is_some_and(|l| l <= LIMIT_PIDS), "{p:?}");
        }
        let cpu = s.cpu.expect("cpu");
        assert!(cpu.usage_seconds > 0.0, "{cpu:?}");
        // sh, dd and sleep.
        assert!(s.threads.is_some_and(|t| t >= 3), "{:?}", s.threads);
        drop(guard);
        for d in made.iter().chain(cg.v2.iter()) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }

    /// The kernel counts CFS throttling in the cgroup whose own quota ran
    /// out, never in the cgroups below it (what lets the reader look at a
    /// quota-less v1 cgroup's cpu.stat only now and then): a shell
    /// spinning beneath a cgroup held to a tenth of a core is throttled
    /// there, and its own cgroup, without a quota, counts none.
    #[test]
    fn v1_throttling_is_counted_where_the_quota_is() {
        let Some(layout) = layout_as_root() else {
            return;
        };
        let Some(m) = layout.v1.get("cpu") else {
            eprintln!("not applicable: no v1 cpu controller (pure cgroup v2)");
            return;
        };
        let own = own_v1_path("cpu").unwrap_or_else(|| "/".into());
        let quota = m
            .mountpoint
            .join(own.trim_start_matches('/'))
            .join(format!("apptheus-throttle-test-{}", std::process::id()));
        let below = quota.join("below");
        let mut guard = Guard {
            dirs: Vec::new(),
            child: None,
        };
        for d in [&quota, &below] {
            fs::create_dir(d).expect("create a v1 cpu cgroup");
            guard.dirs.push(d.clone());
        }
        if !quota.join("cpu.cfs_quota_us").exists() {
            eprintln!("not applicable: no CFS bandwidth control in this kernel");
            return;
        }
        fs::write(quota.join("cpu.cfs_period_us"), "100000").expect("set the period");
        fs::write(quota.join("cpu.cfs_quota_us"), "10000").expect("set the quota");
        let child = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$1\" || exit 1; while :; do :; done")
            .arg("sh")
            .arg(below.join("cgroup.procs"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh");
        guard.child = Some(child);
        let field = |d: &Path, key: &str| -> u64 {
            let text = fs::read_to_string(d.join("cpu.stat")).expect("cpu.stat");
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {text}"))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while field(&quota, "nr_throttled ") < 3 {
            assert!(
                Instant::now() < deadline,
                "the shell was not throttled by its parent's quota in 60 s"
            );
            sleep(Duration::from_millis(50));
        }
        assert!(field(&quota, "throttled_time ") > 0);
        assert_eq!(
            (
                field(&below, "nr_throttled "),
                field(&below, "throttled_time ")
            ),
            (0, 0),
            "a cgroup without a quota of its own counted throttling"
        );
        assert_eq!(
            fs::read_to_string(below.join("cpu.cfs_quota_us"))
                .unwrap()
                .trim(),
            "-1"
        );
        if let Some(c) = &mut guard.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
