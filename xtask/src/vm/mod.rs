//! `cargo xtask vm-test`: the privileged integration tests on other kernels
//! and cgroup layouts, in qemu VMs under software emulation. Kernels are
//! Debian's cloud kernels (5.10, 6.1, 6.12; and the host's if /boot has
//! it); layouts are pure v1, hybrid and pure v2 under a busybox init, and
//! the systemd node (6.12 only, see `node`). One busybox initramfs holds
//! the test binaries at the paths compiled into them; the kernel command
//! line picks the layout. See `init.sh` for what runs inside.
mod artifacts;
pub mod bench;
mod cpio;
mod exceptions;
mod kernels;
mod node;
mod qemu;
mod report;
mod rootfs;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    exceptions::{EXCEPTIONS, HOST_ONLY, SLOW, Skip, UNDER_EMULATION},
    kernels::Kernel,
    report::Verdict,
};

/// A cgroup layout, as the VM's init mounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Layout {
    /// v1 hierarchies only (older HPC clusters)
    V1,
    /// v1 controllers plus cgroup2 at /sys/fs/cgroup/unified, no controllers there
    Hybrid,
    /// cgroup2 only, on /sys/fs/cgroup, every controller enabled below the root
    V2,
    /// A compute node of today: systemd as PID 1 on pure v2, Apptainer's
    /// systemd cgroups, Slurm as services, the agent from its .deb (kernel
    /// 6.12 only; runs apptheus/tests/systemd_node.rs)
    Systemd,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::V1 => "v1",
            Layout::Hybrid => "hybrid",
            Layout::V2 => "v2",
            Layout::Systemd => "systemd",
        })
    }
}

const LAYOUTS: [Layout; 4] = [Layout::V1, Layout::Hybrid, Layout::V2, Layout::Systemd];

/// The test binaries of the systemd node: their tests are `#[ignore]`d
/// (they need the node) and run there with `--ignored`.
const NODE_TESTS: [&str; 1] = ["systemd_node"];
/// The node's first step, reported like a test binary: installing the
/// agent's package.
const NODE_INSTALL: &str = "install";

/// Busybox cells the whole matrix leaves out, and why (run them by naming
/// them: `--kernel 6.12 --layout v2`).
const COVERED: &[(&str, Layout, &str)] = &[
    (
        "6.12",
        Layout::V2,
        "the systemd node runs pure cgroup v2 on the same kernel (with the real Apptainer, \
         Slurm and systemd); pure v2 under the busybox init stays covered on 5.10 and 6.1",
    ),
    (
        "6.12",
        Layout::V1,
        "Debian's 6.12 has no v1 memory controller (CONFIG_MEMCG_V1 unset), so a site on it \
         runs pure v2, which the systemd node covers with this kernel's programs loaded; \
         pure v1 stays covered on 5.10",
    ),
    (
        "6.1",
        Layout::V1,
        "pure v1 (no cgroup2 at all) is the rarest layout on a kernel with BTF; it stays \
         covered on 5.10, and 6.1's kernel programs on its v2 cell",
    ),
    (
        "6.1",
        Layout::Hybrid,
        "hybrid (v1 controllers beside an empty cgroup2 mount) is the layout of older \
         distributions, whose kernels are closer to 5.10, where it stays covered; 6.1's kernel \
         programs are loaded on its v2 cell, the layout Debian 12 boots with",
    ),
    (
        "6.12",
        Layout::Hybrid,
        "as 6.12's v1 cell: no v1 memory controller; the systemd node covers this kernel, \
         hybrid stays covered on 5.10",
    ),
];

/// The privileged integration tests (apptheus/tests/<name>.rs) that need
/// nothing but the agent, the starter simulator, sh, true, unshare,
/// python3 and Slurm (exporter and multinode start Prometheus and friends;
/// the real Apptainer's tests need its cached root).
const TESTS: [&str; 8] = [
    "attribution",
    "cgroups",
    "shared_cgroups",
    "monitoring_socket",
    "socket",
    "kernel_metrics",
    "lifecycle",
    "slurm_jobs",
];

#[derive(clap::Args)]
pub struct Options {
    /// Kernels (rows): 5.10, 6.1, 6.12 (Debian cloud kernels), host (the
    /// running kernel, if /boot has its image) [default: all]
    #[arg(long = "kernel", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// cgroup layouts (columns) [default: all; with neither --kernel nor
    /// --layout, five busybox cells are left out: 6.12's three (the
    /// systemd node covers that kernel), 6.1's v1 and hybrid]
    #[arg(long = "layout", value_delimiter = ',', value_enum)]
    pub layouts: Vec<Layout>,
    /// Test binaries run in each VM [default: attribution, cgroups,
    /// shared_cgroups, monitoring_socket, socket, kernel_metrics, lifecycle,
    /// slurm_jobs]
    #[arg(long = "test", value_delimiter = ',')]
    pub tests: Vec<String>,
    /// VMs run at once
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Time limit per VM, in seconds (a loaded host stretches the tests'
    /// own limits: see --time-scale)
    #[arg(long, default_value_t = 2400)]
    pub timeout: u64,
    /// How much longer than on a real machine the tests may wait for
    /// something (APPTHEUS_TEST_TIME_SCALE) [default: measured in each VM
    /// at boot against this machine: 5, the scale the tests were tuned
    /// with on an idle host, and more as far as the VM runs slower than an
    /// idle emulated machine]
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Fetch the newest kernels and busybox even when cached
    #[arg(long)]
    pub refresh: bool,
    /// Leave out the slow tests (exceptions::SLOW), as CI does
    #[arg(long)]
    pub quick: bool,
    /// Also run the tests left out under emulation (exceptions::UNDER_EMULATION)
    #[arg(long)]
    pub all_tests: bool,
    /// Print every console line
    #[arg(long, short)]
    pub verbose: bool,
    /// Arguments for every test binary, after `--` (e.g. a test name filter)
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Where downloads are kept across clones and runs (kernels, busybox,
/// apt's lists): `$APPTHEUS_CACHE_DIR/vm`, by default
/// `/var/cache/apptheus/vm`. CI clones afresh, so `target/` is no cache.
pub fn download_cache() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("APPTHEUS_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/apptheus"));
    let dir = base.join("vm");
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "creating the download cache {} (run as root, or set APPTHEUS_CACHE_DIR to a directory you can write)",
            dir.display()
        )
    })?;
    Ok(dir)
}

struct Cell {
    kernel: Kernel,
    layout: Layout,
    /// The test binaries (and steps) its console must report.
    expected: Vec<String>,
}

/// The starter simulator among the built executables (it also calibrates
/// the VMs' time scale at boot).
fn starter_sim(executables: &[PathBuf]) -> anyhow::Result<PathBuf> {
    executables
        .iter()
        .find(|e| {
            e.file_name()
                .is_some_and(|n| n == apptheus_testkit::sim::STARTER_SIM)
        })
        .cloned()
        .context("cargo built no starter simulator")
}

/// `args` quoted for a POSIX shell, space-separated.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
}

struct Outcome {
    verdict: Verdict,
    console: report::Console,
    seconds: f64,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::build_ebpf::workspace_root();
    let tests: Vec<String> = if o.tests.is_empty() {
        TESTS.iter().map(|s| s.to_string()).collect()
    } else {
        o.tests.clone()
    };
    let layouts: Vec<Layout> = if o.layouts.is_empty() {
        LAYOUTS.to_vec()
    } else {
        o.layouts.clone()
    };
    let kernel_names: Vec<String> = if o.kernels.is_empty() {
        kernels::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        o.kernels.clone()
    };

    let t = Instant::now();
    let built = build_tests(&root)?;
    let cache = download_cache()?;
    let work = built.target_dir.join("vm-test");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut plan = Vec::new();
    for name in &tests {
        let path = built
            .tests
            .get(name)
            .with_context(|| format!("cargo built no test binary named {name}"))?;
        plan.push((name.clone(), path.clone()));
    }
    let build_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let lock = kernels::lock(&cache)?;
    let mut rows = Vec::new();
    let mut missing_host = None;
    for name in &kernel_names {
        match kernels::get(&cache, name, o.refresh)? {
            Some(k) => rows.push(k),
            None => missing_host = Some(kernels::host_release()),
        }
    }
    let busybox = kernels::busybox(&cache, o.refresh)?;
    drop(lock);
    let fetch_secs = t.elapsed().as_secs_f64();

    // What the VMs measure their speed against: this machine, now (its
    // fastest of five runs of the calibration work).
    let speed = match o.time_scale {
        Some(scale) => format!("apptheus.time_scale={scale}"),
        None => {
            let reference = apptheus_testkit::host::calibration_best(5);
            eprintln!(
                "vm-test: calibration work took {:.3} s here (20 forks and execs {:.3} s); each VM scales its time limits by its own",
                reference.as_secs_f64(),
                apptheus_testkit::host::fork_exec_work().as_secs_f64()
            );
            format!("apptheus.calibration={:.4}", reference.as_secs_f64())
        }
    };
    let node_cell =
        layouts.contains(&Layout::Systemd) && rows.iter().any(|k| k.name == node::KERNEL);
    let busybox_cells = layouts.iter().any(|l| *l != Layout::Systemd);

    let t = Instant::now();
    let busybox_initramfs = work.join("initramfs.cpio");
    let skips = skipped(o, &tests);
    if busybox_cells {
        let mut args = o.test_args.clone();
        for s in &skips {
            let name = s.test.split_once("::").map_or(s.test, |(_, t)| t);
            args.extend(["--skip".to_string(), name.to_string()]);
        }
        let fresh = rootfs::build(
            &rootfs::Inputs {
                busybox: &busybox,
                init: include_str!("init.sh"),
                tests: &plan,
                executables: &built.executables,
                test_args: &shell_words(&args),
            },
            &busybox_initramfs,
        )?;
        eprintln!(
            "vm-test: initramfs {} ({:.0} MiB, {})",
            busybox_initramfs.display(),
            mib(&busybox_initramfs),
            if fresh { "built" } else { "unchanged" }
        );
    }
    let node_initramfs = work.join("systemd-node.img");
    if node_cell {
        let kernel = rows
            .iter()
            .find(|k| k.name == node::KERNEL)
            .context("the node's kernel")?;
        let lock = kernels::lock(&cache)?;
        let root = node::root(&cache, kernel, o.refresh)?;
        drop(lock);
        eprint!(
            "vm-test: systemd node's root {}:\n{}",
            root.archive.display(),
            root.stamp
        );
        let deb = crate::package::run(&crate::package::Options {
            out_dir: Some(work.join("deb")),
        })?;
        let workload = work.join("workload");
        apptheus_testkit::workload::compile(&workload)?;
        let mut node_plan = Vec::new();
        for name in NODE_TESTS {
            let path = built
                .tests
                .get(name)
                .with_context(|| format!("cargo built no test binary named {name}"))?;
            node_plan.push((name.to_string(), path.clone()));
        }
        node::initramfs(
            &root,
            &node::RunInputs {
                deb: &deb,
                workload: &workload,
                starter_sim: &starter_sim(&built.executables)?,
                tests: &node_plan,
                test_args: &shell_words(&o.test_args),
            },
            &node_initramfs,
        )?;
        eprintln!(
            "vm-test: systemd node's initramfs {} ({:.0} MiB)",
            node_initramfs.display(),
            mib(&node_initramfs)
        );
    }
    let rootfs_secs = t.elapsed().as_secs_f64();
    let size_mib = if busybox_cells {
        mib(&busybox_initramfs)
    } else {
        0.0
    };

    let mut node_expected = vec![NODE_INSTALL.to_string()];
    node_expected.extend(NODE_TESTS.iter().map(|s| s.to_string()));
    // The whole matrix (no --kernel, no --layout) leaves out the cells of
    // COVERED; naming the cell runs it.
    let whole = o.kernels.is_empty() && o.layouts.is_empty();
    let covered = |k: &Kernel, l: Layout| {
        whole
            && COVERED
                .iter()
                .any(|(kernel, layout, _)| *kernel == k.name && *layout == l)
    };
    let mut cells: Vec<Cell> = rows
        .iter()
        .flat_map(|k| {
            layouts
                .iter()
                .filter(|l| **l != Layout::Systemd || k.name == node::KERNEL)
                .filter(|l| !covered(k, **l))
                .map(|l| Cell {
                    kernel: k.clone(),
                    layout: *l,
                    expected: if *l == Layout::Systemd {
                        node_expected.clone()
                    } else {
                        tests.clone()
                    },
                })
        })
        .collect();
    // The longest cell first: two VMs at a time finish sooner.
    cells.sort_by_key(|c| c.layout != Layout::Systemd);
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let outcomes = run_cells(
        o,
        &cells,
        &busybox_initramfs,
        &node_initramfs,
        &logs,
        &speed,
    )?;

    let failed = report::print_matrix(
        &rows,
        &layouts,
        &cells,
        &outcomes,
        &tests,
        o.test_args.is_empty(),
    );
    if whole {
        for (kernel, layout, why) in COVERED {
            println!("\nnot in the whole matrix: [{kernel} {layout}]: {why}");
        }
    }
    report::print_tail(
        if busybox_cells { &skips } else { &[] },
        missing_host.as_deref(),
        &report::Timings {
            build: build_secs,
            kernels: fetch_secs,
            initramfs: rootfs_secs,
            size_mib,
            vms: outcomes.iter().map(|x| x.seconds).sum::<f64>(),
            jobs: o.jobs.max(1),
            total: started.elapsed().as_secs_f64(),
        },
        &logs,
    );
    if failed > 0 {
        bail!("{failed} cell(s) of the matrix failed");
    }
    Ok(())
}

/// The tests of `tests` left out of this run.
fn skipped(o: &Options, tests: &[String]) -> Vec<&'static Skip> {
    let mut out: Vec<&'static Skip> = HOST_ONLY.iter().collect();
    if !o.all_tests {
        out.extend(UNDER_EMULATION);
    }
    if o.quick {
        out.extend(SLOW);
    }
    out.retain(|s| tests.iter().any(|t| s.test.starts_with(&format!("{t}::"))));
    out
}

fn run_cells(
    o: &Options,
    cells: &[Cell],
    busybox_initramfs: &Path,
    node_initramfs: &Path,
    logs: &Path,
    speed: &str,
) -> anyhow::Result<Vec<Outcome>> {
    let queue = Mutex::new((0..cells.len()).collect::<VecDeque<usize>>());
    let results: Mutex<Vec<Option<anyhow::Result<Outcome>>>> =
        Mutex::new((0..cells.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..o.jobs.clamp(1, cells.len().max(1)) {
            s.spawn(|| {
                loop {
                    let Some(i) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let c = &cells[i];
                    let log = logs.join(format!("{}-{}.log", c.kernel.name, c.layout));
                    let machine = if c.layout == Layout::Systemd {
                        qemu::Machine {
                            kernel: &c.kernel,
                            initramfs: node_initramfs,
                            init: "/sbin/init",
                            params: speed.to_string(),
                            memory_mib: node::MEMORY_MIB,
                            tag: format!("[{} {}]", c.kernel.name, c.layout),
                        }
                    } else {
                        busybox_machine(&c.kernel, c.layout, busybox_initramfs, speed)
                    };
                    let r = qemu::boot(&machine, &log, Duration::from_secs(o.timeout), o.verbose)
                        .map(|run| {
                            let console = report::parse(&run.lines);
                            let verdict = report::judge(
                                &console,
                                &c.expected,
                                run.timed_out,
                                &c.kernel.name,
                                c.layout,
                                EXCEPTIONS,
                            );
                            println!(
                                "[{} {}] {} in {:.0} s",
                                c.kernel.name,
                                c.layout,
                                verdict.cell(),
                                run.seconds
                            );
                            Outcome {
                                verdict,
                                console,
                                seconds: run.seconds,
                            }
                        });
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a cell did not run"))))
        .collect()
}

/// A VM of the busybox initramfs with `layout` (not [`Layout::Systemd`]).
/// `speed`: the kernel parameter that tells the tests how slow the VM is
/// (`apptheus.time_scale=N`, or `apptheus.calibration=SECS` to measure it).
fn busybox_machine<'a>(
    kernel: &'a Kernel,
    layout: Layout,
    initramfs: &'a Path,
    speed: &str,
) -> qemu::Machine<'a> {
    qemu::Machine {
        kernel,
        initramfs,
        init: "/init",
        params: format!("apptheus.layout={layout} {speed}"),
        memory_mib: 2048,
        tag: format!("[{} {layout}]", kernel.name),
    }
}

struct Built {
    target_dir: PathBuf,
    /// Test binaries by target name.
    tests: BTreeMap<String, PathBuf>,
    /// The executables the tests start by path: the apptheus package's
    /// (CARGO_BIN_EXE_* of its tests) and apptheus-testkit's (the starter
    /// simulator, which the tests find beside their own executables).
    executables: Vec<PathBuf>,
}

/// `cargo test --no-run` as scripts/test.sh builds the tests (so CI re-uses
/// its artifacts: keep the two commands alike), and where cargo put them.
fn build_tests(root: &Path) -> anyhow::Result<Built> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    let target_dir = artifacts::target_directory(&String::from_utf8_lossy(&meta.stdout))
        .context("cargo metadata named no target directory")?;

    eprintln!("vm-test: cargo test --locked --no-run");
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["test", "--locked", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let manifest = root.join("apptheus").join("Cargo.toml");
    let helpers = root.join("apptheus-testkit").join("Cargo.toml");
    let artifacts::Artifacts { tests, executables } =
        artifacts::parse(&String::from_utf8_lossy(&out.stdout), &manifest, &helpers);
    for name in ["apptheus", apptheus_testkit::sim::STARTER_SIM] {
        if !executables
            .iter()
            .any(|e| e.file_name().is_some_and(|n| n == name))
        {
            bail!("cargo reported no executable {name}: {executables:?}");
        }
    }
    Ok(Built {
        target_dir,
        tests,
        executables,
    })
}
